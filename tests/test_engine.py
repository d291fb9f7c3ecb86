"""The pure decision engine: every rule of the check issue, with no I/O."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from guardrail import engine, judge
from guardrail.config import parse_flags
from guardrail.model import (
    SINCE_START,
    Aggregate,
    Comparison,
    Flag,
    FlagState,
    HaltAction,
    HaltRecord,
    HaltStatus,
    Method,
    State,
    Streak,
    Verdict,
)
from tests.conftest import NOW, flag_definition

KEY = "checkout.payments.express-pay"


def make_flag(**kwargs: Any) -> Flag:
    parsed = parse_flags({KEY: flag_definition(**kwargs)})
    assert not parsed.problems, parsed.problems
    return parsed.flags[0]


def aggs(
    control: Aggregate,
    treatment: Aggregate,
    metric: str = "error_rate",
    window: str = "5m",
    treatment_variant: str = "treatment",
) -> dict[Any, Aggregate]:
    return {(KEY, "control", metric, window): control, (KEY, treatment_variant, metric, window): treatment}


def one(flag: Flag, aggregates: dict[Any, Aggregate], state: State = State(), now: datetime = NOW) -> Any:
    decision = engine.decide([flag], aggregates, state, now)
    return decision


GOOD_C = Aggregate(0.010, 5000)
BAD_T = Aggregate(0.030, 5000)
OK_T = Aggregate(0.0105, 5000)


def test_pass_and_breach_relative_increase() -> None:
    flag = make_flag()
    passed = one(flag, aggs(GOOD_C, OK_T)).evaluations[0]
    assert passed.verdict is Verdict.PASS
    assert passed.delta == pytest.approx(0.05)
    breach = one(flag, aggs(GOOD_C, BAD_T)).evaluations[0]
    assert breach.verdict is Verdict.BREACH
    assert breach.delta == pytest.approx(2.0)
    assert breach.streak == 1


@pytest.mark.parametrize(
    ("comparison", "threshold", "control", "treatment", "verdict"),
    [
        ("absolute_increase", 0.01, 0.010, 0.019, Verdict.PASS),
        ("absolute_increase", 0.01, 0.010, 0.0201, Verdict.BREACH),
        ("relative_decrease", 0.10, 0.50, 0.46, Verdict.PASS),
        ("relative_decrease", 0.10, 0.50, 0.44, Verdict.BREACH),
        ("absolute_decrease", 0.05, 0.50, 0.46, Verdict.PASS),
        ("absolute_decrease", 0.05, 0.50, 0.44, Verdict.BREACH),
        # an increase never breaches a decrease guardrail, and vice versa
        ("relative_decrease", 0.10, 0.50, 0.90, Verdict.PASS),
        ("relative_increase", 0.10, 0.50, 0.10, Verdict.PASS),
    ],
)
def test_comparisons(comparison: str, threshold: float, control: float, treatment: float, verdict: Verdict) -> None:
    flag = make_flag(
        extra_metadata={
            "guardrail.conversion_rate.comparison": comparison,
            "guardrail.conversion_rate.threshold": threshold,
            "guardrail.conversion_rate.method": "threshold",
        }
    )
    flag = dataclasses.replace(flag, guardrails=tuple(g for g in flag.guardrails if g.metric == "conversion_rate"))
    e = one(flag, aggs(Aggregate(control, 5000), Aggregate(treatment, 5000), metric="conversion_rate")).evaluations[0]
    assert e.comparison is Comparison(comparison)
    assert e.verdict is verdict


def test_zero_control_with_treatment_errors_is_an_infinite_increase() -> None:
    e = one(make_flag(), aggs(Aggregate(0.0, 5000), Aggregate(0.002, 5000))).evaluations[0]
    assert e.verdict is Verdict.BREACH
    assert e.delta == math.inf
    assert "control is 0" in e.reason and "infinite" in e.reason


def test_zero_control_and_zero_treatment_is_a_pass_and_says_so() -> None:
    e = one(make_flag(), aggs(Aggregate(0.0, 5000), Aggregate(0.0, 5000))).evaluations[0]
    assert e.verdict is Verdict.PASS
    assert "control is 0 and treatment is 0" in e.reason


@pytest.mark.parametrize(
    ("control", "treatment", "cause"),
    [
        (Aggregate.missing("metrics query: timeout"), OK_T, "timeout"),
        (GOOD_C, Aggregate(None, 5000), "missing"),
        (GOOD_C, Aggregate(math.nan, 5000), "finite"),
        (GOOD_C, Aggregate(0.02, -3), "negative count"),
        (GOOD_C, Aggregate(1.5, 5000), "outside [0, 1]"),
        (Aggregate(math.inf, 5000), BAD_T, "finite"),
    ],
)
def test_bad_data_never_halts(control: Aggregate, treatment: Aggregate, cause: str) -> None:
    flag = make_flag()
    state = State()
    for minute in range(0, 20, 2):
        decision = engine.decide([flag], aggs(control, treatment), state, NOW + timedelta(minutes=minute))
        state = decision.state
        assert decision.evaluations[0].verdict is Verdict.SKIP_NO_DATA
        assert cause in decision.evaluations[0].reason
        assert not decision.halts


@pytest.mark.parametrize("error", [OverflowError, ValueError, TypeError, IndexError, KeyError])
def test_one_flag_that_cannot_be_decided_never_stops_the_others(
    monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    """Whatever a flag's numbers or state make the decision raise, the other flags are still decided."""
    other = replace(make_flag(), key="search.ranking.v2")
    real = engine.decide_flag

    def decide_flag(flag: Flag, *args: Any) -> Any:
        if flag.key == KEY:
            raise error("odd input")
        return real(flag, *args)

    monkeypatch.setattr(engine, "decide_flag", decide_flag)
    data = {**aggs(GOOD_C, BAD_T), **{("search.ranking.v2", *k[1:]): v for k, v in aggs(GOOD_C, BAD_T).items()}}
    decision = engine.decide([make_flag(), other], data, State(), NOW)
    by_flag = {e.flag: e for e in decision.evaluations}
    assert by_flag[KEY].verdict is Verdict.SKIP_NO_DATA and error.__name__ in by_flag[KEY].reason
    assert by_flag["search.ranking.v2"].verdict is Verdict.BREACH


