"""`guardrail replay`: backtest recorded aggregates through the real engine and state machine.

Each distinct `time` in the history is one look. The aggregates of a look go through `engine.decide`
exactly as a cron run's would, with the clock taken from the look and the state carried forward, so the
answer to "would these guardrails have halted last week's experiment?" is the answer `check` would give.

With `--config` whose `metrics.every` is set, only the looks a live run would have made are judged: the first,
then each one at least `every` (less the same slack) after the last judged look (guardrail/cadence.py, the
rule `check` applies), so a history recorded every 2 minutes replays a 15-minute warehouse cadence faithfully.

Two deliberate differences from a live run, both because a backtest asks about the past:
- every flag is judged as if ENABLED and not held: a flag guardrail has since halted is DISABLED in
  today's file, and that is exactly the experiment one wants to replay;
- a flag is evaluated only at the looks where the history has rows for it, so a flag absent from the
  history (or from part of it) is not reported as "watched, no halt".
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from guardrail import engine, files
from guardrail.config import format_time, parse_flags, parse_time
from guardrail.model import SINCE_START, Aggregate, AggregateKey, Evaluation, Flag, GuardrailError, State, Verdict
from guardrail.rules import GuardrailRules
from guardrail.sources.cells import OPTIONAL

Look = tuple[datetime, dict[AggregateKey, Aggregate]]
CONTROL = "control"  # the control variant's name when there is no --flags file to say otherwise
DEFAULT_THRESHOLD = 0.10
MAX_HISTORY_BYTES = 512 * 1024 * 1024


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


class _Line:
    """One history line being read: every complaint names the file and the line."""

    def __init__(self, source: str, number: int, row: Mapping[str, Any]) -> None:
        self.source, self.line_no, self.row = source, number, row

    def error(self, message: str, field: str | None = None) -> GuardrailError:
        return GuardrailError(message, source=self.source, line=self.line_no, field=field)

    def text(self, name: str) -> str:
        value = self.row[name]
        if not isinstance(value, str) or not value:
            raise self.error(f"`{name}` must be a non-empty string, got {value!r:.40}", name)
        return value

    def number(self, name: str, *, optional: bool = False) -> float | None:
        """A finite number, or None when the line says null (a source that had no data)."""
        value = self.row.get(name)
        if value is None and (optional or name in self.row):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"`{name}` must be a number, got {value!r:.40}", name)
        if not math.isfinite(value):
            raise self.error(f"`{name}` must be a finite number, got {value!r}", name)
        return float(value)

    def count(self) -> int | None:
        value = self.number("count")
        if value is None:
            return None
        if value < 0 or value != int(value):
            raise self.error(f"`count` must be a whole number >= 0, got {self.row['count']!r}", "count")
        return int(value)

    def window(self) -> str:
        window = self.row.get("window", "5m")  # histories written before since_start existed have none
        if window in (SINCE_START, "since-start"):
            return SINCE_START
        if not isinstance(window, str) or not window[:-1].isdigit() or window[-1] not in "smhd":
            raise self.error(f"`window` must be like 5m or since_start, got {window!r:.40}", "window")
        return window


def read_history(path: Path) -> list[Look]:
    """Parse the JSON Lines history into looks ordered by time; every error names file and line."""
    source = str(path)
    text = files.read_text(path, max_bytes=MAX_HISTORY_BYTES)
    looks: dict[datetime, dict[AggregateKey, Aggregate]] = defaultdict(dict)
    first_line: dict[tuple[datetime, AggregateKey], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise GuardrailError(f"not valid JSON: {exc.msg}", source=source, line=number) from None
        if not isinstance(row, dict):
            raise GuardrailError("each line must be a JSON object", source=source, line=number)
        line = _Line(source, number, row)
        missing = [k for k in ("time", "flag", "metric", "variant", "value", "count") if k not in row]
        if missing:
            raise line.error(f"missing {', '.join(missing)}", missing[0])
        try:
            when = parse_time(row["time"])
        except (ValueError, OverflowError) as exc:
            raise line.error(f"`time` is not RFC 3339: {exc}", "time") from None
        key = (line.text("flag"), line.text("variant"), line.text("metric"), line.window())
        if (when, key) in first_line:
            # Two values for one aggregate: silently keeping either would make the backtest a guess.
            raise line.error(f"same time, flag, variant, metric and window as line {first_line[when, key]}")
        first_line[when, key] = number
        value = line.number("value")
        count = line.count()
        # `stddev` and the optional per-unit sums (docs/statistics.md), under the names every source's contract
        # uses (sources/cells.py); unlike a live source's, a bad one here is an error naming the line.
        optional: dict[str, Any] = {name: line.number(name, optional=True) for name in OPTIONAL}
        if optional["units"] is not None:
            optional["units"] = int(optional["units"])
        looks[when][key] = Aggregate(
            value=math.nan if value is None else value,  # null: the engine's skip:no_data, as in check
            count=count,
            **optional,
        )
    if not looks:
        raise GuardrailError("the history has no aggregates", source=source)
    return sorted(looks.items())


def default_flags(
    looks: Sequence[Look], defaults: Mapping[str, Any] | None = None, source: str = "<history>"
) -> list[Flag]:
    """Without --flags: every (flag, metric) in the history, relative_increase 0.10, from the flag's first look.

    Variant `control` is the control and every other variant a treatment. A metric with since_start rows
    gets the sequential method (the default, which reads them); a metric with only short windows (5m, 10m)
    gets the threshold rule on that window, since that is all the history can answer.
    """
    seen: dict[str, dict[str, Any]] = {}
    for when, aggregates in looks:
        for flag, variant, metric, window in aggregates:
            entry = seen.setdefault(flag, {"start": when, "variants": {}, "metrics": {}})
            entry["variants"][variant] = None
            options = entry["metrics"].setdefault(metric, {"method": "threshold"})
            if window == SINCE_START:
                options["method"] = "sequential"
                options.pop("window", None)
            elif window != "5m" and options["method"] == "threshold":
                options["window"] = window
    definitions: dict[str, Any] = {}
    for key, entry in seen.items():
        if CONTROL not in entry["variants"]:
            raise GuardrailError(
                f"no rows for variant {CONTROL!r} (seen: {', '.join(entry['variants'])}); pass --flags with "
                "metadata.control_variant to name the control",
                source=source,
                flag=key,
            )
        metadata: dict[str, Any] = {"started_at": format_time(entry["start"])}
        for metric, options in entry["metrics"].items():
            metadata[f"guardrail.{metric}.comparison"] = "relative_increase"
            metadata[f"guardrail.{metric}.threshold"] = DEFAULT_THRESHOLD
            for option, value in options.items():
                metadata[f"guardrail.{metric}.{option}"] = value
        definitions[key] = {
            "state": "ENABLED",
            "variants": {v: v for v in entry["variants"]},
            "defaultVariant": CONTROL,
            "metadata": metadata,
        }
    parsed = parse_flags(definitions, source=source, defaults=defaults)
    if parsed.errors:
        raise GuardrailError("; ".join(str(p) for p in parsed.errors))
    return list(parsed.flags)


def load_flags(
    path: Path, defaults: Mapping[str, Any] | None = None, rules: GuardrailRules | None = None
) -> list[Flag]:
    text = files.read_text(path)
    document = files.parse_text(text, source=str(path))
    definitions = document.get("flags") if isinstance(document, dict) else None
    if not isinstance(definitions, dict):
        raise GuardrailError("not a flagd flag file: no top-level `flags` mapping", source=str(path))
    parsed = parse_flags(
        definitions, source=str(path), lines=files.flag_key_lines(text), defaults=defaults, rules=rules
    )
    if parsed.errors:
        raise GuardrailError("; ".join(str(p) for p in parsed.errors))
    return list(parsed.flags)


def due_looks(looks: Sequence[Look], every_minutes: float | None) -> list[Look]:
    """The looks a live run with `metrics.every` would have judged: `cadence.cadence` decides each in turn,
    from the last judged look, exactly as `check` does from the state file's `metrics_looked_at`."""
    if every_minutes is None:
        return list(looks)
    from guardrail.cadence import cadence

    kept: list[Look] = []
    for look in looks:
        if cadence(every_minutes, kept[-1][0] if kept else None, look[0]).due:
            kept.append(look)
    return kept


