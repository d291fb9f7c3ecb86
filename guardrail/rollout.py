"""Ramped rollouts: the schedule in a flag's metadata, and the pure decision of one run (docs/rollouts.md).

`guardrail.ramp.steps: "1,5,25,50,100"` raises the treatment's share step by step. Each run decides, per
ramped flag: advance to the next step, hold (and say what it waits for), roll back, or ship (the last
step is reached: stop watching). Every step is judged on its own data only: the engine queries
aggregates since the step's start (RampState.step_started_at), so units served under different splits
are never pooled, and the error budget alpha of each guardrail is split evenly over the watched steps
(docs/rollouts.md, "Why it is valid").

Pure: no I/O, no clock. Imports only model.py, srm.py and the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from guardrail import srm
from guardrail.model import (
    SINCE_START,
    AdvanceMode,
    Aggregate,
    AggregateKey,
    Comparison,
    Evaluation,
    ExperimentType,
    Flag,
    FlagState,
    Halt,
    HaltAction,
    HaltRecord,
    Method,
    MetricKind,
    MetricQuery,
    OnBreach,
    RampAction,
    RampDecision,
    RampSpec,
    RampState,
    SrmAction,
    SrmResult,
    SrmSpec,
    Verdict,
)

RAMP_PREFIX = "guardrail.ramp."
SRM_PREFIX = "guardrail.srm."
RAMP_OPTIONS = ("steps", "step_minutes", "min_count", "advance", "on_breach")
SRM_OPTIONS = ("metric", "action", "alpha", "enabled")
DEFAULT_STEP_MINUTES = 30.0


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


# ---- parsing `guardrail.ramp.*` and `guardrail.srm.*` -------------------------------------------------------


def is_ramp_or_srm_key(key: str) -> bool:
    return key.startswith((RAMP_PREFIX, SRM_PREFIX))


def _int_list(value: Any) -> list[float]:
    if isinstance(value, bool):
        raise ValueError(f"expected numbers, got {value!r}")
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, str):
        parts = [p.strip().rstrip("%") for p in value.split(",")]
        if not all(parts):
            raise ValueError(f"expected comma-separated numbers, got {value!r}")
        return [float(p) for p in parts]
    if isinstance(value, list):
        return (
            [float(v) for v in value if not isinstance(v, bool)]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            else _raise(f"expected numbers, got {value!r}")
        )
    raise ValueError(f"expected comma-separated numbers, got {type(value).__name__}")


def _raise(message: str) -> list[float]:
    raise ValueError(message)


def parse_ramp(
    metadata: Mapping[str, Any],
    *,
    experiment_type: ExperimentType,
    split: Mapping[str, float],
    control: str,
    treatments: Sequence[str],
) -> tuple[RampSpec | None, SrmSpec, list[tuple[str, str]]]:
    """(ramp or None, srm options, [(field, message)]). Pure; every error names its metadata field."""
    errors: list[tuple[str, str]] = []
    options = {
        k[len(RAMP_PREFIX) :]: v for k, v in metadata.items() if isinstance(k, str) and k.startswith(RAMP_PREFIX)
    }
    srm_options = {
        k[len(SRM_PREFIX) :]: v for k, v in metadata.items() if isinstance(k, str) and k.startswith(SRM_PREFIX)
    }
    srm_spec, srm_errors = _parse_srm(srm_options)
    errors += srm_errors
    for name in options:
        if name not in RAMP_OPTIONS:
            errors.append((f"metadata.{RAMP_PREFIX}{name}", f"unknown ramp option; known: {', '.join(RAMP_OPTIONS)}"))
    if not options:
        return None, srm_spec, errors
    field = f"metadata.{RAMP_PREFIX}steps"
    if "steps" not in options:
        return None, srm_spec, [*errors, (field, "is required when any guardrail.ramp option is set")]
    if experiment_type is not ExperimentType.ROLLOUT:
        errors.append(
            ("metadata.experiment_type", "a ramp needs experiment_type: rollout (an ab experiment has no ramp)")
        )
    try:
        raw = _int_list(options["steps"])
    except ValueError as exc:
        return None, srm_spec, [*errors, (field, str(exc))]
    steps: list[int] = []
    for value in raw:
        if not math.isfinite(value) or value != int(value):
            errors.append((field, f"step {value:g} is not a whole percent"))
        elif not 0 < value <= 100:
            errors.append((field, f"step {value:g} is outside 1..100 (percent of units to the treatment)"))
        elif steps and value <= steps[-1]:
            errors.append((field, f"steps must increase: {value:g} comes after {steps[-1]}"))
        else:
            steps.append(int(value))
    if not errors and len(steps) < 2:
        errors.append((field, "needs at least two steps (the last one ships)"))
    if not split:
        errors.append(("targeting", "a ramp needs a `fractional` split in targeting whose weights guardrail sets"))
    else:
        missing = [v for v in (control, *treatments) if v not in split]
        if missing:
            errors.append(("targeting", f"the fractional split does not list variant(s) {missing}"))
        uneven = [s for s in steps if s % max(1, len(treatments))]
        if uneven:
            errors.append(
                (
                    field,
                    f"step(s) {uneven} cannot be split evenly over the {len(treatments)} treatment "
                    f"variants {list(treatments)} in whole percents",
                )
            )
    minutes_field = f"metadata.{RAMP_PREFIX}step_minutes"
    step_minutes: tuple[float, ...] = (DEFAULT_STEP_MINUTES,) * len(steps)
    if "step_minutes" in options:
        try:
            given = _int_list(options["step_minutes"])
        except ValueError as exc:
            given = []
            errors.append((minutes_field, str(exc)))
        if given and any(not (math.isfinite(m) and m >= 0) for m in given):
            errors.append((minutes_field, "must be minutes >= 0"))
        elif len(given) == 1:
            step_minutes = (given[0],) * len(steps)
        elif given and len(given) != len(steps):
            errors.append(
                (minutes_field, f"has {len(given)} values for {len(steps)} steps (give one, or one per step)")
            )
        elif given:
            step_minutes = tuple(given)
    min_count = 0
    if "min_count" in options:
        value = options["min_count"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append((f"metadata.{RAMP_PREFIX}min_count", f"must be a whole number >= 0, got {value!r}"))
        else:
            min_count = value
    advance, on_breach = AdvanceMode.NO_HARM, OnBreach.ROLLBACK
    try:
        advance = AdvanceMode(options.get("advance", AdvanceMode.NO_HARM.value))
    except ValueError:
        errors.append((f"metadata.{RAMP_PREFIX}advance", f"must be no_harm or proven_safe, got {options['advance']!r}"))
    try:
        on_breach = OnBreach(options.get("on_breach", OnBreach.ROLLBACK.value))
    except ValueError:
        errors.append((f"metadata.{RAMP_PREFIX}on_breach", f"must be rollback or hold, got {options['on_breach']!r}"))
    if errors:
        return None, srm_spec, errors
    return RampSpec(tuple(steps), step_minutes, min_count, advance, on_breach), srm_spec, []


def _parse_srm(options: Mapping[str, Any]) -> tuple[SrmSpec, list[tuple[str, str]]]:
    spec, errors = SrmSpec(), []
    for name, value in options.items():
        field = f"metadata.{SRM_PREFIX}{name}"
        if name == "metric":
            if isinstance(value, str) and value.strip():
                spec = replace(spec, metric=value.strip())
            else:
                errors.append((field, "must be the name of a metric that counts units"))
        elif name == "action":
            try:
                spec = replace(spec, action=SrmAction(value))
            except ValueError:
                errors.append((field, f"must be hold, rollback or warn, got {value!r}"))
        elif name == "alpha":
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
                spec = replace(spec, alpha=float(value))
            else:
                errors.append((field, f"must be a number in (0, 1), got {value!r}"))
        elif name == "enabled":
            if value in (True, False, "true", "false"):
                spec = replace(spec, enabled=value in (True, "true"))
            else:
                errors.append((field, f"must be true or false, got {value!r}"))
        else:
            errors.append((field, f"unknown SRM option; known: {', '.join(SRM_OPTIONS)}"))
    return spec, errors


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
    if not ramped(flag) or (prior is not None and prior.ramp is not None):
        return False
    assert flag.ramp is not None
    share = treatment_share(flag)
    return all(abs(s - share) >= 1e-9 for s in flag.ramp.steps)


def srm_watched(flag: Flag) -> bool:
    """SRM is tested for every A/B experiment and every ramp step, against the configured split."""
    weighted = sum(1 for w in flag.split.values() if w > 0)
    return flag.srm.enabled and weighted >= 2 and (flag.experiment_type is ExperimentType.AB or ramped(flag))


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


def enter_step(fs: FlagState, step: int, now: datetime, *, shipped_at: datetime | None = None) -> FlagState:
    """State for a new step: its clock starts now; streaks, tuning sizes and the SRM p-value restart,
    because the step's data starts from zero."""
    ramp = RampState(step=step, step_started_at=now, shipped_at=shipped_at)
    return replace(fs, ramp=ramp, streaks={}, tuning_n={}, srm_min_p=1.0, srm_warned=False)


