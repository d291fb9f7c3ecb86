"""State file and audit log: round trip, atomicity, locking, corruption kept aside, file modes."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from guardrail.model import (
    ExitCode,
    FlagState,
    GuardrailError,
    HaltAction,
    HaltRecord,
    HaltStatus,
    SeqState,
    State,
    Streak,
)
from guardrail.state import STATE_VERSION, AuditLog, StateStore, from_dict, to_dict
from tests.conftest import NOW


def sample_state() -> State:
    record = HaltRecord(
        HaltStatus.PENDING, HaltAction.REVERT, "why", NOW, "error_rate", "treatment", alert={"flag": "x"}, run_id="abc"
    )
    return State(
        flags={
            "a.b.c": FlagState(
                first_seen_enabled=NOW - timedelta(hours=1),
                streaks={"error_rate@treatment": Streak(2, NOW)},
                halt=record,
                tuning_n={"error_rate@treatment": 12345.0},
                last_evaluations={"error_rate@treatment": {"verdict": "breach"}},
            )
        },
        last_run_at=NOW,
    )


def test_round_trip() -> None:
    state = sample_state()
    doc = to_dict(state)
    assert doc["version"] == STATE_VERSION
    assert from_dict(json.loads(json.dumps(doc))) == state


def test_save_load_and_mode(tmp_path: Path) -> None:
    old = os.umask(0o000)  # even with a permissive umask the file is private
    try:
        store = StateStore(tmp_path / "deep" / "state.json")
        store.save(sample_state())
    finally:
        os.umask(old)
    assert store.load() == sample_state()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_file_is_empty_state(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "none.json").load() == State()


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": "x", "flags": {}}', b"\xff\xfe", b""])
def test_corrupt_state_is_kept_aside_and_reported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    store = StateStore(path)
    assert store.load() == State()
    assert store.warning is not None and "kept it as" in store.warning
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == content


def test_lock_times_out_with_exit_5(tmp_path: Path) -> None:
    first = StateStore(tmp_path / "s.json", lock_timeout=5)
    second = StateStore(tmp_path / "s.json", lock_timeout=0.2)
    with first.locked(), pytest.raises(GuardrailError) as info, second.locked():
        pass
    assert info.value.exit_code is ExitCode.LOCKED
    assert "another guardrail run holds the state lock" in str(info.value)


def test_second_run_waits_for_the_first(tmp_path: Path) -> None:
    order: list[str] = []
    first = StateStore(tmp_path / "s.json")

    held = threading.Event()

    def hold() -> None:
        with first.locked():
            order.append("first in")
            held.set()
            time.sleep(0.3)  # the order below holds however long this takes: the lock decides it
            order.append("first out")

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(60)
    with StateStore(tmp_path / "s.json", lock_timeout=60).locked():
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_audit_appends_whole_lines_with_private_mode(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append([{"a": 1}, {"b": 2}])
    log.append([{"c": 3}])
    assert log.read() == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600


def test_state_from_a_newer_guardrail_is_refused_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 99, "flags": {}}')
    with pytest.raises(GuardrailError, match="newer than this guardrail"):
        StateStore(path).load()
    assert path.exists()


def test_state_with_an_infinite_delta_saves(tmp_path: Path) -> None:
    from guardrail import engine
    from guardrail.config import parse_flags
    from guardrail.model import Aggregate
    from tests.conftest import flag_definition

    flag = parse_flags({"f.k": flag_definition()}).flags[0]
    data = {
        ("f.k", "control", "error_rate", "5m"): Aggregate(0.0, 500),
        ("f.k", "treatment", "error_rate", "5m"): Aggregate(0.01, 500),
    }
    decision = engine.decide([flag], data, State(), NOW)
    store = StateStore(tmp_path / "s.json")
    store.save(decision.state)
    assert store.load().flags["f.k"].last_evaluations["error_rate@treatment"]["delta"] == "inf"


def test_version_1_state_upgrades_to_version_2(tmp_path: Path) -> None:
    """A state file written before the window-stratified test: streaks, halts and first-seen survive, the
    sequential tests start at the next look, and the next save writes version 2."""
    v1 = {
        "version": 1,
        "last_run_at": "2026-11-25T12:00:00+00:00",
        "flags": {
            "a": {
                "first_seen_enabled": "2026-11-20T09:00:00+00:00",
                "streaks": {"error_rate@treatment": {"count": 1, "last_breach_at": "2026-11-25T12:00:00+00:00"}},
                "halt": None,
                "tuning_n": {"error_rate@treatment": 30000.0},
                "last_evaluations": {},
            }
        },
    }
    path = tmp_path / "state.json"
    path.write_text(json.dumps(v1))
    store = StateStore(path)
    state = store.load()
    fs = state.flags["a"]
    assert fs.streaks["error_rate@treatment"].count == 1 and fs.first_seen_enabled is not None
    assert fs.sequential == {} and fs.last_look_at is None and fs.tuning_n == {"error_rate@treatment": 30000.0}
    store.save(state)
    assert json.loads(path.read_text())["version"] == STATE_VERSION == 2


def test_sequential_state_round_trips(tmp_path: Path) -> None:
    seq = SeqState(
        last_control=(1000.0, 10.0, 10.0),
        last_treatment=(990.0, 12.0, 12.0),
        s=1.5,
        v=2.25,
        w=497.5,
        windows=3,
        r2=2.5,
        v_per_unit=0.001,
        minutes_per_unit=0.001,
        restarts=((1, 0.5, 1.0),),
        last_at_minutes=6.0,
    )
    state = State(
        flags={
            "a": FlagState(
                sequential={"error_rate@treatment": seq}, last_look_at=datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
            )
        }
    )
    store = StateStore(tmp_path / "state.json")
    store.save(state)
    assert store.load() == state
