"""Synthetic traffic for `guardrail simulate`: the production-like conditions the default test must survive.

Each scenario generates, per minute and per arm, the units (requests) and the events (errors), then what
a source would report at each look: since-start cumulative sums (optionally reset every `reset_hours`, as
a source with a capped lookback does). Knobs, all off by default (textbook Poisson traffic):

- `dispersion` D: events clustered by user: each arm's rate in each 2-minute block is Beta-distributed so
  that the block's error count has D times the binomial variance (beta-binomial);
- `persistent_users` U: each arm is U users with their own error rates (Beta, sd 3 × the mean): the arm's
  rate is the average of its users', a fixed offset from the population rate for the whole experiment;
- `ramp_days`: the treatment share ramps 5 % → 50 % while the base rate drifts 1× → 2× (Simpson);
- `onset_minutes`: the effect starts then (a late regression);
- `treatments` × `metrics`: several arms against one control and several independent metrics;
- `unit_sums` (with `persistent_users`): the users are simulated one by one (rates Gamma-distributed with
  sd 3 × the mean, equal traffic) and the source also reports the per-unit sums a warehouse gives (U, Σy_u²,
  Σn_u², Σy_u·n_u since the start), at each look only (the per-user draws are made per look, not per minute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

BLOCK_MINUTES = 2  # the clustering block: events of one block share a rate


@dataclass(frozen=True)
class Scenario:
    name: str = "textbook"
    traffic: float = 500.0  # units per minute per arm (total 2× traffic when ramping)
    base_rate: float = 0.01
    effect: float = 1.0  # treatment rate / control rate (after onset)
    threshold: float = 0.10
    decrease: bool = False  # relative_decrease instead of relative_increase
    days: float = 14.0
    cadence: int = 2
    runs: int = 200
    alpha: float = 0.05
    confirmations: int = 1
    dispersion: float = 1.0
    persistent_users: int = 0
    ramp_days: float = 0.0
    onset_minutes: int = 0
    treatments: int = 1
    metrics: int = 1
    reset_hours: float = 0.0
    min_count: int = 100
    max_gap_minutes: float = 15.0
    unit_sums: bool = False
    dispersion_floor: float = 1.0  # the guardrail's `dispersion` option (a known floor under the estimate)

    @property
    def minutes(self) -> int:
        return round(self.days * 1440)

    @property
    def comparisons(self) -> int:
        return self.treatments * self.metrics


@dataclass(frozen=True)
class Traffic:
    """What the source reports at each minute: since-start cumulative units and events per arm.

    Shapes: units (arms, runs, minutes + 1); events (metrics, arms, runs, minutes + 1). Arm 0 is control.
    `raw_*` are the true cumulative sums (no resets), for the oracle. `unit` (with `unit_sums`): the per-unit
    sums of metric 0 at each minute, shape (4, arms, runs, minutes + 1): U, Σy_u², Σn_u², Σy_u·n_u.
    """

    units: NDArray[np.float64]
    events: NDArray[np.float64]
    raw_units: NDArray[np.float64]
    raw_events: NDArray[np.float64]
    unit: NDArray[np.float64] | None = None


def _share(s: Scenario, minute: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(treatment traffic multiplier, base-rate multiplier) per minute."""
    import numpy as np

    if s.ramp_days <= 0:
        return np.ones_like(minute), np.ones_like(minute)
    progress = np.clip(minute / (s.ramp_days * 1440.0), 0.0, 1.0)
    share = 0.05 + 0.45 * progress  # treatment share of the total 2 × traffic
    return share * 2.0, 1.0 + progress


