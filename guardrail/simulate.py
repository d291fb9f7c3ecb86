"""`guardrail simulate`: synthetic experiments through the engine's rules: how often a halt, how fast.

Traffic comes from guardrail/scenarios.py (textbook Poisson, or production-like: clustered users, persistent
users, a ramp with a drifting base rate, a rare decrease, a late onset, several arms × metrics, a capped
lookback, a slow cron). Each method judges the very same experiments with the vectorised twins of
guardrail/simvec.py, and each row reports beside them the oracle SPRT's median: the physical limit.

`--suite` runs the production-like table of docs/statistics.md; the other options build one grid of
textbook scenarios (traffic × effect) as before.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from guardrail import scenarios, simvec
from guardrail.model import Comparison, GuardrailError
from guardrail.scenarios import Scenario

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

METHODS = ("sequential", "threshold")
# Runs × minutes × arms generated at once (~60 bytes each): memory stays bounded whatever --runs is.
BATCH_CELLS = 2**23


@dataclass(frozen=True)
class Outcome:
    method: str
    scenario: Scenario
    halt_minutes: NDArray[np.float64]  # minutes from the onset to the halting look; inf when never halted
    oracle_minutes: NDArray[np.float64] | None = None

    def summary(self) -> dict[str, Any]:
        halted = [float(x) for x in self.halt_minutes if math.isfinite(x)]
        k, n = len(halted), len(self.halt_minutes)
        low, high = wilson(k, n)
        s = self.scenario
        return {
            "scenario": s.name,
            "method": self.method,
            "traffic": s.traffic,
            "base_rate": s.base_rate,
            "effect": s.effect,
            "threshold": s.threshold,
            "days": s.days,
            "cadence": s.cadence,
            "runs": n,
            "comparisons": s.comparisons,
            "halted": k,
            "halt_rate": k / n,
            "halt_rate_ci95": [low, high],
            "median_minutes_to_halt": quantile(self.halt_minutes, 0.5),
            "p90_minutes_to_halt": quantile(self.halt_minutes, 0.9),
            "oracle_median_minutes": None if self.oracle_minutes is None else quantile(self.oracle_minutes, 0.5),
        }


def quantile(values: NDArray[np.float64], q: float) -> float | None:
    """The q-quantile counting never-halted runs as infinite (None when it is one of them)."""
    import numpy as np

    ordered = np.sort(values)
    value = float(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)])
    return value if math.isfinite(value) else None


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (good at 0 and at small n, unlike the Wald one)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def engine_sums(n: NDArray[np.float64], x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Σy as the engine rebuilds it from a source's (value, count): (x / n) · n, the same doubles."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, (x / np.where(n > 0, n, 1.0)) * n, 0.0)


def _unit_rows(t: scenarios.Traffic, metric: int, arm: int) -> NDArray[np.float64]:
    """(U, Σy_u, Σy_u², Σn_u², Σy_u·n_u) of one arm: what a warehouse source reports with the aggregate."""
    import numpy as np

    assert t.unit is not None
    u = t.unit[:, arm]
    return np.stack([u[0], t.events[metric, arm], u[1], u[2], u[3]])


def judge(s: Scenario, t: scenarios.Traffic, methods: list[str]) -> dict[str, NDArray[np.float64]]:
    """Halt minute per run and method: a flag halts at the first comparison (arm × metric) that does."""
    import numpy as np

    looks = scenarios.looks(s)
    comparison = Comparison.RELATIVE_DECREASE if s.decrease else Comparison.RELATIVE_INCREASE
    out = {m: np.full(s.runs, np.inf) for m in methods}
    for metric in range(s.metrics):
        for arm in range(1, 1 + s.treatments):
            seen = (
                t.units[0],
                engine_sums(t.units[0], t.events[metric, 0]),
                t.units[arm],
                engine_sums(t.units[arm], t.events[metric, arm]),
            )
            per_unit = None if t.unit is None else (_unit_rows(t, metric, 0), _unit_rows(t, metric, arm))
            for m in methods:
                if m == "sequential":
                    # Bonferroni over the flag's comparisons, as judge.comparison_alpha does.
                    verdicts = simvec.sequential(
                        comparison,
                        s.threshold,
                        s.alpha / s.comparisons,
                        s.min_count,
                        looks,
                        *seen,
                        unit_c=None if per_unit is None else per_unit[0],
                        unit_t=None if per_unit is None else per_unit[1],
                        min_dispersion=s.dispersion_floor,
                    )
                else:
                    raw = (t.raw_units[0], t.raw_events[metric, 0], t.raw_units[arm], t.raw_events[metric, arm])
                    verdicts = simvec.threshold_rule(comparison, s.threshold, s.min_count, looks, *raw)
                halted = simvec.halts(verdicts, looks, s.confirmations if m == "sequential" else 2, s.max_gap_minutes)
                out[m] = np.minimum(out[m], halted)
    return out


def simulate(s: Scenario, methods: list[str], rng: np.random.Generator) -> list[Outcome]:
    """Every method judges the same experiments, generated and judged a batch of runs at a time."""
    import numpy as np

    batch = max(1, BATCH_CELLS // ((s.minutes + 1) * (1 + s.treatments) * (1 + s.metrics)))
    found: dict[str, list[NDArray[np.float64]]] = {m: [] for m in methods}
    oracle: list[NDArray[np.float64]] = []
    limit = s.effect != 1.0 and ((s.effect < 1.0) == s.decrease)
    for start in range(0, s.runs, batch):
        part = replace(s, runs=min(batch, s.runs - start))
        traffic = scenarios.generate(part, rng)
        for m, halted in judge(part, traffic, methods).items():
            found[m].append(halted - s.onset_minutes)
        if limit:
            raw = (traffic.raw_units[0], traffic.raw_events[0, 0], traffic.raw_units[1], traffic.raw_events[0, 1])
            oracle.append(
                simvec.oracle(s.threshold, s.effect, s.decrease, s.alpha, s.onset_minutes, scenarios.looks(part), *raw)
                - s.onset_minutes
            )
    limit_minutes = np.concatenate(oracle) if oracle else None
    return [Outcome(m, s, np.concatenate(found[m]), limit_minutes) for m in methods]


def suite(runs: int, days: float, alpha: float) -> list[Scenario]:
    """The production-like table (docs/statistics.md): speed first, then each condition at the threshold (the
    least favourable null) and A/A."""
    base = Scenario(runs=runs, days=days, alpha=alpha)
    rows = [
        replace(base, name="textbook", effect=3.0, days=0.5),
        replace(base, name="textbook", effect=1.5, days=0.5),
        replace(base, name="textbook", effect=1.1),
        replace(base, name="onset day 7", onset_minutes=7 * 1440, effect=3.0, days=7.25),
    ]
    rows += [replace(base, name=f"cron {c} min", cadence=c, effect=3.0, days=1.0) for c in (20, 30, 60)]
    rows += [replace(base, name=f"clustered D={d:g}", dispersion=d, effect=1.1) for d in (2.0, 4.0, 8.0)]
    # The same clustering with the guardrail's `dispersion` option set to what `status` shows the traffic has.
    known = [
        replace(base, name=f"clustered D={d:g}, dispersion: {d:g}", dispersion=d, dispersion_floor=d)
        for d in (4.0, 8.0)
    ]
    rows += [replace(known[0], effect=1.5, days=0.5)] + [replace(k, effect=1.1) for k in known]
    rows += [replace(base, name="ramp 5→50 % + drift", ramp_days=2.0, effect=1.1)]
    rows += [replace(base, name="daily reset", reset_hours=24.0, effect=1.1)]
    rows += [replace(base, name="3 arms × 2 metrics", treatments=3, metrics=2, effect=1.1)]
    for traffic in (5000.0, 500.0):  # 50 and 5 conversions/min at 1 %
        rows += [
            replace(base, name=f"rare decrease {traffic * 0.01:g}/min", traffic=traffic, decrease=True, effect=0.9)
        ]
    rows += [replace(base, name="10,000 persistent users/arm", persistent_users=10_000, effect=1.1)]
    # The same users with a warehouse source's per-unit sums (users drawn one by one: 10-minute looks, 1 day).
    users = replace(base, name="persistent users + per-unit sums", persistent_users=10_000, unit_sums=True,
                    cadence=10, days=min(days, 1.0))  # fmt: skip
    rows += [replace(users, effect=1.5), replace(users, effect=1.1)]
    rows += [replace(base, name="textbook", effect=1.0)]
    rows += [replace(base, name=f"clustered D={d:g}", dispersion=d, effect=1.0) for d in (2.0, 4.0, 8.0)]
    rows += [replace(k, effect=1.0) for k in known]
    rows += [replace(base, name="ramp 5→50 % + drift", ramp_days=2.0, effect=1.0)]
    rows += [replace(base, name="3 arms × 2 metrics", treatments=3, metrics=2, effect=1.0)]
    rows += [replace(base, name=f"rare decrease {t * 0.01:g}/min", traffic=t, decrease=True) for t in (5000.0, 500.0)]
    rows += [replace(base, name="10,000 persistent users/arm", persistent_users=10_000, effect=1.0)]
    rows += [replace(users, effect=1.0)]
    return rows


def _minutes(value: float | None) -> str:
    if value is None:
        return "not reached"
    return f"{value:.0f} min" if value < 180 else f"{value / 60:.1f} h"


def render(rows: list[dict[str, Any]], markdown: bool) -> str:
    header = [
        "scenario",
        "method",
        "events/min/arm",
        "effect",
        "runs",
        "halted (95% CI)",
        "median to halt",
        "p90",
        "oracle median",
    ]
    table = []
    for r in rows:
        low, high = r["halt_rate_ci95"]
        effect = "A/A" if r["effect"] == 1 else f"{r['effect']:g}x"
        # No limit for A/A or exactly at the threshold: the oracle's alternative would be the null itself (this
        # depends on the scenario only, not on how often the method in this row halted).
        at_null = any(math.isclose(r["effect"], 1.0 + d) for d in (0.0, r["threshold"], -r["threshold"]))
        oracle = "—" if at_null else _minutes(r["oracle_median_minutes"])
        table.append(
            [
                r["scenario"],
                r["method"],
                f"{r['traffic']:g}",
                effect,
                str(r["runs"]),
                f"{r['halt_rate']:.1%} ({low:.1%}–{high:.1%})",
                _minutes(r["median_minutes_to_halt"]),
                _minutes(r["p90_minutes_to_halt"]),
                oracle,
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table])
    widths = [max(len(x) for x in col) for col in zip(header, *table, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *table]
    )


def _seeded(seed: int, s: Scenario) -> np.random.Generator:
    """One stream per scenario, from the seed and the scenario's own settings: a row's numbers do not depend
    on which other rows share the command."""
    import zlib

    import numpy as np

    return np.random.default_rng([seed, zlib.crc32(repr(replace(s, runs=0)).encode())])


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
    run_suite: bool = False,
    dispersion: float = 1.0,
) -> int:
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise GuardrailError(f"unknown method(s) {unknown}; use threshold or sequential", field="--method")
    if not 0 < base_rate < 1:
        raise GuardrailError("must be in (0, 1)", field="--base-rate")
    if any(not (math.isfinite(e) and e > 0 and base_rate * e <= 1) for e in effect):
        raise GuardrailError("need 0 < effect and base rate x effect <= 1", field="--effect")
    if any(not (math.isfinite(t) and t > 0) for t in traffic):
        raise GuardrailError("must be a positive number of events per minute per arm", field="--traffic")
    if not (math.isfinite(threshold) and 0 <= threshold < 1):
        raise GuardrailError("must be a relative increase in [0, 1)", field="--threshold")
    if not (math.isfinite(cadence) and cadence >= 1 and cadence == int(cadence)):
        raise GuardrailError("must be whole minutes >= 1 (traffic is simulated per minute)", field="--cadence")
    if not (math.isfinite(days) and round(days * 1440) >= cadence):
        raise GuardrailError("must leave room for at least one look", field="--days")
    if not 0 < alpha < 0.5:
        raise GuardrailError("must be in (0, 0.5)", field="--alpha")
    if not (math.isfinite(dispersion) and 1.0 <= dispersion <= 100.0):
        raise GuardrailError("must be in [1, 100]", field="--dispersion")
    if seed < 0 or runs < 1 or confirmations < 1:
        raise GuardrailError("--seed must be >= 0; --runs and --confirmations >= 1", field="--seed")
    methods = list(dict.fromkeys(methods))
    if run_suite:
        grid = suite(runs, days, alpha)
    else:
        grid = [
            Scenario(
                traffic=t,
                base_rate=base_rate,
                effect=e,
                threshold=threshold,
                days=days,
                cadence=int(cadence),
                runs=runs,
                alpha=alpha,
                confirmations=confirmations,
                dispersion=dispersion,
            )
            for t in traffic
            for e in effect
        ]
    rows: list[dict[str, Any]] = []
    for s in grid:
        try:
            found = [o.summary() for o in simulate(s, methods, _seeded(seed, s))]
        except MemoryError:
            raise GuardrailError(
                f"not enough memory for {s.days:g} days of per-minute traffic; use fewer --days"
            ) from None
        if not as_json:
            # A table row as soon as its scenario is done: a long --suite shows progress and keeps what it has.
            lines = render([*rows, *found], markdown).splitlines()
            print("\n".join(lines if not rows else lines[-len(found) :]), flush=True)
        rows.extend(found)
    if as_json:
        print(json.dumps({"seed": seed, "alpha": alpha, "confirmations": confirmations, "results": rows}, indent=2))
    return 0
