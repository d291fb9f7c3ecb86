"""Rendering one RunResult: a rich table on a terminal, plain text in pipes and cron mail, or JSON.

The JSON document is a contract (pinned by tests/test_report.py); add keys, never rename them.
"""

from __future__ import annotations

import math
from typing import Any

from guardrail import codec
from guardrail.codec import format_time
from guardrail.model import Aggregate, Evaluation, RunResult

JSON_VERSION = 1


def evaluation_json(e: Evaluation) -> dict[str, Any]:
    return codec.evaluation_dict(e)


def to_json(result: RunResult) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "exit_code": int(result.exit_code),
        "dry_run": result.dry_run,
        "run_id": result.run_id,
        "now": format_time(result.now),
        "evaluations": [evaluation_json(e) for e in result.evaluations],
        "halts": [
            {
                "flag": h.flag,
                "action": h.action,
                "status": h.status,
                "reason": h.reason,
                "detail": h.detail,
                "alert": h.alert,
                "resumed": h.resumed,
            }
            for h in result.halts
        ],
        "problems": [
            {"flag": p.flag, "source": p.source, "field": p.field, "line": p.line, "severity": p.severity,
             "message": p.message}
            for p in result.problems
        ],
        "skipped_flags": dict(result.skipped_flags),
        "warnings": list(result.warnings),
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


COLUMNS = ("flag", "metric", "variant", "control", "treatment", "delta", "threshold", "counts c/t", "verdict",
           "streak")


def rows(result: RunResult) -> list[tuple[str, ...]]:
    return [
        (
            e.flag, e.metric, e.treatment_variant, _value(e.control), _value(e.treatment), _delta(e),
            _threshold(e), f"{_count(e.control)}/{_count(e.treatment)}", e.verdict.value,
            f"{e.streak}/{e.confirmations}",
        )
        for e in result.evaluations
    ]


def _footer(result: RunResult) -> list[str]:
    lines = []
    for e in result.evaluations:
        if e.verdict.value != "pass":
            lines.append(f"  {e.flag} {e.metric}@{e.treatment_variant}: {e.verdict.value}: {e.reason}")
    for key, why in sorted(result.skipped_flags.items()):
        if why not in ("disabled", "no guardrails"):
            lines.append(f"  {key}: not evaluated: {why}")
    for h in result.halts:
        verb = {"done": "HALTED" if h.action == "revert" else "HELD", "failed": "HALT FAILED",
                "would_halt": "WOULD HALT (dry run)"}.get(h.status, h.status)
        lines.append(f"{verb}: {h.flag} ({h.action}){' [finishing an earlier run]' if h.resumed else ''}")
        lines.append(f"  reason: {h.reason}")
        if h.detail:
            lines.append(f"  detail: {h.detail}")
        lines.append(f"  alert: {h.alert}")
    for p in result.problems:
        lines.append(f"{p.severity}: {p}")
    for w in result.warnings:
        lines.append(f"warning: {w}")
    lines.append(f"exit code {int(result.exit_code)} ({result.exit_code.name.lower()})")
    return lines


def to_text(result: RunResult) -> str:
    """Plain text for pipes, logs and cron mail: one aligned table, then what happened and why."""
    table = [COLUMNS, *rows(result)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    if not result.evaluations:
        out = ["no guardrails evaluated"]
    header = f"guardrail check at {format_time(result.now)}{' (dry run)' if result.dry_run else ''}"
    return "\n".join([header, *out, *_footer(result)])


def print_rich(result: RunResult, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"guardrail check {format_time(result.now)}{' (dry run)' if result.dry_run else ''}")
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in ("control", "treatment", "delta") else "left")
    style = {"breach": "bold red", "pass": "green"}
    for row in rows(result):
        table.add_row(*row[:-2], f"[{style.get(row[-2], 'yellow')}]{row[-2]}[/]", row[-1])
    console.print(table)
    for line in _footer(result):
        console.print(line, markup=False, highlight=False)
