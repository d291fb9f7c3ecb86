"""The fractional split in a flag's targeting: read it, rewrite its weights, check a re-read (pure).

flagd's `fractional` operator (older files: `fractionalEvaluation`) takes an optional bucketing expression
and then `[variant, weight]` buckets; weights are relative (flagd divides by their sum) and a bucket
without a weight weighs 1 (https://flagd.dev/reference/custom-operations/fractional-operation/).
guardrail writes whole percents that sum to 100.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

FRACTIONAL_OPS = ("fractional", "fractionalEvaluation")


def fractional_nodes(node: Any, depth: int = 0) -> Iterator[list[Any]]:
    """Every fractional split's argument list in a targeting rule, both spellings, in document order."""
    if depth > 50:
        return
    if isinstance(node, Mapping):
        for op, args in node.items():
            if op in FRACTIONAL_OPS and isinstance(args, list):
                yield args
            yield from fractional_nodes(args, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from fractional_nodes(item, depth + 1)


def _buckets(args: Sequence[Any]) -> list[tuple[str, float]]:
    """(variant, weight) of one fractional split. flagd's first argument may be the bucketing expression
    (e.g. {"var": "targetingKey"}); a bucket without a weight weighs 1 (flagd's default)."""
    out = []
    for item in args:
        if isinstance(item, list) and item and isinstance(item[0], str):
            weight = item[1] if len(item) > 1 else 1
            ok = isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
            out.append((item[0], float(weight) if ok else math.nan))
    return out


def read_split(definition: Mapping[str, Any]) -> dict[str, float]:
    """The first fractional split of a definition as variant -> percent (empty when there is none)."""
    for args in fractional_nodes(definition.get("targeting")):
        buckets = _buckets(args)
        total = math.fsum(w for _v, w in buckets)
        if not buckets or not math.isfinite(total) or total <= 0:
            return {}
        split: dict[str, float] = {}
        for variant, weight in buckets:
            split[variant] = split.get(variant, 0.0) + 100.0 * weight / total
        return split
    return {}


def set_weights(targeting: Any, shares: Mapping[str, int]) -> Any:
    """A copy of `targeting` with every fractional split's weights set from `shares` (variants missing
    from `shares` get 0). Raises KeyError naming a variant of `shares` that no split lists."""
    new = copy.deepcopy(targeting)
    found: set[str] = set()
    for args in fractional_nodes(new):
        for item in args:
            if isinstance(item, list) and item and isinstance(item[0], str):
                weight = int(shares.get(item[0], 0))
                found.add(item[0])
                if len(item) > 1:
                    item[1] = weight
                else:
                    item.append(weight)
    missing = [v for v, s in shares.items() if s and v not in found]
    if missing:
        raise KeyError(f"variant(s) {missing} are not in the fractional split")
    return new


def split_matches(definition: Mapping[str, Any] | None, shares: Mapping[str, int]) -> bool:
    """True when a re-read definition's every fractional split gives exactly `shares` (in percent)."""
    if not isinstance(definition, Mapping):
        return False
    nodes = list(fractional_nodes(definition.get("targeting")))
    if not nodes:
        return False
    for args in nodes:
        buckets = _buckets(args)
        total = math.fsum(w for _v, w in buckets)
        if not math.isfinite(total) or total <= 0:
            return False
        got: dict[str, float] = {}
        for v, w in buckets:
            got[v] = got.get(v, 0.0) + 100.0 * w / total
        if any(abs(got.get(v, 0.0) - s) > 1e-9 for v, s in shares.items()):
            return False
    return True
