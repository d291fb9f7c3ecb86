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
import base64
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from guardrail.adapters import ConfigContext, Plugin, Runtime
from guardrail.http import HTTPFailure, RetryPolicy, is_loopback, json_body, request
from guardrail.model import Aggregate, FailureKind, GuardrailError, MetricQuery
from guardrail.sources.base import PerSeriesSource

PLACEHOLDERS = ("flag", "variant", "window")
SECTION_KEYS = ("source", "url", "timeout", "queries", "allow_insecure_http")
QUERY_KEYS = ("value", "count", "stddev")

# `$name` or `${name}`; `$$` is a literal dollar (a regex end anchor inside a label matcher, say).
_TOKEN = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# PromQL durations: one or more number+unit pairs, e.g. 5m, 4320m, 1h30m.
# https://prometheus.io/docs/prometheus/latest/querying/basics/#time-durations
_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True)
class PromQueries:
    """The PromQL templates of one guardrail metric."""

    value: str
    count: str
    stddev: str | None = None


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    queries: Mapping[str, PromQueries]
    timeout: float = 5.0
    # Credentials over plain http to a non-loopback host are refused unless this is set.
    allow_insecure_http: bool = False


# ---- configuration ---------------------------------------------------------------------------------


def _template(raw: Any, *, source: str, field: str, required: bool) -> str | None:
    if raw is None:
        if required:
            raise GuardrailError("missing PromQL template", source=source, field=field)
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise GuardrailError(
            f"must be a non-empty PromQL string, got {type(raw).__name__}", source=source, field=field
        )
    names = set()
    for m in _TOKEN.finditer(raw):
        name = m.group(1) or m.group(2)
        if name is None:
            continue  # `$$`
        if name not in PLACEHOLDERS:
            raise GuardrailError(
                f"unknown placeholder ${name}; use $flag, $variant or $window (or ${{flag}} when a letter "
                "follows), and $$ for a literal $",
                source=source, field=field,
            )
        names.add(name)
    if "$" in _TOKEN.sub("", raw):
        raise GuardrailError(
            "stray `$`: the placeholders are $flag, $variant and $window; write $$ for a literal $",
            source=source, field=field,
        )
    # Without $variant both arms get the same query and the same number: the guardrail could never fire.
    if "variant" not in names:
        raise GuardrailError(
            "must use $variant (e.g. variant=\"$variant\"), or control and treatment get the same number",
            source=source, field=field,
        )
    return raw


def parse_prometheus_config(section: Mapping[str, Any], *, source: str) -> PrometheusConfig:
    """The `metrics:` mapping of a config file -> PrometheusConfig. Raises GuardrailError naming the field."""
    if not isinstance(section, Mapping):
        raise GuardrailError("must be a mapping", source=source, field="metrics")
    unknown = sorted(str(k) for k in section if k not in SECTION_KEYS)
    if unknown:
        raise GuardrailError(
            f"unknown key(s) {unknown}; known: {list(SECTION_KEYS)}",
            source=source, field=f"metrics.{unknown[0]}",
        )
    kind = section.get("source", "prometheus")
    if kind != "prometheus":
        raise GuardrailError(f"expected `prometheus`, got {kind!r}", source=source, field="metrics.source")

    url = section.get("url")
    if not isinstance(url, str) or not url.strip():
        raise GuardrailError(
            "missing Prometheus base URL, e.g. http://127.0.0.1:9090", source=source, field="metrics.url"
        )
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GuardrailError(f"not an http(s) URL: {url!r}", source=source, field="metrics.url")
    if parts.username or parts.password:
        # The config file is meant to be committed; credentials come from the environment.
        raise GuardrailError(
            "credentials do not belong in the URL; set PROMETHEUS_USERNAME and PROMETHEUS_PASSWORD "
            "(or PROMETHEUS_BEARER_TOKEN) in the environment",
            source=source, field="metrics.url",
        )
    if parts.query or parts.fragment:
        raise GuardrailError(
            "must be a base URL without ?query or #fragment", source=source, field="metrics.url"
        )

    timeout = section.get("timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise GuardrailError(f"must be a positive number of seconds, got {timeout!r}", source=source,
                             field="metrics.timeout")
    insecure = section.get("allow_insecure_http", False)
    if not isinstance(insecure, bool):
        raise GuardrailError("must be true or false", source=source, field="metrics.allow_insecure_http")

    raw_queries = section.get("queries")
    if raw_queries is None:
        raise GuardrailError(
            "missing: map each guardrail metric to PromQL `value` and `count` templates",
            source=source, field="metrics.queries",
        )
    if not isinstance(raw_queries, Mapping) or not raw_queries:
        raise GuardrailError("must be a non-empty mapping of metric name -> {value, count}", source=source,
                             field="metrics.queries")
    queries: dict[str, PromQueries] = {}
    for metric, spec in raw_queries.items():
        where = f"metrics.queries.{metric}"
        if not isinstance(metric, str):
            raise GuardrailError("metric names must be strings", source=source, field=where)
        if not isinstance(spec, Mapping):
            raise GuardrailError("must be a mapping with `value` and `count`", source=source, field=where)
        extra = sorted(str(k) for k in spec if k not in QUERY_KEYS)
        if extra:
            raise GuardrailError(f"unknown key(s) {extra}; known: {list(QUERY_KEYS)}", source=source,
                                 field=f"{where}.{extra[0]}")
        value = _template(spec.get("value"), source=source, field=f"{where}.value", required=True)
        count = _template(spec.get("count"), source=source, field=f"{where}.count", required=True)
        stddev = _template(spec.get("stddev"), source=source, field=f"{where}.stddev", required=False)
        assert value is not None and count is not None
        queries[metric] = PromQueries(value=value, count=count, stddev=stddev)
    return PrometheusConfig(
        url=url.strip().rstrip("/"), queries=queries, timeout=float(timeout), allow_insecure_http=insecure
    )


