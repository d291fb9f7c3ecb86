"""Batch vs per-series: queries per run, wall time and peak RSS of `guardrail check` over 200, 2,000 and 10,000 flags,
against a real Prometheus and a real PostgreSQL.

    .venv/bin/python benchmarks/batch.py                 # writes benchmarks/batch-results.{md,json}
    .venv/bin/python benchmarks/batch.py --sizes 200     # a quick look

Each flag has 3 guardrails (error_rate, crash_rate, timeout_rate; relative_increase 0.10, threshold rule).

Prometheus: the series (4 counters per arm) are backfilled with `promtool tsdb create-blocks-from openmetrics`
at a fixed past instant, and a `prometheus` on 127.0.0.1 serves them; `guardrail check --dry-run --now <that
instant>` (the installed command, its own process) runs with configs/prometheus-grouped.yaml-style templates
(batch) and with per-series templates. Queries per run are read from Prometheus's own counter
`prometheus_http_requests_total{handler="/api/v1/query"}` on its /metrics, before and after.

PostgreSQL: tests/servers/postgres.py starts one; exposures and events for every arm are loaded with COPY;
`guardrail check --dry-run` runs with the examples/sql templates (batch). Statements per run are read from
`pg_stat_database` (transactions, each statement runs in its own). The per-series baseline is what a source
without batching would send: the same query filtered to one (flag, variant), one statement per series, run
in this driver on a pool of the same concurrency (its interpreter start-up is not counted).

Peak RSS is the command's own (os.wait4). Nothing here decides a test; numbers go to the docs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.prom_fixtures import free_port, prometheus_binary  # noqa: E402
from tests.servers import postgres  # noqa: E402
from tests.sql_data import sqlalchemy_url  # noqa: E402

METRICS = ("error_rate", "crash_rate", "timeout_rate")
COUNTERS = {
    "error_rate": "http_request_errors",
    "crash_rate": "http_request_crashes",
    "timeout_rate": "http_request_timeouts",
}
T = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
NOW = "2026-11-25T12:00:00Z"
RUN_TIMEOUT = 600.0


def flags_doc(count: int, since_start: bool = False) -> dict[str, Any]:
    """The window comes from the config's `defaults` (5m for Prometheus, 60m for SQL): the 10,000-flag file must
    stay under guardrail's flag-file size limit. `since_start`: sequential guardrails, each flag's experiment
    started at one of 50 minutes of the data's hour, so a run asks 50 distinct since-start windows."""
    flags: dict[str, Any] = {}
    for i in range(count):
        started = f"2026-11-25T11:{i % 50:02d}:00Z" if since_start else "2026-11-20T09:00:00Z"
        metadata: dict[str, Any] = {"owner": "team", "experiment_type": "ab", "started_at": started}
        for metric in METRICS:
            metadata[f"guardrail.{metric}.comparison"] = "relative_increase"
            metadata[f"guardrail.{metric}.threshold"] = 0.10
            if since_start:
                metadata[f"guardrail.{metric}.method"] = "sequential"
        flags[key(i)] = {
            "state": "ENABLED",
            "variants": {"control": False, "treatment": True},
            "defaultVariant": "control",
            "metadata": metadata,  # no targeting: guardrail does not read the split, and the file stays small
        }
    return {"flags": flags}


def key(i: int) -> str:
    return f"team{i % 17:02d}.experiment-{i:05d}"


def dry_run_args(config: Path, work: Path) -> list[str]:
    """The measured run: `check --dry-run` on the fleet in `work`, its self-metrics (verdicts) to run.prom."""
    return [
        "check",
        "--dry-run",
        "--config",
        str(config),
        "--flags",
        str(work / "flags.json"),
        "--now",
        NOW,
        "--metrics-file",
        str(work / "run.prom"),
    ]