def test_min_count_default_and_per_guardrail() -> None:
    e = one(make_flag(), aggs(Aggregate(0.01, 99), Aggregate(0.5, 5000))).evaluations[0]
    assert e.verdict is Verdict.SKIP_MIN_COUNT
    flag = make_flag(extra_metadata={"guardrail.error_rate.min_count": 10})
    assert one(flag, aggs(Aggregate(0.01, 99), Aggregate(0.5, 5000))).evaluations[0].verdict is Verdict.BREACH


def test_warmup_from_started_at() -> None:
    flag = make_flag(extra_metadata={"warmup_minutes": 30, "started_at": "2026-11-25T11:45:00Z"})
    e = one(flag, aggs(GOOD_C, BAD_T)).evaluations[0]
    assert e.verdict is Verdict.SKIP_WARMUP
    assert "15.0 of 30 min left" in e.reason
    assert engine.plan_queries([flag], State(), NOW) == []  # nothing fetched while warming up
    later = one(flag, aggs(GOOD_C, BAD_T), now=NOW + timedelta(minutes=16)).evaluations[0]
    assert later.verdict is Verdict.BREACH


def test_warmup_from_first_seen_when_no_started_at() -> None:
    definition = flag_definition(extra_metadata={"warmup_minutes": 10})
    del definition["metadata"]["started_at"]
    flag = parse_flags({KEY: definition}).flags[0]
    first = engine.decide([flag], aggs(GOOD_C, BAD_T), State(), NOW)
    assert first.evaluations[0].verdict is Verdict.SKIP_WARMUP
    assert first.state.flags[KEY].first_seen_enabled == NOW
    after = engine.decide([flag], aggs(GOOD_C, BAD_T), first.state, NOW + timedelta(minutes=11))
    assert after.evaluations[0].verdict is Verdict.BREACH


