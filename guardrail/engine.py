"""The decision engine: pure data in (flags, aggregates, prior state, now), verdicts and halts out.

No I/O and no clock reads happen here, so `check`, `replay` and `simulate` all drive this same code and
a test can replay any situation exactly. The rules, in order, per guardrail and treatment variant:

1. the flag is warming up                      -> skip:warmup
2. either arm has no usable aggregate          -> skip:no_data (bad data never halts)
3. either arm has fewer than min_count events  -> skip:min_count
4. the comparison                              -> breach | pass
   - sequential (the default for proportions and means): guardrail/seqtest.py on the window since the
     previous look, at alpha / (sequential guardrails × treatment arms); a since-start count that went
     down is skip:no_data with a warning and a new baseline;
   - threshold (quantiles, or on request): the point estimate of one window against the threshold;
5. a breach counts toward a halt only after `confirmations` consecutive breaching runs (1 by default for
   the sequential test, 2 for the threshold rule); a pass resets the streak, a skip leaves it, and a breach
   more than max(`max_gap_minutes`, 1.5 × the interval since the previous look) after the previous one
   starts a new streak (two runs an hour apart are not "consecutive", unless the cron runs hourly).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from guardrail import rollout
from guardrail.codec import finite, format_time
from guardrail.judge import Outcome, judge
from guardrail.model import (
    SINCE_START,
    Aggregate,
    AggregateKey,
    Decision,
    Evaluation,
    ExperimentType,
    Flag,
    FlagState,
    Guardrail,
    Halt,
    HaltAction,
    HaltRecord,
    HaltStatus,
    Method,
    MetricKind,
    MetricQuery,
    RampDecision,
    SeqState,
    SrmResult,
    State,
    Streak,
    Verdict,
    guardrail_id,
)


def logical_window(g: Guardrail) -> str:
    """The sequential test reads since-start cumulative aggregates; the threshold rule one short window."""
    return SINCE_START if g.method is Method.SEQUENTIAL and g.kind is not MetricKind.QUANTILE else g.window


def experiment_start(flag: Flag, prior: FlagState | None, now: datetime) -> datetime:
    if flag.started_at is not None:
        return flag.started_at
    return _first_seen(prior, now)


def _first_seen(prior: FlagState | None, now: datetime) -> datetime:
    """When the flag was first seen enabled. A time after `now` was written by a run whose clock was ahead:
    kept, it would hold the flag in warmup until that date, so it is taken as now."""
    seen = None if prior is None else prior.first_seen_enabled
    return now if seen is None or seen > now else seen


def since_start_window(start: datetime, now: datetime) -> str:
    minutes = max(1, math.ceil((now - start).total_seconds() / 60))
    return f"{minutes}m"


def watched(flag: Flag, state: State) -> str | None:
    """Why a flag is not evaluated this run, or None when it is."""
    if not flag.enabled:
        return "disabled"
    if not flag.guardrails:
        return "no guardrails"
    if flag.held:
        return "held by guardrail (metadata.guardrail_hold); clear it and run `guardrail resume` to watch again"
    prior = state.flags.get(flag.key)
    if (done := rollout.shipped(prior)) is not None:  # ramps hook
        return done
    if prior is not None and prior.halt is not None:
        when = format_time(prior.halt.decided_at)
        return f"halted by guardrail at {when} ({prior.halt.status}); `guardrail resume {flag.key}` watches it again"
    return None


def warming_up(flag: Flag, start: datetime, now: datetime) -> float:
    """Minutes of warmup left (0 when over)."""
    left = flag.warmup_minutes - (now - start).total_seconds() / 60
    return max(0.0, left)


def plan_queries(flags: Iterable[Flag], state: State, now: datetime) -> list[tuple[AggregateKey, MetricQuery]]:
    """Every aggregate this run needs, with one pinned `end` so both arms cover the same window."""
    planned: dict[AggregateKey, MetricQuery] = {}
    for flag in flags:
        if watched(flag, state) is not None:
            continue
        prior = state.flags.get(flag.key)
        start = experiment_start(flag, prior, now)
        if warming_up(flag, start, now) > 0 or rollout.awaiting_start(flag, prior):  # ramps hook
            continue
        since = since_start_window(rollout.data_start(flag, prior, start), now)  # ramps hook: the step's own data
        for g in flag.guardrails:
            window = logical_window(g)
            physical = since if window == SINCE_START else window
            for variant in (flag.control_variant, *flag.treatment_variants):
                key = (flag.key, variant, g.metric, window)
                planned.setdefault(key, MetricQuery(flag.key, variant, g.metric, physical, now))
        for key, query in rollout.srm_queries(flag, since, now):  # ramps hook: SRM unit counts
            planned.setdefault(key, query)
    return list(planned.items())


def next_streak(
    prior: Streak, verdict: Verdict, now: datetime, max_gap_minutes: float, previous_look: datetime | None = None
) -> Streak:
    """Count consecutive breaches. Two breaches are consecutive when no pass came between them and they are at
    most max(max_gap_minutes, 1.5 × the interval since the previous look) apart, so a 30-minute cron still
    confirms (the gap rule only drops a streak across a real outage)."""
    if verdict is Verdict.PASS:
        return Streak()
    if verdict is not Verdict.BREACH:
        return prior  # a skip neither confirms nor clears
    last = prior.last_breach_at
    if last is not None and now == last:
        return prior  # the same look seen again (a retried run): never count it twice
    if last is not None and now < last:
        # A breach "from the future" was recorded by a run whose clock was ahead. Keeping it would freeze
        # the streak until that date; it cannot be consecutive with this look, so a new streak starts.
        return Streak(1, now)
    gap = timedelta(minutes=max_gap_minutes)
    if previous_look is not None and now > previous_look:
        gap = max(gap, 1.5 * (now - previous_look))
    if last is not None and now - last <= gap and prior.count > 0:
        return Streak(prior.count + 1, now)
    return Streak(1, now)


def _halt_reason(flag: Flag, e: Evaluation) -> str:
    def val(a: Aggregate | None) -> str:
        return "n/a" if a is None or a.value is None else f"{a.value:.6g} (n={a.count})"

    return (
        f"{e.metric} {e.treatment_variant} vs {e.control_variant}: treatment {val(e.treatment)}, "
        f"control {val(e.control)}; {e.reason}; {e.streak} consecutive breaching run(s)"
    )


def _severity(e: Evaluation) -> float:
    if e.delta is None:
        return 0.0
    return e.delta / e.threshold if e.threshold else math.inf


def _summary(e: Evaluation, now: datetime) -> dict[str, object]:
    return {
        "at": format_time(now),
        "verdict": e.verdict.value,
        "control": None if e.control is None else e.control.value,
        "treatment": None if e.treatment is None else e.treatment.value,
        "control_count": None if e.control is None else e.control.count,
        "treatment_count": None if e.treatment is None else e.treatment.count,
        "delta": finite(e.delta),  # state is strict JSON: control at 0 gives inf
        "streak": e.streak,
        "reason": e.reason,
    }


def decide_flag(
    flag: Flag, aggregates: Mapping[AggregateKey, Aggregate], prior: FlagState, now: datetime
) -> tuple[list[Evaluation], Halt | None, FlagState]:
    start = experiment_start(flag, prior, now)
    first_seen = _first_seen(prior, now)
    warmup_left = warming_up(flag, start, now)
    # The since-start window asked of the source is at least 1 minute long (since_start_window): the first
    # window's traffic per minute, which tunes the test, is projected over that real length.
    elapsed = (now - rollout.data_start(flag, prior, start)).total_seconds() / 60  # ramps hook
    minutes = max(1.0, math.ceil(elapsed))
    tuning = dict(prior.tuning_n)  # a ramp step's since-start confidence sequence (judge.compare)
    streaks = dict(prior.streaks)
    sequential = dict(prior.sequential)
    evaluations: list[Evaluation] = []
    for g in flag.guardrails:
        window = logical_window(g)
        control = aggregates.get((flag.key, flag.control_variant, g.metric, window))
        for variant in flag.treatment_variants:
            gid = guardrail_id(g.metric, variant)
            treatment = aggregates.get((flag.key, variant, g.metric, window))
            if warmup_left > 0:
                cmp = Outcome(Verdict.SKIP_WARMUP, f"warming up: {warmup_left:.1f} of {flag.warmup_minutes:g} min left")
            else:
                cmp, seq = judge(
                    flag, g, control, treatment, sequential.get(gid, SeqState()), minutes, g.tuning_n or tuning.get(gid)
                )
                if cmp.tuning_n is not None and g.tuning_n is None:
                    tuning.setdefault(gid, cmp.tuning_n)
                if seq != SeqState():
                    sequential[gid] = seq
            streak = next_streak(streaks.get(gid, Streak()), cmp.verdict, now, g.max_gap_minutes, prior.last_look_at)
            streaks[gid] = streak
            evaluations.append(_evaluation(flag, g, variant, cmp, control, treatment, streak.count))

    confirmed = [e for e in evaluations if e.verdict is Verdict.BREACH and e.streak >= e.confirmations]
    halt: Halt | None = None
    record: HaltRecord | None = None
    if confirmed:
        worst = max(confirmed, key=_severity)
        action = HaltAction.HOLD if flag.experiment_type is ExperimentType.ROLLOUT else HaltAction.REVERT
        reason = _halt_reason(flag, worst)
        halt = Halt(flag.key, action, reason, now, worst, control_variant=flag.control_variant)
        # Write-ahead: the halt is in the state before any API call, so a run that dies mid-halt is
        # finished by the next run, and a flag is never halted twice.
        record = HaltRecord(
            status=HaltStatus.PENDING,
            action=action,
            reason=reason,
            decided_at=now,
            metric=worst.metric,
            treatment_variant=worst.treatment_variant,
            control_variant=flag.control_variant,
        )
    next_state = replace(
        prior,
        first_seen_enabled=first_seen,
        streaks=streaks,
        halt=record,
        tuning_n=tuning,
        last_evaluations={e.guardrail_id: _summary(e, now) for e in evaluations},
        sequential=sequential,
        last_look_at=now,
    )
    return evaluations, halt, next_state


def _evaluation(
    flag: Flag,
    g: Guardrail,
    variant: str,
    outcome: Outcome,
    control: Aggregate | None = None,
    treatment: Aggregate | None = None,
    streak: int = 0,
) -> Evaluation:
    """The one place an Evaluation is built from a guardrail, a treatment arm and an outcome."""
    return Evaluation(
        flag=flag.key,
        metric=g.metric,
        treatment_variant=variant,
        control_variant=flag.control_variant,
        comparison=g.comparison,
        threshold=g.threshold,
        method=g.method,
        verdict=outcome.verdict,
        reason=outcome.reason,
        control=control,
        treatment=treatment,
        delta=outcome.delta,
        relative_delta=outcome.relative_delta,
        streak=streak,
        confirmations=g.confirmations,
        bound=outcome.bound,
        p_value=outcome.p_value,
        upper_bound=outcome.upper_bound,
    )


def _undecided(flag: Flag, reason: str) -> list[Evaluation]:
    """Every comparison of a flag that could not be decided this run, as skip:no_data."""
    outcome = Outcome(Verdict.SKIP_NO_DATA, reason)
    return [_evaluation(flag, g, variant, outcome) for g in flag.guardrails for variant in flag.treatment_variants]


def decide(
    flags: Iterable[Flag], aggregates: Mapping[AggregateKey, Aggregate], state: State, now: datetime
) -> Decision:
    """Decide every watched flag. Flags not watched keep their state, except that a disabled flag forgets
    its first-seen time and its sequential tests: re-enabling it starts a new warmup and new tests (without
    `started_at` the since-start counts restart too, and a test must not keep a tuning made for the old
    traffic)."""
    next_flags = dict(state.flags)
    evaluations: list[Evaluation] = []
    halts: list[Halt] = []
    skipped: dict[str, str] = {}
    ramps: list[RampDecision] = []
    srm_results: list[SrmResult] = []
    for flag in flags:
        prior = state.flags.get(flag.key, FlagState())
        why = watched(flag, state)
        if why is not None:
            skipped[flag.key] = why
            if not flag.enabled and prior.halt is None and flag.key in next_flags:
                # a new exposure window: neither the SRM p-value nor the sequential tests of the old one carry over
                next_flags[flag.key] = replace(
                    prior,
                    first_seen_enabled=None,
                    streaks={},
                    srm_min_p=1.0,
                    srm_warned=False,
                    sequential={},
                    tuning_n={},
                    last_look_at=None,
                )
            continue
        found: list[Evaluation]
        halt: Halt | None
        try:
            if rollout.awaiting_start(flag, prior):  # nothing measured yet: only the first step to write
                found, halt, flag_state = [], None, replace(prior, first_seen_enabled=prior.first_seen_enabled or now)
            else:
                found, halt, flag_state = decide_flag(rollout.for_step(flag), aggregates, prior, now)
            # ---- ramps hook: SRM gate and the ramp's advance/hold/rollback/ship (guardrail/rollout.py) ----
            found, halt, flag_state, ramp, srm_result = rollout.after_decide(
                flag, aggregates, prior, now, found, halt, flag_state
            )
        except (ArithmeticError, ValueError, TypeError, LookupError) as exc:
            # One flag's numbers (or a schedule its state no longer matches) must never stop the others from
            # being decided (a harmful flag elsewhere would stay on): this flag is reported as not evaluated
            # and keeps its state.
            evaluations.extend(_undecided(flag, f"not decided: {type(exc).__name__} on these numbers"))
            continue
        ramps.extend([ramp] if ramp is not None else [])
        srm_results.extend([srm_result] if srm_result is not None else [])
        # ---- end of ramps hook ----
        evaluations.extend(found)
        next_flags[flag.key] = flag_state
        if halt is not None:
            halts.append(halt)
    return Decision(
        evaluations=tuple(evaluations),
        halts=tuple(halts),
        state=State(flags=next_flags, last_run_at=now),
        skipped_flags=skipped,
        ramps=tuple(ramps),
        srm=tuple(srm_results),
    )
