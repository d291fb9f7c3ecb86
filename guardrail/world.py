"""State follows the world: what a halt recorded in the state file means when the flag has moved on.

A halted flag is not watched again until `guardrail resume`. Two things can happen to it meanwhile, and
silence (exit 0 forever) is right for neither:

- it comes back as a NEW experiment: its `started_at` is later than the halt. The old halt, streaks and
  first-seen time belong to the old experiment; they are cleared (with an audit record) and the new
  experiment is watched from its start, as LaunchDarkly and GrowthBook start a new guarded rollout.
- a person turned it back on (ENABLED again, or the hold marker removed) without `guardrail resume`:
  it is NOT watched automatically (the person may know why), but every run says so as an error naming
  the flag and the command (exit 2), until it is resumed or disabled again.

Pure: flags and state in, new state, problems and audit records out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from guardrail.model import Flag, FlagProblem, FlagState, HaltAction, HaltStatus, State


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
