"""Edits of a flagd flag file's text that keep what its author wrote: comments, blank lines, key order,
quoting, indentation, line endings and every other flag.

A halt (or a ramp step, guardrail/flags/flagd_split.py) changes a few values of one flag, and the file is
one people read, review and diff, often in Git; re-rendering the whole document would lose their comments
and reformat flags nobody touched. So YAML goes through ruamel.yaml's round-trip mode, and then only the
lines of the edited flag are spliced into the original text, so every other flag, comment and blank line
stays byte-for-byte what its author wrote, whatever ruamel would have re-rendered. In JSON only the values
the edit changes are replaced, rendered in the file's own indent. Every rewrite is re-parsed with PyYAML
(the parser the OpenFeature Python flagd provider uses) and compared with the intended result before it
may replace the file. Pure text to text: writing the file is guardrail/flags/flagd_file.py's job.
"""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from guardrail import files
from guardrail.model import GuardrailError

Action = Literal["revert", "hold"]
MAX_REASON = 500  # the reason goes into a file people read and diff; the audit log has the full story
_RESOLVER = pyyaml.resolver.Resolver()


# ---- the edit, on plain data (what the result must parse to) -------------------------------------------


def _clean_reason(reason: str) -> str:
    return " ".join(reason.split())[:MAX_REASON]


def flags_of(doc: Any, source: str) -> Mapping[str, Any]:
    """The top-level `flags` mapping of a parsed flag file; GuardrailError naming the file when there is none."""
    flags = doc.get("flags") if isinstance(doc, Mapping) else None
    if not isinstance(flags, Mapping):
        raise GuardrailError("not a flagd flag file: no top-level `flags` mapping", source=source, field="flags")
    return flags


def _edit_plain(definition: dict[str, Any], action: Action, control: str, reason: str) -> None:
    if action == "revert":
        definition["state"] = "DISABLED"
        definition["defaultVariant"] = control
    if not isinstance(definition.get("metadata"), dict):
        definition["metadata"] = {}
    if action == "hold":
        definition["metadata"]["guardrail_hold"] = True
    definition["metadata"]["guardrail_reason"] = reason


# ---- YAML: ruamel round-trip of the flag, spliced into the original text --------------------------------