def run_command(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, int, int, float]:
    """(wall seconds, exit code, peak RSS bytes, CPU seconds) of the installed command in its own process.
    CPU time (user + system) is what the run costs on a machine of its own; wall time on a shared one is
    mostly waiting for a core."""
    command = [str(Path(sys.executable).parent / "guardrail"), *args]
    started = time.perf_counter()
    with (cwd / "out.txt").open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        deadline = started + RUN_TIMEOUT
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                raise RuntimeError(f"{args} did not finish in {RUN_TIMEOUT:g} s")
            time.sleep(0.01)
    wall = time.perf_counter() - started
    return wall, os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def verdicts(path: Path, out: Path) -> tuple[int, int]:
    """(decided, evaluations) from the run's self-metrics file (`--metrics-file`): the run prints text, as cron
    logs it, rather than a --json document that would itself cost memory."""
    from prometheus_client.parser import text_string_to_metric_families

    if not path.exists():
        raise RuntimeError(f"guardrail check wrote no metrics file:\n{out.read_text(errors='replace')[-2000:]}")
    counts = {
        sample.labels["verdict"]: int(sample.value)
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
        if sample.name == "guardrail_guardrails"
    }
    total = sum(counts.values())
    return total - sum(n for v, n in counts.items() if v.startswith("skip")), total


# ---- Prometheus ------------------------------------------------------------------------------------------


