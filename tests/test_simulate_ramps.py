"""`guardrail simulate --scenario ramps`: its test is the engine's, and whole A/A ramps stay within alpha."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from guardrail import simulate_ramps, stats
from guardrail.model import Comparison


@pytest.mark.parametrize(("n_c", "x_c", "n_t", "x_t"), [(99_000, 990, 1_000, 12), (50_000, 500, 50_000, 700)])
def test_vectorised_bounds_are_stats_harm_test(n_c: int, x_c: int, n_t: int, x_t: int) -> None:
    alpha, tuning = 0.0125, 20_000.0
    a_nc, a_xc, a_nt, a_xt = (np.array([float(v)]) for v in (n_c, x_c, n_t, x_t))
    lower, upper = simulate_ramps._sequential(a_nc, a_xc, a_nt, a_xt, np.array([tuning]), alpha)
    m_c, m_t = (x_c + 0.5) / (n_c + 1), (x_t + 0.5) / (n_t + 1)
    result = stats.harm_test(
        comparison=Comparison.RELATIVE_INCREASE,
        threshold=0.1,
        control_mean=m_c,
        control_var=m_c * (1 - m_c),
        n_control=n_c,
        treatment_mean=m_t,
        treatment_var=m_t * (1 - m_t),
        n_treatment=n_t,
        alpha=alpha,
        tuning_n=tuning,
    )
    assert result is not None
    assert lower[0] == pytest.approx(result.lower_bound, rel=1e-12)
    assert upper[0] == pytest.approx(2 * result.estimate - result.lower_bound, rel=1e-12)


def test_whole_a_a_ramps_with_a_drifting_base_rate_stay_within_alpha_and_pooling_does_not() -> None:
    """The issue's audit: A/A ramped 5 -> 50 % over two days while the base rate drifts 1 -> 2 %. Deciding on
    each step's own data keeps false rollbacks of whole ramps at most alpha (with a margin for Monte Carlo
    error); pooling since-start aggregates over steps (Simpson's paradox) rolls back nearly every one."""
    base = simulate_ramps.RampScenario(
        "drift",
        units_per_minute=1000,
        base_rate=0.01,
        effect=1.0,
        threshold=0.1,
        alpha=0.05,
        confirmations=1,
        step_minutes=960,
        cadence=10,
        days=2,
        runs=300,
        steps=(5, 25, 50, 100),
        drift=1.0,
    )
    ours = simulate_ramps.run(base, np.random.default_rng(7))
    assert ours["rolled_back"] / ours["runs"] <= 0.05 + 0.03
    assert ours["shipped"] == ours["runs"] - ours["rolled_back"]
    naive = simulate_ramps.run(replace(base, pooled=True), np.random.default_rng(7))
    assert naive["rolled_back"] / naive["runs"] > 0.5


def test_a_harmful_ramp_rolls_back_early_with_less_exposure_than_a_50_50_ab() -> None:
    base = simulate_ramps.RampScenario(
        "harm",
        units_per_minute=1000,
        base_rate=0.01,
        effect=3.0,
        threshold=0.1,
        alpha=0.05,
        confirmations=2,
        step_minutes=30,
        cadence=2,
        days=1,
        runs=100,
    )
    ramp = simulate_ramps.run(base, np.random.default_rng(3))
    ab = simulate_ramps.run(replace(base, mode="ab"), np.random.default_rng(3))
    assert ramp["rolled_back"] == ab["rolled_back"] == 100
    assert ramp["median_step_stopped"] <= 5
    assert ramp["median_treatment_units_exposed"] < ab["median_treatment_units_exposed"]


def test_srm_fault_is_held() -> None:
    base = simulate_ramps.RampScenario(
        "srm",
        units_per_minute=1000,
        base_rate=0.01,
        effect=1.0,
        threshold=0.1,
        alpha=0.05,
        confirmations=2,
        step_minutes=30,
        cadence=2,
        days=1,
        runs=50,
        lost_treatment=0.1,
    )
    result = simulate_ramps.run(base, np.random.default_rng(5))
    assert result["srm_hold"] == 50 and result["shipped"] == 0


def test_proven_safe_rarely_advances_a_harm_at_the_threshold() -> None:
    """Harm exactly at the 10 % margin: `proven_safe` may advance a step only by error, at most alpha / 4 per
    step; the share of ramps that advanced at all must stay below alpha (plus Monte Carlo margin), while
    `no_harm` (which only asks for no proven harm) advances nearly all of them."""
    base = simulate_ramps.RampScenario(
        "margin",
        units_per_minute=20_000,
        base_rate=0.01,
        effect=1.1,
        threshold=0.1,
        alpha=0.05,
        confirmations=2,
        step_minutes=30,
        cadence=10,
        days=2,
        runs=200,
        mode="proven_safe",
    )
    safe = simulate_ramps.run(base, np.random.default_rng(11))
    assert safe["advanced"] / safe["runs"] <= 0.05 + 0.03
    lax = simulate_ramps.run(replace(base, mode="no_harm", days=0.25), np.random.default_rng(11))
    assert lax["advanced"] / lax["runs"] > 0.9
