"""Ramped rollouts: the schedule in a flag's metadata, and the pure decision of one run (docs/rollouts.md).

`guardrail.ramp.steps: "1,5,25,50,100"` raises the treatment's share step by step. Each run decides, per
ramped flag: advance to the next step, hold (and say what it waits for), roll back, or ship (the last
step is reached: stop watching). Every step is judged on its own data only: the engine queries
aggregates since the step's start (RampState.step_started_at), so units served under different splits
are never pooled, and the error budget alpha of each guardrail is split evenly over the watched steps
(docs/rollouts.md, "Why it is valid").

Pure: no I/O, no clock. Imports only model.py, srm_gate.py, split.py and the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from guardrail import srm_gate
from guardrail.model import (
    SINCE_START,
    AdvanceMode,
    Aggregate,
    AggregateKey,
    Evaluation,
    ExperimentType,
    Flag,
    FlagState,
    Halt,
    HaltAction,
    HaltRecord,
    HaltStatus,
    Method,
    MetricKind,
    MetricQuery,
    OnBreach,
    RampAction,
    RampDecision,
    RampState,
    SrmAction,
    SrmResult,
    SrmVerdict,
    Verdict,
)
from guardrail.ramp_config import RAMP_PREFIX, SRM_PREFIX, is_ramp_or_srm_key, parse_ramp  # noqa: F401

# ---- the split a step writes -----------------------------------------------------------------------------


def shares_for(flag: Flag, percent: int) -> dict[str, int]:
    """The split that gives the treatment variants `percent` in all (evenly), control the rest, and any
    other variant of the split 0. Every value a whole percent; parse_ramp checked it divides evenly."""
    shares = {v: 0 for v in flag.split}
    per = percent // max(1, len(flag.treatment_variants))
    for t in flag.treatment_variants:
        shares[t] = per
    shares[flag.control_variant] = 100 - per * len(flag.treatment_variants)
    return shares


def treatment_share(flag: Flag) -> float:
    return math.fsum(flag.split.get(t, 0.0) for t in flag.treatment_variants)


# ---- engine hooks ----------------------------------------------------------------------------------------


def ramped(flag: Flag) -> bool:
    return flag.ramp is not None and flag.experiment_type is ExperimentType.ROLLOUT


def data_start(flag: Flag, prior: FlagState | None, experiment_start: datetime) -> datetime:
    """Where a since-start aggregate begins: the current step's start for a ramp (never pool steps)."""
    if ramped(flag) and prior is not None and prior.ramp is not None:
        return max(experiment_start, prior.ramp.step_started_at)
    return experiment_start


def awaiting_start(flag: Flag, prior: FlagState | None) -> bool:
    """A ramp guardrail has not started yet (its split is at no step): nothing to measure, only to write."""
    if prior is not None and prior.ramp is not None and prior.ramp.restarted:
        return ramped(flag)  # a ramp started again: this run only adopts a step or writes step 1
    if not ramped(flag) or (prior is not None and prior.ramp is not None):
        return False
    assert flag.ramp is not None
    share = treatment_share(flag)
    return all(abs(s - share) >= 1e-9 for s in flag.ramp.steps)


def srm_watched(flag: Flag) -> bool:
    return srm_gate.srm_watched(flag, ramped(flag))


def srm_queries(flag: Flag, physical_window: str, now: datetime) -> Iterator[tuple[AggregateKey, MetricQuery]]:
    if not srm_watched(flag):
        return
    for variant in flag.split:
        key = (flag.key, variant, flag.srm.metric, SINCE_START)
        yield key, MetricQuery(flag.key, variant, flag.srm.metric, physical_window, now)


def for_step(flag: Flag) -> Flag:
    """The flag as judged on one step: each guardrail's alpha split evenly over the watched steps, so the
    chance of a false rollback over the whole ramp stays at most alpha (a union bound)."""
    if not ramped(flag):
        return flag
    assert flag.ramp is not None
    k = flag.ramp.tested_steps
    return replace(flag, guardrails=tuple(replace(g, alpha=g.alpha / k) for g in flag.guardrails))


def shipped(prior: FlagState | None) -> str | None:
    if prior is not None and prior.ramp is not None and prior.ramp.shipped_at is not None:
        return f"rollout shipped at {prior.ramp.shipped_at.isoformat()}; no longer watched"
    return None


def enter_step(
    fs: FlagState, step: int, now: datetime, *, steps: tuple[int, ...], shipped_at: datetime | None = None
) -> FlagState:
    """State for a new step of the schedule `steps`: its clock starts now; streaks, tuning sizes and the
    SRM p-value restart, because the step's data starts from zero."""
    ramp = RampState(step=step, step_started_at=now, shipped_at=shipped_at, steps=steps)
    return replace(fs, ramp=ramp, streaks={}, tuning_n={}, srm_min_p=1.0, srm_warned=False)


