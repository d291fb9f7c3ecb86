"""A flag's guardrail options: the two metadata spellings gathered into one document, checked against the
JSON Schema shipped in guardrail/schemas/.

Guardrails come in two spellings (docs/guardrails.md): flat `guardrail.<metric>.<option>` metadata keys,
which flagd accepts, and a nested `guardrails:` list, which flagd rejects (flagd allows only strings,
numbers and booleans as metadata values). Both are gathered into one shape, with a map from each schema
path back to the key the user wrote, so that an error names their text. The same check serves the config
file's `guardrails:` patterns and `defaults:` (guardrail/rules.py, guardrail/settings.py). Pure; config.py
turns the checked document into the domain model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from guardrail import ramp_config
from guardrail.schema_fast import certainly_valid

FLAT_PREFIX = "guardrail."
GUARDRAIL_OPTIONS = (
    "comparison",
    "threshold",
    "min_count",
    "confirmations",
    "max_gap_minutes",
    "window",
    "method",
    "alpha",
    "kind",
    "tuning_n",
    "dispersion",
)


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("guardrail").joinpath("schemas/guardrail.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@lru_cache(maxsize=1)
def _validator() -> Any:
    # jsonschema is imported lazily: it costs start-up time that `guardrail --help` should not pay.
    import jsonschema

    cls = jsonschema.validators.validator_for(schema())
    return cls(schema(), format_checker=cls.FORMAT_CHECKER)


def json_safe(value: Any) -> Any:
    """YAML gives datetimes and dates; the schema wants strings."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def gather_guardrail_options(
    metadata: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, str], list[tuple[str, str]]]:
    """Collect guardrails from both spellings.

    Returns (guardrails, flag-wide defaults, field-name map, errors). The field map turns a schema path
    such as "guardrails/0/threshold" back into the key the user wrote, so errors point at their text.
    """
    guardrails: dict[str, dict[str, Any]] = {}
    fields: dict[str, str] = {}
    defaults: dict[str, Any] = {}
    errors: list[tuple[str, str]] = []
    order: list[str] = []

    for key, value in metadata.items():
        if not isinstance(key, str) or not key.startswith(FLAT_PREFIX) or ramp_config.is_ramp_or_srm_key(key):
            continue  # guardrail.ramp.* and guardrail.srm.* are read by rollout.parse_ramp
        rest = key[len(FLAT_PREFIX) :]
        if "." not in rest:
            # guardrail.<option>: a flag-wide default for every guardrail of this flag
            defaults[rest] = json_safe(value)
            fields[f"defaults/{rest}"] = f"metadata.{key}"
            continue
        metric, option = rest.rsplit(".", 1)
        if metric not in guardrails:
            guardrails[metric] = {"metric": metric}
            order.append(metric)
        guardrails[metric][option] = json_safe(value)

    nested = metadata.get("guardrails")
    if nested is not None:
        if not isinstance(nested, list):
            errors.append(("metadata.guardrails", "must be a list of {metric, comparison, threshold}"))
        else:
            for i, item in enumerate(nested):
                if not isinstance(item, Mapping):
                    errors.append((f"metadata.guardrails[{i}]", "must be a mapping"))
                    continue
                named = item.get("metric")
                if not isinstance(named, str) or not named:
                    errors.append((f"metadata.guardrails[{i}].metric", "is required and must be a string"))
                    continue
                if named in guardrails:
                    errors.append((f"metadata.guardrails[{i}].metric", f"metric {named!r} is listed twice"))
                    continue
                guardrails[named] = {str(k): json_safe(v) for k, v in item.items()}
                order.append(named)
                fields[f"nested:{named}"] = f"metadata.guardrails[{i}]"

    out: list[dict[str, Any]] = []
    for index, metric in enumerate(order):
        out.append(guardrails[metric])
        base = fields.get(f"nested:{metric}")
        for option in guardrails[metric]:
            fields[f"guardrails/{index}/{option}"] = (
                f"{base}.{option}" if base else f"metadata.guardrail.{metric}.{option}"
            )
        fields[f"guardrails/{index}"] = base or f"metadata.guardrail.{metric}"
    return out, defaults, fields, errors


def _non_finite(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every NaN or infinity in a document, with its schema path. JSON Schema cannot refuse them: every
    comparison with NaN is false, so `threshold: .nan` passes `exclusiveMinimum: 0` and `maximum`."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _non_finite(v, f"{path}/{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{path}/{i}" if path else str(i))


def schema_errors(document: Mapping[str, Any], fields: Mapping[str, str]) -> list[tuple[str, str]]:
    """(place, message) for each way `document` breaks the schema, the place spelled through `fields` as the
    user wrote it (a bare `metadata.<path>` when it is not in the map); empty when it is valid."""
    problems = []
    for where, number in _non_finite(document):
        spot = fields.get(where) or ("metadata." + where.replace("/", ".") if where else "metadata")
        problems.append((spot, f"must be a finite number, got {number}"))
    if problems:
        return problems
    if certainly_valid(document):  # the common case, without jsonschema's per-keyword machinery
        return []
    for err in sorted(_validator().iter_errors(document), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in err.absolute_path)
        place = fields.get(path)
        if place is None:
            place = "metadata." + path.replace("/", ".") if path else "metadata"
        message = err.message
        if err.validator == "additionalProperties":
            message = f"unknown option ({err.message}); known: {', '.join(GUARDRAIL_OPTIONS)}"
        elif err.validator == "required" and "guardrails/" in path + "/":
            message = err.message
        problems.append((place, message))
    return problems