def auth_headers_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """PROMETHEUS_BEARER_TOKEN, else PROMETHEUS_USERNAME + PROMETHEUS_PASSWORD (basic auth). Never logged."""
    token = env.get("PROMETHEUS_BEARER_TOKEN", "").strip()
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = env.get("PROMETHEUS_USERNAME", ""), env.get("PROMETHEUS_PASSWORD", "")
    if user and password:
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {encoded}"}
    if user or password:
        missing = "PROMETHEUS_PASSWORD" if user else "PROMETHEUS_USERNAME"
        raise GuardrailError(f"basic auth for Prometheus needs both variables; {missing} is not set",
                             field=missing)
    return {}


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


class NoData(Exception):
    """Internal: why one PromQL answer gives no usable number (becomes Aggregate.missing)."""

    def __init__(self, message: str, kind: FailureKind = FailureKind.BAD_ANSWER) -> None:
        super().__init__(message)
        self.kind = kind


def _number(raw: Any) -> float:
    # Prometheus encodes sample values as strings: "1.5", "NaN", "+Inf", "-Inf".
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise NoData(f"sample value is not a number ({raw!r:.40})") from None


def _labels(metric: Any) -> str:
    if not isinstance(metric, Mapping) or not metric:
        return "{}"
    return "{" + ",".join(f"{k}={v!r}" for k, v in sorted(metric.items())) + "}"


def parse_answer(body: Any, *, flag: str, variant: str) -> float:
    """One /api/v1/query answer -> its single number, or NoData with the cause. May return NaN/Inf:
    what that means depends on whether it is the value or the count."""
    if not isinstance(body, Mapping):
        raise NoData(f"answer is {type(body).__name__}, not a Prometheus API object")
    if body.get("status") == "error":
        kind = body.get("errorType") or "error"
        raise NoData(f"Prometheus error ({kind}): {str(body.get('error') or 'no detail')[:300]}")
    if body.get("status") != "success":
        raise NoData(f"answer has no success status (status={body.get('status')!r:.30})")
    # Warnings mean the answer may be partial (a remote-read or federated store did not answer, a
    # malformed histogram): one arm could be missing data. Halting on a partial answer is the one mistake
    # this tool must not make, so it is no data, with Prometheus's own words. `infos` (Prometheus >= 2.50,
    # e.g. "metric might not be a counter") do not question the number and are ignored.
    warnings = body.get("warnings")
    if warnings:
        text = "; ".join(str(w) for w in warnings) if isinstance(warnings, list) else str(warnings)
        raise NoData(f"Prometheus warned, the answer may be partial: {text[:300]}")
    data = body.get("data")
    if not isinstance(data, Mapping):
        raise NoData("answer has no `data` object")
    rtype, result = data.get("resultType"), data.get("result")
    if rtype == "scalar":
        if not isinstance(result, list) or len(result) != 2:
            raise NoData("malformed scalar result")
        return _number(result[1])
    if rtype == "matrix":
        raise NoData("query returns a range vector (matrix); wrap the [range] selector in rate()/increase() "
                     "and aggregate with sum()")
    if rtype != "vector":
        raise NoData(f"query returns a {rtype!r} result; it must return one number (a vector or a scalar)")
    if not isinstance(result, list):
        raise NoData("malformed vector result")
    if not result:
        raise NoData(f"no series for flag={flag} variant={variant}: empty result "
                     "(no traffic yet, or the query's labels do not match)")
    if len(result) > 1:
        shown = ", ".join(_labels(s.get("metric") if isinstance(s, Mapping) else None) for s in result[:2])
        raise NoData(f"query returned {len(result)} series ({shown}{', ...' if len(result) > 2 else ''}); "
                     "aggregate with sum() so it returns one")
    sample = result[0]
    if not isinstance(sample, Mapping):
        raise NoData("malformed sample")
    if "value" not in sample:
        if "histogram" in sample:
            raise NoData("query returned a native histogram, not a number; use histogram_quantile(), "
                         "histogram_count() or histogram_sum()")
        raise NoData("sample has no value")
    pair = sample["value"]
    if not isinstance(pair, list) or len(pair) != 2:
        raise NoData("malformed sample value")
    return _number(pair[1])


