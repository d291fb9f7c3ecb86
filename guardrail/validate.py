"""`guardrail validate PATH...`: check flag files in CI before flagd (or guardrail) meets them.

It reports what the real flagd evaluator would refuse (non-scalar metadata, such as a nested
`guardrails` list; the legacy `fractionalEvaluation` operator; mixed variant types: flagd_compat.py),
every problem config.parse_flag finds in the guardrail metadata, and a few things that are legal but
probably wrong (an expired flag, a threshold below day-to-day noise). Each finding names file, flag,
field and line.
Exit code: 0 no errors (warnings alone still 0), 1 some error, 2 some file could not be read or parsed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from guardrail import config, files
from guardrail.flagd_compat import flagd_findings, metadata_findings
from guardrail.model import Flag, GuardrailError, Method, MetricKind, Severity
from guardrail.rules import GuardrailRules

# Below this relative change, day-to-day variation between two arms of one population already fires a
# fixed-threshold rule (simulated A/A: 100 % of runs halted at 10 % with short windows; docs/statistics.md).
NOISE_FLOOR = 0.005
EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNREADABLE = 0, 1, 2


@dataclass(frozen=True)
class Layers:
    """What the config file adds under each flag's metadata: `defaults:` and the `guardrails:` patterns."""

    defaults: Mapping[str, Any] | None = None
    rules: GuardrailRules | None = None


@dataclass(frozen=True)
class Finding:
    path: str
    flag: str | None
    field: str | None
    line: int | None
    severity: Severity  # error | warning | note (information, e.g. the per-comparison alpha)
    message: str

    @property
    def text(self) -> str:
        place = " ".join(p for p in (self.flag and f"flag {self.flag}", self.field and f"field {self.field}") if p)
        return f"{place}: {self.message}" if place else self.message


# ---- line numbers -------------------------------------------------------------------------------------


def _round_trip_tree(text: str) -> Any:
    """The document with ruamel's line info, or None (line numbers are a courtesy, never a failure)."""
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.allow_duplicate_keys = True  # reported separately, with both lines
    try:
        return rt.load(text)
    except Exception:  # any ruamel failure just means no line numbers
        return None


def _field_line(node: Any, field: str) -> int | None:
    """1-based line of a dotted field path such as `metadata.guardrail.error_rate.threshold` or
    `metadata.guardrails[1].metric` (keys may themselves contain dots: the longest key wins)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    line, rest = None, field
    while rest and isinstance(node, (CommentedMap, CommentedSeq)):
        if isinstance(node, CommentedSeq):
            match = re.match(r"\[(\d+)\]\.?", rest)
            if not match or int(match.group(1)) >= len(node):
                break
            index = int(match.group(1))
            line, node, rest = node.lc.item(index)[0] + 1, node[index], rest[match.end() :]
            continue
        keys = [k for k in node if rest == str(k) or rest.startswith((f"{k}.", f"{k}["))]
        if not keys:
            # `metadata.guardrail.error_rate` names a group of flat keys: point at the first of them.
            group = [k for k in node if str(k).startswith(f"{rest}.")]
            return node.lc.key(group[0])[0] + 1 if group else line
        key = max(keys, key=lambda k: len(str(k)))
        line, node, rest = node.lc.key(key)[0] + 1, node[key], rest[len(str(key)) :].lstrip(".")
    return line


def _duplicate_keys(text: str) -> Iterator[tuple[list[str], str, int]]:
    """(path, key, line) of every mapping key written twice; PyYAML and json.loads keep only the last,
    flagd's YAML reader refuses the file. The text already passed the bounded loader."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return
    stack: list[tuple[Any, list[str]]] = [(root, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(getattr(key_node, "value", ""))
                if key in seen:
                    yield path, key, key_node.start_mark.line + 1
                seen.add(key)
                stack.append((value_node, [*path, key]))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, path) for item in node.value)


# ---- checks of one flag -------------------------------------------------------------------------------


def _expiry_finding(value: Any, today: date) -> str | None:
    try:
        expires = value if isinstance(value, date) else config.parse_time(value).date()
    except (ValueError, OverflowError):
        try:
            expires = date.fromisoformat(str(value))
        except ValueError:
            return f"not a date: {value!r} (write YYYY-MM-DD)"
    if isinstance(expires, datetime):
        expires = expires.date()
    if expires < today:
        return f"expired on {expires.isoformat()}: remove the flag (and its code) or extend `expiry`"
    return None


# `guardrail simulate --method threshold` on textbook traffic (500 events/min/arm, 1 % errors, relative
# threshold 0.10, looks every 2 minutes, 200 experiments × 14 days): the share of A/A experiments halted.
THRESHOLD_AA_HALTS = "100 %"
SIMULATE_COMMAND = "guardrail simulate --method threshold --method sequential"


