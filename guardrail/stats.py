"""Always-valid, one-sided tests of harm beyond a threshold (pure: standard library only).

The sequential method halts a treatment when a *confidence sequence* says, with error probability at most
alpha over every look ever taken, that the true harm exceeds the guardrail's threshold. It runs on
since-start cumulative aggregates (mean, per-unit variance and unit count per arm), so it stays valid at
any cadence, with missed runs and with unlimited looks. See docs/statistics.md for the derivations, the
choice of the tuning sample size N*, and the caveats.

Sources (also listed in docs/statistics.md):

- Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences",
  Annals of Statistics 49(2), 2021, eq. 14 (one-sided normal-mixture boundary); confseq
  `gostevehoward/confseq: src/confseq/uniform_boundaries.h` (`best_rho`).
- Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform central limit theory and asymptotic
  confidence sequences", Annals of Statistics 2024 (arXiv 2103.06476): the asymptotic CS that licenses
  plugging in estimated variances.
- GrowthBook `growthbook/growthbook: packages/stats/gbstats/frequentist/tests.py`
  (`sequential_rho`, `sequential_interval_halfwidth_one_sided`, `TTest.variance` for the delta method).
- Eppo `Eppo-exp/eppo-docs: docs/statistics/confidence-intervals/statistical-nitty-gritty.md` (two-sided
  form, eq. 8 delta method).
- Johari, Pekelis, Walsh, "Always Valid Inference", Operations Research 70(3), 2022 (mSPRT; the same
  normal-mixture martingale).
- Lindon & Malek, NeurIPS 2022; savvi `assuncaolfi/savvi` (count e-process, `RateRatioEProcess`).

Nothing here does I/O or imports third-party code: the engine imports it only for sequential guardrails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from guardrail.model import Comparison

# math.exp / math.expm1 raise OverflowError just above 709.78; past this we work in log space.
_MAX_EXP = 700.0
# Floor for the tuning sample size: below ~1000 units the normal approximation the CS relies on is poor
# anyway, and a tiny N* would make the boundary needlessly wide at realistic sample sizes.
_MIN_TUNING_N = 1000.0


@dataclass(frozen=True)
class HarmTest:
    """The result of one look of the one-sided sequential harm test.

    All effect quantities are sign-normalised so that positive means "harmful direction":
    relative_increase m_T/m_C − 1, relative_decrease 1 − m_T/m_C, absolute_increase m_T − m_C,
    absolute_decrease m_C − m_T. `threshold` is in the same unit.
    """

    estimate: float  # point estimate of the harm Δ̂
    lower_bound: float  # always-valid one-sided lower confidence bound on the harm at level alpha
    p_value: float  # always-valid p-value for H0: harm <= threshold, in [0, 1]
    se: float  # standard error of `estimate` (delta method for relative comparisons)
    breach: bool  # lower_bound > threshold
    n: float  # n_T + n_C, the sample size the boundary is evaluated at


def proportion_variance(p: float) -> float:
    """Per-unit (Bernoulli) variance of a proportion: s² = p(1 − p).

    A value outside [0, 1] gives a negative variance, which `harm_test` rejects (returns None): a
    "proportion" above 1 is a data error, not something to clamp silently.
    """
    return p * (1.0 - p)


def tuning_factor(alpha: float) -> float:
    """The constant that turns the tuning sample size N* into the mixture parameter ρ, one-sided.

    tuning_factor(α) = 2 ln(1/α′) + ln(1 + 2 ln(1/α′)),  with α′ = 2α (one-sided).

    This is the value of ρ/N* that makes the normal-mixture boundary tightest at n = N* (Howard et al.
    2021, §3.5; confseq `best_rho`; GrowthBook `sequential_rho(2 * alpha, …)` for the one-sided test).
    The two-sided factor at level α is `tuning_factor(α / 2)` (α′ = α). Requires 0 < α < 0.5: at α′ ≥ 1
    the factor is ≤ 0 and no ρ exists.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) for a one-sided test, got {alpha!r}")
    two_log = -2.0 * math.log(2.0 * alpha)  # not log(1/(2α)): 1/(2α) overflows for subnormal α
    return two_log + math.log1p(two_log)


