"""Setting a ramp step in a flagd flag file: rewrite the weights of the flag's `fractional` split in place.

Same guarantees as a halt (guardrail/flags/flagd_text.py, whose round-trip machinery this reuses): only
the weight numbers change. YAML goes through ruamel's round trip of the one flag, spliced into the
original text, so comments, order and every other flag stay byte-for-byte; in JSON only the number
tokens of the weights are replaced. The result is re-parsed and compared with the intended definitions
before it may replace the file, the file is replaced atomically and never over an edit made since it
was read, and the step counts as done only when a re-read of the file shows the new weights.
Both spellings of the operator are rewritten: `fractional` and the older `fractionalEvaluation`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from guardrail import files
from guardrail.flags.base import HaltOutcome
from guardrail.flags.flagd_file import MAX_ATTEMPTS, _digest
from guardrail.flags.flagd_text import flags_of, json_members, reparse, rewrite_yaml, skip_space
from guardrail.model import FailureKind, Flag, GuardrailError
from guardrail.split import FRACTIONAL_OPS, set_weights, split_matches

if TYPE_CHECKING:
    from guardrail.flags.flagd_file import FlagdFileBackend

Path_ = tuple[str | int, ...]


def _fractional_paths(node: Any, path: Path_ = (), depth: int = 0) -> list[Path_]:
    """Paths (keys and list indexes) to every fractional split's argument list."""
    found: list[Path_] = []
    if depth > 50:
        return found
    if isinstance(node, Mapping):
        for op, args in node.items():
            if op in FRACTIONAL_OPS and isinstance(args, list):
                found.append((*path, op))
            found += _fractional_paths(args, (*path, op), depth + 1)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _fractional_paths(item, (*path, i), depth + 1)
    return found


def _json_items(text: str, start: int) -> list[tuple[int, int]]:
    """(start, end) of each element of the JSON array at text[start]."""
    decoder = json.JSONDecoder()
    if text[start] != "[":
        raise ValueError("not an array")
    items = []
    i = skip_space(text, start + 1)
    while text[i] != "]":
        _value, end = decoder.raw_decode(text, i)
        items.append((i, end))
        i = skip_space(text, end)
        if text[i] == ",":
            i = skip_space(text, i + 1)
    return items


def _span(text: str, start: int, path: Sequence[str | int]) -> tuple[int, int]:
    """(start, end) of the JSON value at `path` below the value starting at `start`."""
    end = json.JSONDecoder().raw_decode(text, start)[1]
    for step in path:
        if isinstance(step, str):
            members, _close = json_members(text, start)
            _key_at, start, end = members[step]
        else:
            start, end = _json_items(text, start)[step]
    return start, end


def _rewrite_json(text: str, key: str, definition: Mapping[str, Any], shares: Mapping[str, int]) -> str:
    top, _ = json_members(text, skip_space(text, 0))
    flags, _ = json_members(text, top["flags"][1])
    flag_start = flags[key][1]
    edits: list[tuple[int, int, str]] = []
    for path in _fractional_paths(definition.get("targeting"), ("targeting",)):
        args: Any = definition
        for step in path:
            args = args[step]
        for i, item in enumerate(args):
            if isinstance(item, list) and item and isinstance(item[0], str):
                if len(item) < 2:
                    raise ValueError(f"bucket {item[0]!r} has no weight to rewrite")
                start, end = _span(text, flag_start, (*path, i, 1))
                edits.append((start, end, str(int(shares.get(item[0], 0)))))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _edit_yaml(definition: Any, shares: Mapping[str, int]) -> None:
    """Set the weights in ruamel's round-trip nodes: assigning an item keeps its comments and flow style."""
    from guardrail.split import fractional_nodes

    for args in list(fractional_nodes(definition.get("targeting"))):
        for item in args:
            if isinstance(item, list) and item and isinstance(item[0], str):
                weight = int(shares.get(item[0], 0))
                if len(item) > 1:
                    item[1] = weight
                else:
                    item.append(weight)


