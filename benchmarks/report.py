"""What `guardrail check --report DIR` costs a 2,000-flag run, against the same run without it.

    .venv/bin/python benchmarks/report.py      # prints a Markdown table, writes benchmarks/report.{md,json}

Two fake APIs (python -m guardrail.fakeapi, separate processes, 20 ms per request, as benchmarks/run.py),
one per arm so that one arm's halts cannot change what the other sees, serve 2,000 ENABLED flags with
three guardrails each (benchmarks/run.py's `fleet`; the fake API answers the same counts at every look, so
the default sequential test learns nothing new after the first and no flag halts). Each arm runs the installed
`guardrail check` (not a dry run: the report is refreshed only by runs that write state) as cron would,
`--now` two minutes later each time, so every run adds a look to every chart. The arms alternate
A B B A ... so a change in the machine's load hits both alike. The first run of each arm is not timed
(the report arm's first run builds the site in full); then the median wall time of RUNS runs per arm,
and the CPU time of each (os.wait4), are compared. Also timed: `guardrail report` rebuilding the whole
site from the audit log those runs wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import clean_env, fake_api, fleet, guardrail_command, run_measured

HERE = Path(__file__).resolve().parent
START = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
FLAGS = 2000
LATENCY = 0.02


def refresh_in_process(base: Path, now: str) -> tuple[list[float], list[float], int]:
    """The refresh alone, timed in this process (CPU time, which a loaded machine disturbs far less than
    wall time): the last run's audit records folded into a copy of the site, three times."""
    from guardrail.codec import parse_time
    from guardrail.site.build import refresh_site

    lines = [json.loads(line) for line in (base / "audit.jsonl").read_text("utf-8").splitlines()]
    last_run = lines[-1]["run_id"]
    records = [r for r in lines if r.get("run_id") == last_run]
    cpu, wall = [], []
    for i in range(3):
        copy = base / f"site-copy-{i}"
        shutil.copytree(base / "site", copy)
        c0, w0 = time.process_time(), time.perf_counter()
        refresh_site(
            copy, state_path=base / "state.json", audit_path=base / "audit.jsonl", records=records, now=parse_time(now)
        )
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return cpu, wall, len(records)


