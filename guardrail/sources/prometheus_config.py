"""Prometheus source configuration: the `metrics:` section (PromQL templates per metric) and credentials.

Templates are per series ($flag, $variant, $window) or grouped (`sum by (flag, variant)`, no $flag or
$variant: one query answers every flag and arm; guardrail/sources/prometheus_batch.py). Every error names
its field.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from guardrail.http import url_problem
from guardrail.model import GuardrailError

PLACEHOLDERS = ("flag", "variant", "window")
SECTION_KEYS = ("source", "url", "timeout", "queries", "allow_insecure_http", "labels", "concurrency", "every")
DEFAULT_LABELS = ("flag", "variant")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
QUERY_KEYS = ("value", "count", "stddev")
STAT_LABEL = "stat"  # a `series` template labels each series stat="value" | "count" | "stddev"

# `$name` or `${name}`; `$$` is a literal dollar (a regex end anchor inside a label matcher, say).
_TOKEN = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# PromQL durations: one or more number+unit pairs, e.g. 5m, 4320m, 1h30m.
# https://prometheus.io/docs/prometheus/latest/querying/basics/#time-durations
_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")


@dataclass(frozen=True)
class PromQueries:
    """The PromQL templates of one guardrail metric."""

    value: str
    count: str
    stddev: str | None = None
    # Grouped templates use neither $flag nor $variant: `sum by (flag, variant) (...)` answers every flag and
    # arm in one instant query, and the series are mapped back by their labels (guardrail/sources/prometheus_batch.py).
    grouped: bool = False
    # One grouped `series` template answers value, count (and stddev) at once, each series labelled
    # stat="value" | "count" | "stddev": one instant query per metric and window (value and count hold it).
    combined: bool = False


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    queries: Mapping[str, PromQueries]
    timeout: float = 5.0
    # Credentials over plain http to a non-loopback host are refused unless this is set.
    allow_insecure_http: bool = False
    labels: tuple[str, str] = DEFAULT_LABELS  # the series labels that carry the flag key and the variant
    concurrency: int | None = None  # queries in flight; None: the run's http.concurrency


# ---- configuration ---------------------------------------------------------------------------------


def _template(
    raw: Any, *, source: str, field: str, required: bool, labels: tuple[str, str] = DEFAULT_LABELS
) -> tuple[str, bool] | None:
    """The template and whether it is grouped (no $flag or $variant: one query answers every flag)."""
    if raw is None:
        if required:
            raise GuardrailError("missing PromQL template", source=source, field=field)
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise GuardrailError(f"must be a non-empty PromQL string, got {type(raw).__name__}", source=source, field=field)
    names = set()
    for m in _TOKEN.finditer(raw):
        name = m.group(1) or m.group(2)
        if name is None:
            continue  # `$$`
        if name not in PLACEHOLDERS:
            raise GuardrailError(
                f"unknown placeholder ${name}; use $flag, $variant or $window (or ${{flag}} when a letter "
                "follows), and $$ for a literal $",
                source=source,
                field=field,
            )
        names.add(name)
    if "$" in _TOKEN.sub("", raw):
        raise GuardrailError(
            "stray `$`: the placeholders are $flag, $variant and $window; write $$ for a literal $",
            source=source,
            field=field,
        )
    if not names & {"flag", "variant"}:
        # Grouped: the series must keep both labels, or they cannot be told apart (by(), not without()).
        missing = [label for label in labels if not re.search(rf"\b{re.escape(label)}\b", raw)]
        if missing:
            raise GuardrailError(
                f"must use $variant (one series per query), or aggregate `by ({', '.join(labels)})` so one query "
                f"answers every flag and arm (label(s) {missing} do not appear)",
                source=source,
                field=field,
            )
        return raw, True
    # Without $variant both arms get the same query and the same number: the guardrail could never fire.
    if "variant" not in names:
        raise GuardrailError(
            'must use $variant (e.g. variant="$variant"), or control and treatment get the same number',
            source=source,
            field=field,
        )
    return raw, False


def parse_prometheus_config(section: Mapping[str, Any], *, source: str) -> PrometheusConfig:
    """The `metrics:` mapping of a config file -> PrometheusConfig. Raises GuardrailError naming the field."""
    if not isinstance(section, Mapping):
        raise GuardrailError("must be a mapping", source=source, field="metrics")
    unknown = sorted(str(k) for k in section if k not in SECTION_KEYS)
    if unknown:
        raise GuardrailError(
            f"unknown key(s) {unknown}; known: {list(SECTION_KEYS)}",
            source=source,
            field=f"metrics.{unknown[0]}",
        )
    kind = section.get("source", "prometheus")
    if kind != "prometheus":
        raise GuardrailError(f"expected `prometheus`, got {kind!r}", source=source, field="metrics.source")

    url = section.get("url")
    if not isinstance(url, str) or not url.strip():
        raise GuardrailError(
            "missing Prometheus base URL, e.g. http://127.0.0.1:9090", source=source, field="metrics.url"
        )
    if problem := url_problem(url.strip()):  # a bad port or host is found here, not at the first query
        raise GuardrailError(f"not an http(s) URL: {problem}", source=source, field="metrics.url")
    parts = urlsplit(url.strip())
    if parts.username or parts.password:
        # The config file is meant to be committed; credentials come from the environment.
        raise GuardrailError(
            "credentials do not belong in the URL; set PROMETHEUS_USERNAME and PROMETHEUS_PASSWORD "
            "(or PROMETHEUS_BEARER_TOKEN) in the environment",
            source=source,
            field="metrics.url",
        )
    if parts.query or parts.fragment:
        raise GuardrailError("must be a base URL without ?query or #fragment", source=source, field="metrics.url")

    timeout = section.get("timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise GuardrailError(
            f"must be a positive number of seconds, got {timeout!r}", source=source, field="metrics.timeout"
        )
    insecure = section.get("allow_insecure_http", False)
    if not isinstance(insecure, bool):
        raise GuardrailError("must be true or false", source=source, field="metrics.allow_insecure_http")
    labels = _parse_labels(section.get("labels"), source=source)
    concurrency = section.get("concurrency")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise GuardrailError(
            f"must be a positive whole number, got {concurrency!r}", source=source, field="metrics.concurrency"
        )

    raw_queries = section.get("queries")
    if raw_queries is None:
        raise GuardrailError(
            "missing: map each guardrail metric to PromQL `value` and `count` templates",
            source=source,
            field="metrics.queries",
        )
    if not isinstance(raw_queries, Mapping) or not raw_queries:
        raise GuardrailError(
            "must be a non-empty mapping of metric name -> {value, count}", source=source, field="metrics.queries"
        )
    queries: dict[str, PromQueries] = {}
    for metric, spec in raw_queries.items():
        where = f"metrics.queries.{metric}"
        if not isinstance(metric, str):
            raise GuardrailError("metric names must be strings", source=source, field=where)
        if not isinstance(spec, Mapping):
            raise GuardrailError("must be a mapping with `value` and `count`", source=source, field=where)
        if "series" in spec:
            queries[metric] = _series_template(spec, where=where, source=source, labels=labels)
            continue
        extra = sorted(str(k) for k in spec if k not in QUERY_KEYS)
        if extra:
            raise GuardrailError(
                f"unknown key(s) {extra}; known: {[*QUERY_KEYS, 'series']}", source=source, field=f"{where}.{extra[0]}"
            )
        parsed = {
            role: _template(
                spec.get(role), source=source, field=f"{where}.{role}", required=role != "stddev", labels=labels
            )
            for role in QUERY_KEYS
        }
        value, count, stddev = parsed["value"], parsed["count"], parsed["stddev"]
        assert value is not None and count is not None
        for role, template in parsed.items():
            if template is not None and template[1] != value[1]:
                raise GuardrailError(
                    "mixes a grouped template with a per-series one: a metric's value, count and stddev are all "
                    "per series ($flag/$variant) or all grouped by (flag, variant)",
                    source=source,
                    field=f"{where}.{role}",
                )
        queries[metric] = PromQueries(
            value=value[0], count=count[0], stddev=stddev[0] if stddev else None, grouped=value[1]
        )
    return PrometheusConfig(
        url=url.strip().rstrip("/"),
        queries=queries,
        timeout=float(timeout),
        allow_insecure_http=insecure,
        labels=labels,
        concurrency=concurrency,
    )


def _series_template(spec: Mapping[str, Any], *, where: str, source: str, labels: tuple[str, str]) -> PromQueries:
    others = sorted(str(k) for k in spec if k != "series")
    if others:
        raise GuardrailError(
            "`series` answers value, count and stddev in one query; remove the others",
            source=source,
            field=f"{where}.{others[0]}",
        )
    template = _template(spec["series"], source=source, field=f"{where}.series", required=True, labels=labels)
    assert template is not None
    if not template[1]:
        raise GuardrailError(
            f"must be grouped (`by ({', '.join(labels)})`, no $flag or $variant)",
            source=source,
            field=f"{where}.series",
        )
    if not re.search(rf"\b{STAT_LABEL}\b", template[0]):
        raise GuardrailError(
            f'must label each series {STAT_LABEL}="value" or "count" (or "stddev"), e.g. with '
            f'label_replace(<value query>, "{STAT_LABEL}", "value", "", "") or label_replace(<count query>, ...)',
            source=source,
            field=f"{where}.series",
        )
    return PromQueries(value=template[0], count=template[0], grouped=True, combined=True)


def _parse_labels(raw: Any, *, source: str) -> tuple[str, str]:
    if raw is None:
        return DEFAULT_LABELS
    if not isinstance(raw, Mapping) or set(raw) - {"flag", "variant"}:
        raise GuardrailError(
            "must be a mapping {flag: <label>, variant: <label>}", source=source, field="metrics.labels"
        )
    names = (raw.get("flag", DEFAULT_LABELS[0]), raw.get("variant", DEFAULT_LABELS[1]))
    for role, name in zip(("flag", "variant"), names, strict=True):
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            raise GuardrailError(
                f"not a Prometheus label name: {name!r}", source=source, field=f"metrics.labels.{role}"
            )
    return names[0], names[1]


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
        raise GuardrailError(f"basic auth for Prometheus needs both variables; {missing} is not set", field=missing)
    return {}
