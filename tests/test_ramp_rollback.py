"""A ramp's rollback takes the treatment's share to 0 AND reverts the flag to control, each verified by a
re-read: proven with the real flagd evaluator (even after a person re-enables the flag without touching
the weights) and with the flag API, including the two ways a rollback can be half done."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail import config, ramp_run
from guardrail.check import run_check
from guardrail.fakeapi import FakeAPI
from guardrail.model import ExitCode, FailureKind, Flag, HaltOutcome, HaltResultStatus, RampAction, RampResultStatus
from guardrail.settings import load_settings
from tests.conftest import NOW, TOKEN
from tests.conftest import rollout_definition as definition
from tests.fakeserver_faults import FaultyAPI

KEY = "checkout.payments.new-flow"
KEYS = [f"unit-{i}" for i in range(20_000)]


def metrics(
    api: FakeAPI, *, share: int = 5, treatment_rate: float = 0.03, units: tuple[int, int] | None = None
) -> None:
    """400,000 units at the step's share; the treatment fails `treatment_rate` of checkouts (control 1 %)."""
    nt = 400_000 * share // 100
    nc = 400_000 - nt
    api.set_metric(KEY, "control", "error_rate", 0.01, nc)
    api.set_metric(KEY, "treatment", "error_rate", treatment_rate, nt)
    uc, ut = units or (nc, nt)
    api.set_metric(KEY, "control", "exposures", float(uc), uc)
    api.set_metric(KEY, "treatment", "exposures", float(ut), ut)


def settings(tmp_path: Path, api: FakeAPI, **env: str) -> Any:
    return load_settings(
        env={"METRICS_API_URL": api.url, **env},
        overrides={"state_path": tmp_path / "state.json", "audit_path": tmp_path / "audit.jsonl", **_flags(tmp_path)},
    )


