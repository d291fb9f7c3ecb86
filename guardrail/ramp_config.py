"""Parsing a ramp schedule (`guardrail.ramp.*`) and the SRM options (`guardrail.srm.*`) from flag metadata.

Pure. Every error is a (field, message) pair naming the metadata key the user wrote; config.parse_flag
turns them into FlagProblems, so one bad schedule costs its flag only (docs/rollouts.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from guardrail.model import AdvanceMode, ExperimentType, OnBreach, RampSpec, SrmAction, SrmSpec

RAMP_PREFIX = "guardrail.ramp."
SRM_PREFIX = "guardrail.srm."
RAMP_OPTIONS = ("steps", "step_minutes", "min_count", "advance", "on_breach")
SRM_OPTIONS = ("metric", "action", "alpha", "enabled")
DEFAULT_STEP_MINUTES = 30.0

# ---- parsing `guardrail.ramp.*` and `guardrail.srm.*` -------------------------------------------------------


def is_ramp_or_srm_key(key: str) -> bool:
    return key.startswith((RAMP_PREFIX, SRM_PREFIX))


def _int_list(value: Any) -> list[float]:
    if isinstance(value, bool):
        raise ValueError(f"expected numbers, got {value!r}")
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, str):
        parts = [p.strip().rstrip("%") for p in value.split(",")]
        if not all(parts):
            raise ValueError(f"expected comma-separated numbers, got {value!r}")
        return [float(p) for p in parts]
    if isinstance(value, list):
        return (
            [float(v) for v in value if not isinstance(v, bool)]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            else _raise(f"expected numbers, got {value!r}")
        )
    raise ValueError(f"expected comma-separated numbers, got {type(value).__name__}")


def _raise(message: str) -> list[float]:
    raise ValueError(message)


def parse_ramp(
    metadata: Mapping[str, Any],
    *,
    experiment_type: ExperimentType,
    split: Mapping[str, float],
    control: str,
    treatments: Sequence[str],
) -> tuple[RampSpec | None, SrmSpec, list[tuple[str, str]]]:
    """(ramp or None, srm options, [(field, message)]). Pure; every error names its metadata field."""
    errors: list[tuple[str, str]] = []
    options = {
        k[len(RAMP_PREFIX) :]: v for k, v in metadata.items() if isinstance(k, str) and k.startswith(RAMP_PREFIX)
    }
    srm_options = {
        k[len(SRM_PREFIX) :]: v for k, v in metadata.items() if isinstance(k, str) and k.startswith(SRM_PREFIX)
    }
    srm_spec, srm_errors = _parse_srm(srm_options)
    errors += srm_errors
    for name in options:
        if name not in RAMP_OPTIONS:
            errors.append((f"metadata.{RAMP_PREFIX}{name}", f"unknown ramp option; known: {', '.join(RAMP_OPTIONS)}"))
    if not options:
        return None, srm_spec, errors
    field = f"metadata.{RAMP_PREFIX}steps"
    if "steps" not in options:
        return None, srm_spec, [*errors, (field, "is required when any guardrail.ramp option is set")]
    if experiment_type is not ExperimentType.ROLLOUT:
        errors.append(
            ("metadata.experiment_type", "a ramp needs experiment_type: rollout (an ab experiment has no ramp)")
        )
    try:
        raw = _int_list(options["steps"])
    except ValueError as exc:
        return None, srm_spec, [*errors, (field, str(exc))]
    steps: list[int] = []
    for value in raw:
        if not math.isfinite(value) or value != int(value):
            errors.append((field, f"step {value:g} is not a whole percent"))
        elif not 0 < value <= 100:
            errors.append((field, f"step {value:g} is outside 1..100 (percent of units to the treatment)"))
        elif steps and value <= steps[-1]:
            errors.append((field, f"steps must increase: {value:g} comes after {steps[-1]}"))
        else:
            steps.append(int(value))
    if not errors and len(steps) < 2:
        errors.append((field, "needs at least two steps (the last one ships)"))
    if not split:
        errors.append(("targeting", "a ramp needs a `fractional` split in targeting whose weights guardrail sets"))
    else:
        missing = [v for v in (control, *treatments) if v not in split]
        if missing:
            errors.append(("targeting", f"the fractional split does not list variant(s) {missing}"))
        uneven = [s for s in steps if s % max(1, len(treatments))]
        if uneven:
            errors.append(
                (
                    field,
                    f"step(s) {uneven} cannot be split evenly over the {len(treatments)} treatment "
                    f"variants {list(treatments)} in whole percents",
                )
            )
    minutes_field = f"metadata.{RAMP_PREFIX}step_minutes"
    step_minutes: tuple[float, ...] = (DEFAULT_STEP_MINUTES,) * len(steps)
    if "step_minutes" in options:
        try:
            given = _int_list(options["step_minutes"])
        except ValueError as exc:
            given = []
            errors.append((minutes_field, str(exc)))
        if given and any(not (math.isfinite(m) and m >= 0) for m in given):
            errors.append((minutes_field, "must be minutes >= 0"))
        elif len(given) == 1:
            step_minutes = (given[0],) * len(steps)
        elif given and len(given) != len(steps):
            errors.append(
                (minutes_field, f"has {len(given)} values for {len(steps)} steps (give one, or one per step)")
            )
        elif given:
            step_minutes = tuple(given)
    min_count = 0
    if "min_count" in options:
        value = options["min_count"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append((f"metadata.{RAMP_PREFIX}min_count", f"must be a whole number >= 0, got {value!r}"))
        else:
            min_count = value
    advance, on_breach = AdvanceMode.NO_HARM, OnBreach.ROLLBACK
    try:
        advance = AdvanceMode(options.get("advance", AdvanceMode.NO_HARM.value))
    except ValueError:
        errors.append((f"metadata.{RAMP_PREFIX}advance", f"must be no_harm or proven_safe, got {options['advance']!r}"))
    try:
        on_breach = OnBreach(options.get("on_breach", OnBreach.ROLLBACK.value))
    except ValueError:
        errors.append((f"metadata.{RAMP_PREFIX}on_breach", f"must be rollback or hold, got {options['on_breach']!r}"))
    if errors:
        return None, srm_spec, errors
    return RampSpec(tuple(steps), step_minutes, min_count, advance, on_breach), srm_spec, []


def _parse_srm(options: Mapping[str, Any]) -> tuple[SrmSpec, list[tuple[str, str]]]:
    spec, errors = SrmSpec(), []
    for name, value in options.items():
        field = f"metadata.{SRM_PREFIX}{name}"
        if name == "metric":
            if isinstance(value, str) and value.strip():
                spec = replace(spec, metric=value.strip())
            else:
                errors.append((field, "must be the name of a metric that counts units"))
        elif name == "action":
            try:
                spec = replace(spec, action=SrmAction(value))
            except ValueError:
                errors.append((field, f"must be hold, rollback or warn, got {value!r}"))
        elif name == "alpha":
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
                spec = replace(spec, alpha=float(value))
            else:
                errors.append((field, f"must be a number in (0, 1), got {value!r}"))
        elif name == "enabled":
            if value in (True, False, "true", "false"):
                spec = replace(spec, enabled=value in (True, "true"))
            else:
                errors.append((field, f"must be true or false, got {value!r}"))
        else:
            errors.append((field, f"unknown SRM option; known: {', '.join(SRM_OPTIONS)}"))
    return spec, errors
