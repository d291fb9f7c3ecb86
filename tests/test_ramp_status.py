"""`guardrail status --now`: a ramp's time on its step and the minimum time left, as of a given moment
(parsed as `check --now` is), so what status says is reproducible."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from guardrail.check import run_check
from guardrail.fakeapi import FakeAPI
from guardrail.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "checkout.payments.new-flow"
START = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


def started(tmp_path: Path) -> list[str]:
    """The walkthrough's flag file after its first run (step 1, 1 %, at 09:00); the status arguments."""
    flags = tmp_path / "flags.yaml"
    flags.write_text((ROOT / "examples" / "rollout" / "flags.yaml").read_text())
    with FakeAPI(token=None) as api:
        s = load_settings(
            env={"METRICS_API_URL": api.url},
            overrides={"flags": str(flags), "state_path": tmp_path / "state.json", "audit_path": tmp_path / "a.jsonl"},
        )
        run_check(s, now=START)
    assert yaml.safe_load(flags.read_text())["flags"][KEY]["targeting"]["fractional"][1] == ["treatment", 1]
    return ["status", "--flags", str(flags), "--state", str(tmp_path / "state.json"), "--stale-after", "60"]


def test_status_now_gives_time_on_step_and_time_left(tmp_path: Path, run_cli: Any) -> None:
    args = started(tmp_path)
    done = run_cli(*args, "--json", "--now", "2026-12-01T09:12:00Z")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["now"] == "2026-12-01T09:12:00Z"
    (flag,) = [f for f in doc["flags"] if f["flag"] == KEY]
    ramp = flag["ramp"]
    assert ramp["step"] == 1 and ramp["share"] == 1
    assert ramp["minutes_on_step"] == 12.0 and ramp["minutes_left_on_step"] == 18.0

    # The same state read at another moment (an offset spelling, as `check --now` takes): the clock moved.
    text = run_cli(*args, "--now", "2026-12-01T10:20:00+01:00")  # 09:20Z
    assert text.returncode == 0, text.stderr
    assert "ramp: step 1 of 5 (1 %; 1%, 5%, 25%, 50%, 100%), 20 min on it (10 min left)" in text.stdout

    later = json.loads(run_cli(*args, "--json", "--now", "2026-12-01T09:45:00Z").stdout)
    (flag,) = [f for f in later["flags"] if f["flag"] == KEY]
    assert flag["ramp"]["minutes_on_step"] == 45.0 and flag["ramp"]["minutes_left_on_step"] == 0.0


def test_status_now_that_is_not_a_time_names_the_option(tmp_path: Path, run_cli: Any) -> None:
    done = run_cli(*started(tmp_path), "--now", "yesterday")
    assert done.returncode == 2
    assert "--now" in done.stderr and "RFC 3339" in done.stderr and "Traceback" not in done.stderr


def test_a_shipped_or_halted_ramp_has_no_time_left(tmp_path: Path, run_cli: Any) -> None:
    args = started(tmp_path)
    state_path = tmp_path / "state.json"
    state = json.loads(state_path.read_text())
    state["flags"][KEY]["ramp"]["shipped_at"] = "2026-12-01T09:05:00Z"
    state_path.write_text(json.dumps(state))
    doc = json.loads(run_cli(*args, "--json", "--now", "2026-12-01T11:00:00Z").stdout)
    (flag,) = [f for f in doc["flags"] if f["flag"] == KEY]
    assert flag["ramp"]["minutes_on_step"] == 5.0 and flag["ramp"]["minutes_left_on_step"] is None
