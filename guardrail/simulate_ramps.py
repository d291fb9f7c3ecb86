"""`guardrail simulate --scenario ramps`: ramped rollouts 1 → 5 → 25 → 50 → 100 % through the ramp rules.

Per look (every `cadence` minutes) each run draws Poisson units for both arms at the current step's split
and binomial errors, then applies the rules of guardrail/rollout.py on the step's own data: the
sequential test of guardrail/stats.py (vectorised as in guardrail/simulate.py) at alpha / (steps − 1),
`confirmations` breaching looks to roll back, and an advance once `step_minutes` have passed with a pass
(no_harm) or with the upper bound below the threshold (proven_safe). Scenarios:

- healthy (A/A): time to ship per advance mode, and the false-rollback rate of whole ramps (95 % CI);
- harmful (treatment errors x `--ramp-effect`, 1 % → 3 % by default): the step at which it rolled back and
  how many treatment units met the harm first, against a 50/50 A/B halted by today's sequential rule;
- SRM fault: the treatment loses 10 % of its units (and their events): time until the SRM gate holds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from guardrail import srm, stats
from guardrail.simulate import wilson

STEPS = (1, 5, 25, 50, 100)


@dataclass(frozen=True)
class RampScenario:
    name: str
    units_per_minute: float  # both arms together
    base_rate: float
    effect: float
    threshold: float
    alpha: float
    confirmations: int
    step_minutes: float
    cadence: int
    days: float
    runs: int
    mode: str = "no_harm"  # no_harm | proven_safe | ab (a 50/50 A/B, sequential since start, no steps)
    lost_treatment: float = 0.0  # SRM fault: share of treatment units that vanish
    srm_alpha: float = 0.001
    min_count: int = 100
    steps: tuple[int, ...] = STEPS
    drift: float = 0.0  # the base rate grows by this factor over `days` (both arms): 1.0 = 1 % -> 2 %
    pooled: bool = False  # the naive method: since-start aggregates pooled over steps, full alpha


def _sequential(n_c: Any, x_c: Any, n_t: Any, x_t: Any, tuning: Any, alpha: float) -> tuple[Any, Any]:
    """(lower, upper) always-valid bounds on the relative increase, as judge.compare and stats.harm_test."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m_c = (x_c + 0.5) / (n_c + 1)
        m_t = (x_t + 0.5) / (n_t + 1)
        ratio = m_t / m_c
        estimate = ratio - 1.0
        se = np.sqrt((m_t * (1 - m_t) / n_t + ratio * ratio * m_c * (1 - m_c) / n_c) / m_c / m_c)
        n = n_c + n_t
        rho = tuning / stats.tuning_factor(alpha)
        factor = np.sqrt(2.0 * (1.0 + rho / n) * np.log1p(np.sqrt(1.0 + n / rho) / (2.0 * alpha)))
    return estimate - se * factor, estimate + se * factor


def run(s: RampScenario, rng: np.random.Generator) -> dict[str, Any]:
    runs, looks = s.runs, int(s.days * 1440) // s.cadence
    ab = s.mode == "ab"
    steps = (50,) if ab else s.steps
    alpha = s.alpha if ab or s.pooled else s.alpha / (len(steps) - 1)
    step = np.zeros(runs, dtype=np.int64)
    start = np.zeros(runs)
    n_c, x_c, n_t, x_t = (np.zeros(runs) for _ in range(4))
    tuning = np.full(runs, np.nan)
    streak = np.zeros(runs, dtype=np.int64)
    srm_p = np.ones(runs)
    done_at = np.full(runs, np.inf)
    outcome = np.zeros(runs, dtype=np.int64)  # 0 running, 1 shipped, 2 rolled back / halted, 3 SRM hold
    exposed = np.zeros(runs)  # treatment units served before the end
    rollback_step = np.full(runs, -1)
    for look in range(1, looks + 1):
        minute = look * s.cadence
        live = outcome == 0
        if not live.any():
            break
        share = np.array(steps)[step] / 100.0
        units = rng.poisson(s.units_per_minute * s.cadence, runs)
        t_units = rng.binomial(units, share)
        c_units = units - t_units
        exposed += np.where(live, t_units, 0)
        seen_t = rng.binomial(t_units, 1.0 - s.lost_treatment) if s.lost_treatment else t_units
        n_c += c_units
        n_t += seen_t
        base = s.base_rate * (1.0 + s.drift * minute / (s.days * 1440))
        x_c += rng.binomial(c_units, base)
        x_t += rng.binomial(seen_t, min(1.0, base * s.effect))
        eligible = live & (n_c >= s.min_count) & (n_t >= s.min_count)
        first = eligible & np.isnan(tuning)
        elapsed = minute - start
        tuning[first] = [
            stats.default_tuning_n(float(n), float(m)) for n, m in zip((n_c + n_t)[first], elapsed[first], strict=True)
        ]
        lower, upper = _sequential(n_c, x_c, n_t, x_t, np.where(np.isnan(tuning), 1e3, tuning), alpha)
        breach = eligible & (lower > s.threshold)
        streak = np.where(breach, streak + 1, np.where(eligible, 0, streak))
        rolled = live & (streak >= s.confirmations)
        outcome[rolled], done_at[rolled], rollback_step[rolled] = 2, minute, step[rolled]
        if s.lost_treatment:
            for i in np.flatnonzero(live & ~rolled):
                split = {"t": float(steps[step[i]]), "c": 100.0 - steps[step[i]]}
                checked = srm.check(
                    {"t": int(n_t[i]), "c": int(n_c[i])}, split, alpha=s.srm_alpha, prior_min_p=srm_p[i]
                )
                if checked is not None:
                    srm_p[i] = checked.running_p
                    if checked.mismatch:
                        outcome[i], done_at[i], rollback_step[i] = 3, minute, step[i]
        if ab:
            continue
        safe = upper < s.threshold if s.mode == "proven_safe" else np.ones(runs, dtype=bool)
        advance = (outcome == 0) & eligible & ~breach & safe & (elapsed >= s.step_minutes)
        step = np.where(advance, step + 1, step)
        shipped = advance & (step == len(steps) - 1)
        outcome[shipped], done_at[shipped] = 1, minute
        start[advance] = minute
        if not s.pooled:  # each step on its own data: counts, N*, streak and SRM restart
            for arr in (n_c, x_c, n_t, x_t):
                arr[advance] = 0
            tuning[advance], streak[advance], srm_p[advance] = np.nan, 0, 1.0
    row = _summary(s, outcome, done_at, exposed, rollback_step)
    # Runs that left the first step at all: with a harm at the threshold, each advance is a false "safe".
    row["advanced"] = int(((step > 0) | (outcome == 1)).sum())
    return row


