"""The Prometheus source against every answer shape Prometheus gives, with respx standing in for the server.

Shapes follow https://prometheus.io/docs/prometheus/latest/querying/api/ (instant queries, result types,
error and warning fields). The real-server behaviour is pinned by tests/test_prometheus_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import yaml

from guardrail.http import RetryPolicy
from guardrail.model import Aggregate, GuardrailError, MetricQuery
from guardrail.sources import fetch_plan
from guardrail.sources.base import MetricSource
from guardrail.sources.prometheus import (
    PrometheusSource,
    PromQueries,
    auth_headers_from_env,
    eval_time,
    parse_prometheus_config,
    promql_string,
    render,
)

URL = "http://prom.test:9090"
API = f"{URL}/api/v1/query"
END = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=timezone.utc)
END_PARAM = "1795608000.123"  # END as Prometheus sees it: unix seconds, truncated to the millisecond
FAST = RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.0)

VALUE_Q = (
    'sum(rate(http_request_errors_total{flag="$flag",variant="$variant"}[$window])) / '
    'sum(rate(http_requests_total{flag="$flag",variant="$variant"}[$window]))'
)
COUNT_Q = 'sum(increase(http_requests_total{flag="$flag",variant="$variant"}[$window]))'
SECTION: dict[str, Any] = {
    "source": "prometheus",
    "url": URL,
    "queries": {"error_rate": {"value": VALUE_Q, "count": COUNT_Q}},
}


def vector(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1795608000.123, value]}


def ok(result: list[Any] | Any, result_type: str = "vector", **extra: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": result_type, "result": result}, **extra}


def q(
    variant: str = "treatment",
    *,
    metric: str = "error_rate",
    window: str = "5m",
    flag: str = "checkout.payments.express-pay",
) -> MetricQuery:
    return MetricQuery(flag=flag, variant=variant, metric=metric, window=window, end=END)


def by_role(value: Any, count: Any, stddev: Any = None) -> Callable[[httpx.Request], httpx.Response]:
    """Answer the value query with `value` and the count query with `count` (each a body or Response)."""

    def answer(request: httpx.Request) -> httpx.Response:
        promql = request.url.params["query"]
        if promql.startswith("sum(increase"):
            chosen = count
        elif promql.startswith("stddev"):
            chosen = stddev
        else:
            chosen = value
        return chosen if isinstance(chosen, httpx.Response) else httpx.Response(200, json=chosen)

    return answer


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def fetch(
    section: dict[str, Any] | None = None, query: MetricQuery | None = None, headers: dict[str, str] | None = None
) -> Aggregate:
    config = parse_prometheus_config(section or SECTION, source="test.yaml")

    async def go() -> Aggregate:
        async with httpx.AsyncClient() as client:
            source = PrometheusSource(config, client, headers=headers, policy=FAST)
            return await source.query(query or q())

    return asyncio.run(go())


# ---- answer shapes -----------------------------------------------------------------------------------


def test_success_vector(mock: respx.MockRouter) -> None:
    mock.get(API).mock(side_effect=by_role(ok([vector("0.0123")]), ok([vector("5123.7")])))
    agg = fetch()
    assert agg == Aggregate(value=0.0123, count=5124)  # increase() extrapolates: rounded, not floored
    assert agg.usable


def test_scalar_result(mock: respx.MockRouter) -> None:
    mock.get(API).mock(side_effect=by_role(ok([1795608000.123, "0.5"], "scalar"), ok([vector("10")])))
    assert fetch() == Aggregate(value=0.5, count=10)


@pytest.mark.parametrize(
    ("raw", "cause"),
    [
        ("NaN", "value is NaN (no traffic in the window?)"),
        ("+Inf", "value is +Inf (a division by zero"),
        ("-Inf", "value is -Inf"),
    ],
)
def test_nan_and_inf_values_are_no_data(mock: respx.MockRouter, raw: str, cause: str) -> None:
    mock.get(API).mock(side_effect=by_role(ok([vector(raw)]), ok([vector("0")])))
    agg = fetch()
    assert not agg.usable
    assert agg.error is not None and agg.error.startswith(f"error_rate value query: {cause}")


def test_empty_vector_names_flag_and_variant(mock: respx.MockRouter) -> None:
    mock.get(API).mock(side_effect=by_role(ok([]), ok([vector("0")])))
    agg = fetch()
    assert agg.error is not None
    assert "no series for flag=checkout.payments.express-pay variant=treatment: empty result" in agg.error


def test_several_series_says_to_aggregate(mock: respx.MockRouter) -> None:
    series = [vector("0.01", instance="a:1"), vector("0.02", instance="b:1"), vector("0.03", instance="c:1")]
    mock.get(API).mock(side_effect=by_role(ok(series), ok([vector("100")])))
    agg = fetch()
    assert agg.error is not None
    assert "query returned 3 series" in agg.error and "aggregate with sum() so it returns one" in agg.error
    assert "instance='a:1'" in agg.error


@pytest.mark.parametrize("status", [400, 422])
def test_status_error_keeps_prometheus_explanation(mock: respx.MockRouter, status: int) -> None:
    body = {"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unexpected <by>"}
    mock.get(API).mock(side_effect=by_role(httpx.Response(status, json=body), ok([vector("1")])))
    agg = fetch()
    assert agg.error == ("error_rate value query: Prometheus error (bad_data): 1:5: parse error: unexpected <by>")


def test_warnings_make_the_answer_no_data(mock: respx.MockRouter) -> None:
    # A warning says the answer may be partial (a store did not answer): one arm could be missing data,
    # so the number is not trusted for a halt.
    partial = ok([vector("0.05")], warnings=["remote read: store eu-west-1 unavailable"])
    mock.get(API).mock(side_effect=by_role(partial, ok([vector("100")])))
    agg = fetch()
    assert not agg.usable
    assert agg.error is not None and "may be partial: remote read: store eu-west-1 unavailable" in agg.error


def test_infos_do_not_block_the_data(mock: respx.MockRouter) -> None:
    info = ok([vector("0.05")], infos=["PromQL info: metric might not be a counter"])
    mock.get(API).mock(side_effect=by_role(info, ok([vector("100")])))
    assert fetch() == Aggregate(value=0.05, count=100)


def test_html_error_page(mock: respx.MockRouter) -> None:
    page = httpx.Response(200, text="<html><body>502 Bad Gateway</body></html>", headers={"content-type": "text/html"})
    mock.get(API).mock(side_effect=by_role(page, ok([vector("1")])))
    agg = fetch()
    assert agg.error is not None and "HTML, not JSON" in agg.error


def test_invalid_json(mock: respx.MockRouter) -> None:
    mock.get(API).mock(side_effect=by_role(ok([vector("1")]), httpx.Response(200, text='{"status": "succ')))
    agg = fetch()
    assert agg.error is not None
    assert agg.error.startswith("error_rate count query: prometheus query: answer is not valid JSON")


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (httpx.Response(200, text="null"), "answer is NoneType"),
        ([1, 2], "answer is list"),
        ({"status": "success"}, "no `data` object"),
        (ok([[1, "1"]], "matrix"), "range vector (matrix)"),
        (ok("hello", "string"), "'string' result"),
        (ok([{"metric": {}, "histogram": [1, {"count": "3"}]}]), "native histogram"),
        (ok([{"metric": {}, "value": [1, "abc"]}]), "sample value is not a number ('abc')"),
        (ok([{"metric": {}}]), "sample has no value"),
    ],
)
def test_odd_bodies_are_no_data(mock: respx.MockRouter, body: Any, cause: str) -> None:
    mock.get(API).mock(side_effect=by_role(body, ok([vector("1")])))
    agg = fetch()
    assert agg.error is not None and cause in agg.error, agg.error


def test_5xx_then_success_is_retried(mock: respx.MockRouter) -> None:
    seen: list[str] = []

    def flaky_value(request: httpx.Request) -> httpx.Response:
        promql = request.url.params["query"]
        seen.append(promql)
        if promql.startswith("sum(increase"):
            return httpx.Response(200, json=ok([vector("400")]))
        if seen.count(promql) == 1:
            return httpx.Response(503, text="busy")  # the first value query fails, its retry succeeds
        return httpx.Response(200, json=ok([vector("0.02")]))

    route = mock.get(API).mock(side_effect=flaky_value)
    assert fetch() == Aggregate(value=0.02, count=400)
    assert route.call_count == 3


def test_5xx_every_time_gives_up_with_the_status(mock: respx.MockRouter) -> None:
    route = mock.get(API).mock(return_value=httpx.Response(500))
    agg = fetch()
    assert agg.error is not None and "prometheus query: error status (HTTP 500)" in agg.error
    assert route.call_count == 2 * FAST.attempts  # value and count, each retried


def test_timeout(mock: respx.MockRouter) -> None:
    mock.get(API).mock(side_effect=httpx.ReadTimeout("slow"))
    agg = fetch()
    assert agg.error is not None and "prometheus query: timeout" in agg.error
    assert URL not in agg.error


def test_unauthorized_hints_at_the_env_vars(mock: respx.MockRouter) -> None:
    mock.get(API).mock(return_value=httpx.Response(401, text="Unauthorized"))
    agg = fetch()
    assert agg.error is not None and "HTTP 401" in agg.error and "PROMETHEUS_BEARER_TOKEN" in agg.error


@pytest.mark.parametrize(
    ("count", "cause"),
    [("-3", "count is negative (-3)"), ("NaN", "count is nan"), ("+Inf", "count is inf")],
)
def test_bad_counts(mock: respx.MockRouter, count: str, cause: str) -> None:
    mock.get(API).mock(side_effect=by_role(ok([vector("0.01")]), ok([vector(count)])))
    agg = fetch()
    assert agg.error == f"error_rate count query: {cause}"


def test_unknown_metric_and_bad_window_make_no_request(mock: respx.MockRouter) -> None:
    route = mock.get(API)
    unknown = fetch(query=q(metric="p99_cpu"))
    assert unknown.error == "no PromQL configured for metric 'p99_cpu' in metrics.queries"
    bad_window = fetch(query=q(window="5 minutes"))
    assert bad_window.error == "window '5 minutes' is not a PromQL duration such as 5m"
    assert route.call_count == 0


def test_stddev_query_is_optional_and_dropped_when_unusable(mock: respx.MockRouter) -> None:
    section = {
        **SECTION,
        "queries": {
            "latency_ms": {
                "value": 'avg_latency{variant="$variant"}',
                "count": 'sum(increase(n{variant="$variant"}[$window]))',
                "stddev": 'stddev_latency{variant="$variant"}',
            }
        },
    }

    def answer(body: Any) -> Callable[[httpx.Request], httpx.Response]:
        def respond(request: httpx.Request) -> httpx.Response:
            promql = request.url.params["query"]
            if promql.startswith("sum(increase"):
                return httpx.Response(200, json=ok([vector("250")]))
            if promql.startswith("stddev"):
                return httpx.Response(200, json=body)
            return httpx.Response(200, json=ok([vector("120.5")]))

        return respond

    mock.get(API).mock(side_effect=answer(ok([vector("30.25")])))
    assert fetch(section, q(metric="latency_ms")) == Aggregate(value=120.5, count=250, stddev=30.25)
    mock.get(API).mock(side_effect=answer(ok([])))
    assert fetch(section, q(metric="latency_ms")) == Aggregate(value=120.5, count=250, stddev=None)


# ---- templates and the pinned instant ----------------------------------------------------------------


def test_template_substitution_keeps_promql_braces() -> None:
    rendered = render(VALUE_Q, flag="a.b.c", variant="treatment", window="4320m")
    assert rendered == (
        'sum(rate(http_request_errors_total{flag="a.b.c",variant="treatment"}[4320m])) / '
        'sum(rate(http_requests_total{flag="a.b.c",variant="treatment"}[4320m]))'
    )
    template = 'x{f="${flag}_v2",v="${variant}",re=~"a.*$$"}[${window}]'
    braced = render(template, flag="k", variant="t", window="5m")
    assert braced == 'x{f="k_v2",v="t",re=~"a.*$"}[5m]'


def test_label_values_are_escaped_and_not_rescanned() -> None:
    assert promql_string('we"ird\\key\n') == 'we\\"ird\\\\key\\n'
    template = 'm{flag="$flag",variant="$variant"}[$window]'
    rendered = render(template, flag='a"b\\c', variant="$window", window="5m")
    assert rendered == 'm{flag="a\\"b\\\\c",variant="$window"}[5m]'


def test_request_carries_rendered_query_and_pinned_time(mock: respx.MockRouter) -> None:
    route = mock.get(API).mock(side_effect=by_role(ok([vector("0.01")]), ok([vector("10")])))
    fetch(query=q(flag='we"ird', window="30s"))
    queries = sorted(call.request.url.params["query"] for call in route.calls)
    assert queries[0] == 'sum(increase(http_requests_total{flag="we\\"ird",variant="treatment"}[30s]))'
    assert {call.request.url.params["time"] for call in route.calls} == {END_PARAM}


def test_both_arms_use_the_same_instant(mock: respx.MockRouter) -> None:
    route = mock.get(API).mock(side_effect=by_role(ok([vector("0.01")]), ok([vector("10")])))
    config = parse_prometheus_config(SECTION, source="t")
    planned = [(("f", variant, "error_rate", "5m"), q(variant, flag="f")) for variant in ("control", "treatment", "t2")]

    async def go() -> dict[Any, Aggregate]:
        async with httpx.AsyncClient() as client:
            source: MetricSource = PrometheusSource(config, client, policy=FAST, concurrency=8)
            return await fetch_plan(source, planned)

    results = asyncio.run(go())
    assert all(agg.usable for agg in results.values())
    assert route.call_count == 6
    assert {call.request.url.params["time"] for call in route.calls} == {END_PARAM}
    variants = {call.request.url.params["query"].split('variant="')[1].split('"')[0] for call in route.calls}
    assert variants == {"control", "treatment", "t2"}


def test_eval_time_truncates_like_prometheus_parses_rfc3339() -> None:
    assert eval_time(END) == END_PARAM
    assert eval_time(datetime(2026, 11, 25, 12, 0)) == "1795608000.000"  # naive taken as UTC
    assert eval_time(datetime(1970, 1, 1, 0, 0, 1, 999999, tzinfo=timezone.utc)) == "1.999"


def test_aclose_leaves_the_callers_client_open() -> None:
    async def go() -> bool:
        async with httpx.AsyncClient() as client:
            source = PrometheusSource(parse_prometheus_config(SECTION, source="t"), client)
            await source.aclose()
            return client.is_closed

    assert asyncio.run(go()) is False


# ---- auth --------------------------------------------------------------------------------------------


def test_auth_headers_from_env() -> None:
    assert auth_headers_from_env({}) == {}
    assert auth_headers_from_env({"PROMETHEUS_BEARER_TOKEN": "t0k", "PROMETHEUS_USERNAME": "u"}) == {
        "Authorization": "Bearer t0k"
    }
    basic = auth_headers_from_env({"PROMETHEUS_USERNAME": "alice", "PROMETHEUS_PASSWORD": "s3:cret"})
    assert basic == {"Authorization": "Basic " + base64.b64encode(b"alice:s3:cret").decode()}
    with pytest.raises(GuardrailError, match="PROMETHEUS_PASSWORD is not set"):
        auth_headers_from_env({"PROMETHEUS_USERNAME": "alice"})


def test_auth_header_is_sent_and_never_in_messages(mock: respx.MockRouter) -> None:
    secret = "tok-PROM-9f8e7d"
    route = mock.get("https://prom.test/api/v1/query").mock(return_value=httpx.Response(503))
    headers = auth_headers_from_env({"PROMETHEUS_BEARER_TOKEN": secret})
    agg = fetch({**SECTION, "url": "https://prom.test"}, headers=headers)
    assert {call.request.headers["authorization"] for call in route.calls} == {f"Bearer {secret}"}
    assert agg.error is not None and secret not in agg.error


def test_credentials_over_plain_http_to_a_remote_host_are_refused() -> None:
    headers = {"Authorization": "Bearer x"}

    async def build(section: dict[str, Any]) -> None:
        async with httpx.AsyncClient() as client:
            PrometheusSource(parse_prometheus_config(section, source="t"), client, headers=headers)

    with pytest.raises(GuardrailError, match="plain http") as info:
        asyncio.run(build(SECTION))
    assert info.value.field == "metrics.url"
    asyncio.run(build({**SECTION, "allow_insecure_http": True}))
    asyncio.run(build({**SECTION, "url": "https://prom.example"}))
    asyncio.run(build({**SECTION, "url": "http://127.0.0.1:9090"}))


# ---- configuration errors name the field ---------------------------------------------------------------


def test_parse_config() -> None:
    config = parse_prometheus_config({**SECTION, "url": URL + "/", "timeout": 2}, source="t")
    assert config.url == URL and config.timeout == 2.0
    assert config.queries == {"error_rate": PromQueries(value=VALUE_Q, count=COUNT_Q)}


def _with_query(**spec: Any) -> dict[str, Any]:
    return {**SECTION, "queries": {"error_rate": {"value": VALUE_Q, "count": COUNT_Q, **spec}}}


@pytest.mark.parametrize(
    ("section", "field", "message"),
    [
        ({"queries": SECTION["queries"]}, "metrics.url", "missing Prometheus base URL"),
        ({**SECTION, "url": "prom:9090"}, "metrics.url", "not an http(s) URL"),
        ({**SECTION, "url": URL + "/?x=1"}, "metrics.url", "without ?query"),
        ({**SECTION, "url": "http://u:p@prom:9090"}, "metrics.url", "credentials do not belong in the URL"),
        ({"url": URL}, "metrics.queries", "missing"),
        ({**SECTION, "queries": {}}, "metrics.queries", "non-empty mapping"),
        ({**SECTION, "queries": {"error_rate": "sum(x)"}}, "metrics.queries.error_rate", "must be a mapping"),
        (_with_query(value=3), "metrics.queries.error_rate.value", "non-empty PromQL string, got int"),
        (_with_query(count=None), "metrics.queries.error_rate.count", "missing PromQL template"),
        (
            _with_query(value='x{variant="$variant",f="$foo"}'),
            "metrics.queries.error_rate.value",
            "unknown placeholder $foo",
        ),
        (
            _with_query(value='x{variant="$variant",f="$flagx"}'),
            "metrics.queries.error_rate.value",
            "unknown placeholder $flagx",
        ),
        (_with_query(count='x{variant="$variant",re=~".*$"}'), "metrics.queries.error_rate.count", "stray `$`"),
        (_with_query(count='sum(x{flag="$flag"})'), "metrics.queries.error_rate.count", "must use $variant"),
        (_with_query(stddev=["a"]), "metrics.queries.error_rate.stddev", "non-empty PromQL string"),
        (_with_query(p95="x"), "metrics.queries.error_rate.p95", "unknown key(s) ['p95']"),
        ({**SECTION, "timeout": 0}, "metrics.timeout", "positive number"),
        ({**SECTION, "timeout": "5s"}, "metrics.timeout", "positive number"),
        ({**SECTION, "user": "x"}, "metrics.user", "unknown key(s) ['user']"),
        ({**SECTION, "source": "http"}, "metrics.source", "expected `prometheus`"),
        ({**SECTION, "allow_insecure_http": "yes"}, "metrics.allow_insecure_http", "true or false"),
    ],
)
def test_config_errors_name_the_field(section: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(GuardrailError) as info:
        parse_prometheus_config(section, source="cfg.yaml")
    err = info.value
    assert err.field == field and err.source == "cfg.yaml"
    assert message in err.message, err.message
    assert str(err).startswith(f"cfg.yaml, field {field!r}: ")


def test_documented_example_config_parses() -> None:
    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "prometheus.yaml").read_text())
    config = parse_prometheus_config(doc["metrics"], source="configs/prometheus.yaml")
    assert {"error_rate", "latency_mean_ms", "p95_latency_ms"} <= set(config.queries)
    for queries in config.queries.values():
        for template in (queries.value, queries.count):
            rendered = render(template, flag="k", variant="treatment", window="5m")
            assert "$" not in rendered and 'variant="treatment"' in rendered
    assert math.isclose(config.timeout, 5.0)


# ---- wiring: the command with a Prometheus config, in-process --------------------------------------------


def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from guardrail.cli import main

    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _files(tmp_path: Path, metrics: dict[str, Any]) -> list[str]:
    flags = {
        "flags": {
            "a.b.c": {
                "state": "ENABLED",
                "variants": {"treatment": True, "control": False},
                "defaultVariant": "control",
                "metadata": {
                    "warmup_minutes": 0,
                    "guardrail.error_rate.comparison": "relative_increase",
                    "guardrail.error_rate.threshold": 0.5,
                },
            }
        }
    }
    (tmp_path / "flags.yaml").write_text(yaml.safe_dump(flags))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"metrics": metrics}))
    return [
        "check",
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--flags",
        str(tmp_path / "flags.yaml"),
        "--state",
        str(tmp_path / "state.json"),
        "--audit",
        str(tmp_path / "audit.jsonl"),
        "--json",
    ]


def test_cli_config_error_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _with_query(value='x{variant="$variant",f="$flg"}')
    code, out, err = _run_main(_files(tmp_path, bad), capsys)
    assert code == 2 and out == ""
    assert "field 'metrics.queries.error_rate.value'" in err and "unknown placeholder $flg" in err
    assert "Traceback" not in err


def test_cli_with_prometheus_down_is_skip_no_data_not_a_halt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("FLAG_API_URL", "METRICS_API_URL", "PROMETHEUS_BEARER_TOKEN", "PROMETHEUS_USERNAME"):
        monkeypatch.delenv(var, raising=False)
    code, out, err = _run_main(_files(tmp_path, {**SECTION, "url": f"http://127.0.0.1:{port}"}), capsys)
    doc = json.loads(out)
    assert code == 3 == doc["exit_code"], err
    (e,) = doc["evaluations"]
    assert e["verdict"] == "skip:no_data" and doc["halts"] == []
    assert "prometheus query: connection refused or unreachable" in e["reason"]
