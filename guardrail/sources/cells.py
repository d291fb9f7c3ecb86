"""One number a metrics source answered, checked the same way whatever the source (a SQL cell, a JSON field).

The optional fields beside `value` and `count` carry the same names in every contract (docs/sql.md,
docs/contracts.md): `stddev` and the per-unit sums the sequential test takes its variance from.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

OPTIONAL_FLOATS = ("stddev", "unit_sum", "unit_sum_sq", "num_sum", "num_sum_sq", "den_sum", "den_sum_sq", "num_den_sum")
OPTIONAL = ("units", *OPTIONAL_FLOATS)


class BadCell(Exception):
    pass


def number(raw: Any, column: str) -> float:
    if raw is None:
        raise BadCell(f"{column} is NULL")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, Decimal)):
        raise BadCell(f"{column} is not a number ({raw!r:.40})")
    value = float(raw)
    if not math.isfinite(value):
        raise BadCell(f"{column} is {value}")
    return value


def count(raw: Any, column: str) -> int:
    value = number(raw, column)
    if value < 0 or value != int(value):
        raise BadCell(f"{column} is not a non-negative whole number ({value:g})")
    return int(value)


def optional_cell(raw: Any, column: str) -> float | int | None:
    """An optional field, or None when it is NULL or unusable (dropped, not fatal)."""
    try:
        return count(raw, column) if column == "units" else number(raw, column)
    except BadCell:
        return None
