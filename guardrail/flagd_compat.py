"""What flagd refuses in a flag definition that parsed as YAML or JSON: what its evaluator and the Python
flagd provider would not load or could not evaluate. An unknown flag property, variants of mixed types,
the legacy `fractionalEvaluation` operator, a weight that is not a whole number >= 0, and metadata values
that are not scalars, are null or are unquoted YAML timestamps (guardrail's nested `guardrails` list among
them, with its flat spelling offered instead). `guardrail validate` (validate.py) reports these beside
guardrail's own checks, so a file is known to load in flagd before flagd meets it. Pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from typing import Any

from guardrail import config

# What flagd's flag object knows; the Python provider builds a dataclass from exactly these and refuses
# the whole file on any other key (`source` and `selector` are dropped before that).
FLAG_PROPERTIES = ("state", "variants", "defaultVariant", "targeting", "metadata", "source", "selector")


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z0-9_.\-]+", text) and not config.check_number(text) else json.dumps(text)


def _flat_spelling(nested: Any) -> str:
    lines = []
    for item in nested if isinstance(nested, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("metric"), str):
            metric = item["metric"]
            lines += [f"guardrail.{metric}.{k}: {_yaml_scalar(v)}" for k, v in item.items() if k != "metric"]
    return "; ".join(lines)


def metadata_findings(metadata: Mapping[str, Any], where: str) -> Iterator[tuple[str, str]]:
    """(field, message) for every metadata value flagd would refuse."""
    for key, value in metadata.items():
        field = f"{where}.{key}"
        if key == "guardrails" and where == "metadata":
            flat = _flat_spelling(value)
            yield (
                field,
                (
                    "flagd refuses non-scalar metadata (a list here), so it would not load this file; "
                    "write each guardrail as flat keys instead" + (f": {flat}" if flat else "")
                ),
            )
        elif isinstance(value, (Mapping, list)):
            kind = "an object" if isinstance(value, Mapping) else "a list"
            yield field, f"flagd allows only strings, numbers and booleans as metadata values, not {kind}"
        elif value is None:
            yield field, "flagd does not allow an empty (null) metadata value"
        elif isinstance(value, (date, datetime)):
            yield (
                field,
                (
                    f"unquoted {value.isoformat()} is a YAML timestamp, not a string; the Python flagd provider "
                    f'refuses the whole file. Quote it: {key}: "{value.isoformat()}"'
                ),
            )


def _variant_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else type(value).__name__


def flagd_findings(definition: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, message) for what flagd refuses outside the guardrail metadata."""
    for key in definition:
        if key not in FLAG_PROPERTIES:
            yield str(key), f"unknown flag property; flagd knows {', '.join(FLAG_PROPERTIES[:5])}"
    variants = definition.get("variants")
    if isinstance(variants, Mapping) and variants:
        kinds = sorted({_variant_type(v) for v in variants.values()})
        if len(kinds) > 1 or kinds[0] not in ("boolean", "number", "string", "object"):
            yield "variants", f"flagd needs all variants of one type (boolean, number, string or object): {kinds}"
    for op, args in config.fractional_splits(definition.get("targeting")):
        if op == "fractionalEvaluation":
            yield (
                "targeting.fractionalEvaluation",
                (
                    "legacy operator: flagd no longer knows `fractionalEvaluation`, so every evaluation of this "
                    "flag fails; rename it to `fractional` (same arguments)"
                ),
            )
        for item in args:
            if not isinstance(item, list) or not item or not isinstance(item[0], str):
                continue
            if len(item) > 1 and (isinstance(item[1], bool) or not isinstance(item[1], int) or item[1] < 0):
                yield f"targeting.{op}", f"weight of {item[0]!r} must be a whole number >= 0, got {item[1]!r}"
