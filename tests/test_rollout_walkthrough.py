"""docs/rollouts.md's walkthroughs, run for real: examples/rollout/walkthrough.sh against the fake metrics API
and a flagd file, with --now. One ramp ships, one rolls back; a dry run changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "rollout" / "walkthrough.sh"
KEY = "checkout.payments.new-flow"


def walk(scenario: str, work: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ALERT_WEBHOOK_URL", None)
    done = subprocess.run(
        ["bash", str(SCRIPT), scenario, str(work)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def audit(work: Path, kind: str) -> list[dict[str, object]]:
    lines = (work / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_walkthrough_ships(tmp_path: Path) -> None:
    out = walk("ship", tmp_path)
    flag = yaml.safe_load((tmp_path / "flags.yaml").read_text())["flags"][KEY]
    assert flag["state"] == "ENABLED" and flag["targeting"]["fractional"][1:] == [["treatment", 100], ["control", 0]]
    actions = [(r["action"], r["status"]) for r in audit(tmp_path, "ramp")]
    assert actions == [
        ("start", "done"),
        ("hold", "decided"),
        ("advance", "done"),
        ("advance", "done"),
        ("advance", "done"),
        ("ship", "done"),
    ]
    assert "waits for: 10 min left on step 1 (1 %)" in out
    assert "RAMP WOULD SHIP (dry run)" in out and "no longer watched" in out
    assert "$ guardrail status --flags flags.yaml --now 2026-12-01T11:07:00Z" in out  # reproducible: --now
    assert "ramp: step 5 of 5 (100 %; 1%, 5%, 25%, 50%, 100%), 0 min on it, advance no_harm; shipped at" in out
    state = json.loads((tmp_path / "state.json").read_text())["flags"][KEY]["ramp"]
    assert state["step"] == 4 and state["shipped_at"].startswith("2026-12-01T11:04")
    # the comments of the file survive every step
    assert "# guardrail writes the step's share here" in (tmp_path / "flags.yaml").read_text()


def test_walkthrough_rolls_back(tmp_path: Path) -> None:
    out = walk("rollback", tmp_path)
    flag = yaml.safe_load((tmp_path / "flags.yaml").read_text())["flags"][KEY]
    assert flag["state"] == "DISABLED" and flag["defaultVariant"] == "control"
    assert flag["targeting"]["fractional"][1:] == [["treatment", 0], ["control", 100]]  # the share is 0 too
    assert "shows harm (1 of 2 confirmations)" in out and "RAMP ROLLBACK" in out
    assert [(r["action"], r["parts"]) for r in audit(tmp_path, "halt")] == [
        ("revert", {"share_zero": "done", "revert": "done"})
    ]
    assert [(r["action"], r["status"]) for r in audit(tmp_path, "ramp")][-1] == ("rollback", "done")
    assert "ramp: step 2 of 5 (5 %; 1%, 5%, 25%, 50%, 100%), 4 min on it, advance no_harm" in out


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    from guardrail.fakeapi import FakeAPI

    (tmp_path / "flags.yaml").write_text((ROOT / "examples" / "rollout" / "flags.yaml").read_text())
    before = (tmp_path / "flags.yaml").read_bytes()
    with FakeAPI(token=None) as fake:
        env = {**os.environ, "METRICS_API_URL": fake.url}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "guardrail",
                "check",
                "--dry-run",
                "--flags",
                str(tmp_path / "flags.yaml"),
                "--state",
                str(tmp_path / "state.json"),
                "--audit",
                str(tmp_path / "audit.jsonl"),
                "--now",
                "2026-12-01T09:00:00Z",
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    assert "RAMP WOULD START (dry run)" in done.stdout, done.stdout + done.stderr
    assert (tmp_path / "flags.yaml").read_bytes() == before
    assert not (tmp_path / "state.json").exists() and not (tmp_path / "audit.jsonl").exists()


def test_no_unit_counts_at_the_source_is_said_once_per_run_and_halts_nothing(tmp_path: Path) -> None:
    from guardrail.fakeapi import FakeAPI
    from tests.conftest import flag_definition

    flags = {f"team.svc.exp-{i}": flag_definition() for i in range(3)}
    (tmp_path / "flags.json").write_text(json.dumps({"flags": flags}))
    with FakeAPI(token=None) as fake:
        for key in flags:
            for arm in ("control", "treatment"):
                fake.set_metric(key, arm, "error_rate", 0.01, 5000)
        env = {**os.environ, "METRICS_API_URL": fake.url}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "guardrail",
                "check",
                "--json",
                "--flags",
                str(tmp_path / "flags.json"),
                "--state",
                str(tmp_path / "state.json"),
                "--audit",
                str(tmp_path / "audit.jsonl"),
                "--now",
                "2026-12-01T09:00:00Z",
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        body = json.loads(done.stdout)
        notes = [w for w in body["warnings"] if w.startswith("SRM gate")]
        assert len(notes) == 1 and "for 3 flag(s)" in notes[0] and "nothing halted" in notes[0]
        assert not body["halts"] and {r["verdict"] for r in body["srm"]} == {"no_data"}
        assert fake.count("PATCH", "/v1/flags") == 0
