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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from guardrail import rollout, seqtest
from guardrail.codec import finite, format_time
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


@dataclass(frozen=True)
class Outcome:
    """The outcome of comparing one treatment with control."""

    verdict: Verdict
    reason: str
    delta: float | None = None
    relative_delta: float | None = None
    bound: float | None = None
    p_value: float | None = None
    tuning_n: float | None = None
    upper_bound: float | None = None


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


def _data_problem(g: Guardrail, arm: str, agg: Aggregate | None) -> str | None:
    if agg is None:
        return f"{arm}: no aggregate fetched"
    if agg.error is not None:
        return f"{arm}: {agg.error}"
    if agg.value is None or agg.count is None:
        return f"{arm}: value or count missing"
    if not math.isfinite(agg.value):
        return f"{arm}: value is not a finite number ({agg.value})"
    if agg.count < 0:
        return f"{arm}: negative count ({agg.count})"
    if g.kind is MetricKind.PROPORTION and not 0.0 <= agg.value <= 1.0:
        return f"{arm}: proportion {agg.value} outside [0, 1]"
    if agg.stddev is not None and (not math.isfinite(agg.stddev) or agg.stddev < 0):
        return f"{arm}: stddev is not a non-negative number ({agg.stddev})"
    return None


# Past this magnitude a value's square (a variance) overflows a float: no real metric is this large, so
# such a number is a broken source, not a measurement.
_MAX_MAGNITUDE = 1e150


def _range_problem(g: Guardrail, arm: str, agg: Aggregate | None) -> str | None:
    """Numbers that are finite but cannot be real for this guardrail (checked after _data_problem)."""
    if agg is None or agg.value is None:
        return None
    if g.kind is MetricKind.QUANTILE and agg.value < 0:
        return f"{arm}: negative quantile ({agg.value:g}); a latency or size quantile cannot be below 0"
    for name, number in (("value", agg.value), ("stddev", agg.stddev), ("count", agg.count)):
        if number is not None and abs(number) > _MAX_MAGNITUDE:
            return f"{arm}: {name} {number:g} is out of range"
    return None


def _safe_compare(
    g: Guardrail, control: Aggregate, treatment: Aggregate, *, tuning_n: float | None, minutes: float
) -> Outcome:
    """compare(), with any arithmetic failure on odd numbers made no data for this guardrail only."""
    try:
        outcome = compare(g, control, treatment, tuning_n=tuning_n, minutes=minutes)
    except (ArithmeticError, ValueError) as exc:
        return Outcome(Verdict.SKIP_NO_DATA, f"numbers out of range for the comparison ({type(exc).__name__})")
    for number in (outcome.bound, outcome.p_value):
        if number is not None and math.isnan(number):
            return Outcome(Verdict.SKIP_NO_DATA, "numbers out of range for the comparison (NaN)")
    return outcome


def point_delta(g: Guardrail, control: float, treatment: float) -> tuple[float, float | None, str]:
    """(harm, relative delta, note): harm is positive in the harmful direction, in the comparison's unit.

    A zero control under a relative comparison is decided, not skipped: any treatment above 0 is an
    infinite relative increase, and both at 0 is no change.
    """
    diff = treatment - control
    if control != 0:
        relative: float | None = diff / abs(control)
    elif treatment == 0:
        relative = 0.0
    else:
        relative = math.copysign(math.inf, diff)
    note = ""
    if control == 0 and g.comparison.relative:
        note = (
            "control is 0 and treatment is 0: no relative change"
            if treatment == 0
            else f"control is 0 and treatment is {treatment:g}: relative change is infinite"
        )
    harm_delta = relative if g.comparison.relative else diff
    assert harm_delta is not None
    harm = harm_delta if g.comparison.harm_is_increase else -harm_delta
    return harm, relative, note


