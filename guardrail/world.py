"""State follows the world: what a halt recorded in the state file means when the flag has moved on.

A halted flag is not watched again until `guardrail resume`. Two things can happen to it meanwhile, and
silence (exit 0 forever) is right for neither:

- it comes back as a NEW experiment: its `started_at` is later than the halt. The old halt, streaks and
  first-seen time belong to the old experiment; they are cleared (with an audit record) and the new
  experiment is watched from its start, as LaunchDarkly and GrowthBook start a new guarded rollout.
- a person turned it back on (ENABLED again, or the hold marker removed) without `guardrail resume`:
  it is NOT watched automatically (the person may know why), but every run says so as an error naming
  the flag and the command (exit 2), until it is resumed or disabled again.

A shipped ramp is not watched either, until the world says a new rollout began (`_ramp_world`): then it
is watched again from its first step, as a halted key with a new `started_at` is.

Pure: flags and state in, new state, problems and audit records out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from guardrail import rollout
from guardrail.model import Flag, FlagProblem, FlagState, HaltAction, HaltStatus, RampState, State


@dataclass(frozen=True)
class Reconciled:
    state: State
    problems: tuple[FlagProblem, ...] = ()
    audit: tuple[dict[str, Any], ...] = ()


def reconcile(flags: Iterable[Flag], state: State, *, now: datetime, run_id: str) -> Reconciled:
    next_flags = dict(state.flags)
    problems: list[FlagProblem] = []
    audit: list[dict[str, Any]] = []
    for flag in flags:
        prior = state.flags.get(flag.key)
        record = None if prior is None else prior.halt
        if prior is not None and record is None and prior.ramp is not None and rollout.ramped(flag):
            seen = _ramp_world(flag, prior, now=now, run_id=run_id)
            if seen is not None:
                fs, note, problem = seen
                next_flags[flag.key] = fs
                audit.extend([note] if note is not None else [])
                problems.extend([problem] if problem is not None else [])
            continue
        if prior is None or record is None:
            continue
        if flag.started_at is not None and flag.started_at > record.decided_at:
            next_flags[flag.key] = FlagState()
            audit.append(
                {
                    "time": now.isoformat(),
                    "run_id": run_id,
                    "dry_run": False,
                    "type": "halt_cleared",
                    "flag": flag.key,
                    "reason": f"new experiment: started_at {flag.started_at.isoformat()} is after "
                    f"the halt decided at {record.decided_at.isoformat()}; the new experiment is watched",
                    "previous_halt": {"status": record.status, "reason": record.reason},
                }
            )
            continue
        if record.status is not HaltStatus.DONE:
            continue  # pending or failed: the run finishes it (an enabled flag is exactly why)
        if _back_on(flag, record.action, record.control_variant):
            what = "the hold marker was removed" if record.action is HaltAction.HOLD else "it is ENABLED again"
            problems.append(
                FlagProblem(
                    flag.key,
                    f"halted by guardrail at {record.decided_at.isoformat()}, but {what} at the source without "
                    f"`guardrail resume`: its guardrails are NOT watched. Run `guardrail resume {flag.key} --reason "
                    "...` to watch it again, or halt it again by hand",
                    source=flag.source,
                )
            )
    return Reconciled(replace(state, flags=next_flags), tuple(problems), tuple(audit))


def _back_on(flag: Flag, action: HaltAction, control: str) -> bool:
    """Serving the treatment again: a hold whose marker is gone, or a reverted flag that is ENABLED with a
    non-control default or a targeting split (a forced halt leaves it ENABLED, control, no targeting)."""
    if not flag.enabled:
        return False
    if action is HaltAction.HOLD:
        return not flag.held
    targeting = flag.definition.get("targeting") if flag.definition is not None else None
    return flag.default_variant != control or bool(targeting)


def _ramp_world(
    flag: Flag, prior: FlagState, *, now: datetime, run_id: str
) -> tuple[FlagState, dict[str, Any] | None, FlagProblem | None] | None:
    """A ramp whose flag moved on: another schedule, or a shipped rollout started again or re-ramped.

    - A new rollout: another schedule (`guardrail.ramp.steps` changed, shipped or not: the old step number
      means nothing in it), or a shipped rollout with a `started_at` later than the ship. It starts at
      step 1, or at the step below the last that a person set the split to.
    - A shipped rollout whose split a person moved back to a step below the last: re-ramped from there.
    - A shipped rollout whose split a person moved to a share that is no step, while the flag is on, serves
      the treatment unwatched: reported every run (exit 2) until the weights are a step again or a new
      rollout is declared. Moved to 0 % or switched off, nobody gets the treatment: nothing to say.
    """
    assert flag.ramp is not None
    ramp = prior.ramp
    assert ramp is not None
    spec = flag.ramp
    # A step number past the schedule's end (a state kept before the schedule was) is another schedule too.
    changed = (bool(ramp.steps) and ramp.steps != spec.steps) or ramp.step >= len(spec.steps)
    share = rollout.treatment_share(flag)
    at = next((i for i, s in enumerate(spec.steps) if abs(s - share) < 1e-9), None)
    if changed:
        why = f"new rollout: the ramp's steps changed from {_steps(ramp.steps)} to {_steps(spec.steps)}"
    elif ramp.shipped_at is None:
        return None
    elif flag.started_at is not None and flag.started_at > ramp.shipped_at:
        why = f"new rollout: started_at {_t(flag.started_at)} is after the ship at {_t(ramp.shipped_at)}"
    elif at is not None and at < len(spec.steps) - 1 and flag.enabled:
        why = f"re-ramped by hand: the split is back at step {at + 1} ({spec.steps[at]} %) after the ship"
    elif at is None and share > 1e-9 and flag.enabled:
        message = (
            f"rollout shipped at {_t(ramp.shipped_at)}, but its split now gives the treatment {share:g} %, "
            f"which is no ramp step ({_steps(spec.steps)}): it is NOT watched. Set the weights to a step to ramp it "
            "again from there, or a new `started_at` to start a new rollout at step 1"
        )
        return prior, None, FlagProblem(flag.key, message, source=flag.source, field="targeting")
    else:
        return None
    fresh = FlagState(ramp=RampState(step=0, step_started_at=now, steps=spec.steps, restarted=True))
    return fresh, _note(flag, now, run_id, why + "; watched again", ramp), None


def _t(when: datetime) -> str:
    return when.isoformat()


def _steps(steps: tuple[int, ...]) -> str:
    return ",".join(str(s) for s in steps)


def _note(flag: Flag, now: datetime, run_id: str, why: str, ramp: RampState) -> dict[str, Any]:
    return {
        "time": now.isoformat(),
        "run_id": run_id,
        "dry_run": False,
        "type": "ramp_restarted",
        "flag": flag.key,
        "reason": why,
        "previous_ramp": {
            "step": ramp.step + 1,
            "steps": list(ramp.steps),
            "shipped_at": None if ramp.shipped_at is None else ramp.shipped_at.isoformat(),
        },
    }
