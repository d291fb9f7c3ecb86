"""Benchmark one `guardrail check` run over hundreds of experiments against the one-at-a-time baseline.

    .venv/bin/python benchmarks/run.py            # prints a Markdown table, writes benchmarks/results.{md,json}

What it does, all against the project's own fake API (guardrail/fakeapi.py, with the tests' latency injection)
on 127.0.0.1, run as a separate process (`python -m tests.fakeserver_faults --latency`) so that the server does not
share a GIL with this driver or with the command under test:

1. `guardrail check --dry-run` wall time (the installed command, as cron runs it; flags from the fake flag
   API, METRICS_API_URL at the fake API): 200 ENABLED A/B flags x (3 guardrails + the `exposures` the
   sample-ratio check reads, on by default) x 2 arms = 1,600 metric queries;
2. the naive approach on the same 1,600 queries: one httpx.AsyncClient, each query awaited before the
   next (run inside this driver, so its interpreter start-up is not counted: the speed-up is a lower bound);
3. what the fake API itself can serve: the same queries over raw keep-alive sockets, no HTTP library, at
   the default concurrency (so a slow client is not mistaken for a slow server);
4. `check --dry-run` wall time per `--concurrency` (to choose the default);
5. `guardrail --help` start-up beside `python -c pass` (hyperfine when installed, else a timed loop);
6. peak RSS of `guardrail check --dry-run` at 200 and 2,000 flags, each run its own process (os.wait4).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

HERE = Path(__file__).resolve().parent
METRICS = ("error_rate", "crash_rate", "timeout_rate")
# Per A/B flag and arm: its guardrails, and the `exposures` the sample-ratio check reads (on by default).
QUERIED_PER_FLAG = len(METRICS) + 1
NOW = "2026-11-25T12:00:00Z"  # flags start 2026-11-20: no warmup, the same windows every run
ENV_KEYS = (
    "FLAG_API_URL",
    "FLAG_API_TOKEN",
    "METRICS_API_URL",
    "ALERT_WEBHOOK_URL",
    "GUARDRAIL_STATE",
    "GUARDRAIL_AUDIT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)
RUN_TIMEOUT = 300.0  # seconds for any one subprocess: a hung run fails the benchmark, it never stalls it


# ---- data ----------------------------------------------------------------------------------------------


def fleet(count: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`count` ENABLED A/B flags with 3 flat-spelled guardrails each, and both arms' aggregates.

    Every 50th treatment is 2x worse, which the default (sequential) test does not yet call a breach at one
    look of 5,000 units an arm: the dry run decides every guardrail, halts nothing and exits 0, as a healthy
    fleet's run does. Both arms also report 5,000 `exposures` for the sample-ratio check."""
    flags: dict[str, Any] = {}
    series: list[dict[str, Any]] = []
    for i in range(count):
        key = f"team{i % 17:02d}.experiment-{i:05d}"
        metadata: dict[str, Any] = {
            "owner": f"team{i % 17:02d}",
            "experiment_type": "ab",
            "started_at": "2026-11-20T09:00:00Z",
        }
        for metric in METRICS:
            metadata[f"guardrail.{metric}.comparison"] = "relative_increase"
            metadata[f"guardrail.{metric}.threshold"] = 0.10
        flags[key] = {
            "state": "ENABLED",
            "variants": {"control": False, "treatment": True},
            "defaultVariant": "control",
            "targeting": {"fractional": [{"var": "targetingKey"}, ["treatment", 50], ["control", 50]]},
            "metadata": metadata,
        }
        treatment = 0.02 if i % 50 == 49 else 0.0101
        for metric in METRICS:
            series.append({"flag": key, "variant": "control", "metric": metric, "value": 0.01, "count": 5000})
            series.append({"flag": key, "variant": "treatment", "metric": metric, "value": treatment, "count": 5000})
        for variant in ("control", "treatment"):  # units per arm for the sample-ratio check: a 50/50 split
            series.append({"flag": key, "variant": variant, "metric": "exposures", "value": 5000.0, "count": 5000})
    return flags, series