def _fmt_delta(g: Guardrail, harm: float) -> str:
    if math.isinf(harm):
        return "inf" if harm > 0 else "-inf"
    return f"{harm:+.2%}" if g.comparison.relative else f"{harm:+.6g}"


def compare(
    g: Guardrail, control: Aggregate, treatment: Aggregate, *, tuning_n: float | None, minutes: float
) -> Outcome:
    """Judge one treatment against control on data already known to be usable and large enough."""
    assert control.value is not None and treatment.value is not None
    assert control.count is not None and treatment.count is not None
    harm, relative, note = point_delta(g, control.value, treatment.value)
    direction = "increase" if g.comparison.harm_is_increase else "decrease"
    unit = "relative" if g.comparison.relative else "absolute"
    limit = f"{g.threshold:.2%}" if g.comparison.relative else f"{g.threshold:g}"
    described = f"{unit} {direction} {_fmt_delta(g, harm)} vs threshold {limit}"
    if note:
        described = f"{note}; {described}"

    sequential = g.method is Method.SEQUENTIAL
    if sequential and g.kind is MetricKind.QUANTILE:
        # No valid variance for a quantile from value and count alone (docs/statistics.md): keep the
        # threshold rule, and say so.
        described += " (quantile metric: threshold rule, no sequential test)"
        sequential = False

    proportion = g.kind is MetricKind.PROPORTION
    if not sequential or (not proportion and control.value == 0 and g.comparison.relative):
        verdict = Verdict.BREACH if harm > g.threshold else Verdict.PASS
        return Outcome(verdict, described, delta=harm, relative_delta=relative)

    from guardrail import stats  # only sequential guardrails need it

    if proportion:
        # The test runs on shrunk proportions ((x + 0.5) / (n + 1)): an arm at exactly 0 % would otherwise
        # have zero variance (an undefined test) or, as control, make one stray treatment event an
        # "infinite" relative increase. The shift is 0.5 / n: negligible past min_count.
        control_mean = (control.value * control.count + 0.5) / (control.count + 1)
        treatment_mean = (treatment.value * treatment.count + 0.5) / (treatment.count + 1)
        var_c, var_t = stats.proportion_variance(control_mean), stats.proportion_variance(treatment_mean)
    elif control.stddev is None or treatment.stddev is None:
        return Outcome(
            Verdict.SKIP_NO_DATA,
            "sequential test on a mean metric needs `stddev` from the metrics source",
            delta=harm,
            relative_delta=relative,
        )
    else:
        control_mean, treatment_mean = control.value, treatment.value
        var_c, var_t = control.stddev**2, treatment.stddev**2

    n_total = float(control.count + treatment.count)
    frozen = tuning_n if tuning_n is not None else stats.default_tuning_n(n_total, minutes)
    result = stats.harm_test(
        comparison=g.comparison,
        threshold=g.threshold,
        control_mean=control_mean,
        control_var=var_c,
        n_control=float(control.count),
        treatment_mean=treatment_mean,
        treatment_var=var_t,
        n_treatment=float(treatment.count),
        alpha=g.alpha,
        tuning_n=frozen,
    )
    if result is None:
        return Outcome(
            Verdict.SKIP_NO_DATA, "sequential test undefined for these aggregates", delta=harm,
            relative_delta=relative, tuning_n=frozen,
        )
    bound = f"lower bound {_fmt_delta(g, result.lower_bound)} (alpha {g.alpha:g}, p={result.p_value:.3g})"
    verdict = Verdict.BREACH if result.breach else Verdict.PASS
    return Outcome(
        verdict,
        f"{described}; always-valid {bound}",
        delta=harm,
        relative_delta=relative,
        bound=result.lower_bound,
        p_value=result.p_value,
        tuning_n=frozen,
        # The other side of the same confidence sequence (Δ̂ + SE·B⁺_n at the same alpha): proves safety.
        upper_bound=2.0 * result.estimate - result.lower_bound,
    )


