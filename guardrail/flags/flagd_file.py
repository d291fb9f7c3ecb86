"""Halting flags by rewriting the flagd flag file that flagd watches (there is no flag API to call).

A halt changes one flag and nothing else: the text edit that keeps every comment, blank line and other
flag of the file is guardrail/flags/flagd_text.py's, checked there by a re-parse before it may be written.

The file is replaced atomically (temp file in the same directory, fsync, os.replace, fsync of the
directory), keeps its mode, and is never written over an edit someone made since we read it: the content
is compared just before the rename, and on a change the halt is re-applied to the new content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrail import files
from guardrail.adapters import ConfigContext, Plugin, Runtime
from guardrail.config import is_held
from guardrail.flags.base import FlagBackend, HaltOutcome, LoadedFlags
from guardrail.flags.flagd_text import Action, apply_halt_to_text, flags_of
from guardrail.flags.gitrepo import GitConfig, discover, parse_git_config
from guardrail.model import ExitCode, FailureKind, Flag, GuardrailError

MAX_ATTEMPTS = 5  # re-applications after concurrent edits before giving up until the next run


# ---- what a halt does to a flag's text: nothing to do, a refusal, or the new text ------------------------


def is_already(definition: Mapping[str, Any], action: Action, control_variant: str) -> bool:
    """True when the flag is already in the state the halt would put it in (nothing to write)."""
    if action == "revert":
        return definition.get("state") == "DISABLED" and definition.get("defaultVariant") == control_variant
    return is_held(definition)


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
    flags = flags_of(files.parse_text(text, source=source, json_only=json_format), source)
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
        return text, flags_of(doc, self.source)

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
