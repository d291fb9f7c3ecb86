"""Metrics sources (one module per outside system) and the concurrent, bounded fetch of a run's queries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from guardrail.model import Aggregate, AggregateKey, MetricQuery
from guardrail.sources.base import MetricSource


async def fetch_all(
    source: MetricSource, planned: Sequence[tuple[AggregateKey, MetricQuery]], *, concurrency: int
) -> dict[AggregateKey, Aggregate]:
    """Run every query concurrently, at most `concurrency` at a time. Never one after another:
    at 20 ms a query, 1,200 queries in sequence would take most of a cron interval."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(q: MetricQuery) -> Aggregate:
        async with gate:
            try:
                return await source.query(q)
            except Exception as exc:  # a source must not raise; if one does, it is no data, not a crash
                return Aggregate.missing(f"{source.name} source failed: {type(exc).__name__}")

    results = await asyncio.gather(*(one(q) for _key, q in planned))
    return {key: agg for (key, _q), agg in zip(planned, results, strict=True)}


__all__ = ["MetricSource", "fetch_all"]