def arm_sums(g: Guardrail, agg: Aggregate) -> seqtest.Sums | None:
    """Since-start (n, Σy, Σy²) of one arm; None for a mean metric whose source gives no stddev."""
    assert agg.value is not None and agg.count is not None
    n = float(agg.count)
    total = agg.value * n
    if g.kind is MetricKind.PROPORTION:
        total_sq = total  # y ∈ {0, 1}
    elif agg.stddev is None:
        return None
    else:
        total_sq = max(0.0, n - 1.0) * agg.stddev**2 + n * agg.value**2
    units = None if agg.units is None else float(agg.units)
    if agg.num_sum is not None and agg.num_sum_sq is not None and agg.den_sum_sq is not None:
        # A ratio metric (errors / requests): numerator and denominator per unit, delta method.
        return seqtest.Sums(n, total, total_sq, units, agg.num_sum, agg.num_sum_sq, agg.den_sum_sq, agg.num_den_sum)
    return seqtest.Sums(n, total, total_sq, units, agg.unit_sum, agg.unit_sum_sq)


def sequential_look(
    g: Guardrail, control: Aggregate, treatment: Aggregate, prior: SeqState, *, minutes: float, alpha: float
) -> tuple[Outcome, SeqState]:
    """One look of the default test (guardrail/seqtest.py) on since-start sums; alpha is this comparison's
    share of the experiment's. The state comes back unchanged when the look teaches nothing."""
    assert control.value is not None and treatment.value is not None
    harm, relative, _note = point_delta(g, control.value, treatment.value)
    sums_c, sums_t = arm_sums(g, control), arm_sums(g, treatment)
    if sums_c is None or sums_t is None:
        return Outcome(Verdict.SKIP_NO_DATA, "sequential test on a mean metric needs `stddev` from the metrics "
                       "source", delta=harm, relative_delta=relative), prior
    settings = seqtest.Settings(g.comparison, g.threshold, alpha, g.tuning_n, g.dispersion)
    state, result = seqtest.step(prior, sums_c, sums_t, minutes=minutes, settings=settings,
                                 proportion=g.kind is MetricKind.PROPORTION)
    estimate = result.estimate if result.estimate is not None else harm
    unit = "relative" if g.comparison.relative else "absolute"
    direction = "increase" if g.comparison.harm_is_increase else "decrease"
    limit = f"{g.threshold:.2%}" if g.comparison.relative else f"{g.threshold:g}"
    described = (f"since-start {unit} {direction} {_fmt_delta(g, estimate)} vs threshold {limit}; always-valid "
                 f"p={result.p_value:.3g}, late-onset p={result.late_p_value:.3g} (alpha {alpha:.3g} per "
                 f"comparison), dispersion {result.dispersion:.2f}, {state.windows} window(s)")
    if result.note:
        described += f"; {result.note}"
    if result.skipped is not None:
        return Outcome(Verdict.SKIP_NO_DATA, f"warning: {result.skipped}", delta=estimate,
                       relative_delta=relative), state
    verdict = Verdict.BREACH if result.breach else Verdict.PASS
    return Outcome(verdict, described, delta=estimate, relative_delta=relative,
                   p_value=min(result.p_value, result.late_p_value)), state


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


def comparisons(flag: Flag) -> int:
    """How many always-valid comparisons share the flag's alpha: sequential guardrails × treatment arms."""
    sequential = sum(1 for g in flag.guardrails if g.method is Method.SEQUENTIAL and g.kind is not MetricKind.QUANTILE)
    return max(1, sequential * len(flag.treatment_variants))


def comparison_alpha(flag: Flag, g: Guardrail) -> float:
    """Bonferroni: each comparison gets alpha / k, so a flag's chance of any false halt is at most alpha."""
    return g.alpha / comparisons(flag)


