"""One way to write numbers, times and evaluations as JSON, for every document the tool writes: `check
--json`, JSON logs, the audit log, the state file and alerts.

Strict JSON only: a bare NaN or Infinity makes a log pipeline drop the whole line, so a non-finite number
becomes the text "inf", "-inf" or "nan". Times are RFC 3339 in UTC with a `Z`.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Any

from guardrail.model import Aggregate, Evaluation, HaltResult, SeqState, SrmResult


@lru_cache(maxsize=256)
def format_time(dt: datetime) -> str:
    """Cached: a run writes its one pinned instant tens of thousands of times (each evaluation's summary), and
    the same string object serves them all (~2 MB at 10,000 flags)."""
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> datetime:
    """RFC 3339 text (or a YAML timestamp) to an aware UTC datetime; naive times are taken as UTC."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
    else:
        raise ValueError(f"expected an RFC 3339 time, got {type(value).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def finite(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else ("-inf" if x < 0 else "nan")


def number(x: Any) -> float | None:
    """Back from JSON: the texts finite() writes become floats again; anything else unusable is None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if x in ("inf", "-inf", "nan"):
        return float(x)
    return None


def aggregate_dict(a: Aggregate | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"value": finite(a.value), "count": a.count, "stddev": finite(a.stddev), "error": a.error}


def evaluation_dict(e: Evaluation) -> dict[str, Any]:
    """An evaluation as every JSON document shows it (`check --json`, logs, audit, alert context)."""
    return {
        "flag": e.flag,
        "metric": e.metric,
        "treatment_variant": e.treatment_variant,
        "control_variant": e.control_variant,
        "verdict": e.verdict.value,
        "reason": e.reason,
        "control": aggregate_dict(e.control),
        "treatment": aggregate_dict(e.treatment),
        "delta": finite(e.delta),
        "relative_delta": finite(e.relative_delta),
        "threshold": e.threshold,
        "comparison": e.comparison.value,
        "method": e.method.value,
        "streak": e.streak,
        "confirmations": e.confirmations,
        "bound": finite(e.bound),
        "p_value": e.p_value,
    }


def halt_dict(h: HaltResult) -> dict[str, Any]:
    """A halt as `check --json` and the JSON logs show it (the rollback's `parts` only in `check --json`)."""
    return {
        "flag": h.flag,
        "action": h.action,
        "status": h.status,
        "reason": h.reason,
        "detail": h.detail,
        "alert": h.alert,
        "resumed": h.resumed,
    }


def srm_dict(r: SrmResult) -> dict[str, Any]:
    """An SRM verdict as `check --json` and the audit log show it."""
    return {
        "flag": r.flag,
        "verdict": r.verdict.value,
        "p_value": r.p_value,
        "counts": dict(r.counts),
        "expected": dict(r.expected),
        "action": r.action.value,
        "reason": r.reason,
    }


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


def clean(value: Any) -> Any:
    """Non-finite floats anywhere in a document become text."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def dumps(doc: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    return json.dumps(clean(doc), allow_nan=False, default=_default, indent=indent, sort_keys=sort_keys)


# ---- the sequential test's state (state file version 2) ----


def seq_to_dict(q: SeqState) -> dict[str, Any]:
    return {
        "last_control": None if q.last_control is None else list(q.last_control),
        "last_treatment": None if q.last_treatment is None else list(q.last_treatment),
        "s": q.s,
        "v": q.v,
        "w": q.w,
        "windows": q.windows,
        "r2": q.r2,
        "v_per_unit": q.v_per_unit,
        "minutes_per_unit": q.minutes_per_unit,
        "restarts": [list(r) for r in q.restarts],
        "last_at_minutes": q.last_at_minutes,
    }


def _triple(value: Any) -> tuple[float, float, float] | None:
    if value is None:
        return None
    a, b, c = (float(x) for x in value)
    return a, b, c


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def seq_from_dict(d: Mapping[str, Any]) -> SeqState:
    return SeqState(
        last_control=_triple(d.get("last_control")),
        last_treatment=_triple(d.get("last_treatment")),
        s=float(d.get("s", 0.0)),
        v=float(d.get("v", 0.0)),
        w=float(d.get("w", 0.0)),
        windows=int(d.get("windows", 0)),
        r2=float(d.get("r2", 0.0)),
        v_per_unit=_optional(d.get("v_per_unit")),
        minutes_per_unit=_optional(d.get("minutes_per_unit")),
        restarts=tuple((int(j), float(s), float(v)) for j, s, v in (d.get("restarts") or [])),
        last_at_minutes=_optional(d.get("last_at_minutes")),
    )