def openmetrics(count: int) -> str:
    """4 counters per arm, 3 samples 2 minutes apart ending 30 s before T. Every 50th treatment is 2x worse."""
    lines: list[str] = []
    stamps = [T.timestamp() - s for s in (270, 150, 30)]
    families = {"http_requests": 1.0, **{c: 0.01 for c in COUNTERS.values()}}
    for family, rate in families.items():
        lines.append(f"# TYPE {family} counter")
        for i in range(count):
            for variant in ("control", "treatment"):
                worse = 2.0 if variant == "treatment" and i % 50 == 49 and family != "http_requests" else 1.0
                for n, stamp in enumerate(stamps):
                    value = n * 2500 * rate * worse
                    lines.append(f'{family}_total{{flag="{key(i)}",variant="{variant}"}} {value:g} {stamp:.0f}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def prom_config(mode: str, url: str) -> dict[str, Any]:
    queries: dict[str, Any] = {}
    by = "sum by (flag, variant)"
    for metric, counter in COUNTERS.items():
        if mode == "batch (series)":
            value = f"{by} (rate({counter}_total[$window])) / {by} (rate(http_requests_total[$window]))"
            count = f"{by} (increase(http_requests_total[$window]))"
            queries[metric] = {
                "series": f'label_replace({value}, "stat", "value", "", "") or '
                f'label_replace({count}, "stat", "count", "", "")'
            }
        elif mode == "batch":
            queries[metric] = {
                "value": f"sum by (flag, variant) (rate({counter}_total[$window])) / "
                "sum by (flag, variant) (rate(http_requests_total[$window]))",
                "count": "sum by (flag, variant) (increase(http_requests_total[$window]))",
            }
        else:
            s = 'flag="$flag",variant="$variant"'
            queries[metric] = {
                "value": f"sum(rate({counter}_total{{{s}}}[$window])) / sum(rate(http_requests_total{{{s}}}[$window]))",
                "count": f"sum(increase(http_requests_total{{{s}}}[$window]))",
            }
    return {"metrics": {"source": "prometheus", "url": url, "timeout": 30, "queries": queries}}


def prom_queries_served(url: str) -> float:
    """Instant queries Prometheus has answered, from its own /metrics (all status codes)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "prometheus_http_requests_total" and sample.labels.get("handler") == "/api/v1/query":
                total += sample.value
    return total


def bench_prometheus(count: int, work: Path, per_series: bool) -> list[dict[str, Any]]:
    import yaml

    binary = prometheus_binary()
    if binary is None:
        raise SystemExit("prometheus is not installed (apt-get install prometheus)")
    promtool = str(Path(binary).parent / "promtool")
    work.mkdir(parents=True)
    (work / "series.om").write_text(openmetrics(count))
    started = time.perf_counter()
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(work / "series.om"), str(work / "tsdb")],
        check=True,
        capture_output=True,
        timeout=RUN_TIMEOUT,
    )
    backfill = time.perf_counter() - started
    (work / "series.om").unlink()
    (work / "flags.json").write_text(json.dumps(flags_doc(count), separators=(",", ":")))
    port = free_port()
    (work / "prometheus.yml").write_text("global: {scrape_interval: 1m}\n")
    with (work / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=3650d",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        modes = ["batch (series)", "batch", "per-series"] if per_series else ["batch (series)", "batch"]
        for index, mode in enumerate(modes):
            config = work / f"config-{index}.yaml"
            config.write_text(yaml.safe_dump(prom_config(mode, url)))
            before = prom_queries_served(url)
            wall, code, rss, cpu = run_command(dry_run_args(config, work), work)
            served = prom_queries_served(url) - before
            usable, evaluations = verdicts(work / "run.prom", work / "out.txt")
            (work / "run.prom").unlink()
            rows.append(
                {
                    "system": "prometheus",
                    "flags": count,
                    "mode": mode,
                    "queries": int(served),
                    "windows": 1,
                    "wall_s": round(wall, 2),
                    "cpu_s": round(cpu, 2),
                    "rss_mb": round(rss / 2**20, 1),
                    "exit": code,
                    "decided": usable,
                    "evaluations": evaluations,
                    "backfill_s": round(backfill, 1),
                }
            )
            print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


# ---- PostgreSQL ------------------------------------------------------------------------------------------

SQL = {
    metric: f"""WITH per_unit AS (
  SELECT x.flag, x.variant, x.unit_id,
         SUM(CASE WHEN e.name = 'request' THEN 1 ELSE 0 END) AS requests,
         SUM(CASE WHEN e.name = '{name}' THEN 1 ELSE 0 END) AS bad
  FROM exposures x
  JOIN events e ON e.unit_id = x.unit_id AND e.ts >= x.exposed_at
  WHERE e.ts >= :start AND e.ts < :end AND e.name IN ('request', '{name}'){{filter}}
  GROUP BY x.flag, x.variant, x.unit_id
)
SELECT flag, variant, CAST(SUM(bad) AS DOUBLE PRECISION) / NULLIF(SUM(requests), 0) AS value,
       SUM(requests) AS count, COUNT(*) AS units, SUM(bad) AS num_sum, SUM(bad * bad) AS num_sum_sq,
       SUM(requests) AS den_sum, SUM(requests * requests) AS den_sum_sq, SUM(bad * requests) AS num_den_sum
FROM per_unit GROUP BY flag, variant"""
    for metric, name in (("error_rate", "error"), ("crash_rate", "crash"), ("timeout_rate", "timeout"))
}
# The same, over each flag's own window: every since-start window in one statement (docs/sql.md).
WINDOWED = {
    metric: sql.replace(
        "FROM exposures x\n", "FROM guardrail_windows w\n  JOIN exposures x ON x.flag = w.flag\n"
    ).replace("WHERE e.ts >= :start", "WHERE e.ts >= w.start_ts AND e.ts < w.end_ts AND e.ts >= :start")
    for metric, sql in SQL.items()
}


def load_pg(dsn: str, count: int) -> int:
    """Per arm: 10 users with 20 requests each over the hour, 1 % of requests with each kind of failure."""
    import numpy as np
    import psycopg

    rng = np.random.default_rng(5)
    start = (T - timedelta(minutes=60)).replace(tzinfo=None)
    events = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS exposures; DROP TABLE IF EXISTS events")
        conn.execute("CREATE TABLE exposures (unit_id TEXT, flag TEXT, variant TEXT, exposed_at TIMESTAMP)")
        conn.execute("CREATE TABLE events (unit_id TEXT, ts TIMESTAMP, name TEXT, value DOUBLE PRECISION)")
        with conn.cursor() as cur:
            with cur.copy("COPY exposures FROM STDIN") as copy:
                for i in range(count):
                    for variant in ("control", "treatment"):
                        for u in range(10):
                            copy.write_row((f"{i}-{variant[0]}-{u}", key(i), variant, start - timedelta(minutes=1)))
            with cur.copy("COPY events FROM STDIN") as copy:
                for i in range(count):
                    for variant in ("control", "treatment"):
                        offsets = rng.integers(0, 3_600_000_000, 200)
                        kinds = rng.random((3, 200))
                        for u in range(10):
                            unit = f"{i}-{variant[0]}-{u}"
                            for r in range(u * 20, u * 20 + 20):
                                ts = start + timedelta(microseconds=int(offsets[r]))
                                copy.write_row((unit, ts, "request", 100.0))
                                events += 1
                                for k, name in enumerate(("error", "crash", "timeout")):
                                    if kinds[k, r] < 0.01:
                                        copy.write_row((unit, ts, name, None))
                                        events += 1
        conn.execute("CREATE INDEX ON exposures (unit_id)")
        conn.execute("CREATE INDEX ON exposures (flag, variant)")
        conn.execute("CREATE INDEX ON events (unit_id, ts)")
        conn.execute("ANALYZE")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return events


def pg_statements(dsn: str) -> int:
    """Metric statements PostgreSQL has run (pg_stat_statements: every query over `per_unit`)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%per_unit%'"
            " AND query NOT LIKE '%pg_stat_statements%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def per_series_pg(server: postgres.PostgresServer, count: int, concurrency: int = 2) -> tuple[float, int]:
    """The same query filtered to one (flag, variant), one statement per series, `concurrency` at a time."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        server.dsn().replace("postgresql://", "postgresql+psycopg://"), pool_size=concurrency, max_overflow=0
    )
    start, end = (T - timedelta(minutes=60)).replace(tzinfo=None), T.replace(tzinfo=None)
    jobs = [(m, key(i), v) for m in METRICS for i in range(count) for v in ("control", "treatment")]
    texts = {
        m: sqlalchemy.text(SQL[m].replace("{filter}", " AND x.flag = :flag AND x.variant = :variant")) for m in METRICS
    }

    def one(job: tuple[str, str, str]) -> None:
        metric, flag, variant = job
        with engine.connect() as conn:
            conn.execute(texts[metric], {"start": start, "end": end, "flag": flag, "variant": variant}).fetchall()

    async def run() -> None:
        queue = iter(jobs)

        async def worker() -> None:
            for job in queue:
                await asyncio.to_thread(one, job)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - started
    engine.dispose()
    return wall, len(jobs)


def pg_run(
    server: postgres.PostgresServer,
    work: Path,
    count: int,
    mode: str,
    templates: dict[str, str],
    since_start: bool,
    events: int,
    load: float,
) -> dict[str, Any]:
    import yaml

    (work / "flags.json").write_text(json.dumps(flags_doc(count, since_start), separators=(",", ":")))
    config = {
        "metrics": {
            "source": "sql",
            "url": sqlalchemy_url(server),
            "password_env": "BENCH_PG_PASSWORD",
            "timeout": 120,
            "total_timeout": 500,
            "queries": {m: templates[m].replace("{filter}", "") for m in METRICS},
        },
        "defaults": {"window": "60m"},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    before = pg_statements(server.dsn())
    wall, code, rss, cpu = run_command(
        dry_run_args(work / "config.yaml", work), work, env={"BENCH_PG_PASSWORD": server.password}
    )
    statements = pg_statements(server.dsn()) - before
    decided, evaluations = verdicts(work / "run.prom", work / "out.txt")
    (work / "run.prom").unlink()
    return {
        "system": "postgresql",
        "flags": count,
        "mode": mode,
        "queries": statements,
        "windows": 50 if since_start else 1,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "rss_mb": round(rss / 2**20, 1),
        "exit": code,
        "decided": decided,
        "evaluations": evaluations,
        "events": events,
        "load_s": round(load, 1),
    }


def bench_postgres(count: int, work: Path, per_series: bool, since_start_baseline: bool) -> list[dict[str, Any]]:
    work.mkdir(parents=True)
    server = postgres.start(
        work, password=secrets.token_hex(12), settings={"shared_preload_libraries": "pg_stat_statements"}
    )
    rows = []
    try:
        started = time.perf_counter()
        events = load_pg(server.dsn(), count)
        load = time.perf_counter() - started
        modes = [("batch", SQL, False), ("since-start, guardrail_windows", WINDOWED, True)]
        if since_start_baseline:  # one statement per distinct start: slow on big tables, so up to a size
            modes.insert(1, ("since-start, :start/:end", SQL, True))
        for mode, templates, since_start in modes:
            rows.append(pg_run(server, work, count, mode, templates, since_start, events, load))
            print(rows[-1], flush=True)
        if per_series:
            wall, statements = per_series_pg(server, count)
            rows.append(
                {
                    "system": "postgresql",
                    "flags": count,
                    "mode": "per-series",
                    "queries": statements,
                    "windows": 1,
                    "wall_s": round(wall, 2),
                    "cpu_s": None,
                    "rss_mb": None,
                    "exit": None,
                    "decided": None,
                    "evaluations": None,
                    "events": events,
                }
            )
            print(rows[-1], flush=True)
    finally:
        server.stop()
    return rows


# ---- report ----------------------------------------------------------------------------------------------


def markdown(rows: list[dict[str, Any]], machine: str, load: str) -> str:
    counts = [f"{n:,}" for n in sorted({r["flags"] for r in rows})]
    sizes = " and ".join([", ".join(counts[:-1]), counts[-1]] if len(counts) > 1 else counts)
    out = [
        f"# Batch vs per-series: `guardrail check` over {sizes} flags",
        "",
        f"Written by `benchmarks/batch.py` on {machine}. Each flag has 3 guardrails (error_rate, crash_rate,",
        "timeout_rate); one window per run, except the since-start rows: sequential guardrails whose experiments",
        "started at 50 different minutes (50 windows; the flags started late have too little data for min_count,",
        "the same in both modes). Wall time and peak RSS are the installed `guardrail check --dry-run`",
        "as its own process (interpreter start-up, flag parsing, engine and output included), except the",
        "PostgreSQL per-series baseline, which is the driver itself sending one statement per series",
        "(2 connections, as the SQL source's default). Queries are counted by the server (Prometheus's",
        "`prometheus_http_requests_total` on its /metrics; PostgreSQL's `pg_stat_statements`).",
        f"Load average (1 min) at the start and end: {load}; the machine was shared, so wall times are upper bounds.",
        "",
        "| system | flags | mode | queries per run | wall (s) | CPU (s) | peak RSS (MB) | guardrails decided |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rss = "" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}"
        cpu = "" if r.get("cpu_s") is None else f"{r['cpu_s']:.2f}"
        decided = "" if r["decided"] is None else f"{r['decided']:,} / {r['evaluations']:,}"
        out.append(
            f"| {r['system']} | {r['flags']:,} | {r['mode']} | {r['queries']:,} | {r['wall_s']:.2f} | {cpu} | "
            f"{rss} | {decided} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 10000])
    parser.add_argument(
        "--per-series-max", type=int, default=2000, help="run the per-series baselines only up to this many flags"
    )
    parser.add_argument(
        "--since-start-baseline-max",
        type=int,
        default=2000,
        help="run the one-statement-per-start since-start baseline only up to this many flags",
    )
    parser.add_argument("--only", choices=["prometheus", "postgresql"])
    parser.add_argument("--out", type=Path, default=HERE / "batch-results")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="guardrail-bench-") as tmp:
        for count in args.sizes:
            per_series = count <= args.per_series_max
            if args.only in (None, "prometheus"):
                rows += bench_prometheus(count, Path(tmp) / f"prom-{count}", per_series)
            if args.only in (None, "postgresql"):
                baseline = count <= args.since_start_baseline_max
                rows += bench_postgres(count, Path(tmp) / f"pg-{count}", per_series, baseline)
            args.out.with_suffix(".partial.json").write_text(json.dumps(rows, indent=2) + "\n")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    load = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
    args.out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "load_average": load, "rows": rows}, indent=2) + "\n"
    )
    args.out.with_suffix(".md").write_text(markdown(rows, machine, load))
    print(markdown(rows, machine, load))


if __name__ == "__main__":
    main()
