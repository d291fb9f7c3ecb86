"""Prometheus as a metrics source: PromQL templates per guardrail metric, answered by instant queries.

Each guardrail metric maps to a `value` and a `count` PromQL template (and optionally `stddev`) with
`$flag`, `$variant` and `$window` placeholders. Every query of one aggregate is an instant query
(`GET /api/v1/query`) at the run's pinned `end`, so control and treatment cover exactly the same window:
https://prometheus.io/docs/prometheus/latest/querying/api/#instant-queries

Prometheus answers in ways a naive client turns into false halts or tracebacks (NaN for 0/0, an empty
vector when labels do not match, several series when the query forgot `sum()`, `status: error`, partial
answers with `warnings`). Each becomes `Aggregate.missing(<cause>)`, which the engine records as
`skip:no_data` with that cause: never a halt, never an exception.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from guardrail.adapters import ConfigContext, Plugin, Runtime
from guardrail.http import HTTPFailure, RetryPolicy, is_loopback, json_body, request
from guardrail.model import Aggregate, AggregateKey, GuardrailError, MetricQuery
from guardrail.sources.base import PerSeriesSource
from guardrail.sources.prometheus_answers import (
    NoData,
    aggregate,
    answer_data,
    parse_answer,
    sample_value,
)
from guardrail.sources.prometheus_config import (
    _DURATION,
    _TOKEN,
    DEFAULT_LABELS,
    STAT_LABEL,
    PrometheusConfig,
    PromQueries,
    auth_headers_from_env,
    parse_prometheus_config,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
DEFAULT_POLICY = RetryPolicy()
__all__ = [
    "DEFAULT_LABELS",
    "STAT_LABEL",
    "NoData",
    "PromQueries",
    "PrometheusConfig",
    "PrometheusSource",
    "aggregate",
    "answer_data",
    "auth_headers_from_env",
    "eval_time",
    "parse_answer",
    "parse_prometheus_config",
    "promql_string",
    "render",
    "sample_value",
]

# ---- rendering ---------------------------------------------------------------------------------------


def promql_string(value: str) -> str:
    """Escape text for the inside of a double-quoted PromQL string literal (Go escaping rules)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(template: str, *, flag: str, variant: str, window: str) -> str:
    """Fill the placeholders in one pass, so a substituted value is never itself re-scanned.
    PromQL's own braces stay literal, which str.format could not do."""
    values = {"flag": promql_string(flag), "variant": promql_string(variant), "window": window}

    def fill(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return "$" if name is None else values[name]

    return _TOKEN.sub(fill, template)


def eval_time(end: datetime) -> str:
    """Unix seconds with millisecond precision, truncated the way Prometheus truncates an RFC 3339 time:
    the query at `end` and a person's query at the same RFC 3339 instant hit the same millisecond."""
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)  # the model's times are UTC; naive means UTC here
    ms = (end - _EPOCH) // _MS
    return f"{ms // 1000}.{ms % 1000:03d}"


# ---- answers -----------------------------------------------------------------------------------------


# ---- the source --------------------------------------------------------------------------------------


def check_credential_transport(config: PrometheusConfig, headers: Mapping[str, str]) -> None:
    insecure = urlsplit(config.url).scheme == "http" and not is_loopback(config.url)
    if headers and insecure and not config.allow_insecure_http:
        raise GuardrailError(
            "refusing to send Prometheus credentials over plain http to a non-loopback host; use https, "
            "or set `allow_insecure_http: true` if the network is trusted",
            field="metrics.url",
        )


