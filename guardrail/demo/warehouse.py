"""Synthetic exposures and events, the two tables experimentation teams keep, for the demo, tests and benchmarks.

    exposures(unit_id VARCHAR, flag VARCHAR, variant VARCHAR, exposed_at TIMESTAMP)   -- first exposure
    events(unit_id VARCHAR, ts TIMESTAMP, name VARCHAR, value DOUBLE)
        name 'request'  value = latency in ms
        name 'error'    value = NULL (one per failed request, same ts)
        name 'purchase' value = amount

Times are naive UTC. Seeded: the same arguments give the same tables, so tests decide on fixed data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = (
    "CREATE TABLE exposures (unit_id VARCHAR NOT NULL, flag VARCHAR NOT NULL, variant VARCHAR NOT NULL, "
    "exposed_at TIMESTAMP NOT NULL)",
    "CREATE TABLE events (unit_id VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, name VARCHAR NOT NULL, value DOUBLE "
    "PRECISION)",
)


@dataclass(frozen=True)
class Arm:
    """One arm's traffic: `users` units exposed at the span's start, each with its own error propensity."""

    flag: str
    variant: str
    users: int
    requests_per_user: float = 10.0  # Poisson mean over the span
    error_rate: float = 0.01  # mean per-request error probability
    latency_ms: float = 200.0  # median request latency (log-normal, sigma 0.4)
    purchase_rate: float = 0.10  # share of users who buy once
    revenue: float = 40.0  # mean purchase amount (exponential)
    concentration: float = 50.0  # per-user error propensity ~ Beta with this a+b: events cluster by user


@dataclass(frozen=True)
class Tables:
    exposures: Mapping[str, Any]  # column -> numpy array
    events: Mapping[str, Any]

    @property
    def event_count(self) -> int:
        return len(self.events["ts"])


def _naive(moment: datetime) -> np.datetime64:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(moment, "us")


def generate(arms: Sequence[Arm], *, start: datetime, end: datetime, seed: int = 7) -> Tables:
    """Exposures at `start` (one per unit and flag) and events uniform over [start, end)."""
    rng = np.random.default_rng(seed)
    t0, span_us = _naive(start), int((end - start) / timedelta(microseconds=1))
    ex_unit, ex_flag, ex_variant = [], [], []
    ev_unit, ev_off, ev_name, ev_value = [], [], [], []
    for i, arm in enumerate(arms):
        units = np.array([f"u{i}-{n}" for n in range(arm.users)], dtype=object)
        ex_unit.append(units)
        ex_flag.append(np.full(arm.users, arm.flag, dtype=object))
        ex_variant.append(np.full(arm.users, arm.variant, dtype=object))
        requests = rng.poisson(arm.requests_per_user, arm.users)
        a = arm.error_rate * arm.concentration
        propensity = rng.beta(a, arm.concentration - a, arm.users)
        owner = np.repeat(np.arange(arm.users), requests)
        offsets = rng.integers(0, span_us, len(owner))
        latency = rng.lognormal(np.log(arm.latency_ms), 0.4, len(owner))
        failed = rng.random(len(owner)) < propensity[owner]
        buyers = np.flatnonzero(rng.random(arm.users) < arm.purchase_rate)
        ev_unit += [units[owner], units[owner[failed]], units[buyers]]
        ev_off += [offsets, offsets[failed], rng.integers(0, span_us, len(buyers))]
        ev_name += [
            np.full(len(owner), "request", dtype=object),
            np.full(int(failed.sum()), "error", dtype=object),
            np.full(len(buyers), "purchase", dtype=object),
        ]
        ev_value += [latency, np.full(int(failed.sum()), np.nan), rng.exponential(arm.revenue, len(buyers))]
    exposed_at = np.full(sum(len(u) for u in ex_unit), t0 - np.timedelta64(1, "s"))
    ts = t0 + np.concatenate(ev_off).astype("timedelta64[us]")
    return Tables(
        exposures={
            "unit_id": np.concatenate(ex_unit),
            "flag": np.concatenate(ex_flag),
            "variant": np.concatenate(ex_variant),
            "exposed_at": exposed_at,
        },
        events={
            "unit_id": np.concatenate(ev_unit),
            "ts": ts,
            "name": np.concatenate(ev_name),
            "value": np.concatenate(ev_value),
        },
    )


def write_duckdb(path: Path, tables: Tables) -> None:
    """Create (or replace) the two tables in a DuckDB file."""
    import duckdb

    con = duckdb.connect(str(path))
    try:
        for name in ("exposures", "events"):
            con.execute(f"DROP TABLE IF EXISTS {name}")
        for statement in SCHEMA:
            con.execute(statement)
        # DuckDB's replacement scan reads a dict of numpy arrays by its variable name: no pandas needed.
        exposures_frame = dict(tables.exposures)  # noqa: F841
        events_frame = dict(tables.events)  # noqa: F841
        con.execute("INSERT INTO exposures SELECT unit_id, flag, variant, exposed_at FROM exposures_frame")
        con.execute(
            "INSERT INTO events SELECT unit_id, ts, name, CASE WHEN isnan(value) THEN NULL ELSE value END "
            "FROM events_frame"
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()


def end_of(start: datetime, minutes: float) -> datetime:
    return start + timedelta(minutes=minutes)