# ---- the SRM gate -----------------------------------------------------------------------------------------


def evaluate_srm(
    flag: Flag, aggregates: Mapping[AggregateKey, Aggregate], prior: FlagState, *, aligned: bool
) -> SrmResult | None:
    """The SRM verdict of one run: unit counts since the window start against the configured split.

    `aligned` is False when a ramp's split does not match its step (counts would mix two splits)."""
    if not srm_watched(flag) or not aligned:
        return None
    spec = flag.srm
    counts: dict[str, int] = {}
    for variant in flag.split:
        agg = aggregates.get((flag.key, variant, spec.metric, SINCE_START))
        if agg is None or not agg.usable or agg.count is None:
            cause = "not fetched" if agg is None else (agg.error or "value or count missing")
            return SrmResult(
                flag.key, "no_data", f"no usable `{spec.metric}` count for {variant}: {cause}", action=spec.action
            )
        counts[variant] = agg.count
    result = srm.check(counts, flag.split, alpha=spec.alpha, prior_min_p=prior.srm_min_p)
    if result is None:
        return None
    verdict = "mismatch" if result.mismatch else "ok"
    alert = result.mismatch and spec.action is SrmAction.WARN and not prior.srm_warned
    return SrmResult(
        flag.key,
        verdict,
        srm.describe(result, spec.alpha),
        result.running_p,
        result.counts,
        result.expected,
        spec.action,
        alert,
    )


