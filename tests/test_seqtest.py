"""The default sequential test (guardrail/seqtest.py) against scipy oracles, hand values and Monte Carlo."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import integrate, special, stats

from guardrail import seqtest
from guardrail.model import Comparison, SeqState
from guardrail.seqtest import Settings, Sums

INC = Comparison.RELATIVE_INCREASE


@pytest.mark.parametrize("s", [-40.0, -3.0, 0.0, 1.0, 4.0, 12.0])
@pytest.mark.parametrize(("v", "rho"), [(10.0, 5.0), (1000.0, 300.0), (1.0, 50.0)])
def test_mixture_e_value_is_the_half_normal_mixture_integral(s: float, v: float, rho: float) -> None:
    def integrand(theta: float) -> float:
        return (
            math.exp(theta * s - theta * theta * v / 2.0) * 2.0 * float(stats.norm.pdf(theta, scale=1 / math.sqrt(rho)))
        )

    value, _err = integrate.quad(integrand, 0.0, np.inf, limit=200)
    assert seqtest.log_mixture_e(s, v, rho) == pytest.approx(math.log(value), rel=1e-6, abs=1e-6)


def test_erfcc_matches_scipy_to_its_published_accuracy() -> None:
    z = np.linspace(-6.0, 6.0, 2001)
    ours = np.array([seqtest.erfcc(float(x)) for x in z])
    assert np.max(np.abs(ours / special.erfc(z) - 1.0)) < 1.2e-7  # Numerical Recipes §6.2


def test_log_phi_in_both_tails_matches_scipy() -> None:
    for x in (-45.0, -30.0001, -29.999, -8.0, -5.0, -1.0, 0.0, 3.0, 9.0):
        assert seqtest._log_phi(x) == pytest.approx(float(special.log_ndtr(x)), rel=2e-6, abs=2e-7)


def test_tuning_factor_gives_the_published_rho() -> None:
    # ρ(N* = 10⁴, α = .05, one-sided) = 1580.06 (Howard et al. 2021 §3.5 / confseq best_rho with α′ = 2α).
    assert 1e4 / seqtest.tuning_factor(0.05) == pytest.approx(1580.06, abs=0.01)


def test_restart_weights_sum_to_one() -> None:
    head = math.fsum(seqtest.restart_weight(j) for j in range(1, 2_000_000))
    tail = 1.0 / math.log(2_000_001.0) / seqtest._RESTART_Z
    assert head + tail == pytest.approx(1.0, abs=1e-6)
    assert seqtest.restart_weight(500) > 1e-5  # a day-7 restart (20-minute grid) keeps real weight


def test_window_contrast_by_hand() -> None:
    # 1000 units per arm, 10 vs 30 errors, threshold 10 %: D = 500·(0.03 − 1.1·0.01) = 9.5.
    d, v, w = seqtest.window_contrast(INC, 0.10, True, (1000.0, 10.0, 10.0), (1000.0, 30.0, 30.0)) or (0, 0, 0)
    assert w == 500.0 and d == pytest.approx(9.5)
    p_c = 41.0 / (1.1 * 1000.0 + 1000.0 + 2.0)
    p_t = 1.1 * p_c
    assert v == pytest.approx(500.0**2 * (p_t * (1 - p_t) / 1000 + 1.21 * p_c * (1 - p_c) / 1000))
    # a decrease guardrail on a mean metric: D = w·((1 − δ)·m_C − m_T), variances from the sums of squares
    control, treatment = (100.0, 500.0, 2600.0), (100.0, 400.0, 1700.0)
    d, v, w = seqtest.window_contrast(Comparison.RELATIVE_DECREASE, 0.1, False, control, treatment) or (0, 0, 0)
    assert d == pytest.approx(50.0 * (0.9 * 5.0 - 4.0))
    var_c, var_t = (2600.0 - 2500.0) / 99.0, (1700.0 - 1600.0) / 99.0
    assert v == pytest.approx(50.0**2 * (var_t / 100.0 + 0.81 * var_c / 100.0))
    assert seqtest.window_contrast(INC, 0.1, True, (1.0, 0.0, 0.0), (5.0, 1.0, 1.0)) is None  # too small


def test_stratified_contrast_is_unbiased_when_the_split_and_the_base_rate_move() -> None:
    """Simpson: pooled since-start rates show a 'harm' when the treatment gets its traffic later, at a higher
    base rate; the per-window contrast has mean ≤ 0 exactly at the threshold."""
    rng = np.random.default_rng(3)
    total = 0.0
    pooled_c, pooled_t = np.zeros(2), np.zeros(2)
    for i in range(200):
        share, base = 0.05 + 0.45 * i / 199, 0.01 * (1 + i / 199)
        n_t, n_c = 2000 * share, 2000 * (1 - share)
        e_t, e_c = n_t * base * 1.1, n_c * base  # expected counts at the threshold (ratio exactly 1.1)
        d, _v, _w = seqtest.window_contrast(INC, 0.10, True, (n_c, e_c, e_c), (n_t, e_t, e_t)) or (0, 0, 0)
        total += d
        pooled_c += (n_c, e_c)
        pooled_t += (n_t, e_t)
    assert abs(total) < 1e-9
    assert (pooled_t[1] / pooled_t[0]) / (pooled_c[1] / pooled_c[0]) > 1.2  # pooling would have "seen" +20 %
    del rng


def test_unit_variance_is_the_delta_method_for_a_ratio_of_unit_sums() -> None:
    rng = np.random.default_rng(4)
    n_u = rng.poisson(20, 5000).astype(float) + 1
    y_u = rng.binomial(n_u.astype(int), rng.beta(0.2, 19.8, 5000)).astype(float)
    arm = Sums(
        n=n_u.sum(),
        total=y_u.sum(),
        total_sq=y_u.sum(),
        units=5000.0,
        unit_sum=y_u.sum(),
        unit_sum_sq=(y_u**2).sum(),
        unit_count_sq=(n_u**2).sum(),
        unit_cross=(y_u * n_u).sum(),
    )
    r = y_u.sum() / n_u.sum()
    expected = np.var(y_u - r * n_u, ddof=1) / (5000 * n_u.mean() ** 2)
    assert seqtest.unit_variance(arm) == pytest.approx(expected, rel=1e-9)
    binomial = r * (1 - r) / n_u.sum()
    assert seqtest.unit_variance(arm) > 1.5 * binomial  # users with their own rates: far more than binomial


def settings(alpha: float = 0.05) -> Settings:
    return Settings(INC, 0.10, alpha)


def feed(windows: list[tuple[float, float, float, float]], minutes: float = 2.0) -> tuple[SeqState, seqtest.Result]:
    state, result = SeqState(), None
    cum = np.zeros(4)
    for k, window in enumerate(windows, start=1):
        cum += window
        n_c, x_c, n_t, x_t = (float(x) for x in cum)
        state, result = seqtest.step(
            state, Sums(n_c, x_c, x_c), Sums(n_t, x_t, x_t), minutes=k * minutes, settings=settings(), proportion=True
        )
    assert result is not None
    return state, result


def test_a_late_regression_is_caught_by_the_restarts_not_by_the_diluted_since_start_test() -> None:
    calm = [(1000.0, 10.0, 1000.0, 10.0)] * 720  # a day of 2-minute windows at exactly the base rate
    harm = [(1000.0, 10.0, 1000.0, 30.0)] * 6  # then 3x for 12 minutes
    state, result = feed(calm + harm)
    assert result.breach and result.late_p_value < 0.005 and result.p_value > 0.004
    assert len(state.restarts) == seqtest.MAX_RESTARTS and state.restarts[-1][0] == 72


def test_dispersion_is_learnt_from_the_windows() -> None:
    rng = np.random.default_rng(9)
    windows = []
    for _ in range(400):  # beta-binomial windows: D ≈ 1 + (n − 1)·icc = 1 + 999/142 ≈ 8
        p_c, p_t = rng.beta(1.42, 140.6, 2)
        windows.append((1000.0, float(rng.binomial(1000, p_c)), 1000.0, float(rng.binomial(1000, p_t))))
    _state, result = feed(windows)
    assert 5.5 < result.dispersion < 10.5
    _state, textbook = feed([(1000.0, float(x), 1000.0, float(y)) for x, y in rng.poisson(10, (400, 2))])
    assert textbook.dispersion < 1.3


def test_a_configured_dispersion_is_a_floor_under_the_estimate() -> None:
    """The guardrail's `dispersion` option: D̂ never goes below what the user knows the traffic has, and the
    same data then gives a weaker e-value (a larger p)."""
    windows = [(1000.0, 10.0, 1000.0, 16.0)] * 10
    cum, state, floored = np.zeros(4), SeqState(), SeqState()
    result = known = None
    for k, window in enumerate(windows, start=1):
        cum += window
        n_c, x_c, n_t, x_t = (float(x) for x in cum)
        args = (Sums(n_c, x_c, x_c), Sums(n_t, x_t, x_t))
        state, result = seqtest.step(state, *args, minutes=2.0 * k, settings=settings(), proportion=True)
        floored, known = seqtest.step(
            floored, *args, minutes=2.0 * k, settings=replace(settings(), min_dispersion=6.0), proportion=True
        )
    assert result is not None and known is not None
    assert result.dispersion < 6.0 and known.dispersion == 6.0
    assert known.p_value > result.p_value


def test_monte_carlo_gaussian_increments_obey_ville() -> None:
    """Exact-model check of the e-process: Gaussian contrasts with drift 0 (the null's boundary), 400 paths ×
    2000 looks. P(sup_t E_t ≥ 1/α) ≤ α: fails if the mixture were not a supermartingale."""
    rng = np.random.default_rng(12)
    s = np.cumsum(rng.standard_normal((400, 2000)), axis=1)
    v = np.arange(1, 2001, dtype=float)
    log_e = np.array(
        [
            [seqtest.log_mixture_e(float(a), float(b), 15.0) for a, b in zip(row, v[::5], strict=True)]
            for row in s[:, ::5]
        ]
    )
    rate = float(np.mean(log_e.max(axis=1) >= math.log(20.0)))
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)
    assert rate > 0.0  # the check can see a crossing at all


def test_decreasing_counts_rebase_without_learning() -> None:
    state, _ = feed([(1000.0, 10.0, 1000.0, 10.0)] * 3)
    after, result = seqtest.step(
        state, Sums(500.0, 5.0, 5.0), Sums(500.0, 5.0, 5.0), minutes=8.0, settings=settings(), proportion=True
    )
    assert result.skipped is not None and "decreased" in result.skipped and not result.breach
    assert after.windows == state.windows and after.last_control == (500.0, 5.0, 5.0)


def test_per_unit_variance_keeps_persistent_users_from_halting() -> None:
    """A fixed offset between arms that comes from which users landed where is not harm: with per-unit sums
    the variance is the unit's, and a 40 % gap between 20 heavy users per arm is no evidence."""

    def arm(rate: float) -> Sums:
        # 20 users × 5000 requests; half the users at 2 × rate, half at 0: a large between-user variance
        y = np.concatenate([np.full(10, 10_000.0 * rate), np.zeros(10)])
        n = np.full(20, 5000.0)
        return Sums(
            n=n.sum(),
            total=y.sum(),
            total_sq=y.sum(),
            units=20.0,
            unit_sum=y.sum(),
            unit_sum_sq=(y**2).sum(),
            unit_count_sq=(n**2).sum(),
            unit_cross=(y * n).sum(),
        )

    plain = [seqtest.Sums(a.n, a.total, a.total_sq) for a in (arm(0.01), arm(0.014))]
    _s, binomial = seqtest.step(SeqState(), plain[0], plain[1], minutes=60.0, settings=settings(), proportion=True)
    _s, unit = seqtest.step(SeqState(), arm(0.01), arm(0.014), minutes=60.0, settings=settings(), proportion=True)
    assert binomial.breach and not unit.breach and "per-unit" in unit.note


@pytest.mark.parametrize(
    ("control", "treatment"),
    [
        (Sums(1e300, 1e298, 1e298), Sums(1e300, 5e298, 5e298)),
        (Sums(5.0, 0.0, 0.0), Sums(5.0, 5.0, 5.0)),
        (Sums(1e6, 0.0, 0.0), Sums(1e6, 0.0, 0.0)),
        (Sums(1e4, 1e4, 1e4), Sums(1e4, 1e4, 1e4)),  # every unit an event: p = 1 in both arms
        (Sums(1e4, 5.0, 5.0, units=float("nan"), unit_sum=1.0, unit_sum_sq=-3.0), Sums(1e4, 9.0, 9.0)),
    ],
)
def test_extreme_inputs_never_raise(control: Sums, treatment: Sums) -> None:
    state, result = seqtest.step(SeqState(), control, treatment, minutes=2.0, settings=settings(), proportion=True)
    state, result = seqtest.step(state, control, treatment, minutes=4.0, settings=settings(), proportion=True)
    assert 0.0 <= result.p_value <= 1.0 and 0.0 <= result.late_p_value <= 1.0


def test_clustering_learnt_over_an_hour_is_suggested_as_the_dispersion_to_configure() -> None:
    rng = np.random.default_rng(9)
    windows = []
    for _ in range(60):  # beta-binomial windows, D ≈ 8
        p_c, p_t = rng.beta(1.42, 140.6, 2)
        windows.append((1000.0, float(rng.binomial(1000, p_c)), 1000.0, float(rng.binomial(1000, p_t))))
    early, _ = feed(windows[:40])
    assert seqtest.suggested_floor(early) is None  # 40 windows: too few to say (HINT_WINDOWS is 60)
    state, _ = feed(windows)
    hint = seqtest.suggested_floor(state)
    assert hint is not None and hint == round(seqtest.dispersion(state), 1) and hint >= 3.0
    assert seqtest.suggested_floor(state, floor=hint) is None  # configured already: nothing to suggest
    textbook, _ = feed([(1000.0, float(x), 1000.0, float(y)) for x, y in rng.poisson(10, (60, 2))])
    assert seqtest.suggested_floor(textbook) is None
