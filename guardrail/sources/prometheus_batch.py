"""Prometheus in batch: one instant query per metric, window and role answers every flag and arm.

A grouped template aggregates `by (flag, variant)` (label names configurable with `metrics.labels`) and has
no $flag or $variant: Prometheus returns one series per (flag, variant), and each series is mapped back to
the plan's keys by its labels. 2,000 flags x 3 metrics is then 6 instant queries (value and count) per
window instead of 24,000. Per-series templates keep working: their metrics go one query per series.

Failures stay per metric: an error, a warning or a malformed answer makes that metric's keys no data; a
missing series or two series with the same labels make that arm no data.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from guardrail.model import Aggregate, AggregateKey, FailureKind, MetricQuery
from guardrail.sources.base import PerSeriesSource
from guardrail.sources.prometheus import eval_time, render
from guardrail.sources.prometheus_answers import NoData, aggregate, answer_data, sample_value
from guardrail.sources.prometheus_config import _DURATION, STAT_LABEL

if TYPE_CHECKING:
    from guardrail.sources.prometheus import PrometheusSource

Labels = tuple[str, ...]


def parse_grouped(body: Any, labels: tuple[str, ...]) -> dict[Labels, float | NoData]:
    """A grouped answer -> {(flag, variant[, stat]): number, or NoData for a duplicated or malformed series}.
    The whole answer failing (error, warning, not a vector) raises NoData."""
    rtype, result = answer_data(body)
    if rtype != "vector":
        raise NoData(f"a grouped query must return one series per ({', '.join(labels)}), got a {rtype}")
    found: dict[Labels, float | NoData] = {}
    for series in result:
        metric = series.get("metric") if isinstance(series, Mapping) else None
        if not isinstance(metric, Mapping) or not all(isinstance(metric.get(name), str) for name in labels):
            continue  # a series without both labels belongs to no arm (e.g. an `or vector(0)` fallback)
        pair = tuple(str(metric[name]) for name in labels)
        if pair in found:
            shown = " ".join(f"{name}={value}" for name, value in zip(labels, pair, strict=True))
            found[pair] = NoData(f"several series for {shown}: aggregate `by ({', '.join(labels[:2])})` only")
            continue
        try:
            found[pair] = sample_value(series)
        except NoData as exc:
            found[pair] = exc
    return found


async def _grouped(
    source: PrometheusSource,
    metric: str,
    window: str,
    end: datetime,
    items: Sequence[tuple[AggregateKey, MetricQuery]],
) -> dict[AggregateKey, Aggregate]:
    queries = source.config.queries[metric]
    if not _DURATION.match(window):
        error = Aggregate.missing(f"window {window!r} is not a PromQL duration such as 5m", FailureKind.INTERNAL)
        return {key: error for key, _q in items}
    at = eval_time(end)
    labels: tuple[str, ...] = source.config.labels
    if queries.combined:  # one query; each series says which role it answers
        labels = (*labels, STAT_LABEL)
        roles = [("series", queries.value)]
    else:
        roles = [("value", queries.value), ("count", queries.count)]
        if queries.stddev is not None:
            roles.append(("stddev", queries.stddev))

    async def answer(template: str) -> dict[Labels, float | NoData] | NoData:
        try:
            return parse_grouped(await source.get(render(template, flag="", variant="", window=window), at), labels)
        except NoData as exc:
            return exc

    answers = await asyncio.gather(*(answer(template) for _role, template in roles))
    if queries.combined:
        roles = [(role, "") for role in ("value", "count", "stddev")]
        answers = [
            got if isinstance(got, NoData) else {k[:2]: v for k, v in got.items() if k[2] == role}
            for role, _ in roles
            for got in answers[:1]
        ]
    out: dict[AggregateKey, Aggregate] = {}
    for key, q in items:
        numbers: dict[str, float | NoData] = {}
        for (role, _template), got in zip(roles, answers, strict=True):
            if isinstance(got, NoData):
                numbers[role] = got
            else:
                numbers[role] = got.get(
                    (q.flag, q.variant),
                    NoData(
                        f"no {role} series for {labels[0]}={q.flag} {labels[1]}={q.variant} in the grouped answer "
                        "(no traffic yet, or the labels differ)",
                        FailureKind.NOT_FOUND,
                    ),
                )
        out[key] = aggregate(metric, numbers)
    return out


async def fetch_plan(
    source: PrometheusSource, plan: Sequence[tuple[AggregateKey, MetricQuery]]
) -> dict[AggregateKey, Aggregate]:
    groups: dict[tuple[str, str, datetime], list[tuple[AggregateKey, MetricQuery]]] = defaultdict(list)
    single: list[tuple[AggregateKey, MetricQuery]] = []
    for key, q in plan:
        spec = source.config.queries.get(q.metric)
        if spec is not None and spec.grouped:
            groups[(q.metric, q.window, q.end)].append((key, q))
        else:
            single.append((key, q))
    results: dict[AggregateKey, Aggregate] = {}
    gate = asyncio.Semaphore(max(1, source.concurrency // 3))  # each group sends 2-3 queries at once

    async def one(spec: tuple[str, str, datetime], items: list[tuple[AggregateKey, MetricQuery]]) -> None:
        async with gate:
            results.update(await _grouped(source, *spec, items))

    async def rest() -> None:
        if single:
            results.update(await PerSeriesSource.fetch(source, single))

    await asyncio.gather(rest(), *(one(spec, items) for spec, items in groups.items()))
    return {key: results[key] for key, _q in plan}