def _value_cause(v: float) -> str:
    if math.isnan(v):
        return "value is NaN (no traffic in the window?)"
    sign = "+" if v > 0 else "-"
    return f"value is {sign}Inf (a division by zero: no traffic in the window's denominator?)"


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
        self.client = client
        self.headers = dict(headers or {})
        self.policy = policy
        self.concurrency = concurrency
        self.endpoint = f"{config.url}/api/v1/query"
        check_credential_transport(config, self.headers)

    def __repr__(self) -> str:
        return f"PrometheusSource(url={self.config.url!r}, metrics={sorted(self.config.queries)})"

    async def _one(self, template: str, q: MetricQuery, at: str) -> float:
        promql = render(template, flag=q.flag, variant=q.variant, window=q.window)
        try:
            response = await request(
                self.client, "GET", self.endpoint, label="prometheus query", policy=self.policy,
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
            body = json_body(response)
        except ValueError as exc:
            raise NoData(f"prometheus query: {exc}") from None
        return parse_answer(body, flag=q.flag, variant=q.variant)

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
        numbers: dict[str, float] = {}
        for (role, _template), answer in zip(roles, answers, strict=True):
            if isinstance(answer, NoData):
                if role == "stddev":
                    continue  # optional: only the sequential test on a mean metric needs it, and says so
                return Aggregate.missing(f"{q.metric} {role} query: {answer}", answer.kind)
            if isinstance(answer, BaseException):
                raise answer  # a bug, not data: PerSeriesSource.fetch reports it without a traceback
            numbers[role] = answer

        value, count = numbers["value"], numbers["count"]
        if not math.isfinite(value):
            return Aggregate.missing(f"{q.metric} value query: {_value_cause(value)}")
        if not math.isfinite(count):
            return Aggregate.missing(f"{q.metric} count query: count is {count}")
        if count < 0:
            return Aggregate.missing(f"{q.metric} count query: count is negative ({count:g})")
        stddev = numbers.get("stddev")
        if stddev is not None and (not math.isfinite(stddev) or stddev < 0):
            stddev = None
        # increase() extrapolates to the window's edges, so counts come back as 1234.56: round, not floor.
        return Aggregate(value=value, count=round(count), stddev=stddev)



# ---- the plugin -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrometheusSettings:
    config: PrometheusConfig
    headers: Mapping[str, str]


def _parse(ctx: ConfigContext) -> PrometheusSettings:
    config = parse_prometheus_config(ctx.section("metrics"), source=ctx.source)
    if ctx.option("allow_insecure_http"):
        config = PrometheusConfig(config.url, config.queries, config.timeout, allow_insecure_http=True)
    headers = auth_headers_from_env(ctx.env)
    check_credential_transport(config, headers)  # at start, not at the first query
    return PrometheusSettings(config, headers)


def _secrets(settings: PrometheusSettings) -> list[str]:
    values = [v.split(" ", 1)[-1] for v in settings.headers.values()]
    return values + list(settings.headers.values())


def _create(settings: PrometheusSettings, runtime: Runtime) -> PrometheusSource:
    return PrometheusSource(settings.config, runtime.client, headers=settings.headers, policy=runtime.policy,
                            concurrency=runtime.concurrency)


PLUGIN = Plugin(
    name="prometheus", summary="Prometheus instant queries from PromQL templates",
    parse=_parse, create=_create, secrets=_secrets,
)