def generate(s: Scenario, rng: np.random.Generator) -> Traffic:
    import numpy as np

    if s.unit_sums:
        return _generate_users(s, rng)

    arms = 1 + s.treatments
    minute = np.arange(s.minutes, dtype=float)
    t_mult, base_mult = _share(s, minute)
    units = np.empty((arms, s.runs, s.minutes))
    for a in range(arms):
        mean = s.traffic * (t_mult if a > 0 else (2.0 - t_mult) if s.ramp_days > 0 else 1.0)
        units[a] = rng.poisson(np.broadcast_to(mean, (s.runs, s.minutes)))
    events = np.empty((s.metrics, arms, s.runs, s.minutes))
    onset = minute >= s.onset_minutes
    for m in range(s.metrics):
        for a in range(arms):
            rate = s.base_rate * base_mult * (np.where(onset, s.effect, 1.0) if a > 0 else 1.0)
            rate = np.broadcast_to(rate, (s.runs, s.minutes)).copy()
            if s.persistent_users:
                # The arm's rate is the mean of its users' rates: sd(user) = 3 × mean, over U users.
                offset = 1.0 + rng.standard_normal((s.runs, 1)) * 3.0 / np.sqrt(s.persistent_users)
                rate = rate * np.maximum(offset, 0.0)
            if s.dispersion > 1.0:
                blocks = -(-s.minutes // BLOCK_MINUTES)
                n_block = BLOCK_MINUTES * s.traffic
                icc = (s.dispersion - 1.0) / max(n_block - 1.0, 1.0)
                conc = 1.0 / icc - 1.0
                block_rate = rate[:, ::BLOCK_MINUTES][:, :blocks]
                drawn = rng.beta(np.maximum(block_rate * conc, 1e-9), np.maximum((1 - block_rate) * conc, 1e-9))
                rate = np.repeat(drawn, BLOCK_MINUTES, axis=1)[:, : s.minutes]
            events[m, a] = rng.binomial(units[a].astype(np.int64), np.clip(rate, 0.0, 1.0))
    zero_u = np.zeros((arms, s.runs, 1))
    zero_e = np.zeros((s.metrics, arms, s.runs, 1))
    raw_units = np.concatenate([zero_u, np.cumsum(units, axis=-1)], axis=-1)
    raw_events = np.concatenate([zero_e, np.cumsum(events, axis=-1)], axis=-1)
    seen_units, seen_events = raw_units, raw_events
    if s.reset_hours > 0:
        period = round(s.reset_hours * 60)
        idx = np.arange(s.minutes + 1)
        base = (idx // period) * period  # the count restarts at each multiple of the period
        base = np.where(idx % period == 0, np.maximum(base - period, 0), base)  # at the boundary: full day
        seen_units = raw_units - raw_units[..., base]
        seen_events = raw_events - raw_events[..., base]
    return Traffic(seen_units, seen_events, raw_units, raw_events)


def looks(s: Scenario) -> NDArray[np.int64]:
    import numpy as np

    return np.arange(s.cadence, s.minutes + 1, s.cadence, dtype=np.int64)


def _generate_users(s: Scenario, rng: np.random.Generator) -> Traffic:
    """Persistent users one by one, drawn per look: each arm is `persistent_users` users with their own error
    rate (Gamma, mean = the arm's rate, sd 3 × the mean: shape 1/9), each sending traffic/U requests a minute.

    Between looks the since-start sums hold their last value (a source is only asked at the looks)."""
    import numpy as np

    if s.persistent_users < 2 or s.metrics != 1 or s.ramp_days or s.dispersion > 1.0 or s.reset_hours:
        raise ValueError("unit_sums simulates persistent users alone (one metric, no ramp, dispersion or reset)")
    arms, users = 1 + s.treatments, s.persistent_users
    at = looks(s)
    units = np.zeros((arms, s.runs, s.minutes + 1))
    events = np.zeros((1, arms, s.runs, s.minutes + 1))
    unit = np.zeros((4, arms, s.runs, s.minutes + 1))
    lam = s.traffic / users * s.cadence  # requests per user between two looks
    for a in range(arms):
        rates = rng.gamma(1.0 / 9.0, 9.0 * s.base_rate, size=(s.runs, users))
        n_u = np.zeros((s.runs, users))
        y_u = np.zeros((s.runs, users))
        previous = 0
        for minute in at:
            dn = rng.poisson(lam, size=(s.runs, users)).astype(np.float64)
            effect = s.effect if a > 0 and minute > s.onset_minutes else 1.0
            dy = rng.binomial(dn.astype(np.int64), np.clip(rates * effect, 0.0, 1.0)).astype(np.float64)
            n_u += dn
            y_u += dy
            span = slice(previous + 1, minute + 1)
            units[a, :, span] = n_u.sum(axis=1)[:, None]
            events[0, a, :, span] = y_u.sum(axis=1)[:, None]
            unit[0, a, :, span] = (n_u > 0).sum(axis=1)[:, None]
            unit[1, a, :, span] = (y_u * y_u).sum(axis=1)[:, None]
            unit[2, a, :, span] = (n_u * n_u).sum(axis=1)[:, None]
            unit[3, a, :, span] = (y_u * n_u).sum(axis=1)[:, None]
            previous = int(minute)
    return Traffic(units, events, units, events, unit)