def run_sequence(flag: Flag, steps: list[tuple[int, Aggregate]]) -> list[Any]:
    state, out = State(), []
    for minute, treatment in steps:
        decision = engine.decide([flag], aggs(GOOD_C, treatment), state, NOW + timedelta(minutes=minute))
        state = decision.state
        out.append(decision)
    return out


def test_two_consecutive_breaches_halt() -> None:
    first, second = run_sequence(make_flag(), [(0, BAD_T), (2, BAD_T)])
    assert not first.halts and first.evaluations[0].streak == 1
    assert second.evaluations[0].streak == 2
    (halt,) = second.halts
    assert halt.action is HaltAction.REVERT
    assert "error_rate" in halt.reason and "0.03" in halt.reason and "2 consecutive" in halt.reason
    assert second.state.flags[KEY].halt is not None
    assert second.state.flags[KEY].halt.status == "pending"  # write-ahead


def test_pass_resets_and_skip_keeps_the_streak() -> None:
    flag = make_flag()
    decisions = run_sequence(flag, [(0, BAD_T), (2, OK_T), (4, BAD_T), (6, Aggregate.missing("x")), (8, BAD_T)])
    assert [d.evaluations[0].streak for d in decisions] == [1, 0, 1, 1, 2]
    assert [bool(d.halts) for d in decisions] == [False, False, False, False, True]


def test_streak_older_than_max_gap_restarts() -> None:
    # Looks every 2 minutes, none usable between minute 0 and 60: the breaches are an hour apart.
    decisions = run_sequence(make_flag(), [(0, BAD_T), (58, Aggregate.missing("x")), (60, BAD_T), (62, BAD_T)])
    assert [d.evaluations[0].streak for d in decisions] == [1, 1, 1, 2]
    assert not decisions[2].halts and decisions[3].halts


def test_gap_rule_scales_with_the_observed_cadence() -> None:
    # A 30-minute cron: consecutive looks are 30 minutes apart, more than max_gap_minutes (15), and still
    # consecutive, so two confirmations halt (they never did before).
    decisions = run_sequence(make_flag(), [(0, BAD_T), (30, BAD_T)])
    assert [d.evaluations[0].streak for d in decisions] == [1, 2]
    assert decisions[1].halts


def test_same_look_twice_is_not_counted_twice() -> None:
    flag = make_flag()
    first = engine.decide([flag], aggs(GOOD_C, BAD_T), State(), NOW)
    again = engine.decide([flag], aggs(GOOD_C, BAD_T), first.state, NOW)
    assert again.evaluations[0].streak == 1 and not again.halts


def test_confirmations_option() -> None:
    flag = make_flag(extra_metadata={"guardrail.error_rate.confirmations": 1})
    assert one(flag, aggs(GOOD_C, BAD_T)).halts


def test_rollout_is_held_not_reverted() -> None:
    _, second = run_sequence(make_flag(experiment_type="rollout"), [(0, BAD_T), (2, BAD_T)])
    assert second.halts[0].action is HaltAction.HOLD


def test_abn_each_treatment_on_its_own_and_any_halts() -> None:
    flag = make_flag(treatments=("treatment-a", "treatment-b"))
    assert flag.treatment_variants == ("treatment-a", "treatment-b")
    data = {
        (KEY, "control", "error_rate", "5m"): GOOD_C,
        (KEY, "treatment-a", "error_rate", "5m"): OK_T,
        (KEY, "treatment-b", "error_rate", "5m"): BAD_T,
    }
    first = engine.decide([flag], data, State(), NOW)
    second = engine.decide([flag], data, first.state, NOW + timedelta(minutes=2))
    verdicts = {e.treatment_variant: e.verdict for e in second.evaluations}
    assert verdicts == {"treatment-a": Verdict.PASS, "treatment-b": Verdict.BREACH}
    assert second.halts[0].evaluation.treatment_variant == "treatment-b"
    assert "treatment-b" in second.halts[0].reason


