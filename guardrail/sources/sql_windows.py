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
# Flags per statement as a VALUES list: a statement carries at most 65,535 bound parameters (PostgreSQL's
# protocol), and each flag takes two. Arrays have no such bound.
MAX_FLAGS = 10_000

_NAME = re.compile(r"\bguardrail_windows\b", re.IGNORECASE)
# Leading blanks and comments, then an optional WITH [RECURSIVE]: where the relation goes.
_LEAD = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_WITH = re.compile(r"WITH(?:\s+RECURSIVE)?\b", re.IGNORECASE)

K = TypeVar("K")


def uses_windows(sql: str) -> bool:
    return _NAME.search(sql) is not None


# Engines that bind a Python list as an array and unnest two arrays side by side in a SELECT list.
ARRAY_DIALECTS = frozenset({"postgresql", "duckdb"})


def with_windows(
    sql: str, windows: Sequence[tuple[str, datetime]], end: datetime, *, dialect: str = ""
) -> tuple[str, dict[str, Any]]:
    """`sql` with `guardrail_windows` defined in front of it, and the parameters to bind.

    PostgreSQL and DuckDB get two bound arrays, unnested side by side (two parameters however many flags:
    a VALUES list of 20,000 parameters for 10,000 flags cost ~150 MB and 4 s of CPU in SQLAlchemy and the
    driver). Other engines get a VALUES list of bound parameters, `(CAST(:gw_flag_i AS VARCHAR),
    CAST(:gw_start_i AS TIMESTAMP), CAST(:end AS TIMESTAMP))`, the casts giving the columns their types.
    `:start` is bound too, to the earliest start, so a template may also prune with `e.ts >= :start`."""
    if not windows:
        raise ValueError("no windows")
    params: dict[str, Any] = {"start": min(start for _flag, start in windows), "end": end}
    if dialect in ARRAY_DIALECTS:
        params["gw_flags"] = [flag for flag, _start in windows]
        params["gw_starts"] = [start for _flag, start in windows]
        body = (
            "SELECT unnest(CAST(:gw_flags AS VARCHAR[])), unnest(CAST(:gw_starts AS TIMESTAMP[])), "
            "CAST(:end AS TIMESTAMP)"
        )
    else:
        # SQLite keeps times as text and CAST(... AS TIMESTAMP) would make them numbers: no casts there.
        typed = "CAST({} AS VARCHAR)", "CAST({} AS TIMESTAMP)"
        flag_of, time_of = ("{}", "{}") if dialect == "sqlite" else typed
        rows = []
        for i, (flag, start) in enumerate(windows):
            params[f"gw_flag_{i}"], params[f"gw_start_{i}"] = flag, start
            cells = (flag_of.format(f":gw_flag_{i}"), time_of.format(f":gw_start_{i}"), time_of.format(":end"))
            rows.append(f"({', '.join(cells)})")
        body = f"VALUES {', '.join(rows)}"
    relation = f"{WINDOWS} (flag, start_ts, end_ts) AS ({body})"
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
