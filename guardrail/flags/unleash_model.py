"""Pure parts of the Unleash backend: Unleash features (as the admin API shows them) translated into
guardrail's flag model, and strategy variants computed for a halt or a ramp step.

No I/O here: guardrail/flags/unleash.py fetches and writes. An Unleash feature becomes the same
flagd-shaped definition every other backend produces, so config.parse_flag validates it exactly as it
validates a flag file:

- Guardrail options are tags of type `guardrail` whose value is a flat metadata key without its
  `guardrail.` prefix, `=`, and the value: `error_rate.threshold=0.10` becomes metadata
  `guardrail.error_rate.threshold: 0.1`; flag-wide keys (`experiment_type=ab`, `started_at=...`,
  `warmup_minutes=30`, `control_variant=...`, `treatment_variants=...`) keep their plain name. Unleash
  limits a tag value to 2-50 characters, which every option fits.
- Two tag options belong to this backend: `hold=true` (the rollout is held; the open-source edition has
  no native hold) and `on_halt=off|control` (how an experiment is halted, see unleash.py).
- The guarded strategy is the one enabled `flexibleRollout` strategy of the environment. With strategy
  variants (an A/B experiment) the variants are the flag's variants and their weights (out of 1000) its
  split; without variants (a plain rollout, `experiment_type=rollout` only) users inside
  `parameters.rollout` percent are `treatment` and the others `control`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from guardrail.config import parse_flag
from guardrail.flags.unleash_strategy import (
    ROLLOUT_VARIANTS,
    Feature,
    guarded_strategy,
    rollout_percent,
    variant_weights,
)
from guardrail.model import FlagProblem, Severity
from guardrail.options import FLAT_PREFIX

__all__ = ["Feature", "read_options", "to_definition"]

TAG_TYPE = "guardrail"
HOLD_TAG = "hold=true"
FLAG_KEYS = frozenset({"experiment_type", "started_at", "warmup_minutes", "control_variant", "treatment_variants"})
BACKEND_KEYS = frozenset({"hold", "on_halt"})
ON_HALT = ("off", "control")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Options:
    metadata: dict[str, Any] = field(default_factory=dict)
    places: dict[str, str] = field(default_factory=dict)  # metadata key -> the tag the user wrote
    hold: bool = False
    on_halt: str = "off"
    problems: tuple[tuple[str, str], ...] = ()  # (field, message)

    @property
    def guarded(self) -> bool:
        return any(k.startswith(FLAT_PREFIX) or k == "guardrails" for k in self.metadata)


def tag_place(value: str) -> str:
    return f"tag {TAG_TYPE}:{value}"


def typed(text: str) -> Any:
    """A tag value is text; flag files hold numbers and booleans as such, and the schema wants them so."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _NUMBER.match(text.strip()):
        number = float(text)
        return int(number) if number.is_integer() and "." not in text and "e" not in lowered else number
    return text.strip()


def read_options(tags: Iterable[str]) -> Options:
    """`guardrail` tag values to the flat metadata a flagd file would hold."""
    metadata: dict[str, Any] = {}
    places: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    hold = False
    on_halt = "off"
    for value in sorted(tags):
        key, sep, raw = value.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            problems.append((tag_place(value), "must be OPTION=VALUE, e.g. error_rate.threshold=0.10"))
            continue
        if key.startswith(FLAT_PREFIX):
            key = key[len(FLAT_PREFIX) :]  # `guardrail.` typed twice (the tag type already says it)
        if key == "hold":
            if typed(raw) is True:
                hold = True
            elif typed(raw) is not False:
                problems.append((tag_place(value), "must be hold=true (or remove the tag to resume)"))
            continue
        if key == "on_halt":
            if raw.strip() not in ON_HALT:
                problems.append((tag_place(value), f"must be one of {', '.join(ON_HALT)}"))
            else:
                on_halt = raw.strip()
            continue
        meta_key = key if key in FLAG_KEYS else FLAT_PREFIX + key
        if meta_key in metadata and metadata[meta_key] != typed(raw):
            problems.append((tag_place(value), f"conflicts with tag {places[meta_key]!r}: one value per option"))
            continue
        metadata[meta_key] = typed(raw)
        places[meta_key] = f"{TAG_TYPE}:{value}"
    return Options(metadata, places, hold, on_halt, tuple(problems))


