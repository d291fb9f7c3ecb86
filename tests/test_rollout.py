"""Ramped rollouts: parsing the schedule, the pure decision of one run, and its hooks in the engine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from guardrail import config, engine, rollout
from guardrail.model import (
    SINCE_START,
    Aggregate,
    AggregateKey,
    FlagState,
    HaltAction,
    RampAction,
    RampState,
    Severity,
    State,
)
from tests.conftest import rollout_definition as definition

KEY = "checkout.payments.new-flow"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def ab_definition(share: int = 50) -> dict[str, Any]:
    return definition(
        share, experiment_type="ab", **{"guardrail.ramp.steps": None, "guardrail.ramp.step_minutes": None}
    )


def parse(defn: dict[str, Any], key: str = KEY) -> Any:
    return config.parse_flags({key: defn, "other.flag.ab": ab_definition()})


def flag(share: int = 1, **metadata: Any) -> Any:
    parsed = parse(definition(share, **metadata))
    assert not parsed.problems, parsed.problems
    return next(f for f in parsed.flags if f.key == KEY)


def aggs(
    share: int, *, n: int = 400_000, pc: float = 0.01, pt: float = 0.01, exposures: tuple[int, int] | None = None
) -> dict[AggregateKey, Aggregate]:
    nt = n * share // 100
    nc = n - nt
    out = {
        (KEY, "control", "error_rate", SINCE_START): Aggregate(pc, nc),
        (KEY, "treatment", "error_rate", SINCE_START): Aggregate(pt, nt),
    }
    units = exposures or (nc, nt)
    out[(KEY, "control", "exposures", SINCE_START)] = Aggregate(float(units[0]), units[0])
    out[(KEY, "treatment", "exposures", SINCE_START)] = Aggregate(float(units[1]), units[1])
    return out


def on_step(step: int, minutes: float, **extra: Any) -> State:
    ramp = RampState(step=step, step_started_at=NOW - timedelta(minutes=minutes))
    return State(flags={KEY: FlagState(first_seen_enabled=NOW - timedelta(days=1), ramp=ramp, **extra)})


def ramp_of(decision: Any) -> Any:
    (d,) = [r for r in decision.ramps if r.flag == KEY]
    return d


# ---- parsing ----------------------------------------------------------------------------------------------


def test_schedule_is_parsed_with_defaults() -> None:
    f = flag()
    assert f.ramp is not None
    assert f.ramp.steps == (1, 5, 25, 50, 100)
    assert f.ramp.step_minutes == (30.0,) * 5
    assert f.ramp.advance.value == "no_harm" and f.ramp.on_breach.value == "rollback"
    assert f.srm.metric == "exposures" and f.srm.action.value == "hold"
    assert [g.metric for g in f.guardrails] == ["error_rate"]  # ramp keys are not a metric called "ramp"


@pytest.mark.parametrize(
    ("metadata", "field", "words"),
    [
        ({"guardrail.ramp.steps": "1,5,5,50"}, "metadata.guardrail.ramp.steps", "must increase"),
        ({"guardrail.ramp.steps": "1,25,10"}, "metadata.guardrail.ramp.steps", "must increase"),
        ({"guardrail.ramp.steps": "1,50,150"}, "metadata.guardrail.ramp.steps", "outside 1..100"),
        ({"guardrail.ramp.steps": "0.5,5,100"}, "metadata.guardrail.ramp.steps", "whole percent"),
        ({"guardrail.ramp.steps": "1,x"}, "metadata.guardrail.ramp.steps", "could not convert"),
        ({"guardrail.ramp.step_minutes": "30,30"}, "metadata.guardrail.ramp.step_minutes", "2 values for 5 steps"),
        ({"guardrail.ramp.advance": "yolo"}, "metadata.guardrail.ramp.advance", "proven_safe"),
        ({"guardrail.ramp.on_breach": "panic"}, "metadata.guardrail.ramp.on_breach", "rollback or hold"),
        ({"guardrail.ramp.min_count": -3}, "metadata.guardrail.ramp.min_count", ">= 0"),
        ({"guardrail.ramp.speed": 3}, "metadata.guardrail.ramp.speed", "unknown ramp option"),
        ({"experiment_type": "ab"}, "metadata.experiment_type", "needs experiment_type: rollout"),
        ({"guardrail.srm.action": "explode"}, "metadata.guardrail.srm.action", "hold, rollback or warn"),
    ],
)
def test_bad_schedule_names_flag_and_field_and_other_flags_still_run(
    metadata: dict[str, Any], field: str, words: str
) -> None:
    parsed = parse(definition(1, **metadata))
    problems = [p for p in parsed.problems if p.flag == KEY]
    assert problems and any(p.field == field and words in p.message for p in problems), problems
    assert f"flag {KEY!r}" in str(problems[0]) and field in str(problems[0])
    assert [f.key for f in parsed.flags] == ["other.flag.ab"]  # the other flag is still decided


def test_a_step_the_variants_cannot_express_is_an_error() -> None:
    defn = definition(0)
    defn["variants"] = {"blue": "b", "green": "g", "control": "c"}
    defn["targeting"] = {"fractional": [["blue", 0], ["green", 0], ["control", 100]]}
    parsed = parse(defn)
    (problem,) = [p for p in parsed.problems if p.flag == KEY]
    assert problem.field == "metadata.guardrail.ramp.steps"
    assert "[1, 5, 25]" in problem.message and "2 treatment variants" in problem.message


def test_a_ramp_needs_a_fractional_split() -> None:
    defn = definition(1)
    del defn["targeting"]
    (problem,) = [p for p in parse(defn).problems if p.flag == KEY]
    assert problem.field == "targeting" and "fractional" in problem.message


# ---- decisions ----------------------------------------------------------------------------------------------


def test_first_run_writes_the_first_step() -> None:
    f = flag(0)
    decision = engine.decide([f], {}, State(), NOW)
    d = ramp_of(decision)
    assert d.action is RampAction.START and d.to_step == 0 and d.shares == {"treatment": 1, "control": 99}


def test_first_run_on_a_split_at_a_step_adopts_it() -> None:
    decision = engine.decide([flag(5)], aggs(5), State(), NOW)
    d = ramp_of(decision)
    assert d.action is RampAction.ADOPT and d.to_step == 1 and not d.shares
    ramp = decision.state.flags[KEY].ramp
    assert ramp is not None and ramp.step == 1 and ramp.step_started_at == NOW


def test_holds_until_the_step_time_has_passed_and_says_so() -> None:
    d = ramp_of(engine.decide([flag(5)], aggs(5), on_step(1, 18), NOW))
    assert d.action is RampAction.HOLD and not d.shares
    assert d.waits_for == ("12 min left on step 2 (5 %)",)


def test_advances_when_time_counts_and_no_harm() -> None:
    d = ramp_of(engine.decide([flag(5)], aggs(5), on_step(1, 31), NOW))
    assert d.action is RampAction.ADVANCE and d.to_step == 2
    assert d.shares == {"treatment": 25, "control": 75}


def test_reaching_the_last_step_ships_and_a_shipped_flag_is_not_watched() -> None:
    decision = engine.decide([flag(50)], aggs(50), on_step(3, 31), NOW)
    d = ramp_of(decision)
    assert d.action is RampAction.SHIP and d.shares == {"treatment": 100, "control": 0}
    shipped = on_step(4, 0)
    shipped = State(flags={KEY: FlagState(ramp=RampState(4, NOW, shipped_at=NOW))})
    later = engine.decide([flag(100)], {}, shipped, NOW + timedelta(hours=1))
    assert not later.ramps and "shipped" in later.skipped_flags[KEY]
    assert engine.plan_queries([flag(100)], shipped, NOW) == []


def test_a_guardrail_below_its_min_count_blocks_the_advance() -> None:
    d = ramp_of(engine.decide([flag(1)], aggs(1, n=5000), on_step(0, 60), NOW))
    assert d.action is RampAction.HOLD
    assert any("need 100 in each arm" in w for w in d.waits_for)


def test_ramp_min_count_counts_units_per_arm_on_the_step() -> None:
    f = flag(1, **{"guardrail.ramp.min_count": 10_000})
    d = ramp_of(engine.decide([f], aggs(1), on_step(0, 60), NOW))
    assert d.waits_for == ("units per arm 4000 of 10000 on this step",)


def test_proven_harm_rolls_back_as_a_halt() -> None:
    decision = engine.decide([flag(5)], aggs(5, pt=0.03), on_step(1, 5), NOW)
    d = ramp_of(decision)
    (halt,) = decision.halts
    assert d.action is RampAction.ROLLBACK and halt.action is HaltAction.REVERT
    assert decision.state.flags[KEY].halt is not None
    assert decision.state.flags[KEY].halt.action is HaltAction.REVERT  # type: ignore[union-attr]


def test_on_breach_hold_keeps_the_step() -> None:
    f = flag(5, **{"guardrail.ramp.on_breach": "hold"})
    decision = engine.decide([f], aggs(5, pt=0.03), on_step(1, 5), NOW)
    assert ramp_of(decision).action is RampAction.HOLD
    assert decision.halts[0].action is HaltAction.HOLD


def test_harm_not_yet_confirmed_blocks_the_advance() -> None:
    f = flag(5, **{"guardrail.error_rate.confirmations": 2})
    d = ramp_of(engine.decide([f], aggs(5, pt=0.03), on_step(1, 60), NOW))
    assert d.action is RampAction.HOLD and d.waits_for == ("error_rate: shows harm (1 of 2 confirmations)",)


def test_a_held_flag_never_advances() -> None:
    f = flag(5, guardrail_hold=True)
    decision = engine.decide([f], aggs(5), on_step(1, 600), NOW)
    assert not decision.ramps and "held" in decision.skipped_flags[KEY]


def test_proven_safe_waits_for_the_upper_bound_then_advances() -> None:
    f = flag(1, **{"guardrail.ramp.advance": "proven_safe"})
    d = ramp_of(engine.decide([f], aggs(1, n=400_000), on_step(0, 60), NOW))
    assert d.action is RampAction.HOLD
    (wait,) = d.waits_for
    assert wait.startswith("error_rate: upper bound +") and wait.endswith("vs threshold 10%")
    # About 90,000 treatment units on the step prove a 10 % margin at a 1 % base rate; give it plenty.
    d = ramp_of(engine.decide([f], aggs(1, n=40_000_000), on_step(0, 600), NOW))
    assert d.action is RampAction.ADVANCE, d.waits_for


def test_alpha_is_split_over_the_watched_steps() -> None:
    f = flag(1)
    assert rollout.for_step(f).guardrails[0].alpha == pytest.approx(f.guardrails[0].alpha / 4)


def test_queries_start_at_the_step_start() -> None:
    state = on_step(2, 90)
    planned = dict(engine.plan_queries([flag(25)], state, NOW))
    windows = {q.window for q in planned.values()}
    assert windows == {"90m"}  # not the day since the rollout began
    assert (KEY, "treatment", "exposures", SINCE_START) in planned


def test_split_moved_to_another_step_by_hand_is_adopted_and_a_non_step_holds() -> None:
    decision = engine.decide([flag(25)], aggs(25), on_step(1, 60), NOW)
    assert ramp_of(decision).action is RampAction.ADOPT
    assert decision.state.flags[KEY].ramp.step == 2  # type: ignore[union-attr]
    d = ramp_of(engine.decide([flag(7)], aggs(7), on_step(1, 60), NOW))
    assert d.action is RampAction.HOLD and "not step 2 (5 %)" in d.waits_for[0]


# ---- SRM gate -------------------------------------------------------------------------------------------------


def test_srm_mismatch_holds_the_ramp_with_counts_in_the_reason() -> None:
    decision = engine.decide([flag(50)], aggs(50, exposures=(200_000, 180_000)), on_step(3, 60), NOW)
    (srm_result,) = decision.srm
    assert srm_result.verdict == "mismatch" and srm_result.p_value is not None and srm_result.p_value < 1e-10
    (halt,) = decision.halts
    assert halt.action is HaltAction.HOLD and "sample ratio mismatch" in halt.reason
    assert "treatment 180000" in halt.reason and "configured 50.00%" in halt.reason
    assert ramp_of(decision).action is RampAction.HOLD


def test_srm_rollback_and_warn() -> None:
    bad = aggs(50, exposures=(200_000, 180_000))
    f = flag(50, **{"guardrail.srm.action": "rollback"})
    assert engine.decide([f], bad, on_step(3, 60), NOW).halts[0].action is HaltAction.REVERT
    f = flag(50, **{"guardrail.srm.action": "warn"})
    decision = engine.decide([f], bad, on_step(3, 60), NOW)
    assert not decision.halts and decision.srm[0].alert
    assert ramp_of(decision).action is RampAction.SHIP  # warn changes nothing
    again = engine.decide([f], bad, decision.state, NOW + timedelta(minutes=2))
    assert not again.srm[0].alert  # paged once


def test_no_exposures_metric_gives_no_verdict_and_halts_nothing() -> None:
    data = aggs(5)
    for arm in ("control", "treatment"):
        data[(KEY, arm, "exposures", SINCE_START)] = Aggregate.missing("HTTP 404: no such series")
    decision = engine.decide([flag(5)], data, on_step(1, 60), NOW)
    (srm_result,) = decision.srm
    assert srm_result.verdict == "no_data" and "404" in srm_result.reason
    assert not decision.halts and ramp_of(decision).action is RampAction.ADVANCE


def test_srm_for_ab_experiments_against_configured_weights() -> None:
    parsed = config.parse_flags({"x.y.z": ab_definition(20)})
    (f,) = parsed.flags
    data = {
        ("x.y.z", "control", "exposures", SINCE_START): Aggregate(8000.0, 8000),
        ("x.y.z", "treatment", "exposures", SINCE_START): Aggregate(2000.0, 2000),
    }
    assert engine.decide([f], data, State(), NOW).srm[0].verdict == "ok"
    data[("x.y.z", "treatment", "exposures", SINCE_START)] = Aggregate(1700.0, 1700)
    decision = engine.decide([f], data, State(), NOW)
    assert decision.srm[0].verdict == "mismatch" and decision.halts[0].action is HaltAction.HOLD


def test_validate_names_the_bad_step_line_and_warns_about_quantile_guardrails() -> None:
    from datetime import date

    from guardrail import validate

    text = """flags:
  a.b.bad:
    state: ENABLED
    variants: {treatment: true, control: false}
    defaultVariant: control
    targeting:
      fractional: [[treatment, 1], [control, 99]]
    metadata:
      experiment_type: rollout
      guardrail.p95_latency_ms.comparison: relative_increase
      guardrail.p95_latency_ms.threshold: 0.1
      guardrail.ramp.steps: "1,5,150"
  a.b.good:
    state: ENABLED
    variants: {treatment: true, control: false}
    defaultVariant: control
    targeting:
      fractional: [[treatment, 1], [control, 99]]
    metadata:
      experiment_type: rollout
      guardrail.p95_latency_ms.comparison: relative_increase
      guardrail.p95_latency_ms.threshold: 0.1
      guardrail.ramp.steps: "1,5,100"
"""
    findings = validate.validate_text(text, source="flags.yaml", today=date(2026, 12, 1))
    by_flag = {(f.flag, f.severity): f for f in findings}
    bad = by_flag[("a.b.bad", Severity.ERROR)]
    assert bad.field == "metadata.guardrail.ramp.steps" and bad.line == 12 and "150" in bad.message
    warning = by_flag[("a.b.good", Severity.WARNING)]
    assert "only through its threshold rule" in warning.message
