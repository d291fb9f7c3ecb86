"""The anytime-valid SRM test against published values and scipy, and its error rate under H0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from guardrail import srm


def test_published_example_of_savvi() -> None:
    """savvi's Multinomial example (Lindon & Malek 2022 SRM test, k = 100): units drawn with numpy's legacy
    seeded generator from theta = [.1, .3, .6] and tested against theta_0 = [.1, .4, .5]; the sequential
    p-value first drops to 0.05 or below at unit 402, where it is 0.04845591105969517
    (`assuncaolfi/savvi: examples/Multinomial.qmd`)."""
    np.random.seed(1)
    xs = np.random.multinomial(1, [0.1, 0.3, 0.6], size=1000)
    counts = np.zeros(3, dtype=np.int64)
    running = 1.0
    stop = None
    for n, x in enumerate(xs):
        counts += x
        running = min(running, srm.p_value([int(c) for c in counts], [0.1, 0.4, 0.5]))
        if running <= 0.05:
            stop = n
            break
    assert stop == 401  # the 402nd unit
    assert running == pytest.approx(0.04845591105969517, rel=1e-9)


@pytest.mark.parametrize(
    ("counts", "probs"),
    [([510, 490], [0.5, 0.5]), ([9_700, 300], [0.99, 0.01]), ([30, 60, 10], [0.2, 0.5, 0.3]), ([0, 5], [0.5, 0.5])],
)
def test_bayes_factor_is_the_dirichlet_multinomial_over_multinomial_likelihood(
    counts: list[int], probs: list[float]
) -> None:
    """scipy as the oracle: BF = DirMult(x; k·p0) / Mult(x; p0) (the multinomial coefficients cancel)."""
    from scipy import stats

    n = sum(counts)
    k = srm.DEFAULT_CONCENTRATION
    expected = stats.dirichlet_multinomial.logpmf(counts, [k * p for p in probs], n) - stats.multinomial.logpmf(
        counts, n, probs
    )
    assert srm.log_bayes_factor(counts, probs) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_check_against_configured_percent_weights() -> None:
    ok = srm.check({"treatment": 500, "control": 49_500}, {"treatment": 1.0, "control": 99.0}, alpha=0.001)
    assert ok is not None and not ok.mismatch and ok.expected == {"control": 0.99, "treatment": 0.01}
    bad = srm.check({"treatment": 400, "control": 49_600}, {"treatment": 1.0, "control": 99.0}, alpha=0.001)
    assert bad is not None and bad.mismatch and bad.running_p < 0.001
    assert "sample ratio mismatch" in srm.describe(bad, 0.001)
    # a running minimum: a later look with better counts does not undo a mismatch
    later = srm.check(
        {"treatment": 1000, "control": 99_000}, {"treatment": 1, "control": 99}, alpha=0.001, prior_min_p=bad.running_p
    )
    assert later is not None and later.mismatch
    # units in a variant with weight 0 are a mismatch by construction
    stray = srm.check({"a": 10, "b": 10, "c": 1}, {"a": 50, "b": 50, "c": 0}, alpha=0.001)
    assert stray is not None and stray.p_value == 0.0
    assert srm.check({"a": 1}, {"a": 100}, alpha=0.001) is None


def test_bad_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError):
        srm.log_bayes_factor([1, -1], [0.5, 0.5])
    with pytest.raises(ValueError):
        srm.log_bayes_factor([1, 1], [1.0, 0.0])


def test_false_alarm_rate_under_h0_with_a_look_every_batch_stays_below_alpha() -> None:
    """2,000 A/A streams of 200 looks (500 units each, 1 % / 99 %): the share with any p <= alpha must stay
    below alpha (anytime-valid), while a chi-square at the same alpha looked at every time does not."""
    from scipy import stats

    rng = np.random.default_rng(20261203)
    alpha, runs, looks = 0.05, 2000, 200
    probs = [0.01, 0.99]
    draws = rng.binomial(500, probs[0], size=(runs, looks)).cumsum(axis=1)
    alarms = chi_alarms = 0
    for row in draws:
        totals = np.arange(1, looks + 1) * 500
        ps = [srm.p_value([int(t), int(n - t)], probs) for t, n in zip(row, totals, strict=True)]
        alarms += min(ps) <= alpha
        chi = stats.chisquare(np.stack([row, totals - row]), f_exp=np.outer(probs, totals), axis=0).pvalue
        chi_alarms += bool((chi <= alpha).any())
    assert alarms / runs <= alpha  # in practice far below: a mixture test is conservative
    assert chi_alarms / runs > 2 * alpha  # why a fixed test looked at every run is not valid
    assert math.isfinite(srm.log_bayes_factor([10**9, 10**7], [0.99, 0.01]))