def _srm_evaluation(flag: Flag, result: SrmResult) -> Evaluation:
    """The SRM verdict in the shape alerts and the audit log already carry: the unit counts as the arms."""
    treatment = flag.treatment_variants[0] if flag.treatment_variants else flag.control_variant
    n = sum(result.counts.values())
    observed = result.counts.get(treatment, 0) / n if n else 0.0
    expected = result.expected.get(treatment, 0.0)
    return Evaluation(
        flag=flag.key,
        metric=flag.srm.metric,
        treatment_variant=treatment,
        control_variant=flag.control_variant,
        comparison=Comparison.RELATIVE_DECREASE,
        threshold=0.0,
        method=Method.SEQUENTIAL,
        verdict=Verdict.BREACH if result.verdict == "mismatch" else Verdict.PASS,
        reason=result.reason,
        control=Aggregate(
            float(result.counts.get(flag.control_variant, 0)), result.counts.get(flag.control_variant, 0)
        ),
        treatment=Aggregate(float(result.counts.get(treatment, 0)), result.counts.get(treatment, 0)),
        relative_delta=(observed / expected - 1.0) if expected else None,
        p_value=result.p_value,
        confirmations=1,
        streak=1 if result.verdict == "mismatch" else 0,
    )


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
        fs = enter_step(state, at, now, shipped_at=now if at == last_step else None)
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
    result = evaluate_srm(flag, aggregates, prior, aligned=aligned)
    guardrail_halt = halt is not None
    srm_eval: Evaluation | None = None
    if result is not None and result.p_value is not None:
        state = replace(state, srm_min_p=result.p_value, srm_warned=prior.srm_warned or result.alert)
        if result.verdict == "mismatch":
            e = srm_eval = _srm_evaluation(flag, result)
            if halt is None and result.action is not SrmAction.WARN:
                action = HaltAction.REVERT if result.action is SrmAction.ROLLBACK else HaltAction.HOLD
                reason = f"{flag.srm.metric}: {result.reason}"
                halt = Halt(flag.key, action, reason, now, e, control_variant=flag.control_variant)
                state = replace(
                    state,
                    halt=HaltRecord(
                        "pending", action, reason, now, e.metric, e.treatment_variant, flag.control_variant
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
