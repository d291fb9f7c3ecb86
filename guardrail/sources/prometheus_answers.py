"""Prometheus answers: one /api/v1/query body -> a number, or NoData with the cause, and the numbers of an
aggregate's queries -> an Aggregate. Pure (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from guardrail.model import Aggregate, FailureKind


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
    rtype, result = answer_data(body)
    if rtype == "scalar":
        if not isinstance(result, list) or len(result) != 2:
            raise NoData("malformed scalar result")
        return _number(result[1])
    if not result:
        raise NoData(
            f"no series for flag={flag} variant={variant}: empty result "
            "(no traffic yet, or the query's labels do not match)"
        )
    if len(result) > 1:
        shown = ", ".join(_labels(s.get("metric") if isinstance(s, Mapping) else None) for s in result[:2])
        raise NoData(
            f"query returned {len(result)} series ({shown}{', ...' if len(result) > 2 else ''}); "
            "aggregate with sum() so it returns one"
        )
    return sample_value(result[0])


def answer_data(body: Any) -> tuple[str, Any]:
    """An answer's (resultType, result), a scalar or a vector list; NoData for anything else."""
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
        return rtype, result
    if rtype == "matrix":
        raise NoData(
            "query returns a range vector (matrix); wrap the [range] selector in rate()/increase() "
            "and aggregate with sum()"
        )
    if rtype != "vector":
        raise NoData(f"query returns a {rtype!r} result; it must return one number (a vector or a scalar)")
    if not isinstance(result, list):
        raise NoData("malformed vector result")
    return rtype, result


def sample_value(sample: Any) -> float:
    """One vector sample's number (may be NaN/Inf), or NoData."""
    if not isinstance(sample, Mapping):
        raise NoData("malformed sample")
    if "value" not in sample:
        if "histogram" in sample:
            raise NoData(
                "query returned a native histogram, not a number; use histogram_quantile(), "
                "histogram_count() or histogram_sum()"
            )
        raise NoData("sample has no value")
    pair = sample["value"]
    if not isinstance(pair, list) or len(pair) != 2:
        raise NoData("malformed sample value")
    return _number(pair[1])


def aggregate(metric: str, numbers: Mapping[str, float | NoData]) -> Aggregate:
    """The numbers of one aggregate's queries (value, count, optional stddev) -> an Aggregate or the cause."""
    for role in ("value", "count"):
        answer = numbers[role]
        if isinstance(answer, NoData):
            return Aggregate.missing(f"{metric} {role} query: {answer}", answer.kind)
    value, count = numbers["value"], numbers["count"]
    assert isinstance(value, float) and isinstance(count, float)
    if not math.isfinite(value):
        return Aggregate.missing(f"{metric} value query: {_value_cause(value)}")
    if not math.isfinite(count):
        return Aggregate.missing(f"{metric} count query: count is {count}")
    if count < 0:
        return Aggregate.missing(f"{metric} count query: count is negative ({count:g})")
    # optional: only the sequential test on a mean metric needs it, and says so
    stddev = numbers.get("stddev")
    if not isinstance(stddev, float) or not math.isfinite(stddev) or stddev < 0:
        stddev = None
    # increase() extrapolates to the window's edges, so counts come back as 1234.56: round, not floor.
    return Aggregate(value=value, count=round(count), stddev=stddev)


def _value_cause(v: float) -> str:
    if math.isnan(v):
        return "value is NaN (no traffic in the window?)"
    sign = "+" if v > 0 else "-"
    return f"value is {sign}Inf (a division by zero: no traffic in the window's denominator?)"