# ---- the decision of one run -----------------------------------------------------------------------------


def _fmt(e: Evaluation, x: float) -> str:
    return f"{x:+.1%}" if e.comparison.relative else f"{x:+.4g}"


def _limit(e: Evaluation) -> str:
    return f"{e.threshold:.0%}" if e.comparison.relative else f"{e.threshold:g}"


def _waits(flag: Flag, evaluations: Sequence[Evaluation], units: int | None, minutes_on: float, step: int) -> list[str]:
    """Everything that keeps the ramp on its step; empty when it may advance."""
    assert flag.ramp is not None
    spec = flag.ramp
    kinds = {g.metric: g.kind for g in flag.guardrails}
    waits = []
    for e in evaluations:
        name = e.metric if len(flag.treatment_variants) == 1 else e.guardrail_id
        if e.verdict.is_skip:
            waits.append(f"{name}: {e.reason}")
        elif e.verdict is Verdict.BREACH:
            waits.append(f"{name}: shows harm ({e.streak} of {e.confirmations} confirmations)")
        elif spec.advance is AdvanceMode.PROVEN_SAFE and kinds.get(e.metric) is not MetricKind.QUANTILE:
            if e.method is not Method.SEQUENTIAL or e.upper_bound is None:
                waits.append(f"{name}: cannot be proven safe (needs method: sequential)")
            elif e.upper_bound >= e.threshold:
                waits.append(f"{name}: upper bound {_fmt(e, e.upper_bound)} vs threshold {_limit(e)}")
    if spec.min_count and (units is None or units < spec.min_count):
        waits.append(f"units per arm {units if units is not None else 'unknown'} of {spec.min_count} on this step")
    left = spec.step_minutes[step] - minutes_on
    if left > 0:
        waits.append(f"{math.ceil(left)} min left on step {step + 1} ({spec.steps[step]} %)")
    return waits


def _summary(e: Evaluation) -> dict[str, Any]:
    return {
        "metric": e.metric,
        "variant": e.treatment_variant,
        "verdict": e.verdict.value,
        "lower_bound": e.bound,
        "upper_bound": e.upper_bound,
        "threshold": e.threshold,
        "relative": e.comparison.relative,
    }


