"""Pure translation of flag definitions (plain dicts) into the domain model.

A flag's guardrail options, in either metadata spelling (docs/guardrails.md), are gathered into one shape
and validated against the JSON Schema shipped in guardrail/schemas/ (guardrail/options.py), then turned
into frozen dataclasses. One bad flag yields FlagProblems naming the place; the other flags are unaffected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from guardrail import ramp_config
from guardrail.codec import format_time as format_time
from guardrail.codec import parse_time as parse_time
from guardrail.model import (
    DEFAULT_CONFIRMATIONS,
    SEQUENTIAL_CONFIRMATIONS,
    Comparison,
    ExperimentType,
    Flag,
    FlagProblem,
    Guardrail,
    Method,
    MetricKind,
    Severity,
)
from guardrail.options import gather_guardrail_options, schema_errors
from guardrail.split import read_split

if TYPE_CHECKING:
    from guardrail.rules import GuardrailRules, Merged

# Fractional split operators: `fractional` is flagd's name today; `fractionalEvaluation` is the legacy one
# older files use (flagd's evaluator no longer knows it; `guardrail validate` reports it).
FRACTIONAL_OPS = ("fractional", "fractionalEvaluation")


@dataclass(frozen=True)
class ParsedFlags:
    flags: tuple[Flag, ...]
    problems: tuple[FlagProblem, ...]

    @property
    def errors(self) -> tuple[FlagProblem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")


def infer_kind(metric: str) -> MetricKind:
    """Guess a metric's kind from its name when `kind` is not given (documented in docs/guardrails.md)."""
    name = metric.lower()
    if re.search(r"(^|_)p\d{2,3}(_|$)", name) or "quantile" in name or "percentile" in name:
        return MetricKind.QUANTILE
    if name.endswith(("_rate", "_ratio", "_fraction", "_share")) or name in ("errors", "error_rate"):
        return MetricKind.PROPORTION
    return MetricKind.MEAN


def window_minutes(window: str) -> float:
    """A window such as `5m`, `2h` or `30s`, in minutes (the SQL source turns it into a time range)."""
    unit = window[-1]
    number = float(window[:-1])
    return number * {"s": 1 / 60, "m": 1.0, "h": 60.0, "d": 1440.0}[unit]


def fractional_splits(node: Any, depth: int = 0) -> Iterator[tuple[str, list[Any]]]:
    """Yield (operator, arguments) for every fractional split anywhere in a flag's targeting rules."""
    if depth > 50:
        return
    if isinstance(node, Mapping):
        for op, args in node.items():
            if op in FRACTIONAL_OPS and isinstance(args, list):
                yield op, args
            yield from fractional_splits(args, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from fractional_splits(item, depth + 1)


def is_held(definition: Any) -> bool:
    """True when a definition carries `metadata.guardrail_hold` as true (`true` or the string "true", any case).

    The one place this is decided: a rollout held here (or by a person) is never evaluated, held again, or
    resumed while it stays held, whichever backend it lives in.
    """
    metadata = definition.get("metadata") if isinstance(definition, Mapping) else None
    hold = metadata.get("guardrail_hold") if isinstance(metadata, Mapping) else None
    return hold is True or (isinstance(hold, str) and hold.strip().lower() == "true")


def split_variants(definition: Mapping[str, Any]) -> tuple[str, ...]:
    """The variants a fractional split names, in order of first appearance."""
    seen: dict[str, None] = {}
    for _op, args in fractional_splits(definition.get("targeting")):
        for item in args:
            if isinstance(item, list) and item and isinstance(item[0], str):
                seen.setdefault(item[0], None)
    return tuple(seen)


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in text)


