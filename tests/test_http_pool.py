"""make_client's PoolSet: one client per run whose connections live in small httpcore pools.

httpcore 1.0's pool costs O(connections) per request and release (quadratic in places), so a run's
connections are spread over pools of POOL_SIZE (numbers in guardrail/http.py and docs/performance.md).
These tests pin what must not change with that: the concurrency bound, every request answered, each
connection given back, and the stock transport behind a proxy.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import pytest

from guardrail.http import POOL_SIZE, PoolSet, make_client
from guardrail.model import Aggregate, AggregateKey, MetricQuery
from guardrail.sources import fetch_plan
from guardrail.sources.http_api import HttpMetricSource
from tests.fakeserver_faults import FaultyAPI

END = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def pools(client: httpx.AsyncClient) -> PoolSet:
    transport = client._transport  # the one transport make_client chose
    assert isinstance(transport, PoolSet)
    return transport


@pytest.mark.parametrize("concurrency", [1, 3, 8, 13])
def test_pool_sizes_add_up_to_the_concurrency(concurrency: int) -> None:
    client = make_client(concurrency=concurrency)
    sizes = pools(client)._sizes
    assert sum(sizes) == concurrency and max(sizes) <= POOL_SIZE and min(sizes) >= 1
    asyncio.run(client.aclose())


def test_many_queries_bounded_connections_all_released() -> None:
    keys = [f"f{i}" for i in range(40)]
    planned = [((k, "control", "m", "5m"), MetricQuery(k, "control", "m", "5m", END)) for k in keys]
    with FaultyAPI(latency=0.02) as api:
        for i, k in enumerate(keys):
            api.set_metric(k, "control", "m", i / 100, 100 + i)

        async def go() -> tuple[dict[AggregateKey, Aggregate], list[int], int]:
            async with make_client(concurrency=8) as client:
                found = await fetch_plan(HttpMetricSource(api.url, client, concurrency=8), planned)
                transport = pools(client)
                opened = sum(len(p._pool.connections) for p in transport._pools)
                return found, list(transport._busy), opened

        found, busy, opened = asyncio.run(go())
        assert api.count("GET", "/query") == 40
    assert [found[key].count for key, _q in planned] == [100 + i for i in range(40)]
    assert busy == [0] * len(busy)  # every response closed gave its connection back
    assert 1 <= opened <= 8  # keep-alive reuse, never more connections than the concurrency


def test_failed_requests_give_their_slot_back() -> None:
    async def go() -> list[int]:
        async with make_client(concurrency=4, timeout=1) as client:
            for _ in range(6):  # more failures than slots: a leaked slot would show as busy
                with pytest.raises(httpx.ConnectError):
                    await client.get("http://127.0.0.1:9/query")  # port 9 (discard): nothing listens
            return list(pools(client)._busy)

    assert asyncio.run(go()) == [0, 0]


@pytest.mark.parametrize(
    ("variable", "pooled"),
    [
        ("HTTPS_PROXY", False),
        ("http_proxy", False),
        ("ALL_PROXY", False),
        ("NO_PROXY", True),
    ],
)
def test_behind_a_proxy_the_stock_transport_is_kept(
    monkeypatch: pytest.MonkeyPatch, variable: str, pooled: bool
) -> None:
    # httpx applies proxies from the environment only to a transport it builds itself; NO_PROXY alone is
    # no proxy at all.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "http://127.0.0.1:3128" if variable != "NO_PROXY" else "localhost")
    client = make_client(concurrency=8)
    assert isinstance(client._transport, PoolSet) is pooled
    asyncio.run(client.aclose())