def _q(values: Any, q: float) -> float | None:
    values = np.sort(values)
    if not len(values):
        return None
    value = float(values[min(len(values) - 1, math.ceil(q * len(values)) - 1)])
    return value if math.isfinite(value) else None


def _summary(s: RampScenario, outcome: Any, done_at: Any, exposed: Any, rollback_step: Any) -> dict[str, Any]:
    n = len(outcome)
    ended = {1: "shipped", 2: "rolled_back", 3: "srm_hold"}
    row: dict[str, Any] = {
        "scenario": s.name,
        "mode": s.mode,
        "runs": n,
        "effect": s.effect,
        "units_per_minute": s.units_per_minute,
        "days": s.days,
        "steps": list((50,) if s.mode == "ab" else s.steps),
        "pooled": s.pooled,
        "drift": s.drift,
    }
    for code, name in ended.items():
        k = int((outcome == code).sum())
        row[name] = k
        row[f"{name}_ci95"] = list(wilson(k, n))
    end = np.where(outcome > 0, done_at, np.inf)
    row["median_minutes"], row["p90_minutes"] = _q(end, 0.5), _q(end, 0.9)
    stopped = outcome >= 2
    shares = np.array((50,) if s.mode == "ab" else s.steps)
    row["median_step_stopped"] = None if not stopped.any() else int(np.median(shares[rollback_step[stopped]]))
    row["median_treatment_units_exposed"] = float(np.median(exposed[stopped])) if stopped.any() else None
    return row


def scenarios(
    runs: int,
    traffic: float,
    base_rate: float,
    effect: float,
    threshold: float,
    alpha: float,
    confirmations: int,
    step_minutes: float,
    cadence: int,
) -> list[RampScenario]:
    base = RampScenario(
        "healthy (A/A)",
        2 * traffic,
        base_rate,
        1.0,
        threshold,
        alpha,
        confirmations,
        step_minutes,
        cadence,
        days=3,
        runs=runs,
    )
    harmful = replace(base, name=f"harmful ({effect:g}x errors)", effect=effect)
    drifting = replace(
        base, name="A/A, base rate drifts 1x -> 2x", steps=(5, 25, 50, 100), step_minutes=960.0, drift=1.0, days=2
    )
    return [
        base,
        replace(base, mode="proven_safe", days=21),
        harmful,
        replace(harmful, mode="ab"),
        replace(base, name="SRM: treatment loses 10 % of units", lost_treatment=0.1),
        drifting,
        replace(drifting, name="same, pooled since start (naive)", pooled=True),
    ]


def _minutes(v: float | None) -> str:
    if v is None:
        return "not reached"
    return f"{v:.0f} min" if v < 180 else (f"{v / 60:.1f} h" if v < 2880 else f"{v / 1440:.1f} d")


def render(rows: list[dict[str, Any]], markdown: bool) -> str:
    header = [
        "scenario",
        "advance",
        "runs",
        "shipped",
        "rolled back (95% CI)",
        "SRM hold",
        "median time to end",
        "p90",
        "stopped at step",
        "treatment units exposed",
    ]
    table = []
    for r in rows:
        low, high = r["rolled_back_ci95"]
        table.append(
            [
                r["scenario"],
                "50/50 A/B" if r["mode"] == "ab" else r["mode"] + (" (pooled)" if r.get("pooled") else ""),
                str(r["runs"]),
                str(r["shipped"]),
                f"{r['rolled_back'] / r['runs']:.1%} ({low:.1%}–{high:.1%})",
                str(r["srm_hold"]),
                _minutes(r["median_minutes"]),
                _minutes(r["p90_minutes"]),
                "-" if r["median_step_stopped"] is None else f"{r['median_step_stopped']} %",
                "-" if r["median_treatment_units_exposed"] is None else f"{r['median_treatment_units_exposed']:,.0f}",
            ]
        )
    if markdown:
        return "\n".join(
            [
                "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header),
                *("| " + " | ".join(row) + " |" for row in table),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(header, *table, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *table]
    )


def run_ramps_command(
    *,
    runs: int,
    seed: int,
    traffic: float,
    base_rate: float,
    effect: float,
    threshold: float,
    alpha: float,
    confirmations: int,
    step_minutes: float,
    cadence: int,
    as_json: bool,
    markdown: bool,
) -> int:
    rows = []
    for i, s in enumerate(
        scenarios(runs, traffic, base_rate, effect, threshold, alpha, confirmations, step_minutes, cadence)
    ):
        rows.append(run(s, np.random.default_rng([seed, i])))
    if as_json:
        print(json.dumps({"seed": seed, "steps": list(STEPS), "results": rows}, indent=2))
    else:
        print(render(rows, markdown))
    return 0