def _guardrail_warnings(metadata: Mapping[str, Any], flag: Flag, layers: Layers) -> Iterator[tuple[str, Severity, str]]:
    """(field, severity, message): threshold-rule risks, and each sequential comparison's share of alpha."""
    from guardrail import judge

    fields = config.merge_guardrails(flag.key, metadata, rules=layers.rules, defaults=layers.defaults).fields
    for index, g in enumerate(flag.guardrails):
        base = fields.get(f"guardrails/{index}", f"metadata.guardrail.{g.metric}")
        if g.comparison.relative and g.threshold < NOISE_FLOOR and g.method is not Method.SEQUENTIAL:
            yield (
                fields.get(f"guardrails/{index}/threshold", f"{base}.threshold"),
                Severity.WARNING,
                (
                    f"relative threshold {g.threshold:g} is below typical day-to-day noise; it will fire on "
                    "noise unless the sequential method is used"
                ),
            )
        if g.method is Method.THRESHOLD:
            why = (
                (
                    "a quantile has no variance for the sequential test; guard the share of events above a "
                    "bucket boundary (kind: proportion) to get one"
                )
                if g.kind is MetricKind.QUANTILE
                else ("remove `method: threshold` to use the default always-valid sequential test")
            )
            yield (
                fields.get(f"guardrails/{index}/method", f"{base}.method"),
                Severity.WARNING,
                (
                    f"method threshold compares a {g.window} window's point estimate with the threshold and has "
                    f"no error control: it halted {THRESHOLD_AA_HALTS} of healthy A/A experiments within 14 "
                    f"days in `{SIMULATE_COMMAND}`; {why}"
                ),
            )
        elif g.kind is not MetricKind.QUANTILE and (k := judge.comparisons(flag)) > 1:
            yield (
                base,
                Severity.NOTE,
                (
                    f"sequential test at alpha {judge.comparison_alpha(flag, g):.4g} per comparison ({g.alpha:g} "
                    f"for the flag split over {k} comparison(s): sequential guardrails × treatment arms)"
                ),
            )
        if flag.ramp is not None and (g.kind is MetricKind.QUANTILE or g.method is not Method.SEQUENTIAL):
            why = (
                "a quantile metric has no sequential test"
                if g.kind is MetricKind.QUANTILE
                else ("it uses the threshold rule")
            )
            yield (
                base,
                Severity.WARNING,
                f"ramp: {why}, so this guardrail can block an advance only through its threshold rule; it can "
                "neither prove harm nor prove safety (advance: proven_safe ignores it)",
            )


# ---- files --------------------------------------------------------------------------------------------


def _validate_flag(
    key: str, definition: Any, *, source: str, line: int | None, tree: Any, today: date, layers: Layers
) -> list[Finding]:
    out: list[Finding] = []

    def add(field: str | None, message: str, severity: Severity = Severity.ERROR) -> None:
        where = _field_line(tree, field) if field and tree is not None else None
        out.append(Finding(source, key, field, where or line, severity, message))

    if not isinstance(definition, Mapping):
        add(None, "flag definition must be a mapping")
        return out
    for field, message in flagd_findings(definition):
        add(field, message)
    metadata = definition.get("metadata")
    if isinstance(metadata, Mapping):
        for field, message in metadata_findings(metadata, "metadata"):
            add(field, message)
        if "expiry" in metadata and (expired := _expiry_finding(metadata["expiry"], today)):
            add("metadata.expiry", expired, Severity.WARNING)
    flag, problems = config.parse_flag(
        key, definition, source=source, line=line, defaults=layers.defaults, rules=layers.rules
    )
    for problem in problems:
        add(problem.field, problem.message, problem.severity)
    if flag is not None and isinstance(metadata, Mapping):
        for field, severity, message in _guardrail_warnings(metadata, flag, layers):
            add(field, message, severity)
    return out


