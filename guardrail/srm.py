"""Anytime-valid sample-ratio-mismatch (SRM) test (pure: standard library only).

A flag that sends a share p_i of units to variant i should see unit counts x_i close to n·p_i. When it does
not, something between assignment and measurement loses or duplicates units of one arm (a crash in the
treatment, a redirect, a logging bug), and every guardrail comparison on those arms is biased.

The test is the Dirichlet–multinomial sequential test of Lindon & Malek, "Anytime-Valid Inference for
Multinomial Count Data", NeurIPS 2022 (§3, the SRM application; reference implementation
`assuncaolfi/savvi: src/savvi/multinomial.py`, and Optimizely's `ssrm-test`). Under H0 the unit
assignments are i.i.d. Multinomial(1, p0). The alternative puts a Dirichlet(k·p0) prior on p, so the
Bayes factor after counts x (n = Σx_i) is

    BF(x) = [B(k·p0 + x) / B(k·p0)] / Π p0_i^{x_i},      B(a) = Π Γ(a_i) / Γ(Σ a_i),

the ratio of the Dirichlet–multinomial and multinomial likelihoods of the sequence (the multinomial
coefficients cancel; the sequence's order does not matter, so only counts are needed). BF is a
nonnegative martingale with mean 1 under H0, so by Ville's inequality P(∃n: BF ≥ 1/α) ≤ α, and
p_n = min(1, min_{m≤n} 1/BF_m) is an anytime-valid p-value. Looking only every two minutes samples the
martingale at stopping times, which keeps it valid; the running minimum is kept in the state.

A fixed chi-square test looked at every run is not valid: its false-alarm rate grows with every look.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Concentration k of the Dirichlet prior around p0 (savvi's default). Larger k makes the test more
# sensitive to small mismatches at large n and slower to react to large ones.
DEFAULT_CONCENTRATION = 100.0


def _log_beta(a: Sequence[float]) -> float:
    return math.fsum(math.lgamma(x) for x in a) - math.lgamma(math.fsum(a))


def log_bayes_factor(
    counts: Sequence[int], probs: Sequence[float], concentration: float = DEFAULT_CONCENTRATION
) -> float:
    """ln BF of `counts` against H0: probabilities `probs` (summing to 1, all > 0).

    Raises ValueError on inputs the test does not define (negative counts, a zero or non-finite
    probability, a length mismatch).
    """
    if len(counts) != len(probs) or len(counts) < 2:
        raise ValueError("need the same number (>= 2) of counts and probabilities")
    if any(c < 0 for c in counts):
        raise ValueError("counts must be >= 0")
    if any(not (math.isfinite(p) and p > 0.0) for p in probs):
        raise ValueError("probabilities must be finite and > 0")
    total = math.fsum(probs)
    p0 = [p / total for p in probs]
    prior = [concentration * p for p in p0]
    posterior = [a + x for a, x in zip(prior, counts, strict=True)]
    log_null = math.fsum(x * math.log(p) for x, p in zip(counts, p0, strict=True) if x)
    return _log_beta(posterior) - _log_beta(prior) - log_null


def p_value(counts: Sequence[int], probs: Sequence[float], concentration: float = DEFAULT_CONCENTRATION) -> float:
    """min(1, 1/BF) at one look; the anytime-valid p-value is the running minimum of this over looks."""
    log_bf = log_bayes_factor(counts, probs, concentration)
    return 1.0 if log_bf <= 0.0 else math.exp(-log_bf)


@dataclass(frozen=True)
class SrmCheck:
    """One look of the SRM gate."""

    p_value: float  # this look's min(1, 1/BF)
    running_p: float  # the anytime-valid p-value: min over the looks of this window
    mismatch: bool  # running_p <= alpha
    counts: Mapping[str, int]
    expected: Mapping[str, float]  # variant -> probability under the configured split


def check(
    counts: Mapping[str, int],
    split: Mapping[str, float],
    *,
    alpha: float,
    prior_min_p: float = 1.0,
    concentration: float = DEFAULT_CONCENTRATION,
) -> SrmCheck | None:
    """Test unit counts per variant against the configured split (weights in any unit, e.g. percents).

    Variants with weight 0 get no units by construction and are left out; a unit counted in one of them
    anyway is a mismatch (p = 0). None when there is nothing to test (fewer than two weighted variants).
    """
    weighted = {v: w for v, w in split.items() if w > 0}
    if len(weighted) < 2:
        return None
    total = math.fsum(weighted.values())
    expected = {v: w / total for v, w in weighted.items()}
    names = sorted(weighted)
    observed = {v: int(counts.get(v, 0)) for v in names}
    stray = sum(int(c) for v, c in counts.items() if v not in weighted and c > 0)
    p = 0.0 if stray else p_value([observed[v] for v in names], [expected[v] for v in names], concentration)
    running = min(prior_min_p, p)
    return SrmCheck(p, running, running <= alpha, observed, expected)


def describe(result: SrmCheck, alpha: float) -> str:
    """The counts and what they should have been, for the alert and the output."""
    n = sum(result.counts.values())
    parts = [
        f"{v} {c} ({c / n:.2%} vs configured {result.expected[v]:.2%})" if n else f"{v} 0"
        for v, c in sorted(result.counts.items())
    ]
    verdict = "sample ratio mismatch" if result.mismatch else "no sample ratio mismatch"
    return (
        f"{verdict}: units {', '.join(parts)}; anytime-valid p={result.running_p:.3g} (alpha {alpha:g}). "
        "Units are being lost or duplicated in one arm, so its metrics are biased"
        if result.mismatch
        else f"{verdict}: units {', '.join(parts)}; anytime-valid p={result.running_p:.3g}"
    )
