"""Grouped Prometheus templates: one instant query per metric, window and role, series mapped back by labels.

Unit tests of the answer shapes (respx); the same numbers as the per-series templates on a real Prometheus
are checked in tests/test_prometheus_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import respx

from guardrail.http import RetryPolicy
from guardrail.model import Aggregate, AggregateKey, GuardrailError, MetricQuery
from guardrail.sources import fetch_plan
from guardrail.sources.prometheus import PrometheusSource, parse_prometheus_config

URL = "http://prom.test:9090"
API = f"{URL}/api/v1/query"
END = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
FAST = RetryPolicy(attempts=2, backoff=0.0, max_backoff=0.0)
GROUPED = {
    "value": "sum by (flag, variant) (rate(errors_total[$window]))"
    " / sum by (flag, variant) (rate(requests_total[$window]))",
    "count": "sum by (flag, variant) (increase(requests_total[$window]))",
}
PER_SERIES = {
    "value": 'sum(rate(latency_sum{flag="$flag",variant="$variant"}[$window]))',
    "count": 'sum(increase(latency_count{flag="$flag",variant="$variant"}[$window]))',
}
SECTION: dict[str, Any] = {"url": URL, "queries": {"error_rate": GROUPED, "latency": PER_SERIES}}


def series(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1795608000.0, value]}


def ok(result: list[Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def plan(flags: list[str], metrics: tuple[str, ...] = ("error_rate",)) -> list[tuple[AggregateKey, MetricQuery]]:
    return [
        ((f, v, m, "5m"), MetricQuery(f, v, m, "5m", END))
        for m in metrics
        for f in flags
        for v in ("control", "treatment")
    ]


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def run(
    section: dict[str, Any], planned: list[tuple[AggregateKey, MetricQuery]]
) -> tuple[dict[AggregateKey, Aggregate], int]:
    config = parse_prometheus_config(section, source="t.yaml")

    async def go() -> tuple[dict[AggregateKey, Aggregate], int]:
        async with httpx.AsyncClient() as client:
            source = PrometheusSource(config, client, policy=FAST)
            got = await fetch_plan(source, planned)
            return got, source.requests

    return asyncio.run(go())


def answer_with(value: list[Any], count: list[Any]) -> Any:
    def answer(request: httpx.Request) -> httpx.Response:
        promql = request.url.params["query"]
        if "latency" in promql:
            return httpx.Response(200, json=ok([series("2.0")]))
        return httpx.Response(200, json=ok(count if promql.startswith("sum by (flag, variant) (increase") else value))

    return answer


def test_one_query_per_role_answers_every_flag_and_arm(mock: respx.MockRouter) -> None:
    flags = [f"f{i}" for i in range(50)]
    values = [
        series(f"0.0{i % 9 + 1}", flag=f, variant=v) for i, f in enumerate(flags) for v in ("control", "treatment")
    ]
    counts = [series("1000.4", flag=f, variant=v) for f in flags for v in ("control", "treatment")]
    mock.get(API).mock(side_effect=answer_with(values, counts))
    got, requests = run(SECTION, plan(flags))
    assert requests == 2  # value and count, for 100 arms
    assert got[("f3", "treatment", "error_rate", "5m")] == Aggregate(value=0.04, count=1000)
    assert all(a.usable for a in got.values())


def test_per_series_templates_still_go_one_query_per_series(mock: respx.MockRouter) -> None:
    mock.get(API).mock(side_effect=answer_with([series("0.1", flag="a", variant="control")], []))
    got, requests = run(SECTION, plan(["a"], ("latency",)))
    assert requests == 4 and got[("a", "control", "latency", "5m")] == Aggregate(value=2.0, count=2)


def test_missing_and_duplicated_series_cost_only_their_arm(mock: respx.MockRouter) -> None:
    values = [
        series("0.01", flag="a", variant="control"),
        series("0.02", flag="a", variant="treatment", instance="x"),
        series("0.03", flag="a", variant="treatment", instance="y"),
        series("0.01", flag="b", variant="control"),
        series("NaN", flag="b", variant="treatment"),
        series("0.5"),  # no labels: belongs to no arm
    ]
    counts = [series("10", flag=f, variant=v) for f in ("a", "b") for v in ("control", "treatment")]
    mock.get(API).mock(side_effect=answer_with(values, counts))
    got, _ = run(SECTION, plan(["a", "b", "c"]))
    assert got[("a", "control", "error_rate", "5m")].usable
    assert "several series for flag=a variant=treatment" in str(got[("a", "treatment", "error_rate", "5m")].error)
    assert "value is NaN" in str(got[("b", "treatment", "error_rate", "5m")].error)
    assert "no value series for flag=c variant=control in the grouped answer" in str(
        got[("c", "control", "error_rate", "5m")].error
    )


def test_an_error_or_warning_costs_only_that_metric(mock: respx.MockRouter) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if "latency" in request.url.params["query"]:
            return httpx.Response(200, json=ok([series("2.0")]))
        return httpx.Response(422, json={"status": "error", "errorType": "execution", "error": "many-to-many"})

    mock.get(API).mock(side_effect=answer)
    got, _ = run(SECTION, plan(["a"], ("error_rate", "latency")))
    assert "many-to-many" in str(got[("a", "control", "error_rate", "5m")].error)
    assert got[("a", "control", "latency", "5m")].usable


def test_label_names_are_configurable(mock: respx.MockRouter) -> None:
    section = {
        "url": URL,
        "labels": {"flag": "feature", "variant": "arm"},
        "queries": {"error_rate": {k: v.replace("flag, variant", "feature, arm") for k, v in GROUPED.items()}},
    }
    values = [series("0.01", feature="a", arm=v) for v in ("control", "treatment")]
    counts = [series("10", feature="a", arm=v) for v in ("control", "treatment")]

    def answer(request: httpx.Request) -> httpx.Response:
        grouped_count = request.url.params["query"].startswith("sum by (feature, arm) (increase")
        return httpx.Response(200, json=ok(counts if grouped_count else values))

    mock.get(API).mock(side_effect=answer)
    got, requests = run(section, plan(["a"]))
    assert requests == 2 and all(a.usable for a in got.values())


@pytest.mark.parametrize(
    ("queries", "labels", "field", "says"),
    [
        ({"value": GROUPED["value"], "count": PER_SERIES["count"]}, None, "metrics.queries.m.count", "mixes a grouped"),
        (
            {"value": "sum(rate(x[$window]))", "count": GROUPED["count"]},
            None,
            "metrics.queries.m.value",
            "by (flag, variant)",
        ),
        (GROUPED, {"flag": "feature"}, "metrics.queries.m.value", "['feature'] do not appear"),
        (GROUPED, {"flag": "1bad"}, "metrics.labels.flag", "not a Prometheus label name"),
        (GROUPED, ["flag"], "metrics.labels", "must be a mapping"),
    ],
)
def test_grouped_config_errors_name_the_field(queries: dict[str, str], labels: Any, field: str, says: str) -> None:
    section: dict[str, Any] = {"url": URL, "queries": {"m": queries}}
    if labels is not None:
        section["labels"] = labels
    with pytest.raises(GuardrailError) as err:
        parse_prometheus_config(section, source="t.yaml")
    assert err.value.field == field and says in err.value.message


SERIES = (
    "label_replace(sum by (flag, variant) (rate(errors_total[$window])) / sum by (flag, variant) "
    '(rate(requests_total[$window])), "stat", "value", "", "") or '
    'label_replace(sum by (flag, variant) (increase(requests_total[$window])), "stat", "count", "", "")'
)


def test_one_series_template_answers_value_and_count_in_one_query(mock: respx.MockRouter) -> None:
    answer = [series("0.02", flag="a", variant=v, stat="value") for v in ("control", "treatment")]
    answer += [series("500", flag="a", variant=v, stat="count") for v in ("control", "treatment")]
    answer += [series("0.5", flag="b", variant="control", stat="value")]  # b has no count series
    mock.get(API).mock(return_value=httpx.Response(200, json=ok(answer)))
    got, requests = run({"url": URL, "queries": {"error_rate": {"series": SERIES}}}, plan(["a", "b"]))
    assert requests == 1
    assert got[("a", "treatment", "error_rate", "5m")] == Aggregate(value=0.02, count=500)
    assert "no count series for flag=b variant=control" in str(got[("b", "control", "error_rate", "5m")].error)
    assert "no value series for flag=b variant=treatment" in str(got[("b", "treatment", "error_rate", "5m")].error)


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        ({"series": SERIES, "count": GROUPED["count"]}, "metrics.queries.m.count", "remove the others"),
        ({"series": SERIES.replace('"stat"', '"role"')}, "metrics.queries.m.series", 'label each series stat="value"'),
        ({"series": 'x{flag="$flag",variant="$variant",stat="v"}'}, "metrics.queries.m.series", "must be grouped"),
    ],
)
def test_series_template_errors_name_the_field(spec: dict[str, str], field: str, says: str) -> None:
    with pytest.raises(GuardrailError) as err:
        parse_prometheus_config({"url": URL, "queries": {"m": spec}}, source="t.yaml")
    assert err.value.field == field and says in err.value.message