def _no_halt_reason(looks: int, breaching: int, last: Sequence[Evaluation]) -> str:
    if looks == 0:
        return "no aggregates for this flag in the history"
    verdicts = ", ".join(f"{e.guardrail_id} {e.verdict.value}" for e in last) or "no guardrail evaluated"
    plural = "" if looks == 1 else "s"
    return f"no halt in {looks} look{plural} ({breaching} with a breach, none confirmed); last look: {verdicts}"


def replay(
    flags: Sequence[Flag], looks: Sequence[Look], records: list[dict[str, Any]] | None = None
) -> list[FlagReplay]:
    """Drive the real engine look by look; a flag stops being evaluated once it would have halted.

    With `records`, append the audit records `check` would have written at each look (for the report)."""
    # A backtest judges the guardrails, not today's switch: see the module docstring.
    flags = [replace(f, enabled=True, held=False) for f in flags]
    state = State()
    halted: dict[str, tuple[datetime, str, str]] = {}
    counted: dict[str, int] = defaultdict(int)
    breaching: dict[str, int] = defaultdict(int)
    last: dict[str, list[Evaluation]] = {}
    for when, aggregates in looks:
        present = {key[0] for key in aggregates}
        active = [f for f in flags if f.key in present and f.key not in halted]
        if not active:
            continue
        decision = engine.decide(active, aggregates, state, when)
        state = decision.state
        by_flag: dict[str, list[Evaluation]] = defaultdict(list)
        for e in decision.evaluations:
            by_flag[e.flag].append(e)
        for key, evaluations in by_flag.items():
            counted[key] += 1
            breaching[key] += any(e.verdict is Verdict.BREACH for e in evaluations)
            last[key] = evaluations
        if records is not None:
            records += _records(when, decision)
        for halt in decision.halts:
            halted.setdefault(halt.flag, (when, halt.evaluation.metric, halt.reason))
    out = []
    for flag in flags:
        n = counted[flag.key]
        if flag.key in halted:
            when, metric, reason = halted[flag.key]
            out.append(FlagReplay(flag.key, when, metric, reason, n))
        else:
            out.append(
                FlagReplay(flag.key, None, None, _no_halt_reason(n, breaching[flag.key], last.get(flag.key, [])), n)
            )
    return out