class PrometheusSource(PerSeriesSource):
    """MetricSource over Prometheus's HTTP API. The client belongs to the run; this never closes it."""

    name = "prometheus"

    def __init__(
        self,
        config: PrometheusConfig,
        client: httpx.AsyncClient,
        *,
        headers: Mapping[str, str] | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        concurrency: int = 64,
    ) -> None:
        self.config = config
        self.concurrency = config.concurrency or concurrency
        self.requests = 0  # instant queries sent, for benchmarks
        self.client = client
        self.headers = dict(headers or {})
        self.policy = policy
        self.endpoint = f"{config.url}/api/v1/query"
        check_credential_transport(config, self.headers)

    def __repr__(self) -> str:
        return f"PrometheusSource(url={self.config.url!r}, metrics={sorted(self.config.queries)})"

    async def _one(self, template: str, q: MetricQuery, at: str) -> float:
        promql = render(template, flag=q.flag, variant=q.variant, window=q.window)
        return parse_answer(await self.get(promql, at), flag=q.flag, variant=q.variant)

    async def get(self, promql: str, at: str) -> Any:
        """One instant query's JSON body, or NoData with the cause."""
        self.requests += 1
        try:
            response = await request(
                self.client,
                "GET",
                self.endpoint,
                label="prometheus query",
                policy=self.policy,
                # 400 (bad_data) and 422 (execution) carry Prometheus's own explanation in a JSON body;
                # take them as answers rather than bare status codes. 5xx is retried by `request`.
                ok_statuses=(200, 400, 422),
                params={"query": promql, "time": at},
                headers=self.headers,
                timeout=self.config.timeout,
            )
        except HTTPFailure as exc:
            hint = ""
            if exc.status in (401, 403):
                hint = " (check PROMETHEUS_BEARER_TOKEN or PROMETHEUS_USERNAME/PASSWORD)"
            raise NoData(f"{exc}{hint}", exc.failure) from None
        try:
            return json_body(response)
        except ValueError as exc:
            raise NoData(f"prometheus query: {exc}") from None

    async def query(self, q: MetricQuery) -> Aggregate:
        queries = self.config.queries.get(q.metric)
        if queries is None:
            return Aggregate.missing(f"no PromQL configured for metric {q.metric!r} in metrics.queries")
        if not _DURATION.match(q.window):
            return Aggregate.missing(f"window {q.window!r} is not a PromQL duration such as 5m")
        at = eval_time(q.end)  # one instant for value, count and stddev, and for both arms
        roles = [("value", queries.value), ("count", queries.count)]
        if queries.stddev is not None:
            roles.append(("stddev", queries.stddev))
        answers = await asyncio.gather(
            *(self._one(template, q, at) for _role, template in roles), return_exceptions=True
        )
        numbers: dict[str, float | NoData] = {}
        for (role, _template), answer in zip(roles, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(answer, NoData):
                raise answer  # a bug, not data: PerSeriesSource.fetch reports it without a traceback
            numbers[role] = answer
        return aggregate(q.metric, numbers)

    async def fetch(self, plan: Sequence[tuple[AggregateKey, MetricQuery]]) -> dict[AggregateKey, Aggregate]:
        """The whole plan: grouped metrics in one instant query per (metric, window, end) and role, the
        others one query per series, at most `concurrency` in flight."""
        from guardrail.sources.prometheus_batch import fetch_plan

        return await fetch_plan(self, plan)


# ---- the plugin -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrometheusSettings:
    config: PrometheusConfig
    headers: Mapping[str, str]


def _parse(ctx: ConfigContext) -> PrometheusSettings:
    config = parse_prometheus_config(ctx.section("metrics"), source=ctx.source)
    if ctx.option("allow_insecure_http"):
        config = replace(config, allow_insecure_http=True)
    headers = auth_headers_from_env(ctx.env)
    check_credential_transport(config, headers)  # at start, not at the first query
    return PrometheusSettings(config, headers)


def _secrets(settings: PrometheusSettings) -> list[str]:
    values = [v.split(" ", 1)[-1] for v in settings.headers.values()]
    return values + list(settings.headers.values())


def _create(settings: PrometheusSettings, runtime: Runtime) -> PrometheusSource:
    return PrometheusSource(
        settings.config,
        runtime.client,
        headers=settings.headers,
        policy=runtime.policy,
        concurrency=runtime.concurrency,
    )


PLUGIN = Plugin(
    name="prometheus",
    summary="Prometheus instant queries from PromQL templates",
    parse=_parse,
    create=_create,
    secrets=_secrets,
)