def rho(tuning_n: float, alpha: float) -> float:
    """Mixture parameter ρ = N* / tuning_factor(α) (one-sided, α′ = 2α).

    Test vectors: ρ(10⁴, α=.05) = 1580.06 one-sided; the two-sided value 1260.06 is
    `rho(1e4, 0.025)`. GrowthBook's parameterisation is ρ_GB² = 1/ρ.
    """
    if not (math.isfinite(tuning_n) and tuning_n > 0.0):
        raise ValueError(f"tuning_n must be finite and > 0, got {tuning_n!r}")
    return tuning_n / tuning_factor(alpha)


def _one_sided_factor(n: float, rho_: float, alpha: float) -> float:
    """B⁺_n for a given ρ: √( 2(n+ρ)/n · ln(1 + √((n+ρ)/ρ)/(2α)) ).

    Written as 1 + ρ/n and 1 + n/ρ so that huge n or ρ cannot overflow n + ρ. For a *fixed* ρ this is
    strictly decreasing in α, which is what makes the p-value below well defined.
    """
    return math.sqrt(2.0 * (1.0 + rho_ / n) * math.log1p(math.sqrt(1.0 + n / rho_) / (2.0 * alpha)))


def boundary_one_sided(n: float, tuning_n: float, alpha: float) -> float:
    """One-sided boundary multiplier B⁺_n: the lower bound is L_n = Δ̂ − SE·B⁺_n.

    B⁺_n = √( 2(n+ρ)/n · ln(1 + √((n+ρ)/ρ) / (2α)) ),  ρ = rho(N*, α) (α′ = 2α).

    This is Howard et al. 2021 eq. 14 (the closed-form one-sided normal-mixture boundary
    u(v) = √(2(v+ρ) ln(√((v+ρ)/ρ)/(2α) + 1)) at intrinsic time v = n), divided by n and expressed in
    units of SE = σ/√n; it equals GrowthBook's `sequential_interval_halfwidth_one_sided` / SE
    (`growthbook/growthbook: packages/stats/gbstats/frequentist/tests.py`, which cites Waudby-Smith et al.
    2024). Eq. 14 is slightly conservative relative to the exact half-normal mixture (checked in the tests).
    n counts units of both arms (n_T + n_C), as Eppo and GrowthBook do.
    Test vectors at α = .05: n/N* = 0.1, 1, 10 → 3.679, 2.779, 2.989.
    """
    if not (math.isfinite(n) and n > 0.0):
        raise ValueError(f"n must be finite and > 0, got {n!r}")
    return _one_sided_factor(n, rho(tuning_n, alpha), alpha)