def _records(when: datetime, decision: Any) -> list[dict[str, Any]]:
    from guardrail.audit import decision_line

    run_id = f"replay-{format_time(when)}"
    halting = {h.flag for h in decision.halts}
    out = [
        decision_line(run_id, when, e, "halt" if e.flag in halting and e.streak >= e.confirmations else "none", False)
        for e in decision.evaluations
    ]
    out += [
        {
            "time": format_time(when),
            "run_id": run_id,
            "type": "halt",
            "flag": h.flag,
            "action": h.action.value,
            "status": "done",
            "reason": h.reason,
            "metric": h.evaluation.metric,
            "treatment_variant": h.evaluation.treatment_variant,
            "replay": True,
        }
        for h in decision.halts
    ]
    return out


def write_report(
    out: Path, looks: Sequence[Look], results: Sequence[FlagReplay], records: list[dict[str, Any]]
) -> None:
    """The backtest as a report site: the state it would have ended with, no stale-monitor warnings."""
    from guardrail.site.build import build_from_records

    end = format_time(looks[-1][0])
    flags: dict[str, Any] = {}
    for r in results:
        if r.halted_at is not None:
            halt = next(x for x in records if x["type"] == "halt" and x["flag"] == r.flag)
            flags[r.flag] = {
                "halt": {
                    "status": "done",
                    "action": halt["action"],
                    "reason": halt["reason"],
                    "decided_at": halt["time"],
                    "metric": halt["metric"],
                    "treatment_variant": halt["treatment_variant"],
                }
            }
        else:
            flags[r.flag] = {}
    doc = {"last_run_at": end, "flags": flags}
    build_from_records(
        out,
        doc,
        records,
        now=looks[-1][0],
        stale_after=None,
        warnings=[f"a backtest (guardrail replay) of {len(looks)} looks up to {end}, not a live run"],
    )


def render_text(results: Sequence[FlagReplay], looks: Sequence[Look], source: str) -> str:
    """A small table (one row per flag), then each flag's reason in full."""
    rows = [["flag", "halted at", "metric", "looks"]]
    rows += [
        [r.flag, "no halt" if r.halted_at is None else format_time(r.halted_at), r.metric or "-", str(r.looks)]
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    span = f"{format_time(looks[0][0])} to {format_time(looks[-1][0])}"
    return "\n".join(
        [f"{source}: {len(looks)} look(s), {span}", "", *table, "", *(f"{r.flag}: {r.reason}" for r in results)]
    )


def run_replay_command(
    *, history: Path, flags: Path | None, config: Path | None, as_json: bool, report_dir: Path | None = None
) -> int:
    """Exit 1 when any flag would have halted, else 0 (2 for bad input, raised as GuardrailError)."""
    looks = read_history(history)
    defaults: Mapping[str, Any] = {}
    rules: GuardrailRules | None = None
    every: float | None = None
    if config is not None:
        from guardrail.settings import load_settings

        # Only the config's `defaults:`, `guardrails:` and `metrics.every` matter to a replay; env={} keeps
        # secrets and URLs out.
        settings = load_settings(config=config, env={})
        defaults, rules, every = settings.defaults, settings.guardrail_rules, settings.metrics_every
    recorded = len(looks)
    looks = due_looks(looks, every)
    watched = load_flags(flags, defaults, rules) if flags is not None else default_flags(looks, defaults, str(history))
    records: list[dict[str, Any]] | None = [] if report_dir is not None else None
    results = replay(watched, looks, records)
    if report_dir is not None and records is not None:
        write_report(report_dir, looks, results, records)
    if as_json:
        print(json.dumps({"flags": [r.to_json() for r in results]}, indent=2))
    else:
        note = f" (metrics.every {every:g} min: {len(looks)} of {recorded} recorded looks judged)" if every else ""
        print(render_text(results, looks, str(history) + note))
    return 1 if any(r.halted_at is not None for r in results) else 0
