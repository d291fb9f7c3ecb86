"""Guardrails declared beside the flags: the config file's `guardrails:` section, keyed by flag key or glob.

Some flag systems cannot carry guardrail metadata (a flag server whose metadata is fixed, a team that does
not want monitoring settings in the flag file). The config file can then declare them, with the same
options as flag metadata:

    guardrails:
      "checkout.*":                      # fnmatch glob, or an exact flag key
        experiment_type: ab              # flag-level options, as in metadata
        min_count: 500                   # a guardrail option with no metric: every guardrail of the flag
        error_rate:                      # per metric, nested (recommended) ...
          comparison: relative_increase
          threshold: 0.01
        p95_latency_ms.threshold: 0.10   # ... or flat <metric>.<option> (a `guardrail.` prefix is allowed)

Precedence, option by option (documented in docs/guardrails-in-config.md): the flag's own metadata (its
`guardrail.<metric>.<option>`, then its `guardrail.<option>`) > the most specific matching pattern (an exact
key, then the pattern with the most literal characters, then the longer one, then the one written first);
within one pattern the metric's own option beats the pattern-wide option > the config's `defaults:` >
built-in defaults. Everything here is pure: dicts in, dicts out.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guardrail.model import GuardrailError
from guardrail.ramp_config import RAMP_OPTIONS, SRM_OPTIONS

FLAG_OPTIONS = ("experiment_type", "started_at", "warmup_minutes", "control_variant", "treatment_variants")
# Option groups that are not metrics: a ramp schedule and the SRM check (guardrail/ramp_config.py).
SCHEDULE_GROUPS = {"ramp": RAMP_OPTIONS, "srm": SRM_OPTIONS}
FROM_FLAG = "flag metadata"
FROM_DEFAULTS = "config defaults"
_GLOB = set("*?[")


def _options() -> tuple[str, ...]:
    from guardrail.options import GUARDRAIL_OPTIONS

    return GUARDRAIL_OPTIONS


def _safe(value: Any) -> Any:
    from guardrail.options import json_safe

    return json_safe(value)


@dataclass(frozen=True)
class Rule:
    pattern: str
    order: int  # position in the config file
    flag_options: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # options for every guardrail of the flag
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Ramp and SRM options, as the metadata keys they stand for (`guardrail.ramp.steps`): ramp_config reads them.
    schedule: Mapping[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return not (_GLOB & set(self.pattern))

    @property
    def specificity(self) -> tuple[bool, int, int, int]:
        literal = sum(1 for ch in self.pattern if ch not in _GLOB)
        return self.exact, literal, len(self.pattern), -self.order

    @property
    def origin(self) -> str:
        return f"config guardrails[{json.dumps(self.pattern)}]"

    def matches(self, key: str) -> bool:
        return key == self.pattern if self.exact else fnmatch.fnmatchcase(key, self.pattern)


@dataclass(frozen=True)
class GuardrailRules:
    source: str  # the config file, for messages
    rules: tuple[Rule, ...] = ()

    def matching(self, key: str) -> list[Rule]:
        """The rules that apply to a flag, most specific first."""
        return sorted((r for r in self.rules if r.matches(key)), key=lambda r: r.specificity, reverse=True)


# ---- reading the section -----------------------------------------------------------------------------------


def _place(pattern: str, *rest: str) -> str:
    return ".".join([f"guardrails.{json.dumps(pattern)}", *rest])


def _rule(pattern: str, order: int, body: Mapping[str, Any], source: str) -> Rule:
    options = _options()
    flag_options: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    metrics: dict[str, dict[str, Any]] = {}
    schedule: dict[str, Any] = {}
    for raw_key, value in body.items():
        key = str(raw_key).removeprefix("guardrail.")
        if not key:
            raise GuardrailError("empty key", source=source, field=_place(pattern))
        group = key.split(".", 1)[0]
        if group in SCHEDULE_GROUPS:  # ramp: {steps: ...} or ramp.steps: ... (a ramp schedule, SRM options)
            items = value.items() if isinstance(value, Mapping) and "." not in key else [(key.split(".", 1)[-1], value)]
            for option, option_value in items:
                if "." not in key and not isinstance(value, Mapping):
                    raise GuardrailError(
                        f"write `{group}: {{option: value}}` or `{group}.<option>: value`",
                        source=source,
                        field=_place(pattern, str(raw_key)),
                    )
                if str(option) not in SCHEDULE_GROUPS[group]:
                    raise GuardrailError(
                        f"unknown {group} option {option!r}; known: {', '.join(SCHEDULE_GROUPS[group])}",
                        source=source,
                        field=_place(pattern, group, str(option)),
                    )
                schedule[f"guardrail.{group}.{option}"] = _safe(option_value)
            continue
        if key in FLAG_OPTIONS and raw_key == key:
            flag_options[key] = _safe(value)
        elif isinstance(value, Mapping):  # error_rate: {threshold: ..., comparison: ...}
            for option, option_value in value.items():
                metrics.setdefault(key, {})[str(option)] = _safe(option_value)
        elif "." in key:  # error_rate.threshold: 0.01
            metric, option = key.rsplit(".", 1)
            metrics.setdefault(metric, {})[option] = _safe(value)
        elif key in options:  # min_count: 500, for every guardrail of the flag
            defaults[key] = _safe(value)
        else:
            raise GuardrailError(
                f"unknown option {key!r}: write a metric's options as `{key}: {{threshold: ..., comparison: ...}}` "
                f"or `{key}.threshold: ...`; flag options are {', '.join(FLAG_OPTIONS)}; guardrail options are "
                f"{', '.join(options)}",
                source=source,
                field=_place(pattern, str(raw_key)),
            )
    rule = Rule(pattern, order, flag_options, defaults, metrics, schedule)
    _check(rule, source)
    return rule


def _check(rule: Rule, source: str) -> None:
    """Types and ranges through the same JSON Schema as flag metadata. A metric may miss `comparison` or
    `threshold` here: the flag's metadata or another pattern can supply them (checked after the merge)."""
    from guardrail.options import schema_errors

    names = list(rule.metrics)
    document: dict[str, Any] = {**rule.flag_options, "guardrails": [{"metric": m, **rule.metrics[m]} for m in names]}
    if rule.defaults:
        document["defaults"] = dict(rule.defaults)
    fields = {f"defaults/{o}": _place(rule.pattern, o) for o in rule.defaults}
    for index, metric in enumerate(names):
        fields[f"guardrails/{index}"] = _place(rule.pattern, metric)
        fields[f"guardrails/{index}/metric"] = _place(rule.pattern, metric)
        for option in rule.metrics[metric]:
            fields[f"guardrails/{index}/{option}"] = _place(rule.pattern, metric, option)
    for name in rule.flag_options:
        fields[name] = _place(rule.pattern, name)
    for place, message in schema_errors(document, fields):
        if "is a required property" in message:
            continue
        if place.startswith("metadata"):  # a path the map does not know: name the pattern at least
            place = _place(rule.pattern)
        raise GuardrailError(message, source=source, field=place)