def _number_ok(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_flag(
    key: str,
    definition: Any,
    *,
    source: str = "",
    line: int | None = None,
    defaults: Mapping[str, Any] | None = None,
    rules: GuardrailRules | None = None,
) -> tuple[Flag | None, list[FlagProblem]]:
    """One flag definition to a Flag, or the problems that stop it from being watched."""

    def problem(field: str | None, message: str, severity: Severity = Severity.ERROR) -> FlagProblem:
        return FlagProblem(key, message, source=source, field=field, line=line, severity=severity)

    if not isinstance(definition, Mapping):
        return None, [problem(None, "flag definition must be a mapping")]
    state = definition.get("state")
    if state not in ("ENABLED", "DISABLED"):
        return None, [problem("state", f"must be ENABLED or DISABLED, got {state!r}")]
    variants = definition.get("variants")
    if not isinstance(variants, Mapping) or not variants:
        return None, [problem("variants", "must be a non-empty mapping of variant name to value")]
    variant_names = tuple(str(v) for v in variants)
    if any(_has_control(v) for v in variant_names):
        return None, [problem("variants", "a variant name contains control characters (a newline?)")]
    default_variant = definition.get("defaultVariant")
    if not isinstance(default_variant, str) or default_variant not in variants:
        return None, [problem("defaultVariant", f"{default_variant!r} is not one of the variants")]
    metadata = definition.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return None, [problem("metadata", "must be a mapping")]

    merged = merge_guardrails(key, metadata, rules=rules, defaults=defaults)
    warnings: list[FlagProblem] = []
    if merged.from_config_only and _no_control(merged, variants):
        # A glob (say "*") also matches plain feature flags with no control arm: not an experiment to
        # watch, and not an error of the flag either. A flag that splits traffic probably is one, under
        # other variant names: say so. An exact key in the config is meant, so there it stays an error.
        if len(split_variants(definition)) > 1:
            warnings.append(
                problem(
                    None,
                    f"config guardrails {list(merged.patterns)} match and it splits traffic, but it has no "
                    f"control variant {str(merged.flag_options.get('control_variant', 'control'))!r}: not watched "
                    "(add an exact-key entry with control_variant to watch it)",
                    Severity.WARNING,
                )
            )
        merged = merge_guardrails(key, metadata, rules=None, defaults=defaults)
    options = merged.flag_options
    raw_guardrails = merged.guardrails
    document: dict[str, Any] = dict(options)
    document["guardrails"] = raw_guardrails
    _raw, flag_defaults, _fields, errors = gather_guardrail_options(metadata)
    if flag_defaults:
        document["defaults"] = flag_defaults
    errors = list(dict.fromkeys(errors + schema_errors(document, merged.fields)))
    if errors:
        return None, [problem(f, m) for f, m in errors]

    control = str(options.get("control_variant", "control"))
    if control not in variants and not raw_guardrails and "control_variant" not in options:
        control = default_variant  # a plain feature flag, no guardrails: no control arm is needed
    if control not in variants:
        return None, [
            problem("metadata.control_variant", f"control variant {control!r} is not one of {list(variants)}")
        ]
    if "treatment_variants" in options:
        treatments = tuple(t.strip() for t in str(options["treatment_variants"]).split(",") if t.strip())
    else:
        treatments = tuple(v for v in (split_variants(definition) or variant_names) if v != control)
    unknown = [t for t in treatments if t not in variants]
    if unknown:
        # Name the field the variants came from: the user's list, or else the fractional split.
        field = "metadata.treatment_variants" if "treatment_variants" in options else "targeting"
        return None, [problem(field, f"unknown variants {unknown}")]
    listed = "treatment_variants" in options
    if raw_guardrails and (why := treatments_problem(treatments, control, definition, listed)):
        return None, [problem(why[0], why[1])]

    exp_type = options.get("experiment_type", "ab")
    experiment_type = ExperimentType.ROLLOUT if exp_type == "rollout" else ExperimentType.AB
    try:
        started_at = parse_time(options["started_at"]) if "started_at" in options else None
    except (ValueError, OverflowError) as exc:
        return None, [problem("metadata.started_at", f"not an RFC 3339 time: {exc}")]

    guardrails: list[Guardrail] = []
    for options_of in raw_guardrails:
        g = Guardrail(
            metric=options_of["metric"],
            comparison=Comparison(options_of["comparison"]),
            threshold=float(options_of["threshold"]),
        )
        kind = MetricKind(options_of["kind"]) if "kind" in options_of else infer_kind(g.metric)
        # Sequential by default; a quantile has no variance to test, so it keeps the threshold rule unless
        # the user asks for sequential, which is an error (docs/statistics.md: test a bucket share instead).
        default_method = Method.THRESHOLD if kind is MetricKind.QUANTILE else Method.SEQUENTIAL
        method = Method(options_of.get("method", default_method.value))
        if kind is MetricKind.QUANTILE and method is Method.SEQUENTIAL:
            where = merged.fields.get(f"guardrails/{len(guardrails)}/method", f"metadata.guardrail.{g.metric}.method")
            return None, [
                problem(
                    where,
                    "a quantile metric has no variance for the sequential test; guard the "
                    "share of events above a bucket boundary instead (kind: proportion), or use "
                    "method: threshold",
                )
            ]
        # An always-valid test already controls its error: one breaching look halts unless asked otherwise.
        default_confirmations = SEQUENTIAL_CONFIRMATIONS if method is Method.SEQUENTIAL else DEFAULT_CONFIRMATIONS
        g = replace(
            g,
            min_count=int(options_of.get("min_count", g.min_count)),
            confirmations=int(options_of.get("confirmations", default_confirmations)),
            max_gap_minutes=float(options_of.get("max_gap_minutes", g.max_gap_minutes)),
            window=str(options_of.get("window", g.window)),
            method=method,
            alpha=float(options_of.get("alpha", g.alpha)),
            kind=kind,
            tuning_n=float(options_of["tuning_n"]) if "tuning_n" in options_of else None,
            dispersion=float(options_of.get("dispersion", 1.0)),
        )
        guardrails.append(g)

    split = read_split(definition)
    ramp, srm_spec, ramp_errors = ramp_config.parse_ramp(
        {**merged.schedule, **metadata},  # a ramp schedule may come from the config's `guardrails:` too
        experiment_type=experiment_type,
        split=split,
        control=control,
        treatments=treatments,
    )
    if ramp_errors:
        return None, [problem(f, m) for f, m in ramp_errors]

    flag = Flag(
        key=key,
        enabled=state == "ENABLED",
        default_variant=default_variant,
        variants=variant_names,
        control_variant=control,
        treatment_variants=treatments,
        experiment_type=experiment_type,
        guardrails=tuple(guardrails),
        started_at=started_at,
        warmup_minutes=float(options.get("warmup_minutes", 0) or 0),
        held=is_held(definition),
        source=source,
        definition=definition,
        ramp=ramp,
        srm=srm_spec,
        split=split,
    )
    return flag, warnings


def parse_flags(
    definitions: Any,
    *,
    source: str = "",
    lines: Mapping[str, int] | None = None,
    defaults: Mapping[str, Any] | None = None,
    rules: GuardrailRules | None = None,
) -> ParsedFlags:
    """A `{KEY: DEFINITION}` mapping to Flags; every problem names the source, flag and field."""
    if not isinstance(definitions, Mapping):
        return ParsedFlags((), (FlagProblem(None, "`flags` must be a mapping of flag key to definition", source),))
    flags: list[Flag] = []
    problems: list[FlagProblem] = []
    for key, definition in definitions.items():
        if not isinstance(key, str) or not key:
            problems.append(FlagProblem(str(key), "flag key must be a non-empty string", source))
            continue
        if _has_control(key):
            # A newline in a key could forge a line of the report or the cron mail.
            problems.append(
                FlagProblem(
                    key.encode("unicode_escape").decode("ascii"),
                    "flag key contains control characters (a newline?)",
                    source,
                )
            )
            continue
        flag, found = parse_flag(key, definition, source=source, defaults=defaults, rules=rules)
        if found and lines is not None:  # looked up only for a flag with problems: finding lines reads the whole file
            line = lines.get(key)
            found = [replace(p, line=line) if p.line is None else p for p in found]
        problems.extend(found)
        if flag is not None:
            flags.append(flag)
    return ParsedFlags(tuple(flags), tuple(problems))


def merge_guardrails(
    key: str, metadata: Mapping[str, Any], *, rules: GuardrailRules | None, defaults: Mapping[str, Any] | None
) -> Merged:
    """A flag's guardrail options with the config's `guardrails:` patterns and `defaults:` layered under
    its own metadata, and where each value came from (guardrail/rules.py)."""
    from guardrail.rules import merge

    gathered, flag_defaults, fields, _errors = gather_guardrail_options(metadata)
    return merge(metadata, gathered, flag_defaults, fields, key=key, rules=rules, defaults=defaults)


def _no_control(merged: Merged, variants: Mapping[str, Any]) -> bool:
    return str(merged.flag_options.get("control_variant", "control")) not in variants


def fractional_weights(definition: Mapping[str, Any]) -> dict[str, float]:
    """The largest weight each variant gets in any fractional split of the targeting (flagd: a bucket
    without a weight weighs 1)."""
    weights: dict[str, float] = {}

    def walk(node: Any, depth: int) -> None:
        if depth > 50:
            return
        if isinstance(node, Mapping):
            for op, args in node.items():
                if op in FRACTIONAL_OPS and isinstance(args, list):
                    for item in args:
                        if isinstance(item, list) and item and isinstance(item[0], str):
                            w = item[1] if len(item) > 1 and _number_ok(item[1]) else 1
                            weights[item[0]] = max(weights.get(item[0], 0.0), float(w))
                walk(args, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(definition.get("targeting"), 0)
    return weights


def treatments_problem(
    treatments: tuple[str, ...], control: str, definition: Mapping[str, Any], listed: bool
) -> tuple[str, str] | None:
    """(field, message) when the treatments cannot make an experiment: none at all, the control among
    them, one listed twice, or one the split never serves (weight 0). Each would be judged silently
    forever (no comparison, or one of control against itself, or one that never reaches min_count)."""
    field = "metadata.treatment_variants" if listed else "targeting"
    if not treatments:
        return field, (
            "is empty: name the variant(s) to compare with control"
            if listed
            else "no treatment variant besides control: nothing to compare (set treatment_variants)"
        )
    if control in treatments:
        return field, f"names the control variant {control!r}: a variant cannot be compared with itself"
    if len(set(treatments)) != len(treatments):
        return field, f"lists a variant twice: {list(treatments)}"
    weights = fractional_weights(definition)
    zero = [t for t in treatments if weights and weights.get(t, 0.0) <= 0]
    if zero and listed:
        return field, (
            f"names variant(s) {zero} that get weight 0 in the fractional split: they never get "
            "traffic, so they can never be judged"
        )
    return None


def check_number(value: Any) -> bool:
    """Public for validate: a finite, non-boolean number."""
    return _number_ok(value)
