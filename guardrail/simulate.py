"""`guardrail simulate`: synthetic A/A and A/B experiments, per method: how often a halt, and how fast.

Traffic is Poisson per arm per minute and errors are binomial. Looks come every `cadence` minutes for
`days` days. The threshold method judges the last 5 minutes of data at each look (the naive fixed-threshold rule, with
min_count and confirmations); the sequential method judges since-start cumulative counts with the
always-valid confidence sequence of guardrail/stats.py.

The verdicts of every look are computed with NumPy across all experiments at once, from the same
formulas the engine uses (a vectorised twin of stats.harm_test for proportions). The streak and
confirmation rules are then applied look by look exactly as engine.next_streak does;
tests/test_simulate.py runs the same synthetic data through engine.decide and checks that both halt at
the same look.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from guardrail import stats
from guardrail.model import DEFAULT_MAX_GAP_MINUTES, DEFAULT_MIN_COUNT, GuardrailError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

WINDOW_MINUTES = 5  # the threshold method's default window
PASS, BREACH, SKIP = 0, 1, 2
# Runs x minutes judged at once (~110 bytes each at peak, so ~460 MB): memory stays bounded whatever --runs
# is. 200 runs x 14 days fit in one batch; the numbers depend on the batch size, so keep it fixed.
BATCH_CELLS = 2**22


@dataclass(frozen=True)
class Scenario:
    traffic: float  # events per minute per arm
    base_rate: float
    effect: float  # treatment rate / control rate
    threshold: float
    days: float
    cadence: int  # minutes between looks
    runs: int
    alpha: float
    confirmations: int
    min_count: int = DEFAULT_MIN_COUNT
    max_gap_minutes: float = DEFAULT_MAX_GAP_MINUTES


@dataclass(frozen=True)
class Traffic:
    """Cumulative counts per minute, shape (runs, minutes + 1), index 0 = experiment start."""

    n_control: NDArray[np.int64]
    e_control: NDArray[np.int64]
    n_treatment: NDArray[np.int64]
    e_treatment: NDArray[np.int64]


@dataclass(frozen=True)
class Outcome:
    method: str
    scenario: Scenario
    halt_minutes: NDArray[np.float64]  # minute of the halting look, inf when never halted

    def summary(self) -> dict[str, Any]:
        import numpy as np

        halted = np.isfinite(self.halt_minutes)
        k, n = int(halted.sum()), len(self.halt_minutes)
        low, high = wilson(k, n)
        ordered = np.sort(self.halt_minutes)

        def quantile(q: float) -> float | None:
            value = float(ordered[min(n - 1, math.ceil(q * n) - 1)])
            return value if math.isfinite(value) else None

        s = self.scenario
        return {
            "method": self.method,
            "traffic": s.traffic,
            "base_rate": s.base_rate,
            "effect": s.effect,
            "threshold": s.threshold,
            "days": s.days,
            "cadence": s.cadence,
            "runs": n,
            "halted": k,
            "halt_rate": k / n,
            "halt_rate_ci95": [low, high],
            "median_minutes_to_halt": quantile(0.5),
            "p90_minutes_to_halt": quantile(0.9),
        }


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (good at 0 and at small n, unlike the Wald one)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def generate(s: Scenario, rng: np.random.Generator) -> Traffic:
    import numpy as np

    minutes = round(s.days * 1440)
    shape = (s.runs, minutes)
    treatment_rate = min(1.0, s.base_rate * s.effect)

    def cumulative(rate: float) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        n = rng.poisson(s.traffic, shape)
        e = rng.binomial(n, rate)
        zero = np.zeros((s.runs, 1), dtype=np.int64)
        return (
            np.concatenate([zero, np.cumsum(n, axis=1)], axis=1),
            np.concatenate([zero, np.cumsum(e, axis=1)], axis=1),
        )

    n_c, e_c = cumulative(s.base_rate)
    n_t, e_t = cumulative(treatment_rate)
    return Traffic(n_c, e_c, n_t, e_t)


def look_minutes(s: Scenario) -> NDArray[np.int64]:
    import numpy as np

    minutes = round(s.days * 1440)
    return np.arange(s.cadence, minutes + 1, s.cadence, dtype=np.int64)


def threshold_verdicts(s: Scenario, t: Traffic, looks: NDArray[np.int64]) -> NDArray[np.int8]:
    """The engine's threshold rule on the last 5 minutes: skip below min_count, zero control decided."""
    import numpy as np

    start = np.maximum(looks - WINDOW_MINUTES, 0)
    n_c = (t.n_control[:, looks] - t.n_control[:, start]).astype(float)
    n_t = (t.n_treatment[:, looks] - t.n_treatment[:, start]).astype(float)
    p_c = np.divide(t.e_control[:, looks] - t.e_control[:, start], n_c, out=np.zeros_like(n_c), where=n_c > 0)
    p_t = np.divide(t.e_treatment[:, looks] - t.e_treatment[:, start], n_t, out=np.zeros_like(n_t), where=n_t > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        harm = np.where(p_c > 0, (p_t - p_c) / np.where(p_c > 0, p_c, 1.0), np.where(p_t > 0, np.inf, 0.0))
    verdict = np.where(harm > s.threshold, BREACH, PASS).astype(np.int8)
    verdict[(n_c < s.min_count) | (n_t < s.min_count)] = SKIP
    return verdict


def sequential_verdicts(s: Scenario, t: Traffic, looks: NDArray[np.int64]) -> NDArray[np.int8]:
    """stats.harm_test for a relative increase in a proportion, vectorised over experiments and looks."""
    import numpy as np

    n_c = t.n_control[:, looks].astype(float)
    n_t = t.n_treatment[:, looks].astype(float)
    x_c = t.e_control[:, looks].astype(float)
    x_t = t.e_treatment[:, looks].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Every operation below mirrors engine.compare and stats.harm_test in the same order, so the
        # doubles are the same, not just the algebra: the engine gets value = x / n from the source and
        # tests the shrunk proportion (value·n + 0.5) / (n + 1), so an arm at 0 % is still decided.
        m_c = ((x_c / n_c) * n_c + 0.5) / (n_c + 1)
        m_t = ((x_t / n_t) * n_t + 0.5) / (n_t + 1)
        var_c, var_t = m_c * (1.0 - m_c), m_t * (1.0 - m_t)  # stats.proportion_variance
        ratio = m_t / m_c
        estimate = ratio - 1.0
        se = np.sqrt((var_t / n_t + ratio * ratio * var_c / n_c) / m_c / m_c)
        n = n_c + n_t
        eligible = (n_c >= s.min_count) & (n_t >= s.min_count)
        # Tuning N*: frozen at each experiment's first eligible look, as the engine does (engine.decide_flag
        # keeps the first N* an Outcome carries; with shrunk proportions every eligible look carries one).
        first = np.argmax(eligible, axis=1)
        n_first = n[np.arange(s.runs), first]
        minutes_first = looks[first].astype(float)
        tuning = np.array(
            [stats.default_tuning_n(float(a), float(b)) for a, b in zip(n_first, minutes_first, strict=True)]
        )
        rho = np.array([stats.rho(v, s.alpha) for v in tuning])[:, None]
        # stats._one_sided_factor: √(2(1 + ρ/n)·log1p(√(1 + n/ρ)/(2α))).
        bound_factor = np.sqrt(2.0 * (1.0 + rho / n) * np.log1p(np.sqrt(1.0 + n / rho) / (2.0 * s.alpha)))
        breach = estimate - se * bound_factor > s.threshold
    verdict = np.where(breach, BREACH, PASS).astype(np.int8)
    verdict[~eligible] = SKIP
    return verdict


def halts(s: Scenario, verdicts: NDArray[np.int8], looks: NDArray[np.int64]) -> NDArray[np.float64]:
    """engine.next_streak, one look at a time across all experiments: a pass resets, a skip keeps, a breach
    more than max_gap after the last one restarts at 1; a halt at `confirmations` in a row."""
    import numpy as np

    runs = verdicts.shape[0]
    count = np.zeros(runs, dtype=np.int64)
    last = np.full(runs, -np.inf)
    halted = np.full(runs, np.inf)
    for i, minute in enumerate(looks):
        v = verdicts[:, i]
        active = ~np.isfinite(halted)
        breach = (v == BREACH) & active
        recent = (minute - last <= s.max_gap_minutes) & (count > 0)
        count = np.where(v == PASS, 0, count)
        count = np.where(breach, np.where(recent, count + 1, 1), count)
        last = np.where(breach, float(minute), last)
        halted = np.where(active & breach & (count >= s.confirmations), float(minute), halted)
        if not active.any():
            break
    return halted


def simulate(s: Scenario, methods: list[str], rng: np.random.Generator) -> list[Outcome]:
    """Both methods judge the very same experiments, generated and judged a batch of runs at a time."""
    import numpy as np

    looks = look_minutes(s)
    judge = {"threshold": threshold_verdicts, "sequential": sequential_verdicts}
    batch = max(1, BATCH_CELLS // round(s.days * 1440))
    found: dict[str, list[NDArray[np.float64]]] = {m: [] for m in methods}
    for start in range(0, s.runs, batch):
        part = replace(s, runs=min(batch, s.runs - start))
        traffic = generate(part, rng)
        for m in methods:
            found[m].append(halts(part, judge[m](part, traffic, looks), looks))
    return [Outcome(m, s, np.concatenate(found[m])) for m in methods]


def _minutes(value: float | None) -> str:
    if value is None:
        return "not reached"
    return f"{value:.0f} min" if value < 180 else f"{value / 60:.1f} h"


def render(rows: list[dict[str, Any]], markdown: bool) -> str:
    header = ["method", "events/min/arm", "effect", "runs", "halted (95% CI)", "median time to halt", "p90"]
    table = []
    for r in rows:
        low, high = r["halt_rate_ci95"]
        table.append(
            [
                r["method"],
                f"{r['traffic']:g}",
                "A/A" if r["effect"] == 1 else f"{r['effect']:g}x",
                str(r["runs"]),
                f"{r['halt_rate']:.1%} ({low:.1%}–{high:.1%})",
                _minutes(r["median_minutes_to_halt"]),
                _minutes(r["p90_minutes_to_halt"]),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table])
    widths = [max(len(x) for x in col) for col in zip(header, *table, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *table]
    )


def run_simulate_command(
    *,
    traffic: list[float],
    base_rate: float,
    effect: list[float],
    threshold: float,
    days: float,
    cadence: float,
    runs: int,
    seed: int,
    alpha: float,
    confirmations: int,
    methods: list[str],
    as_json: bool,
    markdown: bool,
) -> int:
    import numpy as np

    unknown = sorted(set(methods) - {"threshold", "sequential"})
    if unknown:
        raise GuardrailError(f"unknown method(s) {unknown}; use threshold or sequential", field="--method")
    if not 0 < base_rate < 1:
        raise GuardrailError("must be in (0, 1)", field="--base-rate")
    if any(not (math.isfinite(e) and e > 0 and base_rate * e <= 1) for e in effect):
        raise GuardrailError("need 0 < effect and base rate x effect <= 1", field="--effect")
    if any(not (math.isfinite(t) and t > 0) for t in traffic):
        raise GuardrailError("must be a positive number of events per minute per arm", field="--traffic")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise GuardrailError("must be a relative increase >= 0", field="--threshold")
    if not (math.isfinite(cadence) and cadence >= 1 and cadence == int(cadence)):
        raise GuardrailError("must be whole minutes >= 1 (traffic is simulated per minute)", field="--cadence")
    if not (math.isfinite(days) and round(days * 1440) >= cadence):
        raise GuardrailError("must leave room for at least one look", field="--days")
    if not 0 < alpha < 0.5:
        raise GuardrailError("must be in (0, 0.5)", field="--alpha")
    if seed < 0 or runs < 1 or confirmations < 1:
        raise GuardrailError("--seed must be >= 0; --runs and --confirmations >= 1", field="--seed")
    rows: list[dict[str, Any]] = []
    for t in traffic:
        for e in effect:
            # One stream per scenario, from (seed, traffic, effect): a row's numbers do not depend on which
            # other scenarios share the command. Both methods judge the same experiments.
            rng = np.random.default_rng([seed, round(t * 1000), round(e * 1_000_000)])
            s = Scenario(
                traffic=t,
                base_rate=base_rate,
                effect=e,
                threshold=threshold,
                days=days,
                cadence=int(cadence),
                runs=runs,
                alpha=alpha,
                confirmations=confirmations,
            )
            try:
                rows.extend(o.summary() for o in simulate(s, list(dict.fromkeys(methods)), rng))
            except MemoryError:
                # One batch of runs is held at once (BATCH_CELLS); a long --days makes a batch one huge run.
                raise GuardrailError(
                    f"not enough memory for {days:g} days of per-minute traffic; use fewer --days"
                ) from None
    if as_json:
        print(json.dumps({"seed": seed, "alpha": alpha, "confirmations": confirmations, "results": rows}, indent=2))
    else:
        print(render(rows, markdown))
    return 0
