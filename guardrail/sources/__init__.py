"""Metrics sources, one module per outside system. Adding one: a module exposing `PLUGIN` (see
guardrail/adapters.py) and one line here."""

from __future__ import annotations

from typing import Any

from guardrail.adapters import Entry, Registry
from guardrail.sources.base import MetricSource, PerSeriesSource, Plan, fetch_plan

SOURCES: Registry[Any, MetricSource] = Registry(
    "metrics source",
    {
        "http": Entry("guardrail.sources.http_api"),
        "prometheus": Entry("guardrail.sources.prometheus"),
        "sql": Entry("guardrail.sources.sql"),
    },
)

__all__ = ["SOURCES", "MetricSource", "PerSeriesSource", "Plan", "fetch_plan"]
