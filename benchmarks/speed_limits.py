"""Where the 1.5x median goes: the default test against the same test without a dispersion estimate, and
against the conditional binomial mixture e-process of Lindon & Malek (2022), on the very same experiments.

docs/statistics.md ("Reading the targets honestly") quotes this table. Every column judges the same seeded
textbook experiments (`guardrail simulate`'s scenario: 500 units/min/arm, 1 % base rate, a look every 2
minutes, relative_increase 0.10) at the since-start share of alpha the default test uses (0.9 x 0.05):

- default: `simvec.sequential`, the vectorised twin of the engine's test (dispersion learnt, prior D0 = 2);
- dispersion fixed at 1: the same arithmetic with the dispersion prior made overwhelming (D-hat = 1 always),
  i.e. what the test would need if clustering were known to be absent;
- Lindon-Malek: the exact conditional binomial likelihood ratio of each window's treatment events given
  the window's total, mixed over a grid of log rate ratios above the threshold (half-normal weights, scale
  0.5: guardrail/stats.RateRatioEProcess's defaults), which knows nothing of clustering either.

Usage: .venv/bin/python benchmarks/speed_limits.py [--runs 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from guardrail import scenarios, seqtest, simulate, simvec
from guardrail.model import Comparison

ALPHA = 0.05 * seqtest.MAIN_SHARE


def lindon_malek(t: scenarios.Traffic, looks: np.ndarray, threshold: float, alpha: float) -> np.ndarray:
    """Halt minute per run of the conditional binomial mixture (inf when it never halts)."""
    units_c = np.diff(t.units[0][:, looks], prepend=0.0, axis=1)
    units_t = np.diff(t.units[1][:, looks], prepend=0.0, axis=1)
    events_c = np.diff(t.events[0, 0][:, looks], prepend=0.0, axis=1)
    events_t = np.diff(t.events[0, 1][:, looks], prepend=0.0, axis=1)
    h = 1.5 * (np.arange(60) + 1) / 60  # log rate ratio above the threshold's
    log_w = -0.5 * (h / 0.5) ** 2
    log_w -= np.log(np.exp(log_w).sum())
    logit_share = np.log(units_t / units_c)[..., None]
    theta0 = math.log1p(threshold)
    q0 = 1.0 / (1.0 + np.exp(-(logit_share + theta0)))
    q = 1.0 / (1.0 + np.exp(-(logit_share + theta0 + h)))
    increments = events_t[..., None] * np.log(q / q0) + events_c[..., None] * np.log((1.0 - q) / (1.0 - q0))
    terms = np.cumsum(increments, axis=1) + log_w
    top = terms.max(axis=-1)
    log_e = top + np.log(np.exp(terms - top[..., None]).sum(axis=-1))
    hit = log_e >= -math.log(alpha)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return np.where(first >= 0, looks[np.maximum(first, 0)], np.inf).astype(float)


def ours(t: scenarios.Traffic, looks: np.ndarray, s: scenarios.Scenario) -> np.ndarray:
    verdicts = simvec.sequential(
        Comparison.RELATIVE_INCREASE,
        s.threshold,
        s.alpha,
        s.min_count,
        looks,
        t.units[0],
        simulate.engine_sums(t.units[0], t.events[0, 0]),
        t.units[1],
        simulate.engine_sums(t.units[1], t.events[0, 1]),
    )
    return simvec.halts(verdicts, looks, 1, s.max_gap_minutes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"median minutes to halt, {args.runs} runs, seed {args.seed}, since-start alpha {ALPHA:.3g}")
    print()
    print("| effect | default test | dispersion fixed at 1 | Lindon-Malek conditional binomial |")
    print("|---|---|---|---|")
    for effect in (3.0, 1.5):
        s = scenarios.Scenario(effect=effect, days=0.5, runs=args.runs)
        traffic = scenarios.generate(s, simulate._seeded(args.seed, s))
        looks = scenarios.looks(s)
        default = ours(traffic, looks, s)
        prior = seqtest.DISPERSION_PRIOR, seqtest.DISPERSION_PRIOR_WINDOWS
        try:  # the same arithmetic, D-hat pinned at 1
            seqtest.DISPERSION_PRIOR, seqtest.DISPERSION_PRIOR_WINDOWS = 1.0, 1e12
            pinned = ours(traffic, looks, s)
        finally:
            seqtest.DISPERSION_PRIOR, seqtest.DISPERSION_PRIOR_WINDOWS = prior
        lm = lindon_malek(traffic, looks, s.threshold, ALPHA)
        cells = [f"{np.median(x):.0f} min" for x in (default, pinned, lm)]
        print(f"| {effect:g}x | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