# ---- processes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    wall: float  # seconds, spawn to exit
    maxrss_kb: int  # the child's own peak resident set (os.wait4 reports it for that child alone)
    returncode: int
    stdout: Path
    stderr: Path
    cpu: float = 0.0  # the child's user + system CPU seconds (os.wait4)


def guardrail_command() -> list[str]:
    """The installed console script beside this interpreter (what cron runs), else `python -m guardrail`."""
    script = Path(sys.executable).parent / "guardrail"
    return [str(script)] if script.exists() else [sys.executable, "-m", "guardrail"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(extra)
    return env


def run_measured(cmd: Sequence[str], *, env: dict[str, str], cwd: Path, tag: str) -> Measured:
    """Run one command to completion; its output goes to files (a pipe could fill and stall it)."""
    out, err = cwd / f"{tag}.out", cwd / f"{tag}.err"
    with out.open("wb") as fo, err.open("wb") as fe:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        killer = threading.Timer(RUN_TIMEOUT, proc.kill)
        killer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return Measured(wall, int(usage.ru_maxrss), proc.returncode, out, err, usage.ru_utime + usage.ru_stime)


@contextmanager
def fake_api(
    workdir: Path, name: str, flags: dict[str, Any], series: list[dict[str, Any]], latency: float
) -> Iterator[str]:
    """`python -m tests.fakeserver_faults` in its own process; yields its URL, stops it on exit."""
    flags_file, metrics_file = workdir / f"{name}-flags.json", workdir / f"{name}-metrics.json"
    port_file = workdir / f"{name}.url"
    flags_file.write_text(json.dumps({"flags": flags}), "utf-8")
    metrics_file.write_text(json.dumps(series), "utf-8")
    log = (workdir / f"{name}-server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakeserver_faults",
            "--latency",
            str(latency),
            "--port-file",
            str(port_file),
            "--flags",
            str(flags_file),
            "--metrics",
            str(metrics_file),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
        cwd=Path(__file__).resolve().parents[1],  # `-m tests.fakeserver_faults` imports from the repository root
    )
    try:
        for _ in range(300):  # up to 30 s for 2,000 flags' worth of set_metric calls
            if port_file.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        if not port_file.exists():
            raise RuntimeError(f"fake API {name} did not start; see {workdir / (name + '-server.log')}")
        url = port_file.read_text("utf-8").strip()
        if urlsplit(url).hostname != "127.0.0.1":
            raise RuntimeError(f"fake API listens on {url}, not loopback")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# ---- what is measured -----------------------------------------------------------------------------------


def check_cmd(concurrency: int | None = None, *extra: str) -> list[str]:
    args = [*guardrail_command(), "check", "--dry-run", "--now", NOW, *extra]
    return args + (["--concurrency", str(concurrency)] if concurrency else [])


def verify_run(url: str, workdir: Path, count: int) -> dict[str, Any]:
    """One `check --dry-run --json` first: the timed runs mean something only if every guardrail was
    decided from fetched data (no skip:no_data) and each query reached the server exactly once."""
    before = len(control_get(url, "requests"))
    m = run_measured(
        check_cmd(None, "--json"), env=clean_env(FLAG_API_URL=url, METRICS_API_URL=url), cwd=workdir, tag="verify"
    )
    after = control_get(url, "requests")
    doc = json.loads(m.stdout.read_text("utf-8"))
    verdicts: dict[str, int] = {}
    for e in doc["evaluations"]:
        verdicts[e["verdict"]] = verdicts.get(e["verdict"], 0) + 1
    queries = sum(1 for r in after[before:] if r["path"] == "/query")
    expected = count * len(METRICS)
    expected_queries = count * QUERIED_PER_FLAG * 2
    if m.returncode != 0 or sum(verdicts.values()) != expected or set(verdicts) - {"pass", "breach"}:
        raise RuntimeError(
            f"check did not decide every guardrail: exit {m.returncode}, {verdicts}, "
            f"stderr: {m.stderr.read_text('utf-8')[-500:]}"
        )
    if queries != expected_queries:
        raise RuntimeError(f"expected {expected_queries} metric queries at the server, saw {queries}")
    return {"evaluations": expected, "verdicts": verdicts, "metric_queries": queries}


def control_get(url: str, what: str) -> list[dict[str, Any]]:
    import httpx

    response = httpx.get(f"{url}/_control/{what}", timeout=30)
    response.raise_for_status()
    body: list[dict[str, Any]] = response.json()
    return body


def query_params(series: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"flag": s["flag"], "variant": s["variant"], "metric": s["metric"], "window": "5m"} for s in series]