def parse_rules(section: Any, *, source: str) -> GuardrailRules:
    """The `guardrails:` section; GuardrailError naming the config file and field on any mistake."""
    if section is None:
        return GuardrailRules(source)
    if not isinstance(section, Mapping):
        raise GuardrailError(
            "must be a mapping of flag key or glob pattern to guardrail options", source=source, field="guardrails"
        )
    rules = []
    for order, (pattern, body) in enumerate(section.items()):
        if not isinstance(pattern, str) or not pattern.strip():
            raise GuardrailError("a pattern must be a non-empty string", source=source, field=f"guardrails.{pattern}")
        if not isinstance(body, Mapping):
            raise GuardrailError("must be a mapping of options", source=source, field=_place(pattern))
        rules.append(_rule(pattern, order, body, source))
    return GuardrailRules(source, tuple(rules))


# ---- merging with one flag's metadata ----------------------------------------------------------------------


@dataclass(frozen=True)
class Merged:
    """One flag's guardrail options after the merge, with where each value came from."""

    flag_options: dict[str, Any]  # experiment_type, started_at, ... (metadata, else a pattern)
    schedule: dict[str, Any]  # guardrail.ramp.* / guardrail.srm.* keys from patterns the metadata lacks
    guardrails: list[dict[str, Any]]  # per metric: `metric` and every option set anywhere
    origins: dict[str, str]  # "experiment_type", "error_rate.threshold" -> FROM_FLAG | a rule's origin | ...
    fields: dict[str, str]  # schema path -> the field as written, for error messages
    patterns: tuple[str, ...] = ()  # the patterns that apply, most specific first
    from_config_only: bool = False  # every guardrail comes from a pattern (none in the flag's metadata)


