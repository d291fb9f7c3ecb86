"""The metrics query API (docs/contracts.md): `GET {url}/query?flag=&variant=&metric=&window=&end=`."""

from __future__ import annotations

import math
from typing import Any

import httpx

from guardrail.config import format_time
from guardrail.http import HTTPFailure, RetryPolicy, json_body, request
from guardrail.model import Aggregate, MetricQuery


def parse_answer(body: Any) -> Aggregate:
    """Turn a JSON answer into an Aggregate, or the reason it is unusable. Never raises."""
    if not isinstance(body, dict):
        return Aggregate.missing(f"answer is {type(body).__name__}, not an object")
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
    return Aggregate(value=float(value), count=int(count), stddev=None if stddev is None else float(stddev))


class HttpMetricSource:
    name = "http"

    def __init__(self, base_url: str, client: httpx.AsyncClient, *, policy: RetryPolicy = RetryPolicy()) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.policy = policy

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
                self.client, "GET", f"{self.base_url}/query", label="metrics query", policy=self.policy,
                params=params,
            )
            return parse_answer(json_body(response))
        except HTTPFailure as exc:
            return Aggregate.missing(str(exc))
        except ValueError as exc:
            return Aggregate.missing(f"metrics query: {exc}")

    async def aclose(self) -> None:
        """The client belongs to the run, which closes it."""