def _plain_needs_quotes(value: str) -> bool:
    # ruamel writes YAML 1.2 and would leave `off` or `yes` plain; PyYAML, and with it the Python flagd
    # provider, reads those as booleans (YAML 1.1). Quote anything 1.1 would not read back as a string.
    tag: str = _RESOLVER.resolve(pyyaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    return tag != "tag:yaml.org,2002:str"


def _scalar(old: Any, new: str) -> Any:
    """`new`, quoted the way the author quoted the value it replaces (or quoted when it must be)."""
    if isinstance(old, (SingleQuotedScalarString, DoubleQuotedScalarString)):
        return type(old)(new)
    return DoubleQuotedScalarString(new) if _plain_needs_quotes(new) else new


def _is_block(node: Any) -> bool:
    return isinstance(node, (CommentedMap, CommentedSeq)) and len(node) > 0 and not node.fa.flow_style()


def _take_trailing(node: Any) -> Any:
    """Detach the comments and blank lines that follow the last line of a block node.

    ruamel hangs everything between a node's last value and the next key (blank lines, the next flag's
    leading comment) on that last value. A key appended after it would land below those lines; moving
    them onto the appended key keeps them where the author put them. The end-of-line comment of the last
    line itself stays.
    """
    if not _is_block(node):
        return None
    last: Any = list(node)[-1] if isinstance(node, CommentedMap) else len(node) - 1
    if _is_block(node[last]):
        found = _take_trailing(node[last])
        if found is not None:
            return found
    else:
        entry = node.ca.items.get(last)
        slot = 2 if isinstance(node, CommentedMap) else 0
        token = entry[slot] if entry and len(entry) > slot else None
        head, newline, tail = token.value.partition("\n") if token is not None else ("", "", "")
        if token is not None and tail:
            moved = copy.copy(token)
            moved.value = "\n" + tail
            token.value = head + newline
            return moved
    # After a last item written in flow style, ruamel keeps the following comment lines in `ca.end`,
    # one token per line, without their indentation.
    end = [t for t in node.ca.end or [] if t is not None]
    if not end:
        return None
    node.ca.end = []
    moved = copy.copy(end[0])
    moved.value = "\n" + "".join(" " * t.column + t.value if t.value.startswith("#") else t.value for t in end)
    return moved


def _put_trailing(mapping: CommentedMap, key: str, token: Any) -> None:
    value = mapping[key]
    if isinstance(value, CommentedMap) and _is_block(value):
        _put_trailing(value, list(value)[-1], token)
    else:
        mapping.ca.items[key] = [None, None, token, None]


def _set(mapping: CommentedMap, key: str, value: Any) -> None:
    if key in mapping:
        mapping[key] = _scalar(mapping[key], value) if isinstance(value, str) else value
        return
    trailing = _take_trailing(mapping)
    mapping[key] = _scalar(None, value) if isinstance(value, str) else value
    if trailing is not None:
        _put_trailing(mapping, key, trailing)


def _edit_yaml(definition: CommentedMap, action: Action, control: str, reason: str) -> None:
    if action == "revert":
        _set(definition, "state", "DISABLED")
        _set(definition, "defaultVariant", control)
    metadata = definition.get("metadata")
    additions: dict[str, Any] = {"guardrail_hold": True} if action == "hold" else {}
    additions["guardrail_reason"] = reason
    if isinstance(metadata, CommentedMap):
        for key, value in additions.items():
            _set(metadata, key, value)
        return
    fresh = CommentedMap()
    for key, value in additions.items():
        _set(fresh, key, value)
    if "metadata" in definition:  # `metadata:` with no value
        definition["metadata"] = fresh
    else:
        _set(definition, "metadata", fresh)


def _indents(doc: CommentedMap, key: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) indents as the file writes them, so the re-rendered flag matches."""
    mapping = 2
    flags, definition = doc["flags"], doc["flags"][key]
    if _is_block(definition) and isinstance(definition, CommentedMap):
        mapping = max(1, definition.lc.key(next(iter(definition)))[1] - flags.lc.key(key)[1])
    stack: list[tuple[Any, int]] = [(definition, 0), (doc, 0)]
    while stack:
        node, depth = stack.pop(0)
        if not isinstance(node, CommentedMap) or depth > 20:
            continue
        for k, value in node.items():
            if _is_block(value) and isinstance(value, CommentedSeq):
                parent = node.lc.key(k)[1]
                offset = max(0, value.lc.col - parent)
                return mapping, max(offset + 2, value.lc.item(0)[1] - parent), offset
            stack.append((value, depth + 1))
    return mapping, mapping + 2, mapping


def _round_trip() -> YAML:
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 1 << 30  # never re-wrap long lines (a reason, a long targeting rule)
    rt.allow_duplicate_keys = False
    return rt


def _flag_span(doc: Any, key: str, line_count: int) -> tuple[int, int] | None:
    """0-based [start, end) lines of one flag in a block-style file: its key line up to the next key."""
    if not _is_block(doc) or not _is_block(doc.get("flags")):
        return None
    flags = doc["flags"]
    keys, top = list(flags), list(doc)
    index = keys.index(key)
    start = flags.lc.key(key)[0]
    if index + 1 < len(keys):
        end = flags.lc.key(keys[index + 1])[0]
    else:
        after = top.index("flags") + 1
        end = doc.lc.key(top[after])[0] if after < len(top) else line_count
    return (start, end) if end > start else None


def rewrite_yaml(text: str, key: str, edit: Callable[[CommentedMap], None]) -> str:
    rt = _round_trip()
    try:
        doc = rt.load(text)
        original_span = _flag_span(doc, key, len(text.splitlines()))
        mapping, sequence, offset = _indents(doc, key)
        rt.indent(mapping=mapping, sequence=sequence, offset=offset)
        definition = doc["flags"][key]
        if not isinstance(definition, CommentedMap):
            raise GuardrailError("flag definition is not a mapping", flag=key)
        edit(definition)
        out = io.StringIO()
        rt.dump(doc, out)
        rendered = out.getvalue()
        new_span = _flag_span(_round_trip().load(rendered), key, len(rendered.splitlines()))
    except RuamelYAMLError as exc:
        raise GuardrailError(f"cannot rewrite this YAML: {str(exc).splitlines()[0]}", flag=key) from None
    newline = "\r\n" if "\r\n" in text else "\n"
    if original_span is None or new_span is None:
        return rendered.replace("\n", newline) if newline != "\n" else rendered
    old_lines = text.splitlines(keepends=True)
    block = rendered.splitlines(keepends=True)[new_span[0] : new_span[1]]
    block = [line.replace("\n", newline) for line in block] if newline != "\n" else block
    if block and not block[-1].endswith("\n") and original_span[1] < len(old_lines):
        block[-1] += newline
    return "".join(old_lines[: original_span[0]] + block + old_lines[original_span[1] :])


# ---- JSON -------------------------------------------------------------------------------------------------


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def skip_space(text: str, i: int) -> int:
    return _JSON_SPACE.match(text, i).end()  # type: ignore[union-attr]


def json_members(text: str, start: int) -> tuple[dict[str, tuple[int, int, int]], int]:
    """For the JSON object at text[start]: each member's (key offset, value start, value end) (the last
    duplicate wins, as in json.loads) and the offset of the closing brace. ValueError when unexpected."""
    decoder = json.JSONDecoder()
    members: dict[str, tuple[int, int, int]] = {}
    if text[start] != "{":
        raise ValueError("not an object")
    i = skip_space(text, start + 1)
    while text[i] != "}":
        if text[i] != '"':
            raise ValueError("expected a key")
        key_at = i
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = skip_space(text, i)
        if text[i] != ":":
            raise ValueError("expected ':'")
        i = skip_space(text, i + 1)
        _value, end = decoder.raw_decode(text, i)
        members[key] = (key_at, i, end)
        i = skip_space(text, end)
        if text[i] == ",":
            i = skip_space(text, i + 1)
    return members, i


def _line_indent(text: str, offset: int) -> str:
    line_start = text.rfind("\n", 0, offset) + 1
    return re.match(r"[ \t]*", text[line_start:offset]).group()  # type: ignore[union-attr]


def _rewrite_json(text: str, key: str, edit: Callable[[dict[str, Any]], None]) -> str:
    """Replace only the JSON values the halt changes; every other byte of the file stays."""
    doc = json.loads(text)  # dicts keep the file's key order
    edit(doc["flags"][key])
    new_def = doc["flags"][key]
    indent: str | None = None
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) < len(line):
            indent = line[: len(line) - len(stripped)]
            break
    key_separator = ": " if re.search(r'"\s*:\s', text) else ":"
    item_separator = ", " if indent is None and re.search(r",[ \t]", text) else ","
    newline = "\r\n" if "\r\n" in text else "\n"

    def render(value: Any, base: str) -> str:
        out = json.dumps(
            value,
            indent=indent,
            separators=(item_separator, key_separator),
            ensure_ascii="\\u" in text and text.isascii(),  # keep the file's choice of escapes
        )
        return out.replace("\n", newline + base)

    # json.loads accepted the text, so the scan cannot fail on it (a ValueError otherwise).
    top, _ = json_members(text, skip_space(text, 0))
    flags, _ = json_members(text, top["flags"][1])
    members, close = json_members(text, flags[key][1])
    edits: list[tuple[int, int, str]] = []
    for name in ("state", "defaultVariant", "metadata"):
        if name in members:
            key_at, start, end = members[name]
            edits.append((start, end, render(new_def[name], _line_indent(text, key_at))))
    if "metadata" not in members:
        last_end = max((end for _k, _s, end in members.values()), default=flags[key][1] + 1)
        multiline = "\n" in text[flags[key][1] : close]
        base = _line_indent(text, min(k for k, _s, _e in members.values())) if multiline else ""
        lead = ("," + newline + base) if multiline else item_separator
        body = json.dumps("metadata") + key_separator + render(new_def["metadata"], base)
        edits.append((last_end, last_end, (lead if members else "") + body))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


# ---- the public edit -----------------------------------------------------------------------------------


def reparse(text: str, *, source: str, json_format: bool) -> Any:
    """The rewritten document as it will be read back, or None when it no longer parses: every rewrite is
    checked against the document it meant to produce before anything is written."""
    try:
        return files.parse_text(text, source=source, json_only=json_format)
    except GuardrailError:
        return None


def apply_halt_to_text(
    text: str,
    key: str,
    *,
    action: Action,
    control_variant: str,
    reason: str,
    json_format: bool,
    source: str = "<flag file>",
) -> str:
    """The text of a flag file with flag `key` reverted (state DISABLED, defaultVariant control) or held
    (metadata.guardrail_hold true), and metadata.guardrail_reason set; nothing else changes.

    Raises KeyError when the flag is not in the file, GuardrailError when the text is not a flag file or
    the rewrite does not parse back to exactly the intended definitions (then nothing may be written).
    """
    reason = _clean_reason(reason)
    doc = files.parse_text(text, source=source, json_only=json_format)
    flags = flags_of(doc, source)
    if key not in flags:
        raise KeyError(key)
    if not isinstance(flags[key], Mapping):
        raise GuardrailError("flag definition is not a mapping", source=source, flag=key)
    # Unshared, not deepcopy: deepcopy keeps YAML aliases shared, so with `b: *a` (or `<<: *a`, or a
    # shared `metadata: *m`) the expected result would change flag b too, and so match a rewrite that
    # halts two flags. Built without sharing, it can only match a rewrite that changes this flag alone.
    expected = _unshared(doc)
    _edit_plain(expected["flags"][key], action, control_variant, reason)

    if json_format:
        try:
            new = _rewrite_json(text, key, lambda d: _edit_plain(d, action, control_variant, reason))
        except (ValueError, LookupError) as exc:  # the scan found a layout it does not expect
            raise GuardrailError(f"cannot rewrite this JSON: {exc}", source=source, flag=key) from None
    else:
        try:
            new = rewrite_yaml(text, key, lambda d: _edit_yaml(d, action, control_variant, reason))
        except GuardrailError as exc:
            raise GuardrailError(exc.message, source=source, flag=key) from None
    reread = reparse(new, source=source, json_format=json_format)
    if reread != expected:
        others = _changed_others(doc, reread, key)
        if others:
            raise GuardrailError(
                f"this flag shares YAML anchors/aliases with {others}: the rewrite would change them too; left "
                "unchanged (halt it by hand, and expand the anchors so each flag stands alone)",
                source=source,
                flag=key,
            )
        raise GuardrailError(
            "the rewritten file would not read back as intended; left unchanged", source=source, flag=key
        )
    return new


def _unshared(value: Any) -> Any:
    """A copy in which no two places share an object (YAML aliases expanded into separate copies)."""
    if isinstance(value, Mapping):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def _changed_others(before: Any, after: Any, key: str) -> list[str]:
    """Keys of the other flags whose definitions differ between two parses (at most five, for a message)."""
    old = before.get("flags") if isinstance(before, Mapping) else None
    new = after.get("flags") if isinstance(after, Mapping) else None
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return []
    return sorted(k for k in set(old) | set(new) if k != key and old.get(k) != new.get(k))[:5]
