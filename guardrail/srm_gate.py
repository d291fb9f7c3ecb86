"""The SRM gate of one run: unit counts since the window start against the configured split (pure).

Uses the anytime-valid test of guardrail/srm.py; turns a mismatch into an Evaluation so alerts, the audit
log and `check` output carry it like any guardrail verdict (docs/rollouts.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from guardrail import srm
from guardrail.model import (
    SINCE_START,
    Aggregate,
    AggregateKey,
    Comparison,
    Evaluation,
    ExperimentType,
    Flag,
    FlagState,
    Method,
    SrmAction,
    SrmResult,
    SrmVerdict,
    Verdict,
)


def srm_watched(flag: Flag, ramped: bool) -> bool:
    """SRM is tested for every A/B experiment and every ramp step, against the configured split."""
    weighted = sum(1 for w in flag.split.values() if w > 0)
    return flag.srm.enabled and weighted >= 2 and (flag.experiment_type is ExperimentType.AB or ramped)


def evaluate_srm(
    flag: Flag, aggregates: Mapping[AggregateKey, Aggregate], prior: FlagState, *, aligned: bool, ramped: bool
) -> SrmResult | None:
    """The SRM verdict of one run: unit counts since the window start against the configured split.

    `aligned` is False when a ramp's split does not match its step (counts would mix two splits)."""
    if not srm_watched(flag, ramped) or not aligned:
        return None
    spec = flag.srm
    counts: dict[str, int] = {}
    for variant in flag.split:
        agg = aggregates.get((flag.key, variant, spec.metric, SINCE_START))
        if agg is None or not agg.usable or agg.count is None:
            cause = "not fetched" if agg is None else (agg.error or "value or count missing")
            return SrmResult(
                flag.key,
                SrmVerdict.NO_DATA,
                f"no usable `{spec.metric}` count for {variant}: {cause}",
                action=spec.action,
            )
        counts[variant] = agg.count
    result = srm.check(counts, flag.split, alpha=spec.alpha, prior_min_p=prior.srm_min_p)
    if result is None:
        return None
    verdict = SrmVerdict.MISMATCH if result.mismatch else SrmVerdict.OK
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


def srm_evaluation(flag: Flag, result: SrmResult) -> Evaluation:
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
        verdict=Verdict.BREACH if result.verdict is SrmVerdict.MISMATCH else Verdict.PASS,
        reason=result.reason,
        control=Aggregate(
            float(result.counts.get(flag.control_variant, 0)), result.counts.get(flag.control_variant, 0)
        ),
        treatment=Aggregate(float(result.counts.get(treatment, 0)), result.counts.get(treatment, 0)),
        relative_delta=(observed / expected - 1.0) if expected else None,
        p_value=result.p_value,
        confirmations=1,
        streak=1 if result.verdict is SrmVerdict.MISMATCH else 0,
    )