def to_definition(feature: Feature, environment: str, source: str) -> tuple[dict[str, Any] | None, list[FlagProblem]]:
    """One feature to a flagd-shaped definition, or the problems that keep it from being guarded.

    A feature with no guardrail options is listed (unguarded) whatever its strategies. A guarded feature
    that is off in the environment is listed as off, its problems as warnings: nothing runs there yet,
    but the problems must be fixed before it is switched on."""
    options = read_options(feature.tags)
    definition, problems = _definition(feature, options, environment, source)
    if not problems or feature.enabled:
        return definition, problems
    off = {
        "state": "DISABLED",
        "variants": {"control": False, "treatment": True},
        "defaultVariant": "control",
        "metadata": definition_metadata(feature, options, environment),
    }
    note = f" (the flag is off in {environment}: fix this before switching it on)"
    return off, [replace(p, severity=Severity.WARNING, message=p.message + note) for p in problems]


def definition_metadata(feature: Feature, options: Options, environment: str) -> dict[str, Any]:
    """What this backend adds to every definition; not guardrail options (config.parse_flag ignores them)."""
    return {
        "guardrail_hold": options.hold,
        "unleash.project": feature.project,
        "unleash.environment": environment,
        "unleash.on_halt": options.on_halt,
    }


def _definition(
    feature: Feature, options: Options, environment: str, source: str
) -> tuple[dict[str, Any] | None, list[FlagProblem]]:
    def problem(where: str, message: str) -> FlagProblem:
        return FlagProblem(feature.name, message, source=source, field=where)

    problems = [problem(f, m) for f, m in options.problems]
    metadata: dict[str, Any] = {**options.metadata, **definition_metadata(feature, options, environment)}
    state = "ENABLED" if feature.enabled else "DISABLED"
    strategies_field = f"environments.{environment}.strategies"
    strategy, why = guarded_strategy(feature, environment)
    if not options.guarded:
        if problems:
            return None, problems
        # Not guarded: listed with whatever split there is, never an error.
        weights, _ = variant_weights(strategy) if strategy is not None else ({}, "")
        plain: dict[str, Any] = {n: n for n in weights} or {"on": True, "off": False}
        return {"state": state, "variants": plain, "defaultVariant": next(iter(plain)), "metadata": metadata}, []
    if not feature.exists_in_environment:
        problems.append(problem("environment", f"the feature is not in environment {environment!r}"))
    if strategy is None:
        return None, [*problems, problem(strategies_field, why)]
    sid = str(strategy.get("id"))
    where = f"{strategies_field}[{sid}]"
    rollout = rollout_percent(strategy)
    if rollout is None:
        params = strategy.get("parameters")
        raw = params.get("rollout") if isinstance(params, Mapping) else None
        problems.append(problem(f"{where}.parameters.rollout", f"must be a whole percent 0-100, got {raw!r}"))
    metadata["unleash.strategy_id"] = sid
    metadata["unleash.rollout"] = rollout
    control = str(options.metadata.get("control_variant", "control"))
    experiment_type = options.metadata.get("experiment_type", "ab")
    if strategy.get("variants"):
        weights, why = variant_weights(strategy)
        if not weights:
            problems.append(problem(f"{where}.variants", why))
        elif control not in weights:
            problems.append(
                problem(
                    f"{where}.variants",
                    f"control variant {control!r} is not one of the strategy variants {sorted(weights)} "
                    f"(name it with a tag {TAG_TYPE}:control_variant=NAME)",
                )
            )
        split = [[name, weight] for name, weight in weights.items()]
        variants: dict[str, Any] = {name: name for name in weights}
    elif experiment_type == "rollout":
        share = rollout or 0
        split = [["treatment", share], ["control", 100 - share]]
        variants = {"treatment": True, "control": False}
        if control not in variants:
            problems.append(
                problem(
                    places_or(options, "control_variant"),
                    f"a rollout without strategy variants has the arms {list(ROLLOUT_VARIANTS)}; got {control!r}",
                )
            )
    else:
        problems.append(
            problem(
                f"{where}.variants",
                "the strategy has no variants: an A/B experiment needs strategy variants (control and treatment), "
                f"or tag {TAG_TYPE}:experiment_type=rollout for a plain rollout",
            )
        )
    if problems:
        return None, problems
    definition: dict[str, Any] = {
        "state": state,
        "variants": variants,
        "defaultVariant": control,
        "targeting": {"fractional": [{"var": "targetingKey"}, *split]},
        "metadata": metadata,
    }
    # Validate here, so a bad option is reported as the tag the user wrote, not as a metadata key.
    _flag, found = parse_flag(feature.name, definition, source=source)
    # A guardrail missing `comparison` or `threshold` here may be completed by the config file's `guardrails:`
    # section (docs/guardrails-in-config.md); the run's own parse, which has the config, reports it otherwise.
    found = [p for p in found if "is a required property" not in p.message]
    if found:
        return None, [problem(rename(p.field, p.message, options), p.message) for p in found]
    return definition, []