def decide_ramp(
    flag: Flag,
    prior: FlagState,
    state: FlagState,
    evaluations: Sequence[Evaluation],
    halt: Halt | None,
    srm_result: SrmResult | None,
    now: datetime,
) -> tuple[RampDecision, FlagState]:
    """advance | ship | hold | rollback | start | adopt for one ramped flag, and the state to keep."""
    assert flag.ramp is not None
    spec = flag.ramp
    share = treatment_share(flag)
    at = next((i for i, s in enumerate(spec.steps) if abs(s - share) < 1e-9), None)
    ramp = prior.ramp
    step = ramp.step if ramp is not None else (at if at is not None else 0)
    minutes_on = (now - ramp.step_started_at).total_seconds() / 60 if ramp is not None else 0.0
    last_step = len(spec.steps) - 1

    def made(
        action: RampAction,
        reason: str,
        *,
        to: int | None = None,
        shares: Mapping[str, int] | None = None,
        waits: Sequence[str] = (),
        fs: FlagState = state,
    ) -> tuple[RampDecision, FlagState]:
        d = RampDecision(flag.key, action, step, to, dict(shares or {}), reason, tuple(waits), minutes_on, spec.steps)
        kept = fs.ramp if fs.ramp is not None else ramp
        if kept is not None:
            last = {
                "at": now.isoformat(),
                "action": action.value,
                "reason": reason,
                "waits_for": list(waits),
                "guardrails": [_summary(e) for e in evaluations],
            }
            fs = replace(fs, ramp=replace(kept, last=last))
        return d, fs

    if halt is not None:
        action = RampAction.ROLLBACK if halt.action is HaltAction.REVERT else RampAction.HOLD
        return made(action, halt.reason)
    if ramp is not None and ramp.restarted:
        # A new rollout (guardrail/world.py: a shipped ramp started again, or another schedule): a split a
        # person set to a step below the last is adopted; otherwise (at the last step, or at none) it starts
        # at step 1.
        if at is not None and at < last_step:
            fs = enter_step(state, at, now, steps=spec.steps)
            why = f"a new rollout: the split is at step {at + 1} ({spec.steps[at]} %) from now"
            return made(RampAction.ADOPT, why, to=at, fs=fs)
        return made(
            RampAction.START,
            f"a new rollout starts at step 1 ({spec.steps[0]} %)",
            to=0,
            shares=shares_for(flag, spec.steps[0]),
        )
    if ramp is None or at != ramp.step:
        if at is None:
            if ramp is None:
                return made(
                    RampAction.START,
                    f"ramp starts at step 1 ({spec.steps[0]} %)",
                    to=0,
                    shares=shares_for(flag, spec.steps[0]),
                )
            return made(
                RampAction.HOLD,
                "split changed outside guardrail",
                waits=[
                    f"the split gives the treatment {share:g} %, not step {step + 1} ({spec.steps[step]} %) "
                    "nor any other step; set the weights to a ramp step"
                ],
            )
        fs = enter_step(state, at, now, steps=spec.steps, shipped_at=now if at == last_step else None)
        action = RampAction.SHIP if at == last_step else RampAction.ADOPT
        why = (
            "the split is at a ramp step"
            if ramp is None
            else "the split was moved to this step outside guardrail (or by a run that stopped before saving)"
        )
        return made(action, f"{why}: step {at + 1} ({spec.steps[at]} %) from now", to=at, fs=fs)
    units = min(srm_result.counts.values()) if srm_result is not None and srm_result.counts else None
    if units is None and evaluations:
        counts = [
            min(e.control.count or 0, e.treatment.count or 0)
            for e in evaluations
            if e.control is not None and e.treatment is not None and e.control.usable and e.treatment.usable
        ]
        units = min(counts) if counts else None
    waits = _waits(flag, evaluations, units, minutes_on, step)
    if waits:
        return made(RampAction.HOLD, "; ".join(waits), waits=waits)
    to = step + 1
    action = RampAction.SHIP if to == last_step else RampAction.ADVANCE
    mode = "proven safe" if spec.advance is AdvanceMode.PROVEN_SAFE else "no harm shown"
    return made(
        action,
        f"step {step + 1} ({spec.steps[step]} %) passed ({mode}, {minutes_on:.0f} min); "
        f"{'ship at' if action is RampAction.SHIP else 'advance to'} {spec.steps[to]} %",
        to=to,
        shares=shares_for(flag, spec.steps[to]),
    )


def after_decide(
    flag: Flag,
    aggregates: Mapping[AggregateKey, Aggregate],
    prior: FlagState,
    now: datetime,
    evaluations: list[Evaluation],
    halt: Halt | None,
    state: FlagState,
) -> tuple[list[Evaluation], Halt | None, FlagState, RampDecision | None, SrmResult | None]:
    """The engine's hook: SRM gate, then the ramp decision. A guardrail breach wins over SRM."""
    aligned = True
    if ramped(flag):
        assert flag.ramp is not None
        share = treatment_share(flag)
        aligned = prior.ramp is not None and abs(flag.ramp.steps[prior.ramp.step] - share) < 1e-9
    result = srm_gate.evaluate_srm(flag, aggregates, prior, aligned=aligned, ramped=ramped(flag))
    guardrail_halt = halt is not None
    srm_eval: Evaluation | None = None
    if result is not None and result.p_value is not None:
        state = replace(state, srm_min_p=result.p_value, srm_warned=prior.srm_warned or result.alert)
        if result.verdict is SrmVerdict.MISMATCH:
            e = srm_eval = srm_gate.srm_evaluation(flag, result)
            if halt is None and result.action is not SrmAction.WARN:
                action = HaltAction.REVERT if result.action is SrmAction.ROLLBACK else HaltAction.HOLD
                reason = f"{flag.srm.metric}: {result.reason}"
                halt = Halt(flag.key, action, reason, now, e, control_variant=flag.control_variant)
                state = replace(
                    state,
                    halt=HaltRecord(
                        HaltStatus.PENDING, action, reason, now, e.metric, e.treatment_variant, flag.control_variant
                    ),
                )
    extra = [srm_eval] if srm_eval is not None else []
    if not ramped(flag):
        return [*evaluations, *extra], halt, state, None, result
    assert flag.ramp is not None
    if halt is not None and guardrail_halt:
        # A guardrail proved harm: roll back (revert to control, as a halt does) unless on_breach: hold.
        action = HaltAction.REVERT if flag.ramp.on_breach is OnBreach.ROLLBACK else HaltAction.HOLD
        halt = replace(halt, action=action)
        if state.halt is not None:
            state = replace(state, halt=replace(state.halt, action=action))
    decision, state = decide_ramp(flag, prior, state, evaluations, halt, result, now)
    return [*evaluations, *extra], halt, state, decision, result