def _flags(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "flags.yaml"
    return {"flags": str(path)} if path.exists() else {}


def audit(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def treated(path: Path) -> int:
    """How many of 20,000 targeting keys the real flagd evaluator (in-process file resolver) serves the
    treatment from this flag file."""
    pytest.importorskip("openfeature")
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType
    from openfeature.evaluation_context import EvaluationContext

    try:
        api.shutdown()
        api.set_provider_and_wait(
            FlagdProvider(resolver_type=ResolverType.IN_PROCESS, offline_flag_source_path=str(path))
        )
        client = api.get_client()
        count = 0
        for k in KEYS:
            details = client.get_boolean_details(KEY, False, EvaluationContext(targeting_key=k))
            assert details.error_code is None, details.error_message
            count += bool(details.value)
        return count
    finally:
        api.shutdown()


def re_enabled_by_hand(path: Path) -> None:
    """What a person does to 'turn it back on': state ENABLED, nothing else touched."""
    text = path.read_text()
    assert text.count("state: DISABLED") == 1
    path.write_text(text.replace("state: DISABLED", "state: ENABLED"))


def test_flagd_file_rollback_takes_the_share_to_zero_so_re_enabling_serves_control(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump({"flags": {KEY: definition(5)}}, sort_keys=False))
    # The control of this test: a flag reverted as a halt alone reverts it (DISABLED, control default,
    # weights kept) and then re-enabled by a person serves the treatment to the step's share again.
    halt_only = tmp_path / "halt-only.yaml"
    halt_only.write_text(path.read_text().replace("state: ENABLED", "state: DISABLED"))
    re_enabled_by_hand(halt_only)
    assert abs(treated(halt_only) / len(KEYS) - 0.05) < 0.015

    with FakeAPI(token=None) as api:
        metrics(api)
        result = run_check(settings(tmp_path, api), now=NOW)
    assert result.exit_code is ExitCode.HALTED
    (halt,) = result.halts
    assert halt.status is HaltResultStatus.DONE and halt.parts == {"share_zero": "done", "revert": "done"}
    assert "split set to treatment 0%, control 100%" in halt.detail and "state DISABLED" in halt.detail
    (ramp,) = result.ramps
    assert ramp.action is RampAction.ROLLBACK and ramp.status is RampResultStatus.DONE
    flag = yaml.safe_load(path.read_text())["flags"][KEY]
    assert flag["state"] == "DISABLED" and flag["defaultVariant"] == "control"
    assert flag["targeting"]["fractional"][1:] == [["treatment", 0], ["control", 100]]
    (line,) = audit(tmp_path, "halt")
    assert line["status"] == "done" and line["parts"] == {"share_zero": "done", "revert": "done"}
    assert audit(tmp_path, "ramp")[-1]["shares"] == {"treatment": 0, "control": 100}

    assert treated(path) == 0  # disabled: the default, control, for everyone
    re_enabled_by_hand(path)
    assert treated(path) == 0  # back on without touching the weights: still 0 of 20,000 in the treatment


def test_srm_rollback_takes_the_share_to_zero_too(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump({"flags": {KEY: definition(50, **{"guardrail.srm.action": "rollback"})}}))
    with FakeAPI(token=None) as api:
        metrics(api, share=50, treatment_rate=0.01, units=(200_000, 180_000))  # the treatment lost 10 %
        first = run_check(settings(tmp_path, api), now=NOW)  # adopts the step the split is at
        assert [r.action for r in first.ramps] == [RampAction.ADOPT] and not first.halts
        result = run_check(settings(tmp_path, api), now=NOW + timedelta(minutes=2))
    (halt,) = result.halts
    assert halt.action == "revert" and halt.parts == {"share_zero": "done", "revert": "done"}, halt.detail
    assert halt.reason.startswith("exposures: ")  # the SRM gate's rollback, not a guardrail's
    flag = yaml.safe_load(path.read_text())["flags"][KEY]
    assert flag["state"] == "DISABLED" and flag["targeting"]["fractional"][1:] == [["treatment", 0], ["control", 100]]


def test_an_ab_experiment_halt_leaves_its_split_alone(tmp_path: Path) -> None:
    """Only a ramp's rollback changes weights: an A/B experiment is halted exactly as before."""
    defn = definition(50, experiment_type="ab", **{"guardrail.ramp.steps": None, "guardrail.ramp.step_minutes": None})
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump({"flags": {KEY: defn}}))
    with FakeAPI(token=None) as api:
        metrics(api, share=50)
        result = run_check(settings(tmp_path, api), now=NOW)
    (halt,) = result.halts
    assert halt.status is HaltResultStatus.DONE and halt.parts is None
    flag = yaml.safe_load(path.read_text())["flags"][KEY]
    assert flag["state"] == "DISABLED" and flag["targeting"]["fractional"][1:] == [["treatment", 50], ["control", 50]]


def api_env(api: FakeAPI) -> dict[str, str]:
    return {"FLAG_API_URL": api.url, "FLAG_API_TOKEN": TOKEN, "METRICS_API_URL": api.url}


def test_api_rollback_with_the_split_written_and_the_revert_refused_is_partial_then_finished(tmp_path: Path) -> None:
    with FaultyAPI(token=TOKEN, flags={KEY: definition(5)}) as api:
        metrics(api)
        # A non-atomic server drops `state` from the PATCH, and refuses the force-variant call: the revert fails.
        api.add_fault(route="patch", mode="ignore_field", field="state")
        api.add_fault(route="force", mode="status", status=403)
        s = settings(tmp_path, api, **api_env(api), ALERT_WEBHOOK_URL=f"{api.url}/webhook")
        result = run_check(s, now=NOW)
        assert result.exit_code is ExitCode.HALT_FAILED
        (page,) = [a["text"] for a in api.alerts]  # paged once, saying what is left to do by hand
        assert page.startswith(f":warning: ROLLBACK FAILED: `{KEY}` was NOT fully rolled back")
        assert "revert it to control BY HAND" in page and "rollback PARTIAL: treatment share 0" in page
        (halt,) = result.halts
        assert halt.status is HaltResultStatus.FAILED and halt.parts == {"share_zero": "done", "revert": "failed"}
        assert (
            halt.detail.startswith("rollback PARTIAL: treatment share 0") and "revert to control FAILED" in halt.detail
        )
        (ramp,) = result.ramps
        assert ramp.status is RampResultStatus.FAILED and "PARTIAL" in ramp.detail
        served = api.flag(KEY)
        assert served["state"] == "ENABLED"  # not reverted: only what the re-reads showed is claimed
        assert served["targeting"]["fractional"][1:] == [["treatment", 0], ["control", 100]]
        (line,) = audit(tmp_path, "halt")
        assert line["status"] == "failed" and line["parts"] == {"share_zero": "done", "revert": "failed"}

        api.clear_faults()  # the next run finishes it: the share is already 0, the revert is retried
        again = run_check(s, now=NOW + timedelta(minutes=2))
        (halt,) = again.halts
        assert halt.resumed and halt.status is HaltResultStatus.DONE, halt.detail
        assert halt.parts == {"share_zero": "done", "revert": "done"} and "split already" in halt.detail
        assert api.flag(KEY)["state"] == "DISABLED"
        assert api.alerts[-1]["text"].startswith(f":rotating_light: AUTO-ROLLBACK: `{KEY}` rolled back: treatment")


def test_api_rollback_with_the_revert_done_and_the_split_ignored_is_partial(tmp_path: Path) -> None:
    with FaultyAPI(token=TOKEN, flags={KEY: definition(5)}) as api:
        metrics(api)
        api.add_fault(route="patch", mode="ignore_field", field="targeting")  # answered 200, weights unchanged
        result = run_check(settings(tmp_path, api, **api_env(api)), now=NOW)
        assert result.exit_code is ExitCode.HALT_FAILED
        (halt,) = result.halts
        assert halt.parts == {"share_zero": "failed", "revert": "done"}
        assert halt.detail.startswith("rollback PARTIAL: reverted to control") and "share to 0 FAILED" in halt.detail
        served = api.flag(KEY)
        assert served["state"] == "DISABLED" and served["targeting"]["fractional"][1:] == [
            ["treatment", 5],
            ["control", 95],
        ]


class Scripted:
    """A backend whose two writes answer as scripted (for the combinations a real store rarely shows)."""

    name = "scripted"

    def __init__(self, split: HaltOutcome | Exception, revert: HaltOutcome | Exception) -> None:
        self.answers = {"set_split": split, "halt": revert}
        self.calls: list[tuple[str, Any]] = []

    async def _answer(self, what: str, arg: Any) -> HaltOutcome:
        self.calls.append((what, arg))
        answer = self.answers[what]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def set_split(self, flag: Flag, shares: Mapping[str, int], reason: str) -> HaltOutcome:
        return await self._answer("set_split", dict(shares))

    async def halt(self, flag: Flag, reason: str) -> HaltOutcome:
        return await self._answer("halt", (reason, flag.definition.get("seen")))

    async def get(self, key: str) -> Mapping[str, Any] | None:
        self.calls.append(("get", key))
        return {"seen": "after the split"}


def the_flag() -> Flag:
    return config.parse_flags({KEY: definition(25)}).flags[0]


DONE, ALREADY = HaltOutcome(True, "done"), HaltOutcome(True, "already", already=True)
REFUSED, BUSY = (
    HaltOutcome(False, "refused", kind=FailureKind.AUTH),
    HaltOutcome(False, "busy", kind=FailureKind.CONFLICT),
)
DOWN = HaltOutcome(False, "down", kind=FailureKind.UNREACHABLE)


@pytest.mark.parametrize(
    ("split", "revert", "ok", "parts", "kind", "starts"),
    [
        (ALREADY, ALREADY, True, ("done", "done"), None, "treatment share 0: already"),
        (DONE, REFUSED, False, ("done", "failed"), FailureKind.AUTH, "rollback PARTIAL: treatment share 0"),
        (BUSY, DONE, False, ("failed", "done"), FailureKind.CONFLICT, "rollback PARTIAL: reverted to control"),
        (RuntimeError("bug"), DOWN, False, ("failed", "failed"), FailureKind.UNREACHABLE, "rollback FAILED"),
    ],
)
def test_rollback_outcome_says_which_write_happened(
    split: Any, revert: Any, ok: bool, parts: tuple[str, str], kind: FailureKind | None, starts: str
) -> None:
    backend = Scripted(split, revert)
    outcome = asyncio.run(ramp_run.rollback(backend, the_flag(), "harm"))  # type: ignore[arg-type]
    assert outcome.ok is ok and outcome.kind is kind and outcome.detail.startswith(starts), outcome.detail
    assert outcome.parts == {"share_zero": parts[0], "revert": parts[1]}
    assert outcome.already is (split is ALREADY)
    # Both writes are always tried, the split first (a forced revert may drop the targeting it needs); a
    # split just written is re-read, and the revert works from that definition (git refuses a stale one).
    wrote = split is DONE
    assert backend.calls == [
        ("set_split", {"treatment": 0, "control": 100}),
        *([("get", KEY)] if wrote else []),
        ("halt", ("harm", "after the split" if wrote else None)),
    ]


def test_a_dry_run_rollback_says_both_writes_and_makes_neither(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump({"flags": {KEY: definition(5)}}))
    before = path.read_bytes()
    with FakeAPI(token=None) as api:
        metrics(api)
        result = run_check(settings(tmp_path, api), now=NOW, dry_run=True)
    (halt,) = result.halts
    assert halt.status is HaltResultStatus.WOULD_HALT
    assert "would set the treatment's share to 0 and revert to control" in halt.detail
    assert path.read_bytes() == before and not (tmp_path / "audit.jsonl").exists()


def test_after_a_rollback_and_resume_the_ramp_starts_again_at_step_1(tmp_path: Path) -> None:
    """The path back: a person fixes the release, switches the flag on (its share is 0: nobody gets the
    treatment), runs `guardrail resume`; the next run starts the ramp at step 1."""
    from guardrail.resume import run_resume_command

    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump({"flags": {KEY: definition(5)}}, sort_keys=False))
    with FakeAPI(token=None) as api:
        metrics(api)
        s = settings(tmp_path, api)
        assert run_check(s, now=NOW).exit_code is ExitCode.HALTED
        re_enabled_by_hand(path)
        loud = run_check(s, now=NOW + timedelta(minutes=2))  # on again without resume: said every run
        assert loud.exit_code is ExitCode.CONFIG and "guardrail resume" in loud.problems[0].message
        code = run_resume_command(
            key=KEY,
            reason="fixed the retry storm",
            by="tester",
            flags=str(path),
            config=None,
            state=tmp_path / "state.json",
            audit=tmp_path / "audit.jsonl",
            now=NOW + timedelta(minutes=3),
        )
        assert code == 0
        metrics(api, share=1, treatment_rate=0.01)
        again = run_check(s, now=NOW + timedelta(minutes=4))
    (ramp,) = again.ramps
    assert ramp.action is RampAction.START and ramp.status is RampResultStatus.DONE and ramp.step == 1
    assert yaml.safe_load(path.read_text())["flags"][KEY]["targeting"]["fractional"][1:] == [
        ["treatment", 1],
        ["control", 99],
    ]


def test_on_breach_hold_keeps_the_share(tmp_path: Path) -> None:
    """`guardrail.ramp.on_breach: hold` is a hold, not a rollback: the weights stay at the step."""
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump({"flags": {KEY: definition(5, **{"guardrail.ramp.on_breach": "hold"})}}))
    with FakeAPI(token=None) as api:
        metrics(api)
        result = run_check(settings(tmp_path, api), now=NOW)
    (halt,) = result.halts
    assert halt.action == "hold" and halt.status is HaltResultStatus.DONE and halt.parts is None
    flag = yaml.safe_load(path.read_text())["flags"][KEY]
    assert flag["state"] == "ENABLED" and flag["targeting"]["fractional"][1:] == [["treatment", 5], ["control", 95]]
    (ramp,) = audit(tmp_path, "ramp")
    assert ramp["action"] == "hold" and ramp["shares"] == {} and ramp["status"] == "decided"