def boundary_two_sided(n: float, tuning_n: float, alpha: float) -> float:
    """Two-sided boundary multiplier B_n (Eppo's form): the CS is Δ̂ ± SE·B_n.

    B_n = √( (n+ρ)/n · ln((n+ρ)/(ρα²)) ),  ρ = N* / (2 ln(1/α) + ln(1 + 2 ln(1/α))) = rho(N*, α/2).

    Source: Howard et al. 2021 (two-sided normal mixture); Eppo
    `Eppo-exp/eppo-docs: docs/statistics/confidence-intervals/statistical-nitty-gritty.md`; GrowthBook
    `sequential_interval_halfwidth`. Used only for the documented test vectors (n/N* = 0.1, 1, 10 at
    α = .05 → 3.855, 3.035, 3.242); guardrails use the one-sided boundary.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (math.isfinite(n) and n > 0.0):
        raise ValueError(f"n must be finite and > 0, got {n!r}")
    rho_ = rho(tuning_n, alpha / 2.0)  # two-sided α′ = α, i.e. the one-sided factor at α/2
    return math.sqrt((1.0 + rho_ / n) * (math.log1p(n / rho_) - 2.0 * math.log(alpha)))


def _p_value(excess: float, se: float, n: float, rho_: float) -> float:
    """Always-valid p-value: the smallest α̃ ∈ (0, 1] with Δ̂ − SE·B⁺_n(α̃) > threshold, ρ held fixed.

    With x = z²·n / (2(n+ρ)), z = (Δ̂ − threshold)/SE > 0 and c = √((n+ρ)/ρ), solving z > B⁺_n(α̃) for α̃
    gives α̃ > c / (2(eˣ − 1)), so p = min(1, c / (2·expm1(x))); p = 1 when Δ̂ ≤ threshold. This is the
    exact solution of the bisection GrowthBook runs (`SequentialOneSided*TTest`), with one deliberate
    difference: ρ stays at its design value instead of being recomputed for every α̃ (see
    docs/statistics.md). With ρ fixed the rejection regions are nested in α̃, so P(∃t: p_t ≤ α̃) ≤ α̃ for
    every α̃ at once, and `p < alpha` ⇔ `lower_bound > threshold` at the design α.
    """
    if excess <= 0.0:
        return 1.0
    z = excess / se
    x = z * z / (2.0 * (1.0 + rho_ / n))
    c = math.sqrt(1.0 + n / rho_)
    if x > _MAX_EXP:
        # expm1 would overflow; expm1(x) = eˣ to double precision here, so work in logs (underflows to 0).
        return math.exp(math.log(c) - math.log(2.0) - x)
    denominator = 2.0 * math.expm1(x)
    # Compare before dividing: a tiny excess makes x (and expm1) underflow to 0.
    return 1.0 if denominator <= c else c / denominator


def harm_test(
    *,
    comparison: Comparison,
    threshold: float,
    control_mean: float,
    control_var: float,
    n_control: float,
    treatment_mean: float,
    treatment_var: float,
    n_treatment: float,
    alpha: float,
    tuning_n: float,
) -> HarmTest | None:
    """One look of the always-valid one-sided test of H0: harm ≤ threshold against H1: harm > threshold.

    Inputs are since-start cumulative per-arm aggregates: mean m, per-unit variance s² (p(1−p) for a
    proportion, the sample variance for a mean) and unit count n.

    - Absolute: Δ = m_T − m_C, V = s_T²/n_T + s_C²/n_C.
    - Relative (delta method; Eppo eq. 8, GrowthBook `TTest.variance`): Δ = m_T/m_C − 1,
      V = s_T²/(n_T·m_C²) + m_T²·s_C²/(n_C·m_C⁴).
    - Harm = Δ for *_increase and −Δ for *_decrease (V is unchanged by the sign).
    - L = harm − √V · B⁺_n(α) with n = n_T + n_C and ρ = rho(tuning_n, α) (`boundary_one_sided`,
      Howard et al. 2021 eq. 14); breach ⇔ L > threshold; p-value as in `_p_value`.

    Guarantee (asymptotic, Waudby-Smith et al. 2024): if the true harm is ≤ threshold,
    P(breach at any look, ever) ≤ α. `tuning_n` (N*) must not depend on metric values (freeze it).

    Returns None, never raises, when the test is undefined: non-finite inputs, n ≤ 1 on either arm,
    negative variance, control_mean == 0 under a relative comparison, α outside (0, 0.5), tuning_n ≤ 0,
    zero variance of the estimate (a normal approximation with SE = 0 would "prove" any difference; this
    is in the spirit of GrowthBook's zero-variance guard), or a result that over/underflows.
    """
    values = (
        threshold,
        control_mean,
        control_var,
        n_control,
        treatment_mean,
        treatment_var,
        n_treatment,
        alpha,
        tuning_n,
    )
    if not all(math.isfinite(v) for v in values):
        return None
    if n_control <= 1.0 or n_treatment <= 1.0 or control_var < 0.0 or treatment_var < 0.0:
        return None
    if not 0.0 < alpha < 0.5 or tuning_n <= 0.0:
        return None
    if comparison.relative:
        if control_mean == 0.0:
            return None
        ratio = treatment_mean / control_mean
        lift = ratio - 1.0
        # Same V as the docstring, regrouped as (s_T²/n_T + r²·s_C²/n_C)/m_C² with r = m_T/m_C: no m_C⁴,
        # which would underflow to 0 for tiny means. Float * and / never raise; overflow shows up as inf.
        var = (treatment_var / n_treatment + ratio * ratio * control_var / n_control) / control_mean
        var /= control_mean
    else:
        lift = treatment_mean - control_mean
        var = treatment_var / n_treatment + control_var / n_control
    estimate = lift if comparison.harm_is_increase else -lift
    if not (math.isfinite(estimate) and math.isfinite(var)) or var <= 0.0:
        return None
    se = math.sqrt(var)
    n = n_control + n_treatment
    rho_ = rho(tuning_n, alpha)
    if not 0.0 < rho_ < math.inf:  # e.g. tuning_n = 1e-320: ρ underflows and n/ρ would divide by 0
        return None
    lower = estimate - se * _one_sided_factor(n, rho_, alpha)
    if not math.isfinite(lower):
        return None
    p = _p_value(estimate - threshold, se, n, rho_)
    return HarmTest(estimate=estimate, lower_bound=lower, p_value=p, se=se, breach=lower > threshold, n=n)


def default_tuning_n(n_first_look: float, minutes_elapsed: float, target_minutes: float = 30.0) -> float:
    """Tuning sample size N*: the total n_T + n_C expected after `target_minutes` of traffic.

    N* = n_first_look / minutes_elapsed · target_minutes, clamped to ≥ n_first_look and ≥ 1000.

    The CS is tightest near n = N*, so N* says when the test should be sharpest: ~30 minutes means a
    harmful bug is caught within the first hour or two, while small harms are still found later (the
    boundary widens only as √log past N*; docs/statistics.md). The engine computes it once, at the first
    look, and freezes it: N* uses traffic counts only, never metric values, so it does not spend any of the
    error budget. Bad inputs (non-finite, ≤ 0) fall back to the clamps instead of raising.
    """
    n0 = n_first_look if math.isfinite(n_first_look) and n_first_look > 0.0 else 0.0
    projected = n0
    if math.isfinite(minutes_elapsed) and minutes_elapsed > 0.0 and math.isfinite(target_minutes):
        candidate = n0 / minutes_elapsed * target_minutes
        if math.isfinite(candidate):
            projected = candidate
    return max(projected, n0, _MIN_TUNING_N)


class RateRatioEProcess:
    """Exact count-based e-process for rare-event counts (error counts): H0: λ_T/λ_C ≤ 1 + δ.

    Model (Lindon & Malek, NeurIPS 2022; savvi `InhomogeneousPoissonProcess`): in each
    disjoint window i with exposures n_T,i, n_C,i and event counts e_T,i, e_C,i, conditional on the window's
    total events, e_T,i ~ Bin(e_T,i + e_C,i, q_i(θ)) with q_i(θ) = expit(logit π_i + θ),
    π_i = n_T,i/(n_T,i + n_C,i) and θ = log(rate ratio). This is exact for Poisson counts and close for
    rates ≲ 5 %. With θ₀ = log(1 + δ) and a grid θ_g = θ₀ + h_g, h_g ∈ (0, h_max], each

        ℓ_g = Σ_i e_T,i·ln(q_i(θ_g)/q_i(θ₀)) + e_C,i·ln((1 − q_i(θ_g))/(1 − q_i(θ₀)))

    is the log of a likelihood ratio that is a nonnegative supermartingale under every θ ≤ θ₀ (θ_g > θ₀
    and the binomial family has monotone likelihood ratio), so E_t = Σ_g w_g·e^{ℓ_g} with weights summing
    to 1 is an e-process and P(∃t: E_t ≥ 1/α) ≤ α (Ville). The traffic split may vary between windows.

    Weights are a half-normal on h with scale `prior_scale`, discretised on the grid. The state is plain
    floats (`state()` / `from_state()`): [min_p, ℓ_1, …, ℓ_G]. Feed it *increments* between looks, never
    overlapping windows.
    """

    def __init__(self, threshold: float, *, grid_size: int = 60, h_max: float = 1.5, prior_scale: float = 0.5) -> None:
        if not (math.isfinite(threshold) and threshold > -1.0):
            raise ValueError(f"threshold must be a finite relative increase > -1, got {threshold!r}")
        if grid_size < 1 or not (math.isfinite(h_max) and h_max > 0.0):
            raise ValueError("grid_size must be >= 1 and h_max finite and > 0")
        if not (math.isfinite(prior_scale) and prior_scale > 0.0):
            raise ValueError("prior_scale must be finite and > 0")
        self.threshold = threshold
        self.theta0 = math.log1p(threshold)
        self.h = [h_max * (g + 1) / grid_size for g in range(grid_size)]
        # Log-weights normalised by log-sum-exp: a tiny prior_scale must not underflow every weight to 0.
        log_raw = [-0.5 * (h / prior_scale) * (h / prior_scale) for h in self.h]
        norm = _log_sum_exp(log_raw)
        self.log_w = [lr - norm for lr in log_raw]
        self.log_lr = [0.0] * grid_size
        self.min_p = 1.0  # running minimum of 1/E_t: the always-valid p-value

    def state(self) -> list[float]:
        """Serialisable state: [min_p, ℓ_1, …, ℓ_G] (the grid itself is configuration)."""
        return [self.min_p, *self.log_lr]

    @classmethod
    def from_state(
        cls,
        threshold: float,
        state: Sequence[float],
        *,
        grid_size: int = 60,
        h_max: float = 1.5,
        prior_scale: float = 0.5,
    ) -> RateRatioEProcess:
        """Rebuild from `state()`; the configuration must be the one the state was built with."""
        proc = cls(threshold, grid_size=grid_size, h_max=h_max, prior_scale=prior_scale)
        if len(state) != grid_size + 1 or not all(math.isfinite(s) for s in state):
            raise ValueError(f"state must be {grid_size + 1} finite floats")
        proc.min_p = min(1.0, max(0.0, float(state[0])))
        proc.log_lr = [float(s) for s in state[1:]]
        return proc

    def update(self, events_treatment: float, events_control: float, n_treatment: float, n_control: float) -> bool:
        """Add one disjoint window's counts. Returns False (and changes nothing) for unusable input.

        A window with no events, or with no exposure on one arm, carries no information about θ under the
        conditional model and is skipped (returning True: nothing wrong with it).
        """
        values = (events_treatment, events_control, n_treatment, n_control)
        if not all(math.isfinite(v) and v >= 0.0 for v in values):
            return False
        if events_treatment + events_control == 0.0 or n_treatment == 0.0 or n_control == 0.0:
            return True
        logit_pi = math.log(n_treatment) - math.log(n_control)
        a0 = logit_pi + self.theta0
        # ln q = −softplus(−a), ln(1 − q) = −softplus(a): stable for any a.
        # ln q(θ_g)/q(θ₀) = softplus(−a0) − softplus(−a_g); likewise for 1 − q with +a.
        lq0_neg, l1q0_neg = _softplus(-a0), _softplus(a0)
        updated = [
            ll + events_treatment * (lq0_neg - _softplus(-(a0 + h))) + events_control * (l1q0_neg - _softplus(a0 + h))
            for ll, h in zip(self.log_lr, self.h, strict=True)
        ]
        if not all(math.isfinite(u) for u in updated):
            return False  # absurd counts (~1e300): keep the last good state rather than store inf/nan
        self.log_lr = updated
        self.min_p = min(self.min_p, self.p_value_now())
        return True

    def log_e_value(self) -> float:
        """ln E_t = ln Σ_g w_g·e^{ℓ_g}, by log-sum-exp so large evidence cannot overflow."""
        return _log_sum_exp([lw + ll for lw, ll in zip(self.log_w, self.log_lr, strict=True)])

    def p_value_now(self) -> float:
        """min(1, 1/E_t) at this look."""
        log_e = self.log_e_value()
        return 1.0 if log_e <= 0.0 else math.exp(-log_e)  # exp(−ln E) only for E > 1: cannot overflow

    @property
    def p_value(self) -> float:
        """Always-valid p-value: the running minimum of 1/E over all looks."""
        return self.min_p

    def breach(self, alpha: float) -> bool:
        """E_t ≥ 1/α at some look so far, i.e. min_p ≤ α."""
        return self.min_p <= alpha


def _log_sum_exp(terms: Sequence[float]) -> float:
    """ln Σ eᵗ, shifted by the maximum so that nothing overflows."""
    top = max(terms)
    return top + math.log(math.fsum(math.exp(t - top) for t in terms))


def _softplus(x: float) -> float:
    """ln(1 + eˣ) without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0.0 else math.log1p(math.exp(x))
