"""The SQL source's column contract: rows of one metric's query -> one Aggregate per (flag, variant).

Pure (no database here), so every way a result set can be wrong is tested without one. The contract is
documented in docs/sql.md:

    flag, variant, value, count            required: one row per (flag, variant)
    stddev                                 optional: per-event standard deviation (mean metrics)
    units, unit_sum, unit_sum_sq           optional: per-unit sums of a unit-level metric
    num_sum, num_sum_sq, den_sum,          optional: per-unit sums of a ratio metric
    den_sum_sq, num_den_sum

A missing required column costs the whole metric; a bad row (NULL, not a number, a duplicate) costs that
arm; a bad optional column is dropped (the statistics fall back to what value and count give).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guardrail.model import Aggregate, FailureKind
from guardrail.sources import cells
from guardrail.sources.cells import OPTIONAL, BadCell, optional_cell

REQUIRED = ("flag", "variant", "value", "count")
CONTRACT = "docs/sql.md lists the columns"


@dataclass(frozen=True)
class Rows:
    columns: Sequence[str]  # lower-cased
    rows: Sequence[tuple[Any, ...]]


def _aggregate(row: tuple[Any, ...], at: Mapping[str, int]) -> Aggregate:
    try:
        value = cells.number(row[at["value"]], "value")
        count = cells.count(row[at["count"]], "count")
    except BadCell as exc:
        hint = " (no events in the window's denominator?)" if str(exc) == "value is NULL" else ""
        return Aggregate.missing(f"{exc}{hint}")
    extra: dict[str, Any] = {c: optional_cell(row[at[c]], c) for c in OPTIONAL if c in at}
    stddev = extra.pop("stddev", None)
    if stddev is not None and stddev < 0:
        stddev = None
    return Aggregate(value=value, count=count, stddev=stddev, **extra)


def aggregates_from_rows(
    result: Rows, wanted: Collection[tuple[str, str]], *, label: str
) -> dict[tuple[str, str], Aggregate]:
    """One Aggregate for each wanted (flag, variant): from its row, or missing with the cause."""
    at = {name: i for i, name in enumerate(result.columns)}
    absent = [c for c in REQUIRED if c not in at]
    if absent:
        shown = ", ".join(result.columns) or "none"
        error = f"{label}: no {', '.join(absent)} column(s) in the result (columns: {shown}); {CONTRACT}"
        return {pair: Aggregate.missing(error, FailureKind.BAD_ANSWER) for pair in wanted}
    wanted_set = set(wanted)
    seen: dict[tuple[str, str], int] = {}
    rows: dict[tuple[str, str], tuple[Any, ...]] = {}
    for row in result.rows:
        flag, variant = row[at["flag"]], row[at["variant"]]
        if flag is None or variant is None:
            continue  # a NULL key cannot be anyone's arm
        pair = (str(flag), str(variant))
        if pair in wanted_set:
            seen[pair] = seen.get(pair, 0) + 1
            rows[pair] = row
    found: dict[tuple[str, str], Aggregate] = {}
    for pair in wanted:
        flag, variant = pair
        n = seen.get(pair, 0)
        if n == 0:
            found[pair] = Aggregate.missing(
                f"{label}: no row for flag={flag} variant={variant} (no exposures or events in the window?)",
                FailureKind.NOT_FOUND,
            )
        elif n > 1:
            found[pair] = Aggregate.missing(
                f"{label}: {n} rows for flag={flag} variant={variant}; the query must return one row per "
                "(flag, variant): GROUP BY flag, variant"
            )
        else:
            agg = _aggregate(rows[pair], at)
            if agg.error is not None:
                agg = Aggregate.missing(f"{label}: flag={flag} variant={variant}: {agg.error}")
            found[pair] = agg
    return found
