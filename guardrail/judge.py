"""One comparison of a treatment with control, on the aggregates of one look: rules 2-4 of guardrail/engine.py.

`judge` checks the data (bad numbers never halt), the minimum counts, and then runs the guardrail's test:

- the window-stratified sequential test (guardrail/seqtest.py) for proportion and mean metrics by default,
  at this comparison's share of the flag's alpha (`comparison_alpha`, Bonferroni over guardrails × arms);
- the since-start confidence sequence of guardrail/stats.py on a ramp's step (`compare`), whose upper bound
  proves a step safe;
- the threshold rule (quantiles, or `method: threshold`): one window's point estimate against the threshold.

Pure: model, stats, seqtest and rollout's predicates only; no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from guardrail import rollout, seqtest
from guardrail.model import Aggregate, Flag, Guardrail, Method, MetricKind, SeqState, Verdict


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


def _against_threshold(g: Guardrail, harm: float) -> str:
    """`relative increase +12.00% vs threshold 10.00%`: a harm in the comparison's unit beside its limit."""
    direction = "increase" if g.comparison.harm_is_increase else "decrease"
    unit = "relative" if g.comparison.relative else "absolute"
    limit = f"{g.threshold:.2%}" if g.comparison.relative else f"{g.threshold:g}"
    return f"{unit} {direction} {_fmt_delta(g, harm)} vs threshold {limit}"


# A mean metric's variance comes from the source's `stddev`; without it neither sequential test can run.
_NEEDS_STDDEV = "sequential test on a mean metric needs `stddev` from the metrics source"


def compare(
    g: Guardrail, control: Aggregate, treatment: Aggregate, *, tuning_n: float | None, minutes: float
) -> Outcome:
    """Judge one treatment against control on data already known to be usable and large enough."""
    assert control.value is not None and treatment.value is not None
    assert control.count is not None and treatment.count is not None
    harm, relative, note = point_delta(g, control.value, treatment.value)
    described = _against_threshold(g, harm)
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
        return Outcome(Verdict.SKIP_NO_DATA, _NEEDS_STDDEV, delta=harm, relative_delta=relative)
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
            Verdict.SKIP_NO_DATA,
            "sequential test undefined for these aggregates",
            delta=harm,
            relative_delta=relative,
            tuning_n=frozen,
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
        return Outcome(Verdict.SKIP_NO_DATA, _NEEDS_STDDEV, delta=harm, relative_delta=relative), prior
    settings = seqtest.Settings(g.comparison, g.threshold, alpha, g.tuning_n, g.dispersion)
    state, result = seqtest.step(
        prior, sums_c, sums_t, minutes=minutes, settings=settings, proportion=g.kind is MetricKind.PROPORTION
    )
    estimate = result.estimate if result.estimate is not None else harm
    described = (
        f"since-start {_against_threshold(g, estimate)}; always-valid "
        f"p={result.p_value:.3g}, late-onset p={result.late_p_value:.3g} (alpha {alpha:.3g} per "
        f"comparison), dispersion {result.dispersion:.2f}, {state.windows} window(s)"
    )
    if result.note:
        described += f"; {result.note}"
    hint = seqtest.suggested_floor(state, g.dispersion)
    if hint is not None:
        described += (
            f"; events cluster (dispersion {hint:g} learnt): set `dispersion: {hint:g}` on this guardrail so "
            "the first looks of the next experiment on this traffic are protected too"
        )
    if result.skipped is not None:
        return Outcome(
            Verdict.SKIP_NO_DATA, f"warning: {result.skipped}", delta=estimate, relative_delta=relative
        ), state
    verdict = Verdict.BREACH if result.breach else Verdict.PASS
    return Outcome(
        verdict, described, delta=estimate, relative_delta=relative, p_value=min(result.p_value, result.late_p_value)
    ), state


def comparisons(flag: Flag) -> int:
    """How many always-valid comparisons share the flag's alpha: sequential guardrails × treatment arms."""
    sequential = sum(1 for g in flag.guardrails if g.method is Method.SEQUENTIAL and g.kind is not MetricKind.QUANTILE)
    return max(1, sequential * len(flag.treatment_variants))


def comparison_alpha(flag: Flag, g: Guardrail) -> float:
    """Bonferroni: each comparison gets alpha / k, so a flag's chance of any false halt is at most alpha."""
    return g.alpha / comparisons(flag)


def judge(
    flag: Flag,
    g: Guardrail,
    control: Aggregate | None,
    treatment: Aggregate | None,
    prior: SeqState,
    minutes: float,
    tuning_n: float | None,
) -> tuple[Outcome, SeqState]:
    """Rules 2-4 of the module docstring for one treatment; the sequential state advances only on usable data.

    A ramp's step (guardrail/rollout.py) keeps the since-start confidence sequence of `compare`: each step is
    judged on its own data at one fixed split, and the ramp needs that test's upper bound to prove safety."""
    if problem := (
        _data_problem(g, "control", control)
        or _data_problem(g, "treatment", treatment)
        or _range_problem(g, "control", control)
        or _range_problem(g, "treatment", treatment)
    ):
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
