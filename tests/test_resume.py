"""`guardrail resume`: refuses until the flag is restored, then clears the halt so the flag is watched again."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail import engine
from guardrail.config import parse_flags
from guardrail.fakeapi import FakeAPI
from guardrail.model import (
    Aggregate,
    ExitCode,
    FlagState,
    GuardrailError,
    HaltAction,
    HaltRecord,
    HaltStatus,
    State,
    Streak,
)
from guardrail.resume import run_resume_command
from guardrail.state import AuditLog, StateStore
from tests.conftest import NOW, TOKEN, flag_definition

KEY = "checkout.payments.express-pay"
GID = "error_rate@treatment"


def halted_state() -> State:
    halt = HaltRecord(
        status=HaltStatus.DONE,
        action=HaltAction.REVERT,
        reason="error_rate 3.4x control",
        decided_at=NOW - timedelta(minutes=30),
        metric="error_rate",
        treatment_variant="treatment",
        completed_at=NOW - timedelta(minutes=30),
        attempts=1,
        alert_delivered=True,
        run_id="run-1",
        alert={"flag": "prepared"},
    )
    return State(
        flags={
            KEY: FlagState(
                first_seen_enabled=NOW - timedelta(days=2),
                streaks={GID: Streak(2, NOW - timedelta(minutes=30))},
                halt=halt,
                tuning_n={GID: 12345.0},
                last_evaluations={GID: {"verdict": "breach", "streak": 2}},
            )
        },
        last_run_at=NOW - timedelta(minutes=2),
    )


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    store = StateStore(tmp_path / "state.json")
    store.save(halted_state())
    return {"flags": tmp_path / "flags.yaml", "state": store.path, "audit": tmp_path / "audit.jsonl", "dir": tmp_path}


def serve_file(paths: dict[str, Path], definition: dict[str, Any]) -> None:
    paths["flags"].write_text(yaml.safe_dump({"flags": {KEY: definition}}))


def resume(
    paths: dict[str, Path],
    *,
    key: str = KEY,
    reason: str = "fixed the NPE in express-pay; see INC-42",
    by: str | None = "alice",
    config: Path | None = None,
) -> int:
    return run_resume_command(
        key=key,
        reason=reason,
        by=by,
        flags=str(paths["flags"]),
        config=config,
        state=paths["state"],
        audit=paths["audit"],
        now=NOW,
    )


def test_resume_clears_halt_streaks_and_tuning_and_audits(
    paths: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    serve_file(paths, flag_definition(state="ENABLED"))
    assert resume(paths) == 0
    out = capsys.readouterr().out
    assert f"resumed {KEY}" in out and "watched again" in out

    after = StateStore(paths["state"]).load()
    assert after.flags[KEY] == FlagState()  # nothing that could make it halt on the next breach alone
    assert after.last_run_at == NOW - timedelta(minutes=2)  # resume is not a run: staleness still tells

    (line,) = AuditLog(paths["audit"]).read()
    assert set(line) == {"type", "flag", "reason", "by", "time", "previous_halt"}
    assert line["type"] == "resume" and line["flag"] == KEY and line["by"] == "alice"
    assert line["reason"] == "fixed the NPE in express-pay; see INC-42" and line["time"] == "2026-11-25T12:00:00Z"
    previous = line["previous_halt"]
    assert previous["run_id"] == "run-1" and previous["status"] == "done" and previous["reason"].startswith("error")
    assert "alert" not in previous


def test_after_resume_one_breach_does_not_halt(paths: dict[str, Path]) -> None:
    serve_file(paths, flag_definition())
    assert resume(paths) == 0
    state = StateStore(paths["state"]).load()
    (flag,) = parse_flags({KEY: flag_definition()}).flags
    bad = {
        (KEY, "control", "error_rate", "5m"): Aggregate(0.01, 5000),
        (KEY, "treatment", "error_rate", "5m"): Aggregate(0.034, 5000),
    }
    decision = engine.decide([flag], bad, state, NOW + timedelta(minutes=2))
    (evaluation,) = decision.evaluations
    assert evaluation.verdict.value == "breach" and evaluation.streak == 1
    assert decision.halts == ()


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (flag_definition(state="DISABLED"), "still DISABLED"),
        (flag_definition(extra_metadata={"guardrail_hold": True}), "still held"),
        (flag_definition(extra_metadata={"guardrail_hold": "true"}), "still held"),
    ],
)
def test_refuses_while_not_restored_at_the_source(
    paths: dict[str, Path], definition: dict[str, Any], message: str
) -> None:
    serve_file(paths, definition)
    before = paths["state"].read_bytes()
    with pytest.raises(GuardrailError, match=message) as info:
        resume(paths)
    assert info.value.exit_code == ExitCode.CONFIG and info.value.flag == KEY
    assert paths["state"].read_bytes() == before and not paths["audit"].exists()


def test_refuses_unknown_or_not_halted_flags(paths: dict[str, Path]) -> None:
    other = "search.ranking.new-model"
    paths["flags"].write_text(yaml.safe_dump({"flags": {KEY: flag_definition(), other: flag_definition()}}))
    with pytest.raises(GuardrailError, match="unknown in the state file") as info:
        resume(paths, key=other)
    assert info.value.exit_code == ExitCode.CONFIG
    StateStore(paths["state"]).save(State(flags={other: FlagState(streaks={GID: Streak(1, NOW)})}))
    with pytest.raises(GuardrailError, match="not halted"):
        resume(paths, key=other)
    with pytest.raises(GuardrailError, match="not in the flag definitions"):
        resume(paths, key="no.such.flag")
    assert not paths["audit"].exists()


def test_refuses_without_reason_or_flag_source(paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    serve_file(paths, flag_definition())
    with pytest.raises(GuardrailError, match="must say why"):
        resume(paths, reason="   ")
    monkeypatch.delenv("FLAG_API_URL", raising=False)
    with pytest.raises(GuardrailError, match="checks that the flag was restored"):
        run_resume_command(
            key=KEY, reason="x", by=None, flags=None, config=None, state=paths["state"], audit=paths["audit"]
        )


def test_unreachable_source_refuses_with_its_exit_code(paths: dict[str, Path]) -> None:
    with pytest.raises(GuardrailError, match="cannot confirm the flag was restored") as info:
        run_resume_command(
            key=KEY,
            reason="x",
            by=None,
            flags="http://127.0.0.1:9/v1/flags",
            config=None,
            state=paths["state"],
            audit=paths["audit"],
        )
    assert info.value.exit_code == ExitCode.UNEVALUATED


def test_waits_for_the_state_lock(paths: dict[str, Path]) -> None:
    serve_file(paths, flag_definition())
    config = paths["dir"] / "guardrail.yaml"
    config.write_text("lock_timeout: 0.2\n")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with StateStore(paths["state"]).locked():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        with pytest.raises(GuardrailError) as info:
            resume(paths, config=config)
        assert info.value.exit_code == ExitCode.LOCKED
    finally:
        release.set()
        holder.join()
    assert StateStore(paths["state"]).load().flags[KEY].halt is not None  # untouched


def test_by_defaults_to_the_user(paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    serve_file(paths, flag_definition())
    monkeypatch.setenv("USER", "bob")
    assert resume(paths, by=None) == 0
    assert AuditLog(paths["audit"]).read()[0]["by"] == "bob"


def test_notes_for_sequential_since_start(paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    serve_file(paths, flag_definition(extra_metadata={"guardrail.error_rate.method": "sequential"}))
    assert resume(paths) == 0
    assert "since-start aggregates" in capsys.readouterr().out


# ---- the whole story with the installed command ------------------------------------------------------------


def _run(run_cli: Any, *args: str, env: dict[str, str]) -> Any:
    result = run_cli(*args, env=env)
    assert "Traceback" not in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    return result


@pytest.mark.e2e
def test_halt_status_resume_and_watch_again(fake_api: FakeAPI, run_cli: Any, tmp_path: Path) -> None:
    fake_api.set_flags({KEY: flag_definition()})
    fake_api.set_metric(KEY, "control", "error_rate", 0.010, 5000)
    fake_api.set_metric(KEY, "treatment", "error_rate", 0.034, 5100)
    env = {
        "FLAG_API_URL": fake_api.url,
        "FLAG_API_TOKEN": TOKEN,
        "METRICS_API_URL": fake_api.url,
        "ALERT_WEBHOOK_URL": f"{fake_api.url}/webhook",
    }
    files = ["--state", str(tmp_path / "s.json"), "--audit", str(tmp_path / "a.jsonl")]
    clock = datetime.now(timezone.utc).replace(microsecond=0)

    def at(minutes_ago: int) -> str:
        return (clock - timedelta(minutes=minutes_ago)).isoformat()

    # Two cron runs two minutes apart halt the flag.
    assert _run(run_cli, "check", *files, "--now", at(4), env=env).returncode == 0
    assert _run(run_cli, "check", *files, "--now", at(2), env=env).returncode == 1
    assert fake_api.flag(KEY)["state"] == "DISABLED"

    status = _run(run_cli, "status", "--state", files[1], "--json", env=env)
    assert status.returncode == 0, status.stderr
    (flag,) = json.loads(status.stdout)["flags"]
    assert flag["halt"]["status"] == "done" and flag["halt"]["run_id"] and flag["watched"] is False
    assert flag["guardrails"][0]["streak"] == 2

    refused = _run(run_cli, "resume", KEY, "--reason", "fixed", *files, env=env)
    assert refused.returncode == 2
    assert "still DISABLED" in refused.stderr and "guardrail: error:" in refused.stderr

    # The team restores the flag at the source, then resumes.
    fake_api.set_flags({KEY: flag_definition()})
    done = _run(run_cli, "resume", KEY, "--reason", "fixed in v2.3.1", "--by", "carol", *files, env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    (line,) = [x for x in lines if x["type"] == "resume"]
    assert line["by"] == "carol" and line["reason"] == "fixed in v2.3.1" and line["previous_halt"]["status"] == "done"

    # Watched again: evaluated, one breach of two, not halted again at once.
    again = _run(run_cli, "check", *files, "--json", env=env)
    assert again.returncode == 0, again.stderr
    (evaluation,) = json.loads(again.stdout)["evaluations"]
    assert evaluation["flag"] == KEY and evaluation["verdict"] == "breach" and evaluation["streak"] == 1
    assert fake_api.flag(KEY)["state"] == "ENABLED"
    for path in tmp_path.iterdir():
        if path.is_file():
            assert TOKEN not in path.read_text() and "/webhook" not in path.read_text()
