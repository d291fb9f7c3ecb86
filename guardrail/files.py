"""Files: reading untrusted YAML/JSON documents safely, and replacing a file atomically.

Flag files come from pull requests and ConfigMaps; a 50 MB file, an alias bomb ("billion laughs") or a
10,000-level nesting must end in a clear error naming the file, never in a hang, an OOM or a traceback.
The state file and a flag file the file backend halts through are replaced by the one `atomic_write`.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from guardrail.model import GuardrailError

# 10,000 flags with two guardrails each are ~6 MB of YAML: the default leaves room for ~50,000, and
# GUARDRAIL_MAX_FILE_MB raises (or lowers) it for one deployment. A 100 MB file is still refused.
MAX_BYTES = (
    int(float(os.environ.get("GUARDRAIL_MAX_FILE_MB") or 32) * 1024 * 1024)
    if ((os.environ.get("GUARDRAIL_MAX_FILE_MB") or "32").replace(".", "", 1).isdigit())
    else 32 * 1024 * 1024
)
MAX_ALIASES = 200
MAX_DEPTH = 64
# Values a document may expand to once aliases are followed: a "billion laughs" has few aliases but an
# exponential expansion, which anything walking the result (validation, JSON output) would pay for.
MAX_EXPANDED = 1_000_000


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents with too many aliases or too deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (an alias bomb?)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nesting deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values the node stands for with every alias expanded, in time linear in the graph."""
    known = memo.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size = min(size, MAX_EXPANDED + 1)
    return size


def _check_events(text: str) -> None:
    """Aliases and nesting counted from libyaml's parser events (C speed), before anything is composed."""
    aliases = depth = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (an alias bomb?)")
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth >= MAX_DEPTH:  # the values inside are one level deeper
                raise yaml.YAMLError(f"nesting deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _load_yaml(text: str) -> Any:
    # With libyaml, events are checked and the document composed in C: a 10,000-flag file (~6 MB) loads
    # several times faster than through the pure-Python composer. Same limits, same SafeConstructor.
    fast = hasattr(yaml, "CSafeLoader")
    if fast:
        _check_events(text)
    loader: Any = yaml.CSafeLoader(text) if fast else _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_EXPANDED:
            raise yaml.YAMLError(f"expands to more than {MAX_EXPANDED:,} values through aliases (an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return True


def parse_text(text: str, *, source: str, json_only: bool = False) -> Any:
    """Parse YAML (a superset of JSON) or JSON text; errors name the source and the line."""
    try:
        # _BoundedLoader is a SafeLoader: no Python objects from YAML tags.
        as_json = json_only or source.endswith(".json")
        value = json.loads(text) if as_json else _load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise GuardrailError(f"not valid YAML: {exc.problem or exc}", source=source, line=line) from None
    except yaml.YAMLError as exc:
        raise GuardrailError(f"not accepted: {exc}", source=source) from None
    except json.JSONDecodeError as exc:
        raise GuardrailError(f"not valid JSON: {exc.msg}", source=source, line=exc.lineno) from None
    except RecursionError:
        raise GuardrailError(f"nesting deeper than {MAX_DEPTH} levels", source=source) from None
    if not _depth_ok(value):
        raise GuardrailError(f"nesting deeper than {MAX_DEPTH} levels", source=source)
    return value


def read_text(path: Path, *, max_bytes: int = MAX_BYTES) -> str:
    source = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise GuardrailError(
                f"file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB (GUARDRAIL_MAX_FILE_MB raises it)",
                source=source,
            )
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise GuardrailError("file not found", source=source) from None
    except IsADirectoryError:
        raise GuardrailError("is a directory, not a file", source=source) from None
    except PermissionError:
        raise GuardrailError("permission denied", source=source) from None
    except OSError as exc:
        raise GuardrailError(f"cannot read: {exc.strerror}", source=source) from None
    if len(data) > max_bytes:
        raise GuardrailError(f"file is larger than {max_bytes / 1e6:.1f} MB", source=source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GuardrailError(f"not UTF-8 text (byte {exc.start})", source=source) from None


def load_document(path: Path, *, max_bytes: int = MAX_BYTES) -> Any:
    return parse_text(read_text(path, max_bytes=max_bytes), source=str(path))


class LazyLines(Mapping[str, int]):
    """flag_key_lines(text), worked out on first use: a run only needs a line for a flag with a problem, and
    walking a 10,000-flag file's parser events cost ~1 s of CPU on every run."""

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self._lines: dict[str, int] = {}

    def _get(self) -> dict[str, int]:
        if self._text is not None:
            self._lines, self._text = flag_key_lines(self._text), None
        return self._lines

    def __getitem__(self, key: str) -> int:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def flag_key_lines(text: str) -> dict[str, int]:
    """1-based line of each key under top-level `flags:` in a YAML text (best effort, for messages).

    Walks parser events instead of composing the document: with libyaml's parser (when installed) a
    2,000-flag file takes ~0.07 s where composing it in Python took ~1.7 s, on every run. Events never
    expand aliases, and the walk keeps its own stack, so no document can make it recurse."""
    lines: dict[str, int] = {}
    # One frame per open collection: [is a mapping, next node is a key, the current key, is `flags:`].
    stack: list[list[Any]] = []
    documents = 0
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            top = stack[-1] if stack else None
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    return {}  # as yaml.load does, more than one document is refused
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                mapping = isinstance(event, yaml.MappingStartEvent)
                is_flags = mapping and len(stack) == 1 and top is not None and not top[1] and top[2] == "flags"
                stack.append([mapping, True, None, is_flags])
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                stack.pop()
                parent = stack[-1] if stack else [False]
                if parent[0] and parent[1]:  # the collection was a (complex) key: its value comes next
                    parent[1], parent[2] = False, None
                elif parent[0]:  # it was a value: the next node is a key
                    parent[1] = True
            elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)) and top is not None and top[0]:
                if top[1]:
                    top[2] = event.value if isinstance(event, yaml.ScalarEvent) else None
                    if top[3] and top[2] is not None and event.start_mark is not None:
                        lines[str(top[2])] = event.start_mark.line + 1
                top[1] = not top[1]
    except yaml.YAMLError:
        return {}
    return lines


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
    precondition: Callable[[], bool] | None = None,
) -> bool:
    """Replace `path` with `data` so a reader (or a run killed mid-write) sees the old file or the new, never half.

    The file is the user's wherever they put it: a symlink is followed (its target is replaced, the link
    stays), and an existing file keeps its permission bits; a new one gets `mode` whatever the umask.
    A temp file in the same directory (same filesystem, so the rename is atomic), fsync, chmod, chown
    `owner` when given and allowed, rename, then fsync the directory so the rename itself survives a
    crash. `precondition` runs as late as possible, just before the rename: when it returns False nothing
    is replaced and the result is False (a compare-and-swap for files that people edit too).
    """
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(path.stat().st_mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if owner is not None and hasattr(os, "chown") and owner != (os.getuid(), os.getgid()):
            with contextlib.suppress(OSError):  # only root may give a file away; the mode still holds
                os.chown(tmp, *owner)
        if precondition is not None and not precondition():
            tmp.unlink()
            return False
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform or filesystem can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
