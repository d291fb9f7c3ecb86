"""State follows the world: halted keys that come back, a clock that was far ahead, hand-edited state,
and the state file wherever and however the user placed it."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from guardrail import engine
from guardrail.config import parse_flags
from guardrail.fakeapi import FakeAPI
from guardrail.model import Aggregate, FlagState, State, Streak, Verdict
from guardrail.state import StateStore
from tests.conftest import NOW, flag_definition
from tests.reliability.conftest import BAD, Runner, api_env, breaching, doc


def _halt_then(api: FakeAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    first = runner.check(env=api_env(api), now="2026-11-25T12:00:00Z")
    assert first.returncode == 1 and api.flag(BAD)["state"] == "DISABLED"


def test_a_halted_key_back_as_a_new_experiment_is_watched(api: FakeAPI, runner: Runner) -> None:
    _halt_then(api, runner)
    fresh = flag_definition(extra_metadata={"guardrail.error_rate.confirmations": 1})
    fresh["metadata"]["started_at"] = "2026-11-26T09:00:00Z"
    api.set_flags({BAD: fresh})
    result = runner.check(env=api_env(api), now="2026-11-26T12:00:00Z")
    assert result.returncode == 1, result.stdout  # still harmful: halted again, as a new experiment
    assert [h["flag"] for h in doc(result)["halts"]] == [BAD]
    audit = [json.loads(x) for x in (runner.workdir / "audit.jsonl").read_text().splitlines()]
    assert any(r["type"] == "halt_cleared" and r["flag"] == BAD for r in audit)


def test_a_halted_key_turned_back_on_by_a_person_is_loud(api: FakeAPI, runner: Runner) -> None:
    _halt_then(api, runner)
    api.set_flags(
        {
            BAD: {
                **api.flag(BAD),
                "state": "ENABLED",
                "defaultVariant": "control",
                "targeting": flag_definition()["targeting"],
            }
        }
    )
    for minute in ("02", "04"):
        result = runner.check(env=api_env(api), now=f"2026-11-25T12:{minute}:00Z")
        assert result.returncode == 2, result.stdout  # every run, not once
        (problem,) = doc(result)["problems"]
        assert problem["flag"] == BAD and "guardrail resume" in problem["message"]
    assert api.count("PATCH", "/v1/flags") == 1  # not fought over: the person decides


def test_a_rollout_whose_hold_marker_was_removed_is_loud(api: FakeAPI, runner: Runner) -> None:
    breaching(api, confirmations=1, experiment_type="rollout")
    assert runner.check(env=api_env(api), now="2026-11-25T12:00:00Z").returncode == 1
    flag = api.flag(BAD)
    flag["metadata"].pop("guardrail_hold")
    api.set_flags({BAD: flag})
    result = runner.check(env=api_env(api), now="2026-11-25T12:02:00Z")
    assert result.returncode == 2 and "hold marker was removed" in doc(result)["problems"][0]["message"]


def _flag_and_aggs(treatment: float) -> tuple[Any, dict[Any, Aggregate]]:
    (flag,) = parse_flags({"f.k": flag_definition(extra_metadata={"warmup_minutes": 30})}).flags
    aggs = {
        ("f.k", "control", "error_rate", "5m"): Aggregate(value=0.01, count=5000),
        ("f.k", "treatment", "error_rate", "5m"): Aggregate(value=treatment, count=5000),
    }
    return flag, aggs


def test_a_breach_recorded_by_a_clock_far_ahead_does_not_freeze_the_streak() -> None:
    flag, aggs = _flag_and_aggs(0.05)
    future = NOW + timedelta(days=365)
    state = State(
        flags={
            "f.k": FlagState(
                first_seen_enabled=NOW - timedelta(days=1), streaks={"error_rate@treatment": Streak(1, future)}
            )
        }
    )
    first = engine.decide([flag], aggs, state, NOW)
    second = engine.decide([flag], aggs, first.state, NOW + timedelta(minutes=2))
    assert [e.streak for e in second.evaluations] == [2] and second.halts


def test_a_first_seen_time_far_ahead_does_not_hold_the_flag_in_warmup() -> None:
    (flag,) = parse_flags(
        {
            "f.k": {
                **flag_definition(extra_metadata={"warmup_minutes": 30}),
                "metadata": {**flag_definition()["metadata"], "warmup_minutes": 30},
            }
        }
    ).flags
    flag = dataclasses.replace(flag, started_at=None)
    _f, aggs = _flag_and_aggs(0.05)
    state = State(flags={"f.k": FlagState(first_seen_enabled=NOW + timedelta(days=365))})
    later = engine.decide([flag], aggs, engine.decide([flag], aggs, state, NOW).state, NOW + timedelta(hours=1))
    assert [e.verdict for e in later.evaluations] == [Verdict.BREACH]


def test_status_is_stale_when_the_last_run_is_far_in_the_future(runner: Runner) -> None:
    state = runner.workdir / "state.json"
    state.write_text(json.dumps({"version": 1, "last_run_at": "2030-01-01T00:00:00+00:00", "flags": {}}))
    result = runner("status", "--state", str(state), env={})
    assert result.returncode == 3 and "future" in result.stdout + result.stderr


WRONG_TYPES: list[Any] = [
    {"flags": {"a": {"streaks": {"m@t": {"count": "2"}}}}},
    {"flags": {"a": {"streaks": {"m@t": {"count": -1}}}}},
    {"flags": {"a": {"streaks": {"m@t": {"count": 1, "last_breach_at": 1732536000}}}}},
    {"flags": {"a": {"streaks": ["m@t"]}}},
    {"flags": {"a": {"tuning_n": {"m@t": "nan"}}}},
    {"flags": {"a": {"tuning_n": {"m@t": -4}}}},
    {"flags": {"a": {"halt": "yes"}}},
    {
        "flags": {
            "a": {
                "halt": {
                    "status": "finished",
                    "action": "revert",
                    "reason": "r",
                    "decided_at": "2026-11-25T12:00:00+00:00",
                }
            }
        }
    },
    {
        "flags": {
            "a": {
                "halt": {
                    "status": "done",
                    "action": "revert",
                    "reason": "r",
                    "alert_payload": "x",
                    "decided_at": "2026-11-25T12:00:00+00:00",
                }
            }
        }
    },
    {"flags": {"a": {"last_evaluations": {"m@t": 3}}}},
    {"flags": []},
    {"flags": {"a": 7}},
]


@pytest.mark.parametrize("body", WRONG_TYPES, ids=range(len(WRONG_TYPES)))
def test_hand_edited_state_with_wrong_types_is_set_aside(tmp_path: Path, body: dict[str, Any]) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, **body}))
    store = StateStore(path)
    assert store.load() == State()
    assert store.warning and "kept it as" in store.warning
    assert list(tmp_path.glob("state.json.corrupt-*"))


def test_a_naive_time_in_hand_edited_state_is_taken_as_utc(tmp_path: Path) -> None:
    """Not a crash on every run comparing naive and aware times."""
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "flags": {
                    "f.k": {
                        "first_seen_enabled": "2026-11-20T09:00:00",
                        "streaks": {"error_rate@treatment": {"count": 1, "last_breach_at": "2026-11-25T11:58:00"}},
                    }
                },
            }
        )
    )
    state = StateStore(path).load()
    flag, aggs = _flag_and_aggs(0.05)
    decision = engine.decide([flag], aggs, state, NOW)
    assert [e.streak for e in decision.evaluations] == [2]


def test_hand_edited_state_with_wrong_types_does_not_stop_check(api: FakeAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    (runner.workdir / "state.json").write_text(
        json.dumps({"version": 1, "flags": {BAD: {"streaks": {"error_rate@treatment": {"count": "lots"}}}}})
    )
    result = runner.check(env=api_env(api), now="2026-11-25T12:00:00Z")
    assert result.returncode == 1 and any("kept it as" in w for w in doc(result)["warnings"])


def test_a_symlinked_state_file_stays_a_symlink_through_a_run(api: FakeAPI, runner: Runner) -> None:
    breaching(api, confirmations=2)
    volume = runner.workdir / "volume"
    volume.mkdir()
    target = volume / "real-state.json"
    target.write_text(json.dumps({"version": 1, "flags": {}}))
    os.chmod(target, 0o640)
    (runner.workdir / "state.json").symlink_to(target)
    result = runner.check(env=api_env(api), now="2026-11-25T12:00:00Z")
    assert result.returncode == 0, result.stderr
    assert (runner.workdir / "state.json").is_symlink()
    assert BAD in json.loads(target.read_text())["flags"]
    assert target.stat().st_mode & 0o777 == 0o640
