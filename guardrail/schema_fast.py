"""A fast yes for the common case: is a flag's guardrail document certainly valid against
guardrail/schemas/guardrail.schema.json?

jsonschema took ~70 % of reading a flag (about 0.2 ms each, 2 s of a 10,000-flag run, docs/performance.md).
Nearly every flag is valid, so options.py asks this plain-Python check first and runs jsonschema only when it
says no, for jsonschema's messages. It may say no to a valid document (then jsonschema decides: an integer
written as 5.0, a time it does not parse); it must never say yes to an invalid one, which
tests/test_schema_fast.py checks against jsonschema on seeded random documents. Keep it in step with the schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

# fullmatch: stricter than the schema's `^...$` under re.search, which lets a trailing newline through.
_METRIC = re.compile(r"[A-Za-z0-9_:\-]+")
_WINDOW = re.compile(r"[1-9][0-9]{0,6}(s|m|h|d)")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
COMPARISONS = frozenset({"relative_increase", "absolute_increase", "relative_decrease", "absolute_decrease"})


def _number(value: Any, low: float, high: float, *, above: bool) -> bool:
    """A JSON number (not a boolean) in (low, high] when `above`, else in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (value > low if above else value >= low) and value <= high


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _option(name: str, value: Any) -> bool:
    if name == "metric":
        return isinstance(value, str) and 1 <= len(value) <= 200 and _METRIC.fullmatch(value) is not None
    if name == "comparison":
        return value in COMPARISONS if isinstance(value, str) else False
    if name == "threshold":
        return _number(value, 0, 1e12, above=True)
    if name == "min_count":
        return _integer(value, 1, 1_000_000_000_000)
    if name == "confirmations":
        return _integer(value, 1, 100)
    if name == "max_gap_minutes":
        return _number(value, 0, 525600, above=True)
    if name == "window":
        return isinstance(value, str) and _WINDOW.fullmatch(value) is not None
    if name == "method":
        return value in ("threshold", "sequential") if isinstance(value, str) else False
    if name == "alpha":
        return _number(value, 0, 0.5, above=True)
    if name == "kind":
        return value in ("proportion", "mean", "quantile") if isinstance(value, str) else False
    if name == "tuning_n":
        return _number(value, 0, 1e15, above=True)
    return False  # additionalProperties: false


def _options(value: Any, *, required: bool) -> bool:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        return False
    if required and not ("metric" in value and "comparison" in value and "threshold" in value):
        return False
    return all(_option(k, v) for k, v in value.items())


def _time(value: Any) -> bool:
    if not isinstance(value, str) or _TIME.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def certainly_valid(document: Any) -> bool:
    """True only if the document passes the schema; False means "ask jsonschema"."""
    if not isinstance(document, Mapping) or not all(isinstance(k, str) for k in document):
        return False
    for key, value in document.items():
        if key == "experiment_type":
            ok = value in ("ab", "rollout", "experiment") if isinstance(value, str) else False
        elif key == "started_at":
            ok = _time(value)
        elif key == "warmup_minutes":
            ok = _number(value, 0, 525600, above=False)
        elif key == "control_variant":
            ok = isinstance(value, str) and len(value) >= 1
        elif key == "treatment_variants":
            ok = isinstance(value, str)
        elif key == "guardrail_hold":
            ok = isinstance(value, (bool, str))
        elif key == "defaults":
            ok = _options(value, required=False)
        elif key == "guardrails":
            ok = isinstance(value, list) and len(value) <= 100 and all(_options(g, required=True) for g in value)
        else:
            ok = True  # the top level allows other keys
        if not ok:
            return False
    return True
