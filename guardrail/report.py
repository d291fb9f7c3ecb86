"""Rendering one RunResult: a rich table on a terminal, plain text in pipes and cron mail, or JSON.

The JSON document is a contract (pinned by tests/test_report.py); add keys, never rename them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from guardrail import codec
from guardrail.cadence import not_due_message
from guardrail.codec import format_time
from guardrail.model import Aggregate, Evaluation, HaltResultStatus, RampResultStatus, RunResult

JSON_VERSION = 1


def to_json(result: RunResult) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "exit_code": int(result.exit_code),
        "dry_run": result.dry_run,
        "run_id": result.run_id,
        "now": format_time(result.now),
        "evaluations": [codec.evaluation_dict(e) for e in result.evaluations],
        "halts": [{**codec.halt_dict(h), "parts": None if h.parts is None else dict(h.parts)} for h in result.halts],
        "problems": [
            {
                "flag": p.flag,
                "source": p.source,
                "field": p.field,
                "line": p.line,
                "severity": p.severity,
                "message": p.message,
            }
            for p in result.problems
        ],
        "skipped_flags": dict(result.skipped_flags),
        "warnings": list(result.warnings),
        "ramps": [
            {
                "flag": r.flag,
                "action": r.action.value,
                "status": r.status.value,
                "step": r.step,
                "share": r.share,
                "minutes_on_step": round(r.minutes_on_step, 2),
                "reason": r.reason,
                "waits_for": list(r.waits_for),
                "detail": r.detail,
                "alert": r.alert,
            }
            for r in result.ramps
        ],
        "srm": [codec.srm_dict(r) for r in result.srm],
        # Present when `metrics.every` is set: whether this run looked at the metrics (docs/sql.md).
        "cadence": None
        if result.cadence is None
        else {
            "every_minutes": result.cadence.every_minutes,
            "due": result.cadence.due,
            "last_look_at": format_time(result.cadence.last_look_at) if result.cadence.last_look_at else None,
            "next_look_at": format_time(result.cadence.next_look_at) if result.cadence.next_look_at else None,
        },
    }


def _value(a: Aggregate | None) -> str:
    if a is None or a.value is None:
        return "-"
    return f"{a.value:.4g}"


def _count(a: Aggregate | None) -> str:
    return "-" if a is None or a.count is None else f"{a.count:,}"


def _delta(e: Evaluation) -> str:
    if e.delta is None:
        return "-"
    if math.isinf(e.delta):
        return "+inf" if e.delta > 0 else "-inf"
    return f"{e.delta:+.2%}" if e.comparison.relative else f"{e.delta:+.4g}"


def _threshold(e: Evaluation) -> str:
    return f"{e.threshold:.2%}" if e.comparison.relative else f"{e.threshold:g}"


COLUMNS = ("flag", "metric", "variant", "control", "treatment", "delta", "threshold", "counts c/t", "verdict", "streak")


def rows(result: RunResult) -> list[tuple[str, ...]]:
    """The table's cells, one tuple per evaluation, each cell one visible line (`one_line`)."""
    return [_row(e) for e in result.evaluations]


def _footer(result: RunResult) -> list[str]:
    lines = []
    for e in result.evaluations:
        if e.verdict.value != "pass":
            lines.append(f"  {e.flag} {e.metric}@{e.treatment_variant}: {e.verdict.value}: {e.reason}")
    for key, why in sorted(result.skipped_flags.items()):
        if why not in ("disabled", "no guardrails"):
            lines.append(f"  {key}: not evaluated: {why}")
    for h in result.halts:
        verb = {
            HaltResultStatus.DONE: "HALTED" if h.action == "revert" else "HELD",
            HaltResultStatus.FAILED: "HALT FAILED",
            HaltResultStatus.WOULD_HALT: "WOULD HALT (dry run)",
        }.get(HaltResultStatus(h.status), str(h.status))
        lines.append(f"{verb}: {h.flag} ({h.action}){' [finishing an earlier run]' if h.resumed else ''}")
        lines.append(f"  reason: {h.reason}")
        if h.detail:
            lines.append(f"  detail: {h.detail}")
        lines.append(f"  alert: {h.alert}")
    for r in result.ramps:
        name = r.action.value.upper()
        verb = {RampResultStatus.FAILED: f"{name} FAILED", RampResultStatus.WOULD: f"WOULD {name} (dry run)"}.get(
            r.status, name
        )
        lines.append(f"RAMP {verb}: {r.flag} on step {r.step} ({r.share} %), {r.minutes_on_step:.0f} min on it")
        lines.append(f"  {'waits for' if r.waits_for else 'reason'}: {'; '.join(r.waits_for) or r.reason}")
        if r.detail:
            lines.append(f"  detail: {r.detail}")
        if r.alert != "not sent":
            lines.append(f"  alert: {r.alert}")
    for p in result.problems:
        lines.append(f"{p.severity}: {p}")
    for w in result.warnings:
        lines.append(f"warning: {w}")
    lines.append(f"exit code {int(result.exit_code)} ({result.exit_code.name.lower()})")
    return lines


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """Outside text (flag keys, variant names, reasons, server messages) as one visible line: a newline or
    an escape sequence in it must not forge a report line ("HALTED: ...") or repaint the terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _row(e: Evaluation) -> tuple[str, ...]:
    return tuple(
        one_line(c)
        for c in (
            e.flag,
            e.metric,
            e.treatment_variant,
            _value(e.control),
            _value(e.treatment),
            _delta(e),
            _threshold(e),
            f"{_count(e.control)}/{_count(e.treatment)}",
            e.verdict.value,
            f"{e.streak}/{e.confirmations}",
        )
    )


def text_lines(result: RunResult) -> Iterator[str]:
    """Plain text for pipes, logs and cron mail: one aligned table, then what happened and why.

    Line by line, in two passes over the evaluations (widths, then rows): holding every formatted row and
    the joined text at once was the largest peak of a 10,000-flag run (~40 MB of strings, docs/performance.md).
    """
    yield f"guardrail check at {format_time(result.now)}{' (dry run)' if result.dry_run else ''}"
    if result.cadence is not None and not result.cadence.due:
        yield not_due_message(result.cadence)
    elif not result.evaluations:
        yield "no guardrails evaluated"
    else:
        widths = [len(c) for c in COLUMNS]
        for e in result.evaluations:
            widths = [max(w, len(c)) for w, c in zip(widths, _row(e), strict=True)]
        for cells in (COLUMNS, *(_row(e) for e in result.evaluations)):
            yield "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()
    yield from map(one_line, _footer(result))


def to_text(result: RunResult) -> str:
    return "\n".join(text_lines(result))


def print_rich(result: RunResult, console: Any) -> None:
    from rich.table import Table

    if result.cadence is not None and not result.cadence.due:
        console.print(not_due_message(result.cadence), markup=False, highlight=False)
    table = Table(title=f"guardrail check {format_time(result.now)}{' (dry run)' if result.dry_run else ''}")
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in ("control", "treatment", "delta") else "left")
    style = {"breach": "bold red", "pass": "green"}
    from rich.markup import escape

    for row in rows(result):
        cells = [escape(one_line(c)) for c in row]  # a flag key "[red]..." is text, not markup
        table.add_row(*cells[:-2], f"[{style.get(row[-2], 'yellow')}]{cells[-2]}[/]", cells[-1])
    console.print(table)
    for line in _footer(result):
        console.print(one_line(line), markup=False, highlight=False)