def apply_split_to_text(
    text: str, key: str, shares: Mapping[str, int], *, json_format: bool, source: str = "<flag file>"
) -> str:
    """The text of a flag file with flag `key`'s fractional weights set to `shares`; nothing else changes.

    Raises KeyError when the flag is not in the file, GuardrailError when the flag has no split that
    lists the variants, or the rewrite would not read back as intended (then nothing may be written).
    """
    doc = files.parse_text(text, source=source, json_only=json_format)
    flags = flags_of(doc, source)
    if key not in flags:
        raise KeyError(key)
    definition = flags[key]
    if not isinstance(definition, Mapping):
        raise GuardrailError("flag definition is not a mapping", source=source, flag=key)
    expected = copy.deepcopy(doc)
    try:
        expected["flags"][key]["targeting"] = set_weights(definition.get("targeting"), shares)
    except KeyError as exc:
        raise GuardrailError(str(exc.args[0]), source=source, flag=key, field="targeting") from None
    try:
        if json_format:
            new = _rewrite_json(text, key, definition, shares)
        else:
            new = rewrite_yaml(text, key, lambda d: _edit_yaml(d, shares))
    except (ValueError, LookupError) as exc:
        raise GuardrailError(f"cannot rewrite the split: {exc}", source=source, flag=key) from None
    except GuardrailError as exc:
        raise GuardrailError(exc.message, source=source, flag=key) from None
    reread = reparse(new, source=source, json_format=json_format)
    if reread != expected:
        raise GuardrailError(
            "the rewritten split would not read back as intended; left unchanged", source=source, flag=key
        )
    return new


def set_split(backend: FlagdFileBackend, flag: Flag, shares: Mapping[str, int]) -> HaltOutcome:
    """FlagdFileBackend.set_split, run in a thread under the backend's lock (never raises)."""
    described = ", ".join(f"{v} {s}%" for v, s in shares.items())
    with backend._lock:
        try:
            for attempt in range(MAX_ATTEMPTS):
                text, flags = backend._read()
                definition = flags.get(flag.key)
                if not isinstance(definition, Mapping):
                    return HaltOutcome(
                        ok=False,
                        kind=FailureKind.NOT_FOUND,
                        detail=f"{backend.source}: flag {flag.key!r} is not in the file",
                    )
                if split_matches(definition, shares):
                    return HaltOutcome(ok=True, already=True, detail=f"{backend.source}: split already {described}")
                new = apply_split_to_text(
                    text, flag.key, shares, json_format=backend.json_format, source=backend.source
                )
                if backend._replace_if_unchanged(text.encode("utf-8"), new.encode("utf-8")):
                    backend.loaded_digest = _digest(new.encode("utf-8"))
                    # Done only when a re-read shows the weights (the file is what flagd serves).
                    after = backend._read()[1].get(flag.key)
                    if split_matches(after, shares):
                        note = " (applied to content edited since it was read)" if attempt else ""
                        return HaltOutcome(ok=True, detail=f"{backend.source}: split set to {described}{note}")
                    return HaltOutcome(
                        ok=False,
                        kind=FailureKind.BAD_ANSWER,
                        detail=f"{backend.source}: re-read does not show the new split",
                    )
            return HaltOutcome(
                ok=False, kind=FailureKind.CONFLICT, detail=f"{backend.source}: the file kept changing; will retry"
            )
        except GuardrailError as exc:
            return HaltOutcome(ok=False, kind=FailureKind.REFUSED, detail=str(exc))
        except OSError as exc:
            return HaltOutcome(
                ok=False, kind=FailureKind.INTERNAL, detail=f"{backend.source}: cannot write: {exc.strerror or exc}"
            )
        except Exception as exc:  # a backend never raises: a bug here is a failed step, not a crash
            return HaltOutcome(
                ok=False,
                kind=FailureKind.INTERNAL,
                detail=f"{backend.source}: rewrite failed: {type(exc).__name__}: {exc}",
            )
