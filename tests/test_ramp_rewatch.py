"""A shipped rollout is watched again when the world says a new rollout began (guardrail/world.py): a new
`started_at`, another schedule, or the split moved back to a step by a person. A split moved to a share
that is no step is loud every run; 0 % is quiet. Real runs against a flagd file and the fake metrics API."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from guardrail.check import run_check
from guardrail.fakeapi import FakeAPI
from guardrail.model import ExitCode, RampAction, RampResultStatus, Severity
from guardrail.settings import load_settings
from tests.conftest import rollout_definition as definition

KEY = "checkout.payments.new-flow"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


class Release:
    """A flag file, its state and audit log, and the fake metrics API answering for the flag's split."""

    def __init__(self, tmp_path: Path, api: FakeAPI) -> None:
        self.dir, self.api = tmp_path, api
        self.path = tmp_path / "flags.yaml"

    def write(self, defn: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump({"flags": {KEY: defn}}, sort_keys=False))

    def edit(self, **changes: Any) -> None:
        doc = yaml.safe_load(self.path.read_text())
        flag = doc["flags"][KEY]
        if "share" in changes:
            s = changes.pop("share")
            flag["targeting"]["fractional"][1:] = [["treatment", s], ["control", 100 - s]]
        flag["metadata"].update(changes)
        self.path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def weights(self) -> list[Any]:
        return list(yaml.safe_load(self.path.read_text())["flags"][KEY]["targeting"]["fractional"][1:])

    def run(self, at: datetime, *, treatment_rate: float = 0.01) -> Any:
        share = self.weights()[0][1]
        nt = 400_000 * share // 100
        self.api.set_metric(KEY, "control", "error_rate", 0.01, 400_000 - nt)
        self.api.set_metric(KEY, "treatment", "error_rate", treatment_rate, nt)
        s = load_settings(
            env={"METRICS_API_URL": self.api.url},
            overrides={"flags": str(self.path), "state_path": self.dir / "s.json", "audit_path": self.dir / "a.jsonl"},
        )
        return run_check(s, now=at)

    def audit(self, kind: str) -> list[dict[str, Any]]:
        lines = (self.dir / "a.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["type"] == kind]


def shipped(tmp_path: Path, api: FakeAPI) -> Release:
    """A rollout at its last step, shipped by its first run, then left alone by the next."""
    r = Release(tmp_path, api)
    r.write(definition(100))
    first = r.run(T0)
    assert [(d.action, d.status) for d in first.ramps] == [(RampAction.SHIP, RampResultStatus.DECIDED)]
    second = r.run(T0 + timedelta(minutes=2))
    assert not second.ramps and "no longer watched" in second.skipped_flags[KEY]
    return r


def test_a_new_started_at_after_the_ship_starts_a_new_rollout_at_step_1(tmp_path: Path) -> None:
    with FakeAPI(token=None) as api:
        r = shipped(tmp_path, api)
        r.edit(started_at="2026-12-02T08:00:00Z")
        again = r.run(datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc))
        assert again.exit_code is ExitCode.OK
        (ramp,) = again.ramps
        assert ramp.action is RampAction.START and ramp.status is RampResultStatus.DONE and ramp.step == 1
        assert r.weights() == [["treatment", 1], ["control", 99]]
        (note,) = r.audit("ramp_restarted")
        assert note["reason"].startswith("new rollout: started_at 2026-12-02T08:00:00+00:00 is after the ship")
        assert note["previous_ramp"] == {
            "step": 5,
            "steps": [1, 5, 25, 50, 100],
            "shipped_at": "2026-12-01T09:00:00+00:00",
        }

        # Watched, not just rewritten: 31 minutes later a healthy step advances, a harmful one rolls back.
        advanced = r.run(datetime(2026, 12, 2, 8, 31, tzinfo=timezone.utc))
        assert [d.action for d in advanced.ramps] == [RampAction.ADVANCE] and r.weights()[0] == ["treatment", 5]
        harmed = r.run(datetime(2026, 12, 2, 8, 33, tzinfo=timezone.utc), treatment_rate=0.03)
        assert [d.action for d in harmed.ramps] == [RampAction.ROLLBACK] and harmed.exit_code is ExitCode.HALTED
        assert r.weights()[0] == ["treatment", 0]


def test_another_schedule_after_the_ship_is_a_new_rollout(tmp_path: Path) -> None:
    with FakeAPI(token=None) as api:
        r = shipped(tmp_path, api)
        r.edit(**{"guardrail.ramp.steps": "10,50,100"})
        (ramp,) = r.run(T0 + timedelta(hours=1)).ramps
        assert ramp.action is RampAction.START and r.weights()[0] == ["treatment", 10]
        (note,) = r.audit("ramp_restarted")
        assert "steps changed from 1,5,25,50,100 to 10,50,100" in note["reason"]


def test_a_person_moving_the_split_back_to_a_step_re_ramps_from_there(tmp_path: Path) -> None:
    with FakeAPI(token=None) as api:
        r = shipped(tmp_path, api)
        r.edit(share=25)
        (ramp,) = r.run(T0 + timedelta(hours=1)).ramps
        assert ramp.action is RampAction.ADOPT and ramp.step == 3 and r.weights()[0] == ["treatment", 25]
        assert "re-ramped by hand: the split is back at step 3 (25 %)" in r.audit("ramp_restarted")[0]["reason"]
        harmed = r.run(T0 + timedelta(hours=1, minutes=2), treatment_rate=0.03)  # watched on the step
        assert [d.action for d in harmed.ramps] == [RampAction.ROLLBACK] and r.weights()[0] == ["treatment", 0]


def test_a_shipped_split_moved_to_no_step_is_loud_and_zero_is_quiet(tmp_path: Path) -> None:
    with FakeAPI(token=None) as api:
        r = shipped(tmp_path, api)
        r.edit(share=37)
        for minutes in (60, 62):  # every run, not once
            result = r.run(T0 + timedelta(minutes=minutes))
            assert result.exit_code is ExitCode.CONFIG and not result.ramps
            (problem,) = result.problems
            assert problem.flag == KEY and problem.field == "targeting" and problem.severity is Severity.ERROR
            assert "treatment 37 %, which is no ramp step (1,5,25,50,100): it is NOT watched" in problem.message
        r.edit(share=0)  # a person took it back to nobody: nothing is exposed, nothing to say
        quiet = r.run(T0 + timedelta(minutes=64))
        assert quiet.exit_code is ExitCode.OK and not quiet.problems and not quiet.ramps
        r.edit(share=5)  # and back on a step: watched from there
        (ramp,) = r.run(T0 + timedelta(minutes=66)).ramps
        assert ramp.action is RampAction.ADOPT and ramp.step == 2


def test_another_schedule_while_ramping_adopts_the_split_in_the_new_schedule(tmp_path: Path) -> None:
    with FakeAPI(token=None) as api:
        r = Release(tmp_path, api)
        r.write(definition(50))
        assert [d.action for d in r.run(T0).ramps] == [RampAction.ADOPT]  # step 4 of 5
        r.edit(**{"guardrail.ramp.steps": "50,100"})  # step 4 no longer exists
        (ramp,) = r.run(T0 + timedelta(minutes=2)).ramps
        assert ramp.action is RampAction.ADOPT and ramp.step == 1 and ramp.share == 50
        (advance,) = r.run(T0 + timedelta(minutes=33)).ramps
        assert advance.action is RampAction.SHIP and r.weights()[0] == ["treatment", 100]