def test_not_watched_flags() -> None:
    disabled = make_flag(state="DISABLED")
    held = make_flag(extra_metadata={"guardrail_hold": True})
    assert engine.watched(disabled, State()) == "disabled"
    assert "held" in (engine.watched(held, State()) or "")
    record = HaltRecord(HaltStatus.DONE, HaltAction.REVERT, "r", NOW, "error_rate", "treatment")
    halted_state = State(flags={KEY: FlagState(halt=record)})
    flag = make_flag()
    assert "resume" in (engine.watched(flag, halted_state) or "")
    decision = engine.decide([flag], aggs(GOOD_C, BAD_T), halted_state, NOW)
    assert not decision.evaluations and not decision.halts and KEY in decision.skipped_flags


def test_disabled_flag_forgets_first_seen_so_reenabling_restarts_warmup() -> None:
    prior = State(
        flags={
            KEY: FlagState(first_seen_enabled=NOW - timedelta(days=1), streaks={"error_rate@treatment": Streak(1, NOW)})
        }
    )
    decision = engine.decide([make_flag(state="DISABLED")], {}, prior, NOW)
    assert decision.state.flags[KEY].first_seen_enabled is None
    assert decision.state.flags[KEY].streaks == {}


def test_plan_queries_pins_one_end_and_covers_both_arms() -> None:
    flag = make_flag(
        extra_metadata={
            "guardrail.p95_latency_ms.comparison": "relative_increase",
            "guardrail.p95_latency_ms.threshold": 0.1,
        }
    )
    planned = engine.plan_queries([flag], State(), NOW)
    assert {q.end for _k, q in planned} == {NOW}
    assert {(q.variant, q.metric) for _k, q in planned} == {
        ("control", "error_rate"),
        ("treatment", "error_rate"),
        ("control", "p95_latency_ms"),
        ("treatment", "p95_latency_ms"),
        # the SRM gate's unit counts, since the start (an A/B experiment with a 50/50 split)
        ("control", "exposures"),
        ("treatment", "exposures"),
    }
    assert {q.window for _k, q in planned if q.metric != "exposures"} == {"5m"}