def merge(
    metadata: Mapping[str, Any],
    gathered: list[dict[str, Any]],
    flag_defaults: Mapping[str, Any],
    fields: Mapping[str, str],
    *,
    key: str,
    rules: GuardrailRules | None,
    defaults: Mapping[str, Any] | None,
) -> Merged:
    """Layer config patterns and `defaults:` under a flag's own guardrail metadata, option by option.

    `gathered`, `flag_defaults` and `fields` are options.gather_guardrail_options' view of the metadata.
    """
    applied = rules.matching(key) if rules is not None else []
    origins: dict[str, str] = {}
    flag_options: dict[str, Any] = {}
    for name in FLAG_OPTIONS:
        if name in metadata:
            flag_options[name], origins[name] = _safe(metadata[name]), FROM_FLAG
            continue
        for rule in applied:
            if name in rule.flag_options:
                flag_options[name], origins[name] = rule.flag_options[name], rule.origin
                break

    schedule: dict[str, Any] = {}
    for rule in reversed(applied):  # least specific first, so the most specific is written last
        for name, value in rule.schedule.items():
            if name not in metadata:
                schedule[name] = value
                origins[name.removeprefix("guardrail.")] = rule.origin
    for name in metadata:
        if isinstance(name, str) and name.startswith(tuple(f"guardrail.{g}." for g in SCHEDULE_GROUPS)):
            origins[name.removeprefix("guardrail.")] = FROM_FLAG

    own = {str(g["metric"]): g for g in gathered if isinstance(g.get("metric"), str)}
    order = list(own) + [m for rule in applied for m in rule.metrics if m not in own]
    order = list(dict.fromkeys(order))
    merged_fields = dict(fields)
    out: list[dict[str, Any]] = []
    for index, metric in enumerate(order):
        values: dict[str, Any] = {"metric": metric}
        where: dict[str, tuple[str, str]] = {}  # option -> (origin, field)
        for option, value in (defaults or {}).items():
            values[option], where[option] = value, (FROM_DEFAULTS, f"defaults.{option}")
        for rule in reversed(applied):  # least specific first, so the most specific is written last
            for option, value in rule.defaults.items():
                values[option], where[option] = value, (rule.origin, _place(rule.pattern, option))
            for option, value in rule.metrics.get(metric, {}).items():
                values[option], where[option] = value, (rule.origin, _place(rule.pattern, metric, option))
        for option, value in flag_defaults.items():
            values[option], where[option] = value, (FROM_FLAG, f"metadata.guardrail.{option}")
        for option, value in own.get(metric, {}).items():
            if option != "metric":
                values[option], where[option] = value, (FROM_FLAG, "")
        for option, (origin, place) in where.items():
            origins[f"{metric}.{option}"] = origin
            path = f"guardrails/{index}/{option}"
            if origin != FROM_FLAG:
                merged_fields[path] = f"{place} in {_source(rules)}"
            elif place:  # the flag's guardrail.<option>; its own guardrail.<metric>.<option> is mapped already
                merged_fields.setdefault(path, place)
        if metric not in own:
            rule = next(r for r in applied if metric in r.metrics)
            merged_fields[f"guardrails/{index}"] = f"{_place(rule.pattern, metric)} in {_source(rules)}"
        out.append(values)
    return Merged(
        flag_options=flag_options,
        schedule=schedule,
        guardrails=out,
        origins=origins,
        fields=merged_fields,
        patterns=tuple(r.pattern for r in applied),
        from_config_only=bool(out) and not own and not any(r.exact for r in applied),
    )


def _source(rules: GuardrailRules | None) -> str:
    return rules.source if rules is not None else "the config file"


def describe(merged: Merged) -> list[str]:
    """Text lines: every merged value and where it came from (for `guardrail validate --config`)."""
    lines = []
    flag_level = [f"{k}={merged.flag_options[k]} ({merged.origins[k]})" for k in merged.flag_options]
    flag_level += [f"{k}={v} ({merged.origins[k.removeprefix('guardrail.')]})" for k, v in merged.schedule.items()]
    if flag_level:
        lines.append("    " + ", ".join(flag_level))
    for g in merged.guardrails:
        metric = g["metric"]
        parts = [f"{o}={g[o]} ({merged.origins.get(f'{metric}.{o}', FROM_FLAG)})" for o in g if o != "metric"]
        lines.append(f"    {metric}: " + ", ".join(parts))
    return lines