async def how_to_baseline(url: str, params: list[dict[str, str]]) -> float:
    """The naive monitor loop: one client, each query awaited before the next is sent."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        start = time.perf_counter()
        for p in params:
            resp = await client.get(f"{url}/query", params=p)
            resp.raise_for_status()
            resp.json()
        return time.perf_counter() - start


async def raw_socket_capacity(url: str, params: list[dict[str, str]], concurrency: int) -> float:
    """The same queries over `concurrency` keep-alive sockets with no HTTP library: what the server can do."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pending = iter(params)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for p in pending:  # shared: each query is sent once; every worker ends with the iterator
                writer.write(f"GET /query?{urlencode(p)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"fake API answered {head[:40]!r}")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
        finally:
            writer.close()
            await writer.wait_closed()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(params)))))
    return time.perf_counter() - start


def startup(runs: int, workdir: Path) -> dict[str, Any]:
    """`guardrail --help` beside `python -c pass`, with this same interpreter."""
    commands = {"python -c pass": [sys.executable, "-c", "pass"], "guardrail --help": [*guardrail_command(), "--help"]}
    hyperfine = shutil.which("hyperfine")
    samples: dict[str, list[float]] = {}
    if hyperfine:
        export = workdir / "hyperfine.json"
        subprocess.run(
            [
                hyperfine,
                "--shell=none",
                "--warmup",
                "3",
                "--runs",
                str(runs),
                "--style",
                "none",
                "--export-json",
                str(export),
                *(" ".join(c) for c in commands.values()),
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            timeout=RUN_TIMEOUT,
        )
        for name, result in zip(commands, json.loads(export.read_text("utf-8"))["results"], strict=True):
            samples[name] = list(result["times"])
    else:
        for name in commands:
            samples[name] = []
        for i in range(runs + 3):  # alternate the two so drift in machine load hits both alike
            for name, cmd in commands.items():
                start = time.perf_counter()
                subprocess.run(
                    cmd, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT
                )
                if i >= 3:  # the first three warm the page cache
                    samples[name].append(time.perf_counter() - start)
    return {"tool": "hyperfine" if hyperfine else "timed loop", "samples": samples}


# ---- summaries ------------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    samples: list[float]
    unit: str  # "s" | "MB"
    note: str = ""
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = {"median": statistics.median(self.samples), "min": min(self.samples), "max": max(self.samples)}

    @property
    def median(self) -> float:
        return self.stats["median"]

    def cells(self) -> list[str]:
        f = fmt_mb if self.unit == "MB" else fmt_s
        spread = f"{f(self.stats['min'])} – {f(self.stats['max'])}"
        return [self.what, str(len(self.samples)), f(self.median), spread, self.note]


def fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def fmt_mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def timed(label: str, fn: Callable[[], float], repeats: int) -> list[float]:
    samples = []
    for i in range(repeats):
        samples.append(fn())
        print(f"  {label} {i + 1}/{repeats}: {fmt_s(samples[-1])}", file=sys.stderr, flush=True)
    return samples


# ---- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flags", type=int, default=200, help="ENABLED flags, 3 guardrails each (default 200)")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the fake API waits per request")
    parser.add_argument("--repeats", type=int, default=9, help="timed `check --dry-run` runs")
    parser.add_argument("--baseline-repeats", type=int, default=3, help="sequential baseline runs (~25 s each)")
    parser.add_argument("--sweep", default="8,16,32,64,128,256", help="--concurrency values to time")
    parser.add_argument("--sweep-repeats", type=int, default=3)
    parser.add_argument("--startup-runs", type=int, default=30)
    parser.add_argument("--rss-flags", default="200,2000", help="fleet sizes for peak RSS")
    parser.add_argument("--rss-repeats", type=int, default=3)
    parser.add_argument(
        "--default-concurrency",
        type=int,
        default=64,
        help="the concurrency the server-capacity probe uses (guardrail's default)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="writes OUT.md and OUT.json")
    args = parser.parse_args(argv)
    if min(args.repeats, args.baseline_repeats, args.sweep_repeats, args.startup_runs, args.rss_repeats) < 1:
        parser.error("every repeat count must be at least 1")
    sweep = [int(c) for c in args.sweep.split(",") if c]
    rss_sizes = [int(n) for n in args.rss_flags.split(",") if n]
    queries = args.flags * QUERIED_PER_FLAG * 2
    command = " ".join([".venv/bin/python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])

    import httpx  # only for the baseline and the control plane, after argument errors are reported

    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        "flags": args.flags,
        "guardrails_per_flag": len(METRICS),
        "metric_queries": queries,
        "latency_s": args.latency,
        "server": "python -m guardrail.fakeapi (separate process, ThreadingHTTPServer)",
    }
    print(
        f"guardrail benchmark: {args.flags} flags x ({len(METRICS)} guardrails + exposures) x 2 arms = {queries} "
        f"metric queries at "
        f"{args.latency * 1000:.0f} ms; {meta['machine']}",
        file=sys.stderr,
    )

    results: dict[str, Any] = {"meta": meta}
    with tempfile.TemporaryDirectory(prefix="guardrail-bench-") as tmp:
        workdir = Path(tmp)
        flags, series = fleet(args.flags)
        params = query_params(series)
        with fake_api(workdir, "main", flags, series, args.latency) as url:
            env = clean_env(FLAG_API_URL=url, METRICS_API_URL=url)
            results["verify"] = verify_run(url, workdir, args.flags)
            print(f"  verified: {results['verify']}", file=sys.stderr)

            def one_check(concurrency: int | None = None, flags_file: Path | None = None) -> float:
                extra = ["--flags", str(flags_file)] if flags_file else []
                run_env = clean_env(METRICS_API_URL=url) if flags_file else env
                m = run_measured(check_cmd(concurrency, *extra), env=run_env, cwd=workdir, tag="check")
                if m.returncode != 0:
                    raise RuntimeError(f"check exited {m.returncode}: {m.stderr.read_text('utf-8')[-500:]}")
                return m.wall

            check_samples = timed("check --dry-run", one_check, args.repeats)
            file_samples = timed(
                "check --dry-run --flags FILE",
                functools.partial(one_check, None, workdir / "main-flags.json"),
                args.repeats,
            )
            baseline = timed(
                "sequential baseline", lambda: asyncio.run(how_to_baseline(url, params)), args.baseline_repeats
            )
            capacity = timed(
                "fake API capacity", lambda: asyncio.run(raw_socket_capacity(url, params, args.default_concurrency)), 3
            )
            sweep_samples = {
                c: timed(f"check --concurrency {c}", functools.partial(one_check, c), args.sweep_repeats) for c in sweep
            }

        boot = startup(args.startup_runs, workdir)
        rss: dict[int, list[Measured]] = {n: [] for n in rss_sizes}
        for n in rss_sizes:
            f, s = fleet(n)
            with fake_api(workdir, f"rss{n}", f, s, args.latency) as url:
                for i in range(args.rss_repeats):
                    m = run_measured(
                        check_cmd(), env=clean_env(FLAG_API_URL=url, METRICS_API_URL=url), cwd=workdir, tag=f"rss{n}"
                    )
                    if m.returncode != 0:
                        raise RuntimeError(f"check at {n} flags exited {m.returncode}")
                    rss[n].append(m)
                    print(
                        f"  peak RSS at {n} flags {i + 1}/{args.rss_repeats}: {fmt_mb(m.maxrss_kb)} ({fmt_s(m.wall)})",
                        file=sys.stderr,
                        flush=True,
                    )

    floor = math.ceil(queries / args.default_concurrency) * args.latency
    check_row = Row(
        f"`guardrail check --dry-run` ({args.flags} flags, {queries:,} queries + 1 flag list)",
        check_samples,
        "s",
        "installed command, new process each run, default concurrency",
    )
    file_row = Row(
        f"the same, flags read from a {args.flags}-flag JSON file",
        file_samples,
        "s",
        "`--flags FILE` instead of the flag API; metrics as above",
    )
    base_row = Row(
        f"sequential baseline, one query at a time ({queries:,} queries)",
        baseline,
        "s",
        "one httpx.AsyncClient, each query awaited in turn; start-up not counted",
    )
    cap_row = Row(
        f"fake API alone: {queries:,} queries on {args.default_concurrency} raw sockets",
        capacity,
        "s",
        f"no HTTP library; the latency floor is {fmt_s(floor)}",
    )
    py, helped = boot["samples"]["python -c pass"], boot["samples"]["guardrail --help"]
    py_row = Row("`python -c pass`", py, "s", boot["tool"])
    help_row = Row("`guardrail --help`", helped, "s", boot["tool"])
    rss_rows = [
        Row(
            f"peak RSS, `check --dry-run` at {n:,} flags",
            [float(m.maxrss_kb) for m in rss[n]],
            "MB",
            f"{n * QUERIED_PER_FLAG * 2:,} queries; wall {fmt_s(statistics.median(m.wall for m in rss[n]))}",
        )
        for n in rss_sizes
    ]
    speedup = base_row.median / check_row.median
    startup_extra = help_row.median - py_row.median
    rss_ratio = rss_rows[-1].median / rss_rows[0].median if len(rss_rows) > 1 else float("nan")

    header = ["measurement", "runs", "median", "min – max", "how"]
    rows = [check_row, file_row, base_row, cap_row, help_row, py_row, *rss_rows]
    main_table = table(header, [r.cells() for r in rows])
    sweep_rows = [
        [
            str(c) + (" (default)" if c == args.default_concurrency else ""),
            str(len(v)),
            fmt_s(statistics.median(v)),
            f"{fmt_s(min(v))} – {fmt_s(max(v))}",
            fmt_s(math.ceil(queries / c) * args.latency),
        ]
        for c, v in sweep_samples.items()
    ]
    sweep_table = table(["--concurrency", "runs", "median", "min – max", "latency floor"], sweep_rows)
    targets = [
        (f"{queries:,} queries: at least 20x faster than sequential", f"{speedup:.1f}x", speedup >= 20),
        (f"{queries:,} queries: under 1.5 s wall in total", fmt_s(check_row.median), check_row.median < 1.5),
        ("`guardrail --help` under 0.3 s more than `python -c pass`", f"+{fmt_s(startup_extra)}", startup_extra < 0.3),
        ("peak RSS at 2,000 flags under 2x that at 200", f"{rss_ratio:.2f}x", rss_ratio < 2),
    ]
    target_table = table(["target", "measured", "met"], [[t, v, "yes" if ok else "**no**"] for t, v, ok in targets])
    markdown = (
        "\n\n".join(
            [
                f"Measured {meta['date']} with `{command}` ({meta['machine']}; Python {meta['python']}, "
                f"httpx {meta['httpx']}). Fake API: {meta['server']}, {args.latency * 1000:.0f} ms per request.",
                main_table,
                "Targets:",
                target_table,
                "`guardrail check --dry-run` by `--concurrency`:",
                sweep_table,
            ]
        )
        + "\n"
    )
    print(markdown)
    results.update(
        {
            "rows": [asdict(r) for r in rows],
            "sweep": {str(c): v for c, v in sweep_samples.items()},
            "startup_tool": boot["tool"],
            "targets": [{"target": t, "measured": v, "met": ok} for t, v, ok in targets],
            "speedup": speedup,
            "startup_extra_s": startup_extra,
            "rss_ratio": rss_ratio,
        }
    )
    args.out.with_suffix(".md").write_text(markdown, "utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 0 if all(ok for _t, _v, ok in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