def _judge(
    flag: Flag, g: Guardrail, control: Aggregate | None, treatment: Aggregate | None, prior: SeqState,
    minutes: float, tuning_n: float | None,
) -> tuple[Outcome, SeqState]:
    """Rules 2-4 of the module docstring for one treatment; the sequential state advances only on usable data.

    A ramp's step (guardrail/rollout.py) keeps the since-start confidence sequence of `compare`: each step is
    judged on its own data at one fixed split, and the ramp needs that test's upper bound to prove safety."""
    if problem := (_data_problem(g, "control", control) or _data_problem(g, "treatment", treatment)
                   or _range_problem(g, "control", control) or _range_problem(g, "treatment", treatment)):
        return Outcome(Verdict.SKIP_NO_DATA, problem), prior
    assert control is not None and treatment is not None
    assert control.count is not None and treatment.count is not None
    if min(control.count, treatment.count) < g.min_count:
        return Outcome(
            Verdict.SKIP_MIN_COUNT,
            f"counts control={control.count}, treatment={treatment.count}; need {g.min_count} in each arm",
        ), prior
    if g.method is Method.SEQUENTIAL and g.kind is not MetricKind.QUANTILE and not rollout.ramped(flag):
        try:
            return sequential_look(g, control, treatment, prior, minutes=minutes, alpha=comparison_alpha(flag, g))
        except (ArithmeticError, ValueError) as exc:
            return Outcome(Verdict.SKIP_NO_DATA, f"numbers out of range for the test ({type(exc).__name__})"), prior
    return _safe_compare(g, control, treatment, tuning_n=tuning_n, minutes=minutes), prior


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
    tuning = dict(prior.tuning_n)  # a ramp step's since-start test (see _judge)
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
                cmp, seq = _judge(flag, g, control, treatment, sequential.get(gid, SeqState()), minutes,
                                  g.tuning_n or tuning.get(gid))
                if cmp.tuning_n is not None and g.tuning_n is None:
                    tuning.setdefault(gid, cmp.tuning_n)
                if seq != SeqState():
                    sequential[gid] = seq
            streak = next_streak(streaks.get(gid, Streak()), cmp.verdict, now, g.max_gap_minutes, prior.last_look_at)
            streaks[gid] = streak
            evaluations.append(
                Evaluation(
                    flag=flag.key,
                    metric=g.metric,
                    treatment_variant=variant,
                    control_variant=flag.control_variant,
                    comparison=g.comparison,
                    threshold=g.threshold,
                    method=g.method,
                    verdict=cmp.verdict,
                    reason=cmp.reason,
                    control=control,
                    treatment=treatment,
                    delta=cmp.delta,
                    relative_delta=cmp.relative_delta,
                    streak=streak.count,
                    confirmations=g.confirmations,
                    bound=cmp.bound,
                    p_value=cmp.p_value,
                    upper_bound=cmp.upper_bound,
                )
            )

    confirmed = [
        e for e in evaluations if e.verdict is Verdict.BREACH and e.streak >= e.confirmations
    ]
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


def _undecided(flag: Flag, reason: str) -> list[Evaluation]:
    return [
        Evaluation(flag=flag.key, metric=g.metric, treatment_variant=variant, control_variant=flag.control_variant,
                   comparison=g.comparison, threshold=g.threshold, method=g.method, verdict=Verdict.SKIP_NO_DATA,
                   reason=reason, control=None, treatment=None, delta=None, relative_delta=None, streak=0,
                   confirmations=g.confirmations, bound=None, p_value=None)
        for g in flag.guardrails
        for variant in flag.treatment_variants
    ]


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
                    prior, first_seen_enabled=None, streaks={}, srm_min_p=1.0, srm_warned=False, sequential={},
                    tuning_n={}, last_look_at=None,
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
        except (ArithmeticError, ValueError, TypeError) as exc:
            # One flag's numbers must never stop the others from being decided (a harmful flag elsewhere
            # would stay on): this flag is reported as not evaluated and keeps its state.
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
