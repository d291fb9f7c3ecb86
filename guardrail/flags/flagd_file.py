"""Halting flags by rewriting the flagd flag file that flagd watches (there is no flag API to call).

A halt changes one flag and nothing else. YAML goes through ruamel.yaml's round-trip mode, and then only
the lines of the halted flag are spliced into the original text, so every other flag, comment and blank
line stays byte-for-byte what its author wrote, whatever ruamel would have re-rendered. In JSON only the
values the halt changes are replaced, rendered in the file's own indent. Every rewrite is re-parsed with
PyYAML (the parser the OpenFeature Python flagd provider uses) and compared with the intended result
before it may replace the file.

The file is replaced atomically (temp file in the same directory, fsync, os.replace, fsync of the
directory), keeps its mode, and is never written over an edit someone made since we read it: the content
is compared just before the rename, and on a change the halt is re-applied to the new content.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import io
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from guardrail import files
from guardrail.adapters import ConfigContext, Plugin, Runtime
from guardrail.config import is_held
from guardrail.flags.base import FlagBackend, HaltOutcome, LoadedFlags
from guardrail.flags.gitrepo import GitConfig, discover, parse_git_config
from guardrail.model import ExitCode, FailureKind, Flag, GuardrailError

Action = Literal["revert", "hold"]
MAX_ATTEMPTS = 5  # re-applications after concurrent edits before giving up until the next run
MAX_REASON = 500  # the reason goes into a file people read and diff; the audit log has the full story
_RESOLVER = pyyaml.resolver.Resolver()


# ---- the edit, on plain data (what the result must parse to) -------------------------------------------


def _clean_reason(reason: str) -> str:
    return " ".join(reason.split())[:MAX_REASON]


def _flags_of(doc: Any, source: str) -> Mapping[str, Any]:
    flags = doc.get("flags") if isinstance(doc, Mapping) else None
    if not isinstance(flags, Mapping):
        raise GuardrailError("not a flagd flag file: no top-level `flags` mapping", source=source, field="flags")
    return flags


def is_already(definition: Mapping[str, Any], action: Action, control_variant: str) -> bool:
    """True when the flag is already in the state the halt would put it in (nothing to write)."""
    if action == "revert":
        return definition.get("state") == "DISABLED" and definition.get("defaultVariant") == control_variant
    return is_held(definition)


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


def _rewrite_yaml(text: str, key: str, edit: Callable[[CommentedMap], None]) -> str:
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


def _skip(text: str, i: int) -> int:
    return _JSON_SPACE.match(text, i).end()  # type: ignore[union-attr]


def _json_members(text: str, start: int) -> tuple[dict[str, tuple[int, int, int]], int]:
    """For the JSON object at text[start]: each member's (key offset, value start, value end) (the last
    duplicate wins, as in json.loads) and the offset of the closing brace. ValueError when unexpected."""
    decoder = json.JSONDecoder()
    members: dict[str, tuple[int, int, int]] = {}
    if text[start] != "{":
        raise ValueError("not an object")
    i = _skip(text, start + 1)
    while text[i] != "}":
        if text[i] != '"':
            raise ValueError("expected a key")
        key_at = i
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = _skip(text, i)
        if text[i] != ":":
            raise ValueError("expected ':'")
        i = _skip(text, i + 1)
        _value, end = decoder.raw_decode(text, i)
        members[key] = (key_at, i, end)
        i = _skip(text, end)
        if text[i] == ",":
            i = _skip(text, i + 1)
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
    top, _ = _json_members(text, _skip(text, 0))
    flags, _ = _json_members(text, top["flags"][1])
    members, close = _json_members(text, flags[key][1])
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
    flags = _flags_of(doc, source)
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
            new = _rewrite_yaml(text, key, lambda d: _edit_yaml(d, action, control_variant, reason))
        except GuardrailError as exc:
            raise GuardrailError(exc.message, source=source, flag=key) from None
    try:
        reread = files.parse_text(new, source=source, json_only=json_format)
    except GuardrailError:
        reread = None
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


def done_detail(action: Action, control_variant: str) -> str:
    return f"state DISABLED, defaultVariant {control_variant}" if action == "revert" else "metadata.guardrail_hold true"


def plan_edit(
    text: str, flag: Flag, action: Action, reason: str, *, json_format: bool, source: str
) -> str | HaltOutcome:
    """The new text of a flag file with the halt (or hold) of `flag` applied, or the outcome to report
    without writing anything: already halted, or a permanent refusal (the flag is gone, no control).

    Pure text to text, so the same edit can be applied to the file on disk or to the file at another
    commit (guardrail/flags/git.py re-applies it on a new upstream head). Raises GuardrailError when the
    text is not a flag file or cannot be rewritten safely.
    """
    control = flag.control_variant
    flags = _flags_of(files.parse_text(text, source=source, json_only=json_format), source)
    definition = flags.get(flag.key)
    if not isinstance(definition, Mapping):
        return HaltOutcome(
            ok=False, kind=FailureKind.NOT_FOUND, detail=f"{source}: flag {flag.key!r} is not in the file"
        )
    if is_already(definition, action, control):
        return HaltOutcome(ok=True, already=True, detail=f"{source}: already {done_detail(action, control)}")
    variants = definition.get("variants")
    if action == "revert" and not (isinstance(variants, Mapping) and control in variants):
        return HaltOutcome(
            ok=False,
            kind=FailureKind.REFUSED,
            detail=f"{source}: flag {flag.key!r} has no variant {control!r} to revert to",
        )
    return apply_halt_to_text(
        text, flag.key, action=action, control_variant=control, reason=reason, json_format=json_format, source=source
    )


# ---- the backend ---------------------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FlagdFileBackend:
    """FlagBackend for a flagd flag file (YAML, or JSON when the name ends in `.json`)."""

    name = "file"

    def __init__(self, path: Path, *, max_bytes: int = files.MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.json_format = path.suffix.lower() == ".json"
        self.loaded_digest: str | None = None  # content at load(), to report a concurrent edit
        self.loaded_mtime: float | None = None
        # halt() of two flags of the same file must not interleave read-edit-replace (a lost update).
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        return str(self.path)

    def _read(self) -> tuple[str, Mapping[str, Any]]:
        text = files.read_text(self.path, max_bytes=self.max_bytes)
        doc = files.parse_text(text, source=self.source, json_only=self.json_format)
        return text, _flags_of(doc, self.source)

    async def load(self) -> LoadedFlags:
        text, flags = self._read()
        self.loaded_digest = _digest(text.encode("utf-8"))
        with contextlib.suppress(OSError):
            self.loaded_mtime = self.path.stat().st_mtime
        # PyYAML reads JSON too, so JSON files get flag line numbers in messages as well.
        return LoadedFlags(source=self.source, definitions=flags, lines=files.LazyLines(text))

    async def get(self, key: str) -> Mapping[str, Any] | None:
        _text, flags = self._read()
        found = flags.get(key)
        return found if isinstance(found, Mapping) else None

    async def halt(self, flag: Flag, reason: str) -> HaltOutcome:
        return await asyncio.to_thread(self._apply, flag, "revert", reason)

    async def hold(self, flag: Flag, reason: str) -> HaltOutcome:
        return await asyncio.to_thread(self._apply, flag, "hold", reason)

    async def set_split(self, flag: Flag, shares: Mapping[str, int], reason: str) -> HaltOutcome:
        """Set the fractional weights (a ramp step); guardrail/flags/flagd_split.py. The reason is audited."""
        from guardrail.flags.flagd_split import set_split

        return await asyncio.to_thread(set_split, self, flag, shares)

    def link(self, key: str) -> str:
        return f"{self.source}#{key}"

    async def aclose(self) -> None:
        return None

    def _apply(self, flag: Flag, action: Action, reason: str) -> HaltOutcome:
        with self._lock:
            try:
                return self._apply_locked(flag, action, reason)
            except GuardrailError as exc:
                return HaltOutcome(ok=False, detail=str(exc), kind=FailureKind.REFUSED)
            except OSError as exc:
                return HaltOutcome(
                    ok=False, detail=f"{self.source}: cannot write: {exc.strerror or exc}", kind=FailureKind.UNREACHABLE
                )
            except Exception as exc:  # a backend never raises: a bug here must become a failed halt, not a crash
                return HaltOutcome(
                    ok=False,
                    detail=f"{self.source}: rewrite failed: {type(exc).__name__}: {exc}",
                    kind=FailureKind.INTERNAL,
                )

    def _apply_locked(self, flag: Flag, action: Action, reason: str) -> HaltOutcome:
        done = done_detail(action, flag.control_variant)
        for attempt in range(MAX_ATTEMPTS):
            text = files.read_text(self.path, max_bytes=self.max_bytes)
            new = plan_edit(text, flag, action, reason, json_format=self.json_format, source=self.source)
            if isinstance(new, HaltOutcome):
                return new
            if self._replace_if_unchanged(text.encode("utf-8"), new.encode("utf-8")):
                edited = attempt > 0 or (
                    self.loaded_digest is not None and self.loaded_digest != _digest(text.encode("utf-8"))
                )
                self.loaded_digest = _digest(new.encode("utf-8"))  # our own write is not someone's edit
                note = " (the file had been edited since it was read; applied to the new content)"
                return HaltOutcome(ok=True, detail=f"{self.source}: {done}" + (note if edited else ""))
        return HaltOutcome(
            ok=False,
            kind=FailureKind.CONFLICT,
            detail=f"{self.source}: the file kept changing while being rewritten; will retry",
        )

    def _replace_if_unchanged(self, expected: bytes, new: bytes) -> bool:
        """Atomically replace the file with `new` unless its content is no longer `expected`."""
        # Write through a symlink (a Git checkout, a ConfigMap mount) rather than replace the link.
        target = Path(os.path.realpath(self.path))
        before = target.stat()

        def unchanged() -> bool:  # checked as late as possible: an edit made since our read must survive
            with target.open("rb") as fh:
                return _digest(fh.read(self.max_bytes + 1)) == _digest(expected)

        return files.atomic_write(
            target, new, mode=stat.S_IMODE(before.st_mode), owner=(before.st_uid, before.st_gid), precondition=unchanged
        )


# ---- the plugin -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileBackendConfig:
    path: Path | None
    git: GitConfig | None = None  # flags.git / --git: each change is a commit pushed upstream (flags/git.py)


def flags_location(ctx: ConfigContext) -> str | None:
    """`--flags`, else `flags:` (a string, or `{source: ...}`) in the config file."""
    given = ctx.option("flags")
    if given:
        return str(given)
    raw = ctx.doc.get("flags")
    if isinstance(raw, Mapping):
        raw = raw.get("source")
    if raw is not None and not isinstance(raw, str):
        raise GuardrailError("must be a path or URL", source=ctx.source, field="flags")
    return raw or None


def _parse(ctx: ConfigContext) -> FileBackendConfig:
    where = flags_location(ctx)
    raw = ctx.doc.get("flags")
    git = parse_git_config(raw.get("git") if isinstance(raw, Mapping) else None, source=ctx.source)
    if git is None and ctx.option("git"):
        git = GitConfig()  # --git without `flags.git` in the config file: the defaults
    return FileBackendConfig(Path(where) if where else None, git)


def _ready(config: FileBackendConfig) -> None:
    if config.path is None:
        raise GuardrailError(
            "no flag definitions: the file backend needs --flags PATH or `flags:` in --config",
            exit_code=ExitCode.CONFIG,
        )
    if config.git is not None:
        # Local git only (no network): a clone without an upstream is refused before the lock, exit 2.
        discover(config.path, timeout=config.git.timeout)


def _create(config: FileBackendConfig, _runtime: Runtime) -> FlagBackend:
    assert config.path is not None
    backend = FlagdFileBackend(config.path)
    if config.git is None:
        return backend
    from guardrail.flags.git import GitFlagBackend  # it builds on this module

    return GitFlagBackend(backend, config.git)


PLUGIN = Plugin(
    name="file",
    summary="a flagd flag file (YAML or JSON), rewritten in place",
    parse=_parse,
    create=_create,
    ready=_ready,
)
