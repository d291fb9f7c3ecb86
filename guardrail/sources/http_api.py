"""The HTTP metrics query API (docs/contracts.md): `GET {url}/query?flag=&variant=&metric=&window=&end=`.

One series per call (the API has no batch form), so it is a PerSeriesSource. Configured by
METRICS_API_URL, or `metrics: {source: http, url: ...}` in the config file; the variable wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from guardrail.adapters import ConfigContext, Plugin, Runtime
from guardrail.config import format_time
from guardrail.http import HTTPFailure, RetryPolicy, json_body, request, url_problem
from guardrail.model import Aggregate, ExitCode, FailureKind, GuardrailError, MetricQuery
from guardrail.sources.base import PerSeriesSource
from guardrail.sources.cells import OPTIONAL, optional_cell


def parse_answer(body: Any) -> Aggregate:
    """Turn a JSON answer into an Aggregate, or the reason it is unusable. Never raises."""
    if not isinstance(body, dict):
        return Aggregate.missing(f"answer is {type(body).__name__}, not an object", FailureKind.BAD_ANSWER)
    value, count, stddev = body.get("value"), body.get("count"), body.get("stddev")
    if value is None or count is None:
        return Aggregate.missing("answer has a null value or count")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Aggregate.missing(f"value is not a number ({value!r:.40})")
    if isinstance(count, bool) or not isinstance(count, (int, float)):
        return Aggregate.missing(f"count is not a number ({count!r:.40})")
    if not math.isfinite(value):
        return Aggregate.missing(f"value is {value}")
    if not math.isfinite(count) or count < 0 or count != int(count):
        return Aggregate.missing(f"count is not a non-negative whole number ({count})")
    if stddev is not None:
        if isinstance(stddev, bool) or not isinstance(stddev, (int, float)) or not math.isfinite(stddev):
            stddev = None  # optional field: a bad one is dropped, not fatal
        elif stddev < 0:
            stddev = None
    # Optional per-unit sums (the same names as the SQL columns, docs/contracts.md): with them the sequential
    # test takes its variance from the randomisation unit. An unusable one is dropped, like stddev.
    per_unit: dict[str, Any] = {f: optional_cell(body[f], f) for f in OPTIONAL if f != "stddev" and f in body}
    return Aggregate(value=float(value), count=int(count), stddev=None if stddev is None else float(stddev), **per_unit)


class HttpMetricSource(PerSeriesSource):
    name = "http"

    def __init__(
        self, base_url: str, client: httpx.AsyncClient, *, policy: RetryPolicy = RetryPolicy(), concurrency: int = 64
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.policy = policy
        self.concurrency = concurrency

    async def query(self, q: MetricQuery) -> Aggregate:
        params = {
            "flag": q.flag,
            "variant": q.variant,
            "metric": q.metric,
            "window": q.window,
            "end": format_time(q.end),
        }
        try:
            response = await request(
                self.client,
                "GET",
                f"{self.base_url}/query",
                label="metrics query",
                policy=self.policy,
                params=params,
            )
            return parse_answer(json_body(response))
        except HTTPFailure as exc:
            return Aggregate.missing(str(exc), exc.failure)
        except ValueError as exc:
            return Aggregate.missing(f"metrics query: {exc}", FailureKind.BAD_ANSWER)


@dataclass(frozen=True)
class HttpSourceConfig:
    url: str | None


def parse_config(ctx: ConfigContext) -> HttpSourceConfig:
    section = ctx.section("metrics")
    from_env = bool(ctx.env.get("METRICS_API_URL"))
    url = ctx.env.get("METRICS_API_URL") or section.get("url")
    if url is None:
        return HttpSourceConfig(None)
    problem = url_problem(url) if isinstance(url, str) else "must be a URL"
    if problem:  # the text never repeats the URL: it may hold a credential
        raise GuardrailError(
            f"not a usable http(s) URL: {problem}",
            source=None if from_env else ctx.source,
            field="METRICS_API_URL" if from_env else "metrics.url",
        )
    return HttpSourceConfig(url)


def _ready(config: HttpSourceConfig) -> None:
    if not config.url:
        raise GuardrailError(
            "no metrics source: set METRICS_API_URL, or `metrics:` in --config", exit_code=ExitCode.CONFIG
        )


def _create(config: HttpSourceConfig, runtime: Runtime) -> HttpMetricSource:
    assert config.url is not None
    return HttpMetricSource(config.url, runtime.client, policy=runtime.policy, concurrency=runtime.concurrency)


PLUGIN = Plugin(
    name="http",
    summary="the HTTP metrics query API (METRICS_API_URL)",
    parse=parse_config,
    create=_create,
    ready=_ready,
)
