"""The two statistics benchmarks docs/statistics.md quotes ("Reading the targets honestly") still run and
still say what the docs say, at a smaller size: a script that rots would leave the docs' numbers unbacked."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from scipy import stats

from guardrail import scenarios, simulate

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_look2_bound_the_parametric_test_needs_far_less_than_the_model_free_one() -> None:
    bound = load("look2_bound")
    rng = np.random.default_rng(1)
    alt = bound.draw(bound.counts(1.0, bound.BASE), bound.counts(1.0, bound.EFFECT * bound.BASE), 40_000, rng)
    critical = float(np.quantile(bound.model_free_t(alt), 0.5))
    assert 4.6 < critical < 5.2  # the docs: t = 4.90 at 200,000 draws
    model_free = float(stats.t.sf(critical, 2))
    assert 0.015 < model_free < 0.025  # the docs: 1.96 %
    null = (bound.counts(8.0, 0.018), bound.counts(8.0, bound.F * 0.018))
    simulated = float(np.mean(bound.model_free_t(bound.draw(*null, 40_000, rng)) >= critical))
    assert abs(simulated - model_free) < 0.006  # the t(2) law holds on beta-binomial counts
    parametric = bound.neyman_pearson(8.0, [0.015, 0.021], 40_000, rng)
    assert parametric < model_free / 2  # the docs: 0.45 % against 1.96 %


def test_speed_limits_pinning_the_dispersion_never_halts_later_and_the_exact_likelihood_is_faster() -> None:
    limits = load("speed_limits")
    s = scenarios.Scenario(effect=1.5, days=0.5, runs=200)
    traffic = scenarios.generate(s, simulate._seeded(1, s))
    looks = scenarios.looks(s)
    default = limits.ours(traffic, looks, s)
    prior = limits.seqtest.DISPERSION_PRIOR, limits.seqtest.DISPERSION_PRIOR_WINDOWS
    try:
        limits.seqtest.DISPERSION_PRIOR, limits.seqtest.DISPERSION_PRIOR_WINDOWS = 1.0, 1e12
        pinned = limits.ours(traffic, looks, s)
    finally:
        limits.seqtest.DISPERSION_PRIOR, limits.seqtest.DISPERSION_PRIOR_WINDOWS = prior
    exact = limits.lindon_malek(traffic, looks, s.threshold, limits.ALPHA)
    # A smaller variance can only raise the e-value: run by run, D-hat = 1 halts no later than the default.
    assert np.all(pinned <= default) and np.median(pinned) < np.median(default)
    assert np.median(exact) < np.median(default)
    assert np.median(default) == 32.0 and np.median(pinned) == 26.0 and np.median(exact) == 24.0  # the docs' table