def synthetic(flags: int, looks: int = 30, refreshes: int = 10) -> dict[str, Any]:
    """The refresh alone on a synthetic healthy fleet (no fake API, no runs): a site built from `looks` looks
    of `flags` flags x 3 guardrails, then `refreshes` runs' records folded in, each timed (CPU and wall)."""
    from guardrail.site.build import build_from_records, refresh_site

    def records(i: int) -> list[dict[str, Any]]:
        when = (START + timedelta(minutes=2 * i)).isoformat().replace("+00:00", "Z")
        return [
            {
                "type": "decision",
                "time": when,
                "run_id": f"r{i}",
                "flag": f"team{f % 17:02d}.experiment-{f:05d}",
                "metric": metric,
                "treatment_variant": "treatment",
                "control_variant": "control",
                "delta": 0.01 * ((f * 7 + i * 3) % 11 - 5),
                "bound": None,
                "threshold": 0.1,
                "comparison": "relative_increase",
                "method": "threshold",
                "verdict": "pass",
                "streak": 0,
                "confirmations": 2,
                "reason": "relative increase vs threshold 10.00%",
                "control": {"value": 0.01, "count": 5000},
                "treatment": {"value": 0.0101, "count": 5000},
            }
            for f in range(flags)
            for metric in ("error_rate", "crash_rate", "timeout_rate")
        ]

    work = Path(tempfile.mkdtemp(prefix="guardrail-bench-refresh-"))
    try:
        doc = {"last_run_at": None, "flags": {f"team{f % 17:02d}.experiment-{f:05d}": {} for f in range(flags)}}
        (work / "state.json").write_text(json.dumps(doc), "utf-8")
        history = [r for i in range(looks) for r in records(i)]
        build_from_records(work / "site", doc, history, now=START, stale_after=10.0)
        cpu, wall = [], []
        for i in range(looks, looks + refreshes):
            recs = records(i)
            c0, w0 = time.process_time(), time.perf_counter()
            refresh_site(
                work / "site",
                state_path=work / "state.json",
                audit_path=work / "none.jsonl",
                records=recs,
                now=START + timedelta(minutes=2 * i),
            )
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        return {"cpu": cpu, "wall": wall}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="timed runs per arm (after one untimed)")
    parser.add_argument("--flags", type=int, default=FLAGS)
    parser.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/report.*")
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="only time the refresh in-process on a synthetic healthy fleet (no fake API)",
    )
    args = parser.parse_args(argv)
    if args.synthetic:
        got = synthetic(args.flags)
        print(
            f"refresh of {args.flags} healthy flags x 3 guardrails, {len(got['cpu'])} runs: CPU median "
            f"{statistics.median(got['cpu']):.3f} s (min {min(got['cpu']):.3f}, max {max(got['cpu']):.3f}); "
            f"wall median {statistics.median(got['wall']):.3f} s (max {max(got['wall']):.3f})"
        )
        return 0

    flags, series = fleet(args.flags)
    work = Path(tempfile.mkdtemp(prefix="guardrail-bench-report-"))
    walls: dict[str, list[float]] = {"plain": [], "report": []}
    cpus: dict[str, list[float]] = {"plain": [], "report": []}
    try:
        with (
            fake_api(work, "plain", flags, series, LATENCY) as url_a,
            fake_api(work, "report", flags, series, LATENCY) as url_b,
        ):
            urls = {"plain": url_a, "report": url_b}
            for run in range(args.runs + 1):
                order = ("plain", "report") if run % 2 == 0 else ("report", "plain")
                now = (START + timedelta(minutes=2 * run)).isoformat().replace("+00:00", "Z")
                for arm in order:
                    base = work / arm
                    base.mkdir(exist_ok=True)
                    cmd = [
                        *guardrail_command(),
                        "check",
                        "--now",
                        now,
                        "--state",
                        str(base / "state.json"),
                        "--audit",
                        str(base / "audit.jsonl"),
                    ]
                    if arm == "report":
                        cmd += ["--report", str(base / "site")]
                    env = clean_env(FLAG_API_URL=urls[arm], METRICS_API_URL=urls[arm], FLAG_API_TOKEN="test-token")
                    m = run_measured(cmd, env=env, cwd=work, tag=f"{arm}-{run}")
                    if m.returncode not in (0, 1, 3):  # 3: the SRM gate finds no exposures metric here
                        raise RuntimeError(
                            f"{arm} run {run} exited {m.returncode}: {m.stderr.read_text('utf-8')[-800:]}"
                        )
                    if run > 0:
                        walls[arm].append(m.wall)
                        cpus[arm].append(m.cpu)
                    print(
                        f"run {run} {arm}: {m.wall:.2f} s wall, {m.cpu:.2f} s CPU, exit {m.returncode}", file=sys.stderr
                    )
            rebuild = run_measured(
                [
                    *guardrail_command(),
                    "report",
                    "--state",
                    str(work / "report" / "state.json"),
                    "--audit",
                    str(work / "report" / "audit.jsonl"),
                    "--out",
                    str(work / "rebuilt"),
                    "--now",
                    now,
                ],
                env=clean_env(),
                cwd=work,
                tag="rebuild",
            )
            if rebuild.returncode != 0:
                raise RuntimeError(rebuild.stderr.read_text("utf-8")[-800:])
        site = work / "report" / "site"
        refresh_cpu, refresh_wall, refresh_records = refresh_in_process(work / "report", now)
        size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        pages = len(list((site / "flags").iterdir()))
        audit_lines = sum(1 for _ in (work / "report" / "audit.jsonl").open("rb"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {arm: statistics.median(v) for arm, v in walls.items()}
    med_cpu = {arm: statistics.median(v) for arm, v in cpus.items()}
    overhead = med["report"] / med["plain"] - 1
    load = os.getloadavg()[0]
    doc = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.2f}",
        "python": platform.python_version(),
        "flags": args.flags,
        "runs_per_arm": args.runs,
        "wall_seconds": walls,
        "cpu_seconds": cpus,
        "median_wall": med,
        "median_cpu": med_cpu,
        "overhead": overhead,
        "target": 0.10,
        "met": overhead <= 0.10,
        "rebuild_seconds": rebuild.wall,
        "refresh_cpu_seconds": refresh_cpu,
        "refresh_wall_seconds": refresh_wall,
        "refresh_cpu_share": statistics.median(refresh_cpu) / med_cpu["plain"],
        "audit_lines": audit_lines,
        "site_bytes": size,
        "pages": pages,
    }
    rows = [
        (f"`check` ({doc['flags']:,} flags x 3 guardrails)", walls["plain"], cpus["plain"]),
        ("`check --report DIR` (same fleet)", walls["report"], cpus["report"]),
    ]
    lines = [
        f"Measured {doc['measured_at']} with `.venv/bin/python benchmarks/report.py` ({doc['machine']}; "
        f"Python {doc['python']}). Fake API: two `python -m guardrail.fakeapi` processes, {LATENCY * 1000:.0f} ms "
        "per request; not dry runs; each run a new look two minutes after the last.",
        "",
        "| measurement | runs | median wall | min – max wall | median CPU |",
        "|---|---|---|---|---|",
    ]
    for label, wall, cpu in rows:
        lines.append(
            f"| {label} | {len(wall)} | {statistics.median(wall):.2f} s | {min(wall):.2f} s – "
            f"{max(wall):.2f} s | {statistics.median(cpu):.2f} s |"
        )
    lines += [
        f"| the refresh alone, in-process (one run's {refresh_records:,} audit records) | "
        f"{len(refresh_cpu)} | {statistics.median(refresh_wall):.2f} s | {min(refresh_wall):.2f} s – "
        f"{max(refresh_wall):.2f} s | {statistics.median(refresh_cpu):.2f} s |",
        f"| `guardrail report` rebuilding the site from the audit log ({audit_lines:,} lines) | 1 | "
        f"{rebuild.wall:.2f} s | | |",
        "",
        f"The refresh's CPU time is **{doc['refresh_cpu_share']:.1%}** of a plain {doc['flags']:,}-flag run's CPU time "
        "(the figure that a busy machine disturbs least).",
        f"Overhead of `--report` on the median wall time: **{overhead:+.1%}** (target: at most +10 %; "
        f"{'met' if doc['met'] else 'NOT met'}). CPU: {med_cpu['report'] - med_cpu['plain']:+.2f} s per run. "
        f"Site: {pages:,} flag pages, {size / 1e6:.1f} MB including the saved histories.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        (HERE / "report.md").write_text(text, "utf-8")
        (HERE / "report.json").write_text(json.dumps(doc, indent=2) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
