"""`metrics.every`: look at a slow source's metrics on a longer cadence than cron runs guardrail.

A warehouse query over since-start windows can take minutes; cron still runs `guardrail check` every 2 minutes
(halts left unfinished are retried, the monitor stays fresh), but only a run that is *due* plans, fetches and
decides. A run that is not due asks nothing, changes no flag's state (streaks, the sequential test's looks,
ramps), and says so: "metrics not due". The last look is kept in the state file (`metrics_looked_at`).

Pure: configuration and times in, a Cadence out. docs/sql.md documents the option.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any

from guardrail.codec import format_time
from guardrail.model import Cadence, GuardrailError

# A run is due this much before `every` has fully passed: cron starts runs a few seconds apart from one
# interval to the next, and a look 14 min 58 s after the last one must not wait a whole extra cron interval.
SLACK = timedelta(seconds=60)
MAX_MINUTES = 7 * 24 * 60
_DURATION = re.compile(r"^([1-9][0-9]{0,5})(m|h|d)$")


def parse_every(value: Any, *, source: str | None) -> float | None:
    """`metrics.every` -> minutes (None when absent). A duration such as `15m`, `1h`, `1d`, at least 1 minute."""
    if value is None:
        return None
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise GuardrailError(
            f"must be a duration such as 15m, 1h or 1d (whole minutes, hours or days), got {value!r}",
            source=source,
            field="metrics.every",
        )
    minutes = int(match.group(1)) * {"m": 1, "h": 60, "d": 1440}[match.group(2)]
    if minutes > MAX_MINUTES:
        raise GuardrailError(f"must be at most 7d, got {value!r}", source=source, field="metrics.every")
    return float(minutes)


def cadence(every_minutes: float, last_look: datetime | None, now: datetime) -> Cadence:
    """Due on the first run, once `every` (less SLACK) has passed since the last look, and when the last look
    is recorded after `now` (a clock that was ahead, or a backfill with an earlier --now): a look that proves
    nothing about now must not silence the guardrails."""
    every = timedelta(minutes=every_minutes)
    if not math.isfinite(every_minutes) or last_look is None or last_look > now or now - last_look >= every - SLACK:
        return Cadence(every_minutes, True, last_look, now + every - SLACK)
    return Cadence(every_minutes, False, last_look, last_look + every - SLACK)


def not_due_message(c: Cadence) -> str:
    last = format_time(c.last_look_at) if c.last_look_at else "never"
    upcoming = format_time(c.next_look_at) if c.next_look_at else "the next run"
    return (
        f"metrics not due (metrics.every {c.every_minutes:g} min): last look at {last}, next look from {upcoming}; "
        "no guardrail was looked at and no flag's state changed"
    )
