"""State file and audit log: round trip, atomicity, locking, corruption kept aside, file modes."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from guardrail.model import ExitCode, FlagState, GuardrailError, HaltAction, HaltRecord, HaltStatus, State, Streak
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
