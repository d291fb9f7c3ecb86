"""Where a `guardrail check` run's memory and CPU go, stage by stage, in-process.

    .venv/bin/python benchmarks/stages.py check --dry-run --config C --flags F --now 2026-11-25T12:00:00Z >/dev/null

Prints, on stderr, the resident set size (now and peak, MB) and process CPU seconds after each stage: imports,
settings and flag loading, parsing the flags, planning, fetching, deciding, the run's end, the metrics file and
the text report. `TRACE=1` adds tracemalloc's top allocation sites at the fetch and decide stages (slow: ~30x).
Numbers go to docs/performance.md; nothing here decides a test.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

TRACE = os.environ.get("TRACE") == "1"
MARKS: list[tuple[str, float, float, float]] = []
SNAPSHOTS: list[tuple[str, Any]] = []


def mark(stage: str) -> None:
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    MARKS.append((stage, rss, peak, time.process_time()))
    if TRACE and stage in ("fetched", "decided"):
        SNAPSHOTS.append((stage, tracemalloc.take_snapshot()))


def main() -> None:
    if TRACE:
        tracemalloc.start(8)
    mark("start")
    import guardrail.check as check
    import guardrail.engine as engine
    import guardrail.report as report
    import guardrail.selfmetrics as selfmetrics

    mark("guardrail imported")
    # The names check.py calls, wrapped in place (module attributes, looked up at each call).
    parse_flags, fetch_plan, decide = vars(check)["parse_flags"], vars(check)["fetch_plan"], engine.decide
    run_check, text_lines, write_metrics = check.run_check, report.text_lines, selfmetrics.write_metrics_file

    def parse_flags_(*args: Any, **kwargs: Any) -> Any:
        mark("settings read, flags loaded")
        out = parse_flags(*args, **kwargs)
        mark("flags parsed")
        return out

    async def fetch_plan_(source: Any, plan: Any) -> Any:
        mark(f"planned ({len(plan):,} aggregates)")
        out = await fetch_plan(source, plan)
        mark("fetched")
        return out

    def decide_(*args: Any, **kwargs: Any) -> Any:
        out = decide(*args, **kwargs)
        mark("decided")
        return out

    def run_check_(*args: Any, **kwargs: Any) -> Any:
        out = run_check(*args, **kwargs)
        mark("run finished")
        return out

    def write_metrics_(*args: Any, **kwargs: Any) -> None:
        write_metrics(*args, **kwargs)
        mark("metrics file written")

    def text_lines_(*args: Any, **kwargs: Any) -> Iterator[str]:
        yield from text_lines(*args, **kwargs)
        mark("text report written")

    vars(check).update(parse_flags=parse_flags_, fetch_plan=fetch_plan_, run_check=run_check_)
    engine.decide = decide_
    report.text_lines, selfmetrics.write_metrics_file = text_lines_, write_metrics_
    from guardrail.cli import app

    with contextlib.suppress(SystemExit):
        app(sys.argv[1:], standalone_mode=False)
    mark("end")
    print(f"{'stage':34} {'RSS MB':>8} {'peak MB':>8} {'CPU s':>7}", file=sys.stderr)
    for stage, rss, peak, cpu in MARKS:
        print(f"{stage:34} {rss:8.1f} {peak:8.1f} {cpu:7.2f}", file=sys.stderr)
    previous = None
    for stage, snapshot in SNAPSHOTS:
        print(f"--- allocations at {stage}", file=sys.stderr)
        stats = snapshot.compare_to(previous, "lineno") if previous else snapshot.statistics("lineno")
        for stat in stats[:12]:
            print(stat, file=sys.stderr)
        previous = snapshot


if __name__ == "__main__":
    main()
