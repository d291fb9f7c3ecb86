"""Per-flag windows as a relation a SQL template joins: every flag's since-start window in one statement.

Under the sequential test each flag's window starts when its own experiment did, so `:start`/`:end` templates
need one statement per distinct start. A template that names `guardrail_windows` gets instead, as a common
table expression put in front of it, one row per flag of the statement:

    guardrail_windows(flag, start_ts, end_ts)    flag text; start_ts, end_ts naive UTC TIMESTAMPs

built from bound parameters (never from text pasted into the SQL), and joins it: `JOIN guardrail_windows w
ON w.flag = x.flag ... WHERE e.ts >= w.start_ts AND e.ts < w.end_ts`. docs/sql.md documents it.

Pure: text and parameters in, text and parameters out; guardrail/sources/sql.py runs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

WINDOWS = "guardrail_windows"
# Bound parameters per statement: PostgreSQL's protocol carries at most 65,535, and each flag takes two.
MAX_FLAGS = 10_000

_NAME = re.compile(r"\bguardrail_windows\b", re.IGNORECASE)
# Leading blanks and comments, then an optional WITH [RECURSIVE]: where the relation goes.
_LEAD = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_WITH = re.compile(r"WITH(?:\s+RECURSIVE)?\b", re.IGNORECASE)

K = TypeVar("K")


def uses_windows(sql: str) -> bool:
    return _NAME.search(sql) is not None


def with_windows(sql: str, windows: Sequence[tuple[str, datetime]], end: datetime) -> tuple[str, dict[str, Any]]:
    """`sql` with `guardrail_windows` defined in front of it, and the parameters to bind.

    Each row is `(CAST(:gw_flag_i AS VARCHAR), CAST(:gw_start_i AS TIMESTAMP), CAST(:end AS TIMESTAMP))`: the casts
    give the columns their types on every engine (a VALUES list of untyped parameters is text in PostgreSQL).
    `:start` is bound too, to the earliest start, so a template may also prune with `e.ts >= :start`."""
    if not windows:
        raise ValueError("no windows")
    params: dict[str, Any] = {"start": min(start for _flag, start in windows), "end": end}
    rows = []
    for i, (flag, start) in enumerate(windows):
        params[f"gw_flag_{i}"], params[f"gw_start_{i}"] = flag, start
        rows.append(f"(CAST(:gw_flag_{i} AS VARCHAR), CAST(:gw_start_{i} AS TIMESTAMP), CAST(:end AS TIMESTAMP))")
    relation = f"{WINDOWS} (flag, start_ts, end_ts) AS (VALUES {', '.join(rows)})"
    lead = _LEAD.match(sql)
    at = lead.end() if lead else 0
    found = _WITH.match(sql, at)
    if found is not None:  # the template's own WITH: the relation becomes its first CTE
        return f"{sql[: found.end()]} {relation},{sql[found.end() :]}", params
    return f"{sql[:at]}WITH {relation}\n{sql[at:]}", params


def batches(items: Iterable[tuple[K, str, str]], limit: int = MAX_FLAGS) -> list[list[K]]:
    """(item, flag, window) triples into statements where each flag has one window and at most `limit` flags
    take part. One flag asking two windows of one metric (a threshold guardrail on 60m beside a sequential one
    since the start) puts its second window in a second statement."""
    out: list[tuple[list[K], dict[str, str]]] = []
    for item, flag, window in items:
        for batch, windows in out:
            have = windows.get(flag)
            if have == window or (have is None and len(windows) < limit):
                batch.append(item)
                windows[flag] = window
                break
        else:
            out.append(([item], {flag: window}))
    return [batch for batch, _windows in out]
