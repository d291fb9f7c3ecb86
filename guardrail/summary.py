"""A Markdown summary of one `check` run for GitHub Actions' job summary (`$GITHUB_STEP_SUMMARY`).

GitHub renders the file as GitHub Flavored Markdown, HTML included, and caps it at 1 MiB per step
(docs.github.com, "Adding a job summary"). So every text from outside (flag keys, variants, reasons) is
escaped for both: HTML special characters become entities, Markdown punctuation gets a backslash, a
table cell's `|` is escaped and newlines are flattened. Rows past MAX_ROWS are counted, not listed
(halts and breaches come first, so the ones that matter are never the ones cut).
"""

from __future__ import annotations

import html
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from guardrail.check import RunResult
from guardrail.config import format_time
from guardrail.model import Evaluation, Verdict

MAX_ROWS = 500
# ASCII punctuation GFM may read as markup; `<`, `>` and `&` are turned into entities first (without `#`,
# which this would escape and so break the entity), so `<b>` shows as text.
_MD = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


def md(text: object) -> str:
    """Text from outside, safe in a GFM table cell: no markup, no HTML, no cell break."""
    flat = " ".join(str(text).split())
    return _MD.sub(r"\\\1", html.escape(flat, quote=False))


def _pct(x: float | None, relative: bool) -> str:
    if x is None:
        return "–"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:+.2%}" if relative else f"{x:+.4g}"


def _rank(e: Evaluation, halting: set[str]) -> tuple[int, str, str]:
    if e.flag in halting and e.verdict is Verdict.BREACH:
        first = 0
    elif e.verdict is Verdict.BREACH:
        first = 1
    elif e.verdict is Verdict.SKIP_NO_DATA:
        first = 2
    else:
        first = 3 if e.verdict.is_skip else 4
    return first, e.flag, e.guardrail_id


def render(result: RunResult, *, report_url: str | None = None) -> str:
    halting = {h.flag for h in result.halts}
    evaluations = sorted(result.evaluations, key=lambda e: _rank(e, halting))
    counts: dict[str, int] = {}
    for e in result.evaluations:
        counts[e.verdict.value] = counts.get(e.verdict.value, 0) + 1
    mode = " (dry run: nothing was changed)" if result.dry_run else ""
    out = [
        f"## guardrail check at {format_time(result.now)}{mode}",
        "",
        f"Exit code {int(result.exit_code)}; {len(result.evaluations)} guardrail evaluations: "
        + (", ".join(f"{n} {md(v)}" for v, n in sorted(counts.items())) or "none")
        + ".",
    ]
    if report_url:
        out.append(f"Report: {md(report_url)}")
    if result.halts:
        out += ["", "### Halts", "", "| flag | action | status | alert | reason |", "|---|---|---|---|---|"]
        out += [
            f"| {md(h.flag)} | {md(h.action)} | **{md(h.status)}** | {md(h.alert)} | {md(h.reason)} |"
            for h in result.halts
        ]
    if evaluations:
        out += [
            "",
            "### Decisions",
            "",
            "| flag | guardrail | verdict | treatment | control | harm | bound | threshold | streak |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in evaluations[:MAX_ROWS]:
            rel = e.comparison.relative
            verdict = f"**{md(e.verdict.value)}**" if e.verdict is Verdict.BREACH else md(e.verdict.value)
            t = "–" if e.treatment is None or e.treatment.value is None else f"{e.treatment.value:.4g}"
            c = "–" if e.control is None or e.control.value is None else f"{e.control.value:.4g}"
            out.append(
                f"| {md(e.flag)} | {md(e.guardrail_id)} | {verdict} | {md(t)} | {md(c)} | "
                f"{md(_pct(e.delta, rel))} | {md(_pct(e.bound, rel))} | {md(_pct(e.threshold, rel))} | "
                f"{e.streak}/{e.confirmations} |"
            )
        if len(evaluations) > MAX_ROWS:
            out.append(
                f"\n{len(evaluations) - MAX_ROWS} more decisions not listed (the table lists halts, "
                "breaches and missing data first); see the audit log."
            )
    problems = [p for p in result.problems if p.severity == "error"]
    if problems or result.warnings:
        out += ["", "### Problems and warnings", ""]
        out += [f"- {md(p)}" for p in problems] + [f"- {md(w)}" for w in result.warnings]
    return "\n".join(out) + "\n\n"


def append_step_summary(result: RunResult, *, redact: Callable[[str], str], report_url: str | None = None) -> None:
    """Append to $GITHUB_STEP_SUMMARY when GitHub Actions sets it; otherwise do nothing."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:
        with Path(target).open("a", encoding="utf-8") as fh:
            fh.write(redact(render(result, report_url=report_url)))
    except OSError as exc:
        # The run itself is done and its exit code matters more than the summary: say so, do not fail it.
        print(f"guardrail: warning: cannot append to GITHUB_STEP_SUMMARY: {exc.strerror}", file=sys.stderr)
