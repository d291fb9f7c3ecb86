"""A halt, hold or force counts only when a re-read shows its effect: never because a write answered 200,
and never because a field already had the value before the write."""

from __future__ import annotations

import json

from tests.fakeserver_faults import FaultyAPI
from tests.reliability.conftest import BAD, Runner, api_env, breaching, doc


def test_a_lying_api_is_a_failed_halt_not_halted(api: FaultyAPI, runner: Runner) -> None:
    """PATCH and force both answer 200 with the intended definition; nothing changes on the server."""
    breaching(api, confirmations=1)
    api.add_fault(route="patch", mode="pretend")
    api.add_fault(route="force", mode="pretend")
    first = runner.check(env=api_env(api), now="2026-11-25T12:00:00Z")
    assert api.flag(BAD)["state"] == "ENABLED"
    assert first.returncode == 4, first.stdout
    (halt,) = doc(first)["halts"]
    assert halt["status"] == "failed"
    assert "HALT FAILED" in api.alerts[0]["text"]
    # ... and the flag is looked at again: the next run tries again and, once the API works, halts it.
    api.clear_faults()
    second = runner.check(env=api_env(api), now="2026-11-25T12:02:00Z")
    assert second.returncode == 1 and api.flag(BAD)["state"] == "DISABLED"


def test_force_is_not_verified_by_a_default_variant_that_was_already_control(api: FaultyAPI, runner: Runner) -> None:
    """The fixture's defaultVariant is already `control`: PATCH ignored, force ignored, the split still
    serves treatment. Seeing defaultVariant == control on the re-read proves nothing."""
    breaching(api, confirmations=1)
    api.add_fault(route="patch", mode="ignore_field", field="state")
    api.add_fault(route="force", mode="pretend")
    result = runner.check(env=api_env(api), now="2026-11-25T12:00:00Z")
    assert result.returncode == 4, result.stdout
    assert doc(result)["halts"][0]["status"] == "failed"


def test_a_hold_answered_but_not_applied_is_failed(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1, experiment_type="rollout")
    api.add_fault(route="patch", mode="pretend")
    result = runner.check(env=api_env(api), now="2026-11-25T12:00:00Z")
    assert "guardrail_hold" not in (api.flag(BAD).get("metadata") or {})
    assert result.returncode == 4, result.stdout
    assert doc(result)["halts"][0]["status"] == "failed"


def test_a_patch_whose_answer_says_halted_but_the_reread_does_not_is_forced(api: FaultyAPI, runner: Runner) -> None:
    """Only the re-read counts: the PATCH answer claims the halt, the flag is unchanged, so the tool takes
    the force path and verifies that the flag now serves control to everyone."""
    breaching(api, confirmations=1)
    api.add_fault(route="patch", mode="pretend")
    result = runner.check(env=api_env(api), now="2026-11-25T12:00:00Z")
    assert result.returncode == 1, result.stdout
    flag = api.flag(BAD)
    assert flag["defaultVariant"] == "control" and "targeting" not in flag
    assert "forced" in doc(result)["halts"][0]["detail"]


def test_already_halted_by_a_person_is_reported_as_already(api: FaultyAPI, runner: Runner) -> None:
    """The list (a cache) still shows ENABLED; the per-flag read shows it halted: no PATCH, `already`."""
    breaching(api, confirmations=1)
    halted = {**api.flag(BAD), "state": "DISABLED"}
    listed = api.flag(BAD)
    # The definitions come from a file that still says ENABLED; the flag API says DISABLED.
    api.set_flags({BAD: halted, "search.ranking.new-model": api.flag("search.ranking.new-model")})
    flags_file = runner.workdir / "flags.json"
    flags_file.write_text(json.dumps({"flags": {BAD: listed}}))
    result = runner.check("--flags", str(flags_file), env=api_env(api), now="2026-11-25T12:00:00Z")
    assert result.returncode == 1, result.stdout + result.stderr
    (halt,) = doc(result)["halts"]
    assert halt["status"] == "done" and "already" in halt["detail"]
    assert api.count("PATCH", "/v1/flags") == 0