def places_or(options: Options, key: str) -> str:
    return tag_place(options.places[key].split(":", 1)[1]) if key in options.places else f"tag {TAG_TYPE}:{key}"


def rename(place: str | None, message: str, options: Options) -> str:
    """metadata.guardrail.error_rate.thresh -> tag guardrail:error_rate.thresh=0.1 (what the user wrote)."""
    if not place:
        return "tags"
    key = place.removeprefix("metadata.")
    unexpected = re.search(r"'([^']+)' was unexpected", message)  # jsonschema's additionalProperties text
    if unexpected and f"{key}.{unexpected.group(1)}" in options.places:
        key = f"{key}.{unexpected.group(1)}"
    if key in options.places:
        return "tag " + options.places[key]
    for meta_key, written in options.places.items():  # e.g. a guardrail missing an option: name its metric
        if meta_key.startswith(key + "."):
            return f"tags {TAG_TYPE}:{key.removeprefix(FLAT_PREFIX)}.* (e.g. {written})"
    return place


def guardrail_tags(tags: Any) -> tuple[str, ...]:
    """Values of the `guardrail` tags in a `[{"type", "value"}]` list (the project listing's and
    /tags' shape); anything else is ignored."""
    if not isinstance(tags, list):
        return ()
    return tuple(
        str(t["value"])
        for t in tags
        if isinstance(t, Mapping) and t.get("type") == TAG_TYPE and isinstance(t.get("value"), str)
    )


def listed_feature(item: Mapping[str, Any], project: str, environment: str) -> Feature:
    """A feature from the project listing, without strategies (enough for an unguarded flag)."""
    envs = item.get("environments")
    here = (
        [e for e in envs if isinstance(e, Mapping) and e.get("name") == environment] if isinstance(envs, list) else []
    )
    return Feature(
        name=str(item.get("name")),
        project=project,
        enabled=bool(here) and here[0].get("enabled") is True,
        strategies=(),
        tags=guardrail_tags(item.get("tags")),
        exists_in_environment=bool(here),
    )


def detailed_feature(detail: Any, tags: tuple[str, ...], environment: str) -> tuple[Feature | None, str]:
    """`GET /api/admin/projects/{p}/features/{f}` to a Feature, or None and what is wrong with its shape."""
    if not isinstance(detail, Mapping) or not isinstance(detail.get("name"), str):
        return None, "the feature answer is not an object with a `name`"
    envs = detail.get("environments")
    if not isinstance(envs, list) or not all(isinstance(e, Mapping) for e in envs):
        return None, "the feature answer's `environments` is not a list of objects"
    here = [e for e in envs if e.get("name") == environment]
    strategies = here[0].get("strategies", []) if here else []
    if not isinstance(strategies, list) or not all(isinstance(s, Mapping) for s in strategies):
        return None, f"the feature answer's `environments[{environment}].strategies` is not a list of objects"
    ordered = sorted(strategies, key=lambda s: s.get("sortOrder") if isinstance(s.get("sortOrder"), int) else 0)
    return Feature(
        name=detail["name"],
        project=str(detail.get("project", "")),
        enabled=bool(here) and here[0].get("enabled") is True,
        strategies=tuple(ordered),
        tags=tags,
        exists_in_environment=bool(here),
    ), ""
