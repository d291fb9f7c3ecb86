"""The HTTP layer, with respx: each failure a real server shows, and what the adapters make of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import datetime, timezone
from typing import Any, TypeVar

import httpx
import pytest
import respx

from guardrail import alert
from guardrail.config import parse_flags
from guardrail.flags.http_api import HttpFlagBackend
from guardrail.http import HTTPFailure, RetryPolicy, check_token_transport, make_client, request
from guardrail.model import Aggregate, GuardrailError, MetricQuery
from guardrail.sources import fetch_plan
from guardrail.sources.http_api import HttpMetricSource, parse_answer
from tests.conftest import flag_definition

T = TypeVar("T")
BASE = "http://metrics.test"
FLAGS = "http://flags.test"
FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.002)
END = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
Q = MetricQuery("f.k", "treatment", "error_rate", "5m", END)
KEY = "checkout.payments.express-pay"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def query(q: MetricQuery = Q, timeout: float = 1.0) -> Aggregate:
    async with make_client(timeout=timeout) as client:
        return await HttpMetricSource(BASE, client, policy=FAST).query(q)


@respx.mock
def test_query_sends_flag_variant_metric_window_and_pinned_end() -> None:
    route = respx.get(f"{BASE}/query").mock(return_value=httpx.Response(200, json={"value": 0.02, "count": 900}))
    assert run(query()) == Aggregate(0.02, 900)
    params = dict(route.calls.last.request.url.params)
    assert params == {
        "flag": "f.k",
        "variant": "treatment",
        "metric": "error_rate",
        "window": "5m",
        "end": "2026-11-25T12:00:00Z",
    }


@respx.mock
def test_5xx_then_success_is_retried() -> None:
    route = respx.get(f"{BASE}/query").mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(502),
            httpx.Response(200, json={"value": 0.01, "count": 10}),
        ]
    )
    assert run(query()) == Aggregate(0.01, 10)
    assert route.call_count == 3


@respx.mock
def test_persistent_5xx_is_no_data_with_the_cause() -> None:
    respx.get(f"{BASE}/query").mock(return_value=httpx.Response(500))
    agg = run(query())
    assert not agg.usable and agg.error is not None and "HTTP 500" in agg.error


@respx.mock
def test_timeout_is_no_data() -> None:
    respx.get(f"{BASE}/query").mock(side_effect=httpx.ReadTimeout("slow"))
    agg = run(query())
    assert agg.error == "metrics query: timeout"


@respx.mock
def test_connection_refused_is_no_data() -> None:
    respx.get(f"{BASE}/query").mock(side_effect=httpx.ConnectError("refused"))
    assert "connection refused" in (run(query()).error or "")


@respx.mock
def test_429_honours_retry_after() -> None:
    route = respx.get(f"{BASE}/query").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.Response(200, json={"value": 0.5, "count": 3}),
        ]
    )
    assert run(query()).value == 0.5 and route.call_count == 2


@respx.mock
def test_html_error_page_is_no_data() -> None:
    respx.get(f"{BASE}/query").mock(
        return_value=httpx.Response(200, text="<html>502 Bad Gateway</html>", headers={"content-type": "text/html"})
    )
    assert "HTML" in (run(query()).error or "")


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        ('{"value": null, "count": null}', "null"),
        ('{"value": NaN, "count": 100}', "nan"),
        ('{"value": 0.01, "count": -5}', "non-negative"),
        ('{"value": "abc", "count": 10}', "not a number"),
        ('{"value": 0.01, "count": 1.5}', "whole number"),
        ("[1, 2]", "not an object"),
        ("null", "not an object"),
        ('{"value": 0.0', "not valid JSON"),
    ],
)
@respx.mock
def test_bad_bodies_are_no_data(body: str, cause: str) -> None:
    respx.get(f"{BASE}/query").mock(
        return_value=httpx.Response(200, text=body, headers={"content-type": "application/json"})
    )
    agg = run(query())
    assert not agg.usable
    assert cause in (agg.error or "")


def test_parse_answer_reads_per_unit_sums_and_drops_bad_ones() -> None:
    """The optional per-unit sums reach the Aggregate, so the sequential test can take the unit variance."""
    answer = {"value": 0.02, "count": 5000, "units": 400, "num_sum": 100, "num_sum_sq": 900.0, "den_sum": 5000,
              "den_sum_sq": 70000, "num_den_sum": 1500}  # fmt: skip
    agg = parse_answer(answer)
    assert (agg.units, agg.num_sum, agg.num_sum_sq, agg.den_sum_sq, agg.num_den_sum) == (400, 100, 900, 70000, 1500)
    bad = parse_answer({**answer, "units": 4.5, "num_sum_sq": float("nan"), "num_den_sum": "x"})
    assert bad.error is None and bad.units is None and bad.num_sum_sq is None and bad.num_den_sum is None


def test_parse_answer_keeps_a_valid_stddev_and_drops_a_bad_one() -> None:
    assert parse_answer({"value": 3.0, "count": 10, "stddev": 1.5}).stddev == 1.5
    assert parse_answer({"value": 3.0, "count": 10, "stddev": -1}).stddev is None
    assert parse_answer({"value": True, "count": 10}).error is not None


@respx.mock
def test_per_series_fetch_is_concurrent_and_bounded() -> None:
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json={"value": 0.1, "count": 5})

    respx.get(f"{BASE}/query").mock(side_effect=slow)
    planned = [((f"f{i}", "control", "m", "5m"), MetricQuery(f"f{i}", "control", "m", "5m", END)) for i in range(40)]

    async def go() -> dict[Any, Aggregate]:
        async with make_client() as client:
            return await fetch_plan(HttpMetricSource(BASE, client, concurrency=8), planned)

    results = run(go())
    assert len(results) == 40 and all(a.usable for a in results.values())
    assert 1 < peak <= 8


# ---- flag API -------------------------------------------------------------------------------------------


def the_flag() -> Any:
    return parse_flags({KEY: flag_definition()}).flags[0]


def halted_definition() -> dict[str, Any]:
    return {**flag_definition(), "state": "DISABLED", "defaultVariant": "control"}


async def halt(token: str | None = "tok") -> Any:
    async with make_client() as client:
        return await HttpFlagBackend(FLAGS, client, token=token, policy=FAST).halt(the_flag(), "why")


@respx.mock
def test_halt_patches_state_default_variant_and_reason_with_the_token() -> None:
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(
        side_effect=[httpx.Response(200, json=flag_definition()), httpx.Response(200, json=halted_definition())]
    )
    patch = respx.patch(f"{FLAGS}/v1/flags/{KEY}").mock(return_value=httpx.Response(200, json=halted_definition()))
    outcome = run(halt())
    assert outcome.ok and "forced" not in outcome.detail
    sent = patch.calls.last.request
    assert sent.headers["Authorization"] == "Bearer tok"
    assert json.loads(sent.content) == {
        "state": "DISABLED",
        "defaultVariant": "control",
        "metadata": {"guardrail_reason": "why"},
    }


@respx.mock
def test_patch_5xx_then_success_halts_once() -> None:
    # GETs: before the halt, the re-read after the 503 (not applied), and the check after the success.
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(
        side_effect=[
            httpx.Response(200, json=flag_definition()),
            httpx.Response(200, json=flag_definition()),
            httpx.Response(200, json=halted_definition()),
        ]
    )
    patch = respx.patch(f"{FLAGS}/v1/flags/{KEY}").mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json=halted_definition())]
    )
    assert run(halt()).ok and patch.call_count == 2


@respx.mock
def test_patch_403_is_a_permanent_failure() -> None:
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(return_value=httpx.Response(200, json=flag_definition()))
    patch = respx.patch(f"{FLAGS}/v1/flags/{KEY}").mock(return_value=httpx.Response(403))
    outcome = run(halt())
    assert not outcome.ok and outcome.permanent and "403" in outcome.detail
    assert patch.call_count == 1  # a refusal is not retried


@respx.mock
def test_patch_that_ignored_a_field_takes_the_force_path() -> None:
    ignored = {**flag_definition(), "state": "DISABLED"}  # defaultVariant left at... treatment
    ignored["defaultVariant"] = "treatment"
    forced = {**ignored, "defaultVariant": "control"}
    # Only re-reads count: before, after the PATCH (a field ignored), after the force.
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(
        side_effect=[
            httpx.Response(200, json=flag_definition()),
            httpx.Response(200, json=ignored),
            httpx.Response(200, json=forced),
        ]
    )
    respx.patch(f"{FLAGS}/v1/flags/{KEY}").mock(return_value=httpx.Response(200, json=ignored))
    force = respx.put(f"{FLAGS}/v1/flags/{KEY}/force").mock(return_value=httpx.Response(200, json=forced))
    outcome = run(halt())
    assert outcome.ok and "forced variant control" in outcome.detail
    assert json.loads(force.calls.last.request.content) == {"variant": "control"}


@respx.mock
def test_server_rejecting_reason_metadata_still_halts() -> None:
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(
        side_effect=[httpx.Response(200, json=flag_definition()), httpx.Response(200, json=halted_definition())]
    )
    patch = respx.patch(f"{FLAGS}/v1/flags/{KEY}").mock(
        side_effect=[httpx.Response(422), httpx.Response(200, json=halted_definition())]
    )
    assert run(halt()).ok
    assert json.loads(patch.calls.last.request.content) == {"state": "DISABLED", "defaultVariant": "control"}


@respx.mock
def test_patch_timeout_after_the_server_applied_it_is_a_success() -> None:
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(
        side_effect=[httpx.Response(200, json=flag_definition()), httpx.Response(200, json=halted_definition())]
    )
    respx.patch(f"{FLAGS}/v1/flags/{KEY}").mock(side_effect=httpx.ReadTimeout("slow"))
    outcome = run(halt())
    assert outcome.ok and "lost" in outcome.detail


@respx.mock
def test_already_halted_flag_is_not_patched() -> None:
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(return_value=httpx.Response(200, json=halted_definition()))
    patch = respx.patch(f"{FLAGS}/v1/flags/{KEY}")
    outcome = run(halt())
    assert outcome.ok and outcome.already and patch.call_count == 0


@respx.mock
def test_hold_sets_metadata_only() -> None:
    held = flag_definition(experiment_type="rollout")
    held["metadata"]["guardrail_hold"] = True
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(
        side_effect=[httpx.Response(200, json=flag_definition()), httpx.Response(200, json=held)]
    )
    patch = respx.patch(f"{FLAGS}/v1/flags/{KEY}").mock(return_value=httpx.Response(200, json=held))

    async def go() -> Any:
        async with make_client() as client:
            return await HttpFlagBackend(FLAGS, client, token="t", policy=FAST).hold(the_flag(), "why")

    assert run(go()).ok
    assert json.loads(patch.calls.last.request.content) == {
        "metadata": {"guardrail_hold": True, "guardrail_reason": "why"}
    }


@respx.mock
def test_hold_answered_by_the_patch_alone_is_not_done() -> None:
    """The PATCH answer says held; the re-read does not: a failed hold, never a claimed one."""
    held = flag_definition(experiment_type="rollout")
    held["metadata"]["guardrail_hold"] = True
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(return_value=httpx.Response(200, json=flag_definition()))
    respx.patch(f"{FLAGS}/v1/flags/{KEY}").mock(return_value=httpx.Response(200, json=held))

    async def go() -> Any:
        async with make_client() as client:
            return await HttpFlagBackend(FLAGS, client, token="t", policy=FAST).hold(the_flag(), "why")

    outcome = run(go())
    assert not outcome.ok and "re-read" in outcome.detail


@respx.mock
def test_flag_list_failure_is_a_clear_error() -> None:
    respx.get(f"{FLAGS}/v1/flags").mock(return_value=httpx.Response(200, text="<html>oops</html>"))

    async def go() -> Any:
        async with make_client() as client:
            return await HttpFlagBackend(FLAGS, client, token=None, policy=FAST).load()

    with pytest.raises(GuardrailError, match="HTML"):
        run(go())


# ---- alert and transport --------------------------------------------------------------------------------


@respx.mock
def test_alert_failure_never_names_the_webhook_url() -> None:
    url = "https://hooks.example.test/services/T000/B000/SECRETSECRET"
    respx.post(url).mock(return_value=httpx.Response(500))

    async def go() -> str | None:
        async with make_client() as client:
            return await alert.post(client, url, {"text": "x"}, policy=FAST)

    error = run(go())
    assert error is not None and "alert webhook" in error and "SECRET" not in error


@respx.mock
def test_request_raises_http_failure_without_url() -> None:
    respx.get("http://x.test/secret-path").mock(side_effect=httpx.ConnectError("boom"))

    async def go() -> Any:
        async with make_client() as client:
            return await request(client, "GET", "http://x.test/secret-path", label="thing", policy=FAST)

    with pytest.raises(HTTPFailure) as info:
        run(go())
    assert "secret-path" not in str(info.value)


def test_token_is_not_sent_over_plain_http_except_to_loopback() -> None:
    check_token_transport("https://flags.example.com", allow_insecure_http=False)
    check_token_transport("http://127.0.0.1:8080", allow_insecure_http=False)
    check_token_transport("http://localhost:8080", allow_insecure_http=False)
    check_token_transport("http://flags.example.com", allow_insecure_http=True)
    with pytest.raises(GuardrailError, match="plain http"):
        check_token_transport("http://flags.example.com", allow_insecure_http=False)


@respx.mock
def test_a_lost_answer_is_not_followed_by_a_blind_retry() -> None:
    """The PATCH times out but the server applied it: the re-read before the retry sees the halt."""
    respx.get(f"{FLAGS}/v1/flags/{KEY}").mock(
        side_effect=[httpx.Response(200, json=flag_definition()), httpx.Response(200, json=halted_definition())]
    )
    patch = respx.patch(f"{FLAGS}/v1/flags/{KEY}").mock(side_effect=httpx.ReadTimeout("slow"))
    outcome = run(halt())
    assert outcome.ok and "lost" in outcome.detail
    assert patch.call_count == 1
