"""How fast *any* test could halt a 3x regression without false halts under clustering: the second look.

The issue with the clustered rows of `guardrail simulate --suite` (docs/statistics.md, "Reading the targets
honestly") is whether halting a 1 % -> 3 % regression at the second 2-minute look in half the experiments
is compatible with at most 5 % false halts when events cluster (dispersion D = 4 or 8) and the treatment
is exactly at the threshold (+10 %). This script answers it for the data two looks give: the four window
counts (control and treatment, windows 1 and 2) of the scenario (500 units/min/arm, 1 % base rate).

1. Neyman-Pearson bound. For a null that is a mixture over base rates p of beta-binomial counts with
   dispersion D (a least-favourable-style prior), the most powerful test at 50 % power rejects where the
   likelihood ratio is largest; its size lower-bounds the size of every test that halts at look 2 in half
   the 3x experiments, *for a test that may use the beta-binomial form*. Monte Carlo, seeded.
2. The model-free test. A test that assumes nothing about how events cluster judges the dispersion only
   by the window-to-window differences of each arm's rate (2 degrees of freedom at look 2); the statistic
   is the contrast over its dispersion-scaled variance, a t with 2 degrees of freedom for Gaussian windows.
   Its critical value for 50 % power on 3x is found by simulation and its size reported both from the
   t(2) law and as simulated on beta-binomial nulls.

Usage: .venv/bin/python benchmarks/look2_bound.py [--runs 200000] (numpy + scipy, the test extras).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

N = 1000  # units per arm per 2-minute window (500/min)
BASE = 0.01
F = 1.10  # the threshold: relative_increase 0.10
EFFECT = 3.0


def counts(d: float, p: float) -> stats.rv_discrete:
    """Window error counts with d times the binomial variance (beta-binomial, as guardrail/scenarios.py)."""
    if d <= 1.0:
        return stats.binom(N, p)
    conc = 1.0 / ((d - 1.0) / (N - 1.0)) - 1.0
    return stats.betabinom(N, p * conc, (1.0 - p) * conc)


def draw(control: stats.rv_discrete, treatment: stats.rv_discrete, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4): control window 1, treatment window 1, control window 2, treatment window 2."""
    drawn = [dist.rvs(n, random_state=rng) for dist in (control, treatment, control, treatment)]
    return np.asarray(np.stack(drawn, axis=1), dtype=np.float64)


def log_pmf(x: np.ndarray, control: stats.rv_discrete, treatment: stats.rv_discrete) -> np.ndarray:
    total = control.logpmf(x[:, 0]) + treatment.logpmf(x[:, 1]) + control.logpmf(x[:, 2]) + treatment.logpmf(x[:, 3])
    return np.asarray(total, dtype=np.float64)


def neyman_pearson(d: float, rates: list[float], runs: int, rng: np.random.Generator) -> float:
    """Size (max over the mixture's components' average) of the most powerful 50 %-power test."""
    alt = (counts(1.0, BASE), counts(1.0, EFFECT * BASE))
    nulls = [(counts(d, p), counts(d, F * p)) for p in rates]

    def llr(x: np.ndarray) -> np.ndarray:
        parts = np.stack([log_pmf(x, *null) for null in nulls]) - np.log(len(nulls))
        top = parts.max(axis=0)
        return np.asarray(log_pmf(x, *alt) - (top + np.log(np.exp(parts - top).sum(axis=0))), dtype=np.float64)

    k = np.quantile(llr(draw(*alt, runs, rng)), 0.5)
    return float(np.mean([np.mean(llr(draw(*null, runs, rng)) >= k) for null in nulls]))


def model_free_t(x: np.ndarray) -> np.ndarray:
    """The contrast of two windows over the dispersion judged from each arm's window-to-window change."""
    c1, t1, c2, t2 = (x[:, i] / N for i in range(4))
    pooled_c = (x[:, 0] + x[:, 2] + 1.0) / (2 * N + 2.0)
    pooled_t = (x[:, 1] + x[:, 3] + 1.0) / (2 * N + 2.0)
    contrast = (t1 + t2) - F * (c1 + c2)
    # Null-constrained binomial variance of the contrast (the engine's score-test variance, both windows).
    p_c = (x.sum(axis=1) + 1.0) / ((1.0 + F) * 2 * N + 2.0)
    v = 2.0 * (F * p_c * (1.0 - F * p_c) / N + F * F * p_c * (1.0 - p_c) / N)
    # Each arm's change between the windows, over its binomial variance: D per degree of freedom.
    u_c = (c2 - c1) ** 2 / (2.0 * pooled_c * (1.0 - pooled_c) / N)
    u_t = (t2 - t1) ** 2 / (2.0 * pooled_t * (1.0 - pooled_t) / N)
    dispersion = (u_c + u_t) / 2.0
    return np.asarray(contrast / np.sqrt(np.maximum(dispersion, 1e-12) * v), dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    # Null base rates around what the 3x data could be mistaken for (the control count ~10, treatment ~30).
    rates = [0.012, 0.015, 0.018, 0.021]
    alt_t = model_free_t(draw(counts(1.0, BASE), counts(1.0, EFFECT * BASE), args.runs, rng))
    critical = float(np.quantile(alt_t, 0.5))
    print(f"look 2, 3x regression halted in 50 % of experiments; {args.runs} draws a cell, seed {args.seed}")
    print()
    print("| dispersion D | Neyman-Pearson (beta-binomial known) | model-free t: t(2) law | model-free t: simulated |")
    print("|---|---|---|---|")
    for d in (4.0, 8.0):
        bound = neyman_pearson(d, rates, args.runs, rng)
        sizes = [np.mean(model_free_t(draw(counts(d, p), counts(d, F * p), args.runs, rng)) >= critical) for p in rates]
        law = float(stats.t.sf(critical, 2))
        print(f"| {d:g} | {bound:.2%} | {law:.2%} | {max(sizes):.2%} |")
    print()
    print(f"model-free critical value for 50 % power: t = {critical:.2f}")


if __name__ == "__main__":
    main()
