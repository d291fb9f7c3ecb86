"""The narrow interface every metrics source implements.

A source only measures: it turns a MetricQuery into an Aggregate. It never judges, and it never raises
for bad data or a failing server: it returns `Aggregate.missing(cause)` so the engine records
`skip:no_data` with that cause and the other guardrails are still decided.
"""

from __future__ import annotations

from typing import Protocol

from guardrail.model import Aggregate, MetricQuery


class MetricSource(Protocol):
    name: str

    async def query(self, q: MetricQuery) -> Aggregate:
        """Fetch one aggregate. Must not raise for network or data errors."""
        ...

    async def aclose(self) -> None: ...
