"""`guardrail replay`: backtest recorded aggregates through the real engine and state machine.

Each distinct `time` in the history is one look. The aggregates of a look go through `engine.decide`
exactly as a cron run's would, with the clock taken from the look and the state carried forward, so the
answer to "would these guardrails have halted last week's experiment?" is the answer `check` would give.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from guardrail import engine, files
from guardrail.config import format_time, parse_flags, parse_time
from guardrail.model import SINCE_START, Aggregate, AggregateKey, Flag, GuardrailError, State

Look = tuple[datetime, dict[AggregateKey, Aggregate]]


@dataclass(frozen=True)
class FlagReplay:
    flag: str
    halted_at: datetime | None
    metric: str | None
    reason: str
    looks: int

    def to_json(self) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "halted_at": None if self.halted_at is None else format_time(self.halted_at),
            "metric": self.metric,
            "reason": self.reason,
            "looks": self.looks,
        }


def _number(value: Any, name: str, source: str, line: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GuardrailError(f"`{name}` must be a number, got {value!r:.40}", source=source, line=line)
    return float(value)


def read_history(path: Path) -> list[Look]:
    """Parse the JSON Lines history into looks ordered by time; every error names file and line."""
    source = str(path)
    text = files.read_text(path, max_bytes=512 * 1024 * 1024)
    looks: dict[datetime, dict[AggregateKey, Aggregate]] = defaultdict(dict)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GuardrailError(f"not valid JSON: {exc.msg}", source=source, line=number) from None
        if not isinstance(row, dict):
            raise GuardrailError("each line must be a JSON object", source=source, line=number)
        missing = [k for k in ("time", "flag", "metric", "variant", "value", "count") if k not in row]
        if missing:
            raise GuardrailError(f"missing {', '.join(missing)}", source=source, line=number)
        try:
            when = parse_time(row["time"])
        except (ValueError, OverflowError) as exc:
            raise GuardrailError(f"`time` is not RFC 3339: {exc}", source=source, line=number) from None
        window = str(row.get("window", "5m"))
        if window not in (SINCE_START, "since-start"):
            if not window[:-1].isdigit() or window[-1] not in "smhd":
                raise GuardrailError(f"`window` must be like 5m or since_start, got {window!r}", source=source,
                                     line=number)
        else:
            window = SINCE_START
        value = _number(row["value"], "value", source, number) if row["value"] is not None else math.nan
        count = _number(row["count"], "count", source, number)
        stddev = row.get("stddev")
        aggregate = Aggregate(
            value=value,
            count=int(count),
            stddev=None if stddev is None else _number(stddev, "stddev", source, number),
        )
        key = (str(row["flag"]), str(row["variant"]), str(row["metric"]), window)
        looks[when][key] = aggregate
    if not looks:
        raise GuardrailError("the history has no aggregates", source=source)
    return sorted(looks.items())


def default_flags(looks: Iterable[Look]) -> list[Flag]:
    """Without --flags: every (flag, metric) in the history, relative_increase 0.10, from the first look."""
    seen: dict[str, dict[str, Any]] = {}
    for when, aggregates in looks:
        for flag, variant, metric, window in aggregates:
            entry = seen.setdefault(flag, {"start": when, "variants": {"control"}, "metrics": {}})
            entry["variants"].add(variant)
            options = entry["metrics"].setdefault(metric, {})
            if window == SINCE_START:
                options["method"] = "sequential"
            elif window != "5m":
                options["window"] = window
    definitions: dict[str, Any] = {}
    for key, entry in seen.items():
        metadata: dict[str, Any] = {"started_at": format_time(entry["start"])}
        for metric, options in entry["metrics"].items():
            metadata[f"guardrail.{metric}.comparison"] = "relative_increase"
            metadata[f"guardrail.{metric}.threshold"] = 0.10
            for option, value in options.items():
                metadata[f"guardrail.{metric}.{option}"] = value
        definitions[key] = {
            "state": "ENABLED",
            "variants": {v: v for v in sorted(entry["variants"])},
            "defaultVariant": "control",
            "metadata": metadata,
        }
    parsed = parse_flags(definitions, source="<history>")
    if parsed.errors:
        raise GuardrailError(str(parsed.errors[0]))
    return list(parsed.flags)


def replay(flags: list[Flag], looks: list[Look]) -> list[FlagReplay]:
    """Drive the real engine look by look; a flag stops being evaluated once it would have halted."""
    state = State()
    halted: dict[str, tuple[datetime, str, str]] = {}
    counted: dict[str, int] = defaultdict(int)
    for when, aggregates in looks:
        decision = engine.decide(flags, aggregates, state, when)
        state = decision.state
        for key in {e.flag for e in decision.evaluations}:
            counted[key] += 1
        for halt in decision.halts:
            halted.setdefault(halt.flag, (when, halt.evaluation.metric, halt.reason))
    out = []
    for flag in flags:
        if flag.key in halted:
            when, metric, reason = halted[flag.key]
            out.append(FlagReplay(flag.key, when, metric, reason, counted[flag.key]))
        else:
            out.append(FlagReplay(flag.key, None, None, "no guardrail confirmed a breach", counted[flag.key]))
    return out


def load_flags(path: Path) -> list[Flag]:
    document = files.load_document(path)
    definitions = document.get("flags") if isinstance(document, dict) else None
    if not isinstance(definitions, dict):
        raise GuardrailError("not a flagd flag file: no top-level `flags` mapping", source=str(path))
    parsed = parse_flags(definitions, source=str(path))
    if parsed.errors:
        raise GuardrailError("; ".join(str(p) for p in parsed.errors))
    return list(parsed.flags)


def render_text(results: list[FlagReplay]) -> str:
    lines = []
    for r in results:
        if r.halted_at is None:
            lines.append(f"{r.flag}: no halt in {r.looks} looks")
        else:
            lines.append(f"{r.flag}: would have halted at {format_time(r.halted_at)} (look {r.looks}) on {r.metric}")
            lines.append(f"  reason: {r.reason}")
    return "\n".join(lines)


def run_replay_command(*, history: Path, flags: Path | None, config: Path | None, as_json: bool) -> int:
    """Exit 1 when any flag would have halted, else 0 (2 for bad input, raised as GuardrailError)."""
    looks = read_history(history)
    defaults: dict[str, Any] = {}
    if config is not None:
        from guardrail.settings import load_settings

        defaults = dict(load_settings(config=config, env={}).defaults)
    watched = load_flags(flags) if flags is not None else default_flags(looks)
    if defaults:
        # Config defaults apply as in check: re-parse the definitions with them.
        parsed = parse_flags({f.key: f.definition for f in watched}, defaults=defaults)
        watched = list(parsed.flags)
    results = replay(watched, looks)
    if as_json:
        print(json.dumps({"flags": [r.to_json() for r in results]}, indent=2))
    else:
        print(render_text(results))
    return 1 if any(r.halted_at is not None for r in results) else 0