def validate_text(
    text: str, *, source: str, today: date, json_format: bool = False, layers: Layers | None = None
) -> list[Finding]:
    """Findings of one flag file's text; GuardrailError when it cannot be parsed at all."""
    layers = layers or Layers()
    doc = files.parse_text(text, source=source, json_only=json_format)
    tree = _round_trip_tree(text)
    key_lines = files.flag_key_lines(text)
    findings: list[Finding] = []
    for path, key, line in _duplicate_keys(text):
        flag = path[1] if len(path) > 1 and path[0] == "flags" else (key if path == ["flags"] else None)
        field = ".".join([*path[2:], key]) if flag and path != ["flags"] else None
        findings.append(Finding(source, flag, field, line, Severity.ERROR, f"key {key!r} is written twice"))
    flags = doc.get("flags") if isinstance(doc, Mapping) else None
    if not isinstance(flags, Mapping):
        return [*findings, Finding(source, None, "flags", None, Severity.ERROR, "no top-level `flags` mapping")]
    top_metadata = doc.get("metadata")
    if top_metadata is not None and not isinstance(top_metadata, Mapping):
        findings.append(Finding(source, None, "metadata", None, Severity.ERROR, "must be a mapping"))
    elif isinstance(top_metadata, Mapping):
        for field, message in metadata_findings(top_metadata, "metadata"):
            where = _field_line(tree, field) if tree is not None else None
            findings.append(Finding(source, None, field, where, Severity.ERROR, message))
    flags_tree = tree.get("flags") if isinstance(tree, Mapping) else None
    for key, definition in flags.items():
        if not isinstance(key, str) or not key:
            findings.append(
                Finding(source, str(key), None, None, Severity.ERROR, "flag key must be a non-empty string")
            )
            continue
        sub = flags_tree.get(key) if isinstance(flags_tree, Mapping) else None
        findings += _validate_flag(
            key, definition, source=source, line=key_lines.get(key), tree=sub, today=today, layers=layers
        )
    return list(dict.fromkeys(findings))  # one message per place, even when two checks agree


def validate_paths(paths: Sequence[Path], *, today: date, layers: Layers | None = None) -> tuple[list[Finding], int]:
    findings: list[Finding] = []
    unreadable = False
    for path in paths:
        try:
            text = files.read_text(path)
            findings += validate_text(
                text, source=str(path), today=today, json_format=path.suffix.lower() == ".json", layers=layers
            )
        except GuardrailError as exc:
            unreadable = True
            findings.append(Finding(str(path), exc.flag, exc.field, exc.line, Severity.ERROR, exc.message))
    if unreadable:
        return findings, EXIT_UNREADABLE
    return findings, EXIT_FINDINGS if any(f.severity == Severity.ERROR for f in findings) else EXIT_CLEAN


def explain_paths(paths: Sequence[Path], layers: Layers) -> str:
    """Every flag's guardrails after the config's `guardrails:` and `defaults:` are merged in, with where
    each value came from; unreadable files are left to the findings."""
    from guardrail.rules import describe

    out = []
    for path in paths:
        try:
            doc = files.parse_text(files.read_text(path), source=str(path), json_only=path.suffix.lower() == ".json")
        except GuardrailError:
            continue
        flags = doc.get("flags") if isinstance(doc, Mapping) else None
        for key, definition in (flags or {}).items() if isinstance(flags, Mapping) else ():
            metadata = definition.get("metadata") if isinstance(definition, Mapping) else None
            merged = config.merge_guardrails(
                str(key),
                metadata if isinstance(metadata, Mapping) else {},
                rules=layers.rules,
                defaults=layers.defaults,
            )
            if not merged.guardrails:
                continue
            patterns = f" (config patterns: {', '.join(merged.patterns)})" if merged.patterns else ""
            out += [f"{path}: flag {key}{patterns}", *describe(merged)]
    return "\n".join(["merged guardrails (value (where it came from)):", *out]) if out else ""


# ---- output -------------------------------------------------------------------------------------------


def render_text(findings: Sequence[Finding]) -> str:
    ordered = sorted(findings, key=lambda f: (f.path, f.line or 0))
    lines = [f"{f.path}{f':{f.line}' if f.line else ''}: {f.severity}: {f.text}" for f in ordered]
    errors = sum(f.severity == Severity.ERROR for f in findings)
    warnings = sum(f.severity == Severity.WARNING for f in findings)
    lines.append(f"{errors} error(s), {warnings} warning(s)" if errors or warnings else "no problems found")
    return "\n".join(lines)


def _escape_data(text: str) -> str:
    # https://github.com/actions/toolkit/blob/main/packages/core/src/command.ts (escapeData)
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(findings: Sequence[Finding]) -> str:
    """GitHub Actions workflow commands: each finding becomes an annotation on the pull request."""
    out = []
    for f in sorted(findings, key=lambda f: (f.path, f.line or 0)):
        props = [f"file={_escape_property(f.path)}"]
        if f.line:
            props.append(f"line={f.line}")
        props.append("title=guardrail")
        command = {Severity.ERROR: "error", Severity.NOTE: "notice"}.get(f.severity, "warning")
        out.append(f"::{command} {','.join(props)}::{_escape_data(f.text)}")
    return "\n".join(out)