def test_sequential_guardrail_asks_for_a_since_start_window() -> None:
    flag = make_flag(extra_metadata={"guardrail.error_rate.method": "sequential"})
    planned = engine.plan_queries([flag], State(), NOW)
    minutes = int((NOW - flag.started_at).total_seconds() // 60) if flag.started_at else 0
    assert {k[3] for k, _q in planned} == {SINCE_START}
    assert {q.window for _k, q in planned} == {f"{minutes}m"}


def test_sequential_method_decides_from_cumulative_counts() -> None:
    flag = make_flag(method=None)
    assert flag.guardrails[0].method is Method.SEQUENTIAL and flag.guardrails[0].confirmations == 1
    noisy = aggs(Aggregate(0.010, 200_000), Aggregate(0.0104, 200_000), window=SINCE_START)
    e = engine.decide([flag], noisy, State(), NOW).evaluations[0]
    assert e.verdict is Verdict.PASS and e.p_value is not None and e.p_value > 0.05
    harmful = aggs(Aggregate(0.010, 200_000), Aggregate(0.030, 200_000), window=SINCE_START)
    decision = engine.decide([flag], harmful, State(), NOW)
    assert decision.evaluations[0].verdict is Verdict.BREACH and decision.halts  # one look is enough


def test_sequential_tuning_is_frozen_in_state() -> None:
    flag = make_flag(method=None)
    data = aggs(Aggregate(0.010, 5_000), Aggregate(0.011, 5_000), window=SINCE_START)
    first = engine.decide([flag], data, State(), NOW)
    frozen = first.state.flags[KEY].sequential["error_rate@treatment"]
    more = aggs(Aggregate(0.010, 500_000), Aggregate(0.011, 500_000), window=SINCE_START)
    second = engine.decide([flag], more, first.state, NOW + timedelta(minutes=2))
    after = second.state.flags[KEY].sequential["error_rate@treatment"]
    assert (after.v_per_unit, after.minutes_per_unit) == (frozen.v_per_unit, frozen.minutes_per_unit)
    assert after.windows == 2 and after.last_control == (500_000.0, 5_000.0, 5_000.0)


def test_quantile_under_sequential_is_a_config_error_and_the_threshold_rule_in_code() -> None:
    parsed = parse_flags({KEY: flag_definition(metric="p95_latency_ms", method="sequential")})
    assert not parsed.flags and "bucket boundary" in parsed.problems[0].message
    assert make_flag(metric="p95_latency_ms", method=None).guardrails[0].method is Method.THRESHOLD
    flag = make_flag(metric="p95_latency_ms")
    flag = replace(flag, guardrails=(replace(flag.guardrails[0], method=Method.SEQUENTIAL),))
    e = engine.decide(
        [flag], aggs(Aggregate(200.0, 5000), Aggregate(260.0, 5000), metric="p95_latency_ms"), State(), NOW
    ).evaluations[0]
    assert e.verdict is Verdict.BREACH and "quantile metric: threshold rule" in e.reason


def test_decreasing_since_start_counts_are_a_skip_with_a_warning_and_a_new_baseline() -> None:
    flag = make_flag(method=None)
    first = engine.decide(
        [flag], aggs(Aggregate(0.01, 50_000), Aggregate(0.01, 50_000), window=SINCE_START), State(), NOW
    )
    reset = aggs(Aggregate(0.01, 1_000), Aggregate(0.05, 1_000), window=SINCE_START)  # the source restarted
    second = engine.decide([flag], reset, first.state, NOW + timedelta(minutes=2))
    e = second.evaluations[0]
    assert e.verdict is Verdict.SKIP_NO_DATA and "decreased" in e.reason and "warning" in e.reason
    seq = second.state.flags[KEY].sequential["error_rate@treatment"]
    assert seq.last_control == (1_000.0, 10.0, 10.0) and seq.windows == 1  # rebased, nothing added
    third = engine.decide(
        [flag],
        aggs(Aggregate(0.01, 3_000), Aggregate(0.02, 3_000), window=SINCE_START),
        second.state,
        NOW + timedelta(minutes=4),
    )
    assert third.evaluations[0].verdict is Verdict.PASS
    assert third.state.flags[KEY].sequential["error_rate@treatment"].windows == 2


def test_without_started_at_the_first_window_is_projected_over_its_real_length() -> None:
    definition = flag_definition(method=None)
    del definition["metadata"]["started_at"]
    flag = parse_flags({KEY: definition}).flags[0]
    decision = engine.decide(
        [flag], aggs(Aggregate(0.01, 1_000), Aggregate(0.01, 1_000), window=SINCE_START), State(), NOW
    )
    seq = decision.state.flags[KEY].sequential["error_rate@treatment"]
    assert seq.minutes_per_unit == pytest.approx(1 / 2_000)  # 2,000 units in the 1-minute window asked for


def test_reenabling_a_flag_restarts_its_sequential_tests() -> None:
    flag = make_flag(method=None)
    first = engine.decide(
        [flag], aggs(Aggregate(0.01, 50_000), Aggregate(0.01, 50_000), window=SINCE_START), State(), NOW
    )
    assert first.state.flags[KEY].sequential
    off = engine.decide([replace(flag, enabled=False)], {}, first.state, NOW + timedelta(minutes=2))
    assert not off.state.flags[KEY].sequential and off.state.flags[KEY].first_seen_enabled is None


def test_alpha_is_split_across_guardrails_and_arms() -> None:
    flag = make_flag(
        method=None,
        treatments=("a", "b"),
        extra_metadata={
            "guardrail.latency_mean.comparison": "relative_increase",
            "guardrail.latency_mean.threshold": 0.1,
            "guardrail.latency_mean.kind": "mean",
        },
    )
    assert judge.comparisons(flag) == 4
    assert judge.comparison_alpha(flag, flag.guardrails[0]) == pytest.approx(0.0125)
    data = {(KEY, v, "error_rate", SINCE_START): Aggregate(0.01, 10_000) for v in ("control", "a", "b")}
    e = engine.decide([flag], data, State(), NOW).evaluations[0]
    assert "alpha 0.0125 per comparison" in e.reason


def test_sequential_mean_without_stddev_is_no_data() -> None:
    flag = make_flag(metric="order_value", extra_metadata={"guardrail.order_value.method": "sequential"})
    e = engine.decide(
        [flag],
        aggs(Aggregate(50.0, 5000), Aggregate(40.0, 5000), metric="order_value", window=SINCE_START),
        State(),
        NOW,
    ).evaluations[0]
    assert e.verdict is Verdict.SKIP_NO_DATA and "stddev" in e.reason


def test_sequential_decides_when_an_arm_is_at_exactly_zero() -> None:
    flag = make_flag(
        metric="conversion_rate",
        method=None,
        extra_metadata={"guardrail.conversion_rate.comparison": "relative_decrease"},
    )
    data = aggs(Aggregate(0.05, 100_000), Aggregate(0.0, 100_000), metric="conversion_rate", window=SINCE_START)
    e = engine.decide([flag], data, State(), NOW).evaluations[0]
    assert e.verdict is Verdict.BREACH


def test_sequential_zero_control_is_tested_not_an_automatic_breach() -> None:
    flag = make_flag(method=None)
    stray = aggs(Aggregate(0.0, 150), Aggregate(1 / 150, 150), window=SINCE_START)
    assert engine.decide([flag], stray, State(), NOW).evaluations[0].verdict is Verdict.PASS
    # The relative (delta-method) test needs some events in control to conclude; with a few dozen it does.
    bug = aggs(Aggregate(25 / 50_000, 50_000), Aggregate(0.05, 50_000), window=SINCE_START)
    assert engine.decide([flag], bug, State(), NOW).evaluations[0].verdict is Verdict.BREACH


def test_per_unit_sums_from_the_source_give_the_unit_variance() -> None:
    """A ratio metric with its per-unit sums (a warehouse source): 20 heavy users per arm, half of them with
    every error. The binomial variance calls a 40 % gap a breach; the users' variance does not."""
    flag = make_flag(method=None)

    def arm(rate: float, per_unit: bool) -> Aggregate:
        x = [10_000.0 * rate] * 10 + [0.0] * 10  # errors per user; 5,000 requests each
        sums = dict(
            units=20,
            num_sum=sum(x),
            num_sum_sq=sum(v * v for v in x),
            den_sum=100_000.0,
            den_sum_sq=20 * 5_000.0**2,
            num_den_sum=sum(v * 5_000.0 for v in x),
        )
        return Aggregate(sum(x) / 100_000, 100_000, **(sums if per_unit else {}))  # type: ignore[arg-type]

    def verdict(per_unit: bool) -> Verdict:
        data = aggs(arm(0.01, per_unit), arm(0.014, per_unit), window=SINCE_START)
        return engine.decide([flag], data, State(), NOW + timedelta(hours=1)).evaluations[0].verdict

    assert verdict(per_unit=False) is Verdict.BREACH
    assert verdict(per_unit=True) is Verdict.PASS


def test_a_sequential_look_on_clustered_windows_suggests_the_dispersion_to_configure() -> None:
    """After two hours of 2-minute windows whose counts vary ~8× more than binomial, the look's reason says which
    `dispersion` to set; once set to that value, it no longer does."""
    import numpy as np

    from guardrail.model import Method, MetricKind, SeqState

    g = replace(make_flag().guardrails[0], method=Method.SEQUENTIAL, kind=MetricKind.PROPORTION)
    rng = np.random.default_rng(9)
    n_c = n_t = x_c = x_t = 0
    state, configured = SeqState(), SeqState()
    floor = replace(g, dispersion=8.0)
    for k in range(1, 61):
        p_c, p_t = rng.beta(1.42, 140.6, 2)
        n_c, n_t = n_c + 1000, n_t + 1000
        x_c, x_t = x_c + int(rng.binomial(1000, p_c)), x_t + int(rng.binomial(1000, p_t))
        control, treatment = Aggregate(x_c / n_c, n_c), Aggregate(x_t / n_t, n_t)
        outcome, state = judge.sequential_look(g, control, treatment, state, minutes=2.0 * k, alpha=0.05)
        known, configured = judge.sequential_look(floor, control, treatment, configured, minutes=2.0 * k, alpha=0.05)
        if k == 59:
            assert "events cluster" not in outcome.reason  # one window short of seqtest.HINT_WINDOWS
    assert "events cluster (dispersion " in outcome.reason and "set `dispersion: " in outcome.reason
    assert "events cluster" not in known.reason
