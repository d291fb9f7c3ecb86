"""The Prometheus source against a real Prometheus server scraping real (generated) traffic.

One module-wide stack: three traffic generators (tests/trafficgen.py), one per flag, and a `prometheus`
process on 127.0.0.1 scraping them every second. Then:
  - PrometheusSource itself, called from Python, against the live server (numbers and oddities);
  - the installed `guardrail check` command as a subprocess, with the documented configs/prometheus.yaml
    pointed at the server: an A/A flag never halts, a 3x error rate breaches then halts (the flags file
    itself is rewritten), and the quantile and mean guardrails report exactly what PromQL says.
Bounded: the stack waits at most 60 s for data; the whole module takes about half a minute.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail.config import format_time
from guardrail.http import make_client
from guardrail.model import Aggregate, MetricQuery
from guardrail.sources.prometheus import PrometheusSource, parse_prometheus_config
from tests.conftest import clean_env, guardrail_command
from tests.prom_fixtures import PrometheusServer, prometheus_binary
from tests.trafficgen import TrafficGenerator

pytestmark = [pytest.mark.prometheus, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "configs" / "prometheus.yaml"

AA = "search.ranking.aa-model"  # same error rate in both arms
BAD = "checkout.payments.express-pay"  # treatment errors at 3x control's rate
LAT = "catalog.images.lazy-load"  # slower treatment, for the latency guardrails
WINDOW = "30s"
RPS = 1000.0  # per variant: ~200 errors per arm in 10 s at 2 %, so an A/A cannot cross +50 % by chance
MIN_REQUESTS = 8000  # per arm in the window before the tests start


@dataclass
class Stack:
    prom: PrometheusServer
    generators: dict[str, TrafficGenerator]
    ready_after: float


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("prometheus binary not installed: `apt-get install prometheus` (CI's .ci/run does)")
    generators = {
        AA: TrafficGenerator(AA, error_rates={"control": 0.02, "treatment": 0.02}, rps=RPS, seed=11, duration=150),
        BAD: TrafficGenerator(BAD, error_rates={"control": 0.01, "treatment": 0.03}, rps=RPS, seed=12, duration=150),
        LAT: TrafficGenerator(
            LAT,
            error_rates={"control": 0.01, "treatment": 0.01},
            latencies={"control": 0.12, "treatment": 0.15},
            rps=500,
            seed=13,
            duration=150,
        ),
    }
    prom: PrometheusServer | None = None
    try:
        for gen in generators.values():
            gen.start()
        started = time.monotonic()
        server = prom = PrometheusServer(
            binary, tmp_path_factory.mktemp("prometheus"), [g.target for g in generators.values()]
        ).start()

        def enough() -> bool:
            for key, gen in generators.items():
                for variant in ("control", "treatment"):
                    n = server.scalar(
                        f'sum(increase(http_requests_total{{flag="{key}",variant="{variant}"}}[{WINDOW}]))'
                    )
                    if n is None or n < MIN_REQUESTS * gen.rps / RPS:
                        return False
            return True

        server.wait_until(enough, timeout=60, what="samples for both arms of every flag")
        yield Stack(server, generators, time.monotonic() - started)
    finally:
        if prom is not None:
            prom.stop()
        for gen in generators.values():
            gen.stop()


def instant(seconds_ago: float = 2.0) -> datetime:
    """A moment just past, so every scrape up to it has been ingested: a query at that instant made
    later (here, by the test) sees exactly the samples guardrail saw."""
    now = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def next_second() -> None:
    """Wait into the next wall-clock second. A run stamps its look with the time to the second, and a
    second look at the same instant is taken for a retried run and never counted twice (engine.py), so
    back-to-back runs here must not share a second, as cron runs two minutes apart never do."""
    time.sleep(1.05 - datetime.now(timezone.utc).microsecond / 1e6)


def sel(flag: str, variant: str) -> str:
    return f'flag="{flag}",variant="{variant}"'


# Written out by hand, not rendered from the templates, so the comparison is independent of them.
def direct_promql(metric: str, flag: str, variant: str) -> tuple[str, str]:
    s, w = sel(flag, variant), WINDOW
    count = f"sum(increase(http_request_duration_seconds_count{{{s}}}[{w}]))"
    if metric == "error_rate":
        return (
            f"sum(rate(http_request_errors_total{{{s}}}[{w}])) / sum(rate(http_requests_total{{{s}}}[{w}]))",
            f"sum(increase(http_requests_total{{{s}}}[{w}]))",
        )
    if metric == "latency_mean_ms":
        return (
            f"1000 * sum(rate(http_request_duration_seconds_sum{{{s}}}[{w}])) / "
            f"sum(rate(http_request_duration_seconds_count{{{s}}}[{w}]))",
            count,
        )
    assert metric == "p95_latency_ms"
    return (
        f"1000 * histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{{s}}}[{w}])))",
        count,
    )


def assert_matches_promql(
    prom: PrometheusServer, metric: str, flag: str, variant: str, at: str, value: float | None, count: int | None
) -> None:
    value_q, count_q = direct_promql(metric, flag, variant)
    expected_value = prom.scalar(value_q, at=at)
    expected_count = prom.scalar(count_q, at=at)
    assert expected_value is not None and expected_count is not None
    assert value is not None and math.isclose(value, expected_value, rel_tol=1e-9, abs_tol=1e-12), (
        f"{metric}@{variant}: guardrail {value} != PromQL {expected_value} at {at}"
    )
    assert count == round(expected_count), f"{metric}@{variant}: count {count} != PromQL {expected_count}"


def example_section(prom: PrometheusServer) -> dict[str, Any]:
    """The documented example config, pointed at the test server."""
    doc = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    return {**doc["metrics"], "url": prom.url}


# ---- the source, called directly ----------------------------------------------------------------------


def query_source(
    prom: PrometheusServer, queries: list[MetricQuery], section: dict[str, Any] | None = None
) -> list[Aggregate]:
    config = parse_prometheus_config(section or example_section(prom), source=str(EXAMPLE_CONFIG))

    async def go() -> list[Aggregate]:
        async with make_client(timeout=5.0) as client:
            source = PrometheusSource(config, client)
            return list(await asyncio.gather(*(source.query(q) for q in queries)))

    return asyncio.run(go())


def test_source_reads_all_three_metric_kinds_from_real_prometheus(stack: Stack) -> None:
    end = instant()
    at = format_time(end)
    metrics = ("error_rate", "latency_mean_ms", "p95_latency_ms")
    queries = [MetricQuery(LAT, v, m, WINDOW, end) for m in metrics for v in ("control", "treatment")]
    results = query_source(stack.prom, queries)
    for q, agg in zip(queries, results, strict=True):
        assert agg.usable, f"{q.metric}@{q.variant}: {agg.error}"
        assert_matches_promql(stack.prom, q.metric, LAT, q.variant, at, agg.value, agg.count)
    by = {(q.metric, q.variant): agg for q, agg in zip(queries, results, strict=True)}
    # The generator's latencies are log-normal with medians 120 ms and 150 ms (sigma 0.3): p95 ~ 197 ms
    # and ~ 246 ms, blurred by bucket interpolation. Proves the query measures what we think it does.
    p95_c, p95_t = by[("p95_latency_ms", "control")].value, by[("p95_latency_ms", "treatment")].value
    assert p95_c is not None and p95_t is not None
    assert 150 < p95_c < 260 and 190 < p95_t < 320 and p95_t > p95_c
    mean_c = by[("latency_mean_ms", "control")].value
    assert mean_c is not None and 110 < mean_c < 140  # mean of the log-normal: 120 * exp(0.045) ~ 125.5
    assert by[("error_rate", "control")].count == by[("latency_mean_ms", "control")].count


def test_source_turns_real_prometheus_oddities_into_no_data(stack: Stack) -> None:
    s = 'flag="$flag",variant="$variant"'
    section = {
        "url": stack.prom.url,
        "queries": {
            "ok": {
                "value": f"sum(rate(http_requests_total{{{s}}}[$window]))",
                "count": f"sum(increase(http_requests_total{{{s}}}[$window]))",
            },
            "nan": {
                "value": f"sum(http_requests_total{{{s}}}) * 0 / 0",
                "count": f"sum(increase(http_requests_total{{{s}}}[$window]))",
            },
            "many": {
                "value": 'rate(http_requests_total{variant="$variant"}[$window])',
                "count": 'sum(increase(http_requests_total{variant="$variant"}[$window]))',
            },
            "broken": {
                "value": 'sum(rate(http_requests_total{variant="$variant"}))',
                "count": 'sum(increase(http_requests_total{variant="$variant"}[$window]))',
            },
        },
    }
    end = instant()
    names = ["ok", "nan", "many", "broken", "ok"]
    flags = [BAD, BAD, BAD, BAD, "no.such.flag"]
    queries = [MetricQuery(f, "treatment", m, WINDOW, end) for m, f in zip(names, flags, strict=True)]
    ok, nan, many, broken, empty = query_source(stack.prom, queries, section)
    assert ok.usable and ok.value is not None and ok.value > 100
    assert nan.error == "nan value query: value is NaN (no traffic in the window?)"
    assert many.error is not None and "query returned 3 series" in many.error and "sum()" in many.error
    assert broken.error is not None and broken.error.startswith("broken value query: Prometheus error (bad_data)")
    assert "range vector" in broken.error  # Prometheus's own words: expected type range vector in call to rate
    assert empty.error is not None and "no series for flag=no.such.flag variant=treatment: empty result" in empty.error


# ---- the installed command ------------------------------------------------------------------------------


def flag_file(path: Path, key: str, guardrails: dict[str, float]) -> Path:
    # The threshold rule on a short window: these tests are about PromQL values and the two-look halt path.
    metadata: dict[str, Any] = {
        "owner": "e2e",
        "experiment_type": "ab",
        "warmup_minutes": 0,
        "guardrail.method": "threshold",
    }
    for metric, threshold in guardrails.items():
        metadata[f"guardrail.{metric}.comparison"] = "relative_increase"
        metadata[f"guardrail.{metric}.threshold"] = threshold
        metadata[f"guardrail.{metric}.window"] = WINDOW
        metadata[f"guardrail.{metric}.min_count"] = 100
    doc = {
        "flags": {
            key: {
                "state": "ENABLED",
                "variants": {"treatment": True, "control": False},
                "defaultVariant": "control",
                "targeting": {"fractional": [{"var": "targetingKey"}, ["treatment", 50], ["control", 50]]},
                "metadata": metadata,
            }
        }
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Cli:
    def __init__(self, tmp_path: Path, prom: PrometheusServer, flags: Path) -> None:
        self.tmp_path, self.flags = tmp_path, flags
        self.config = tmp_path / "guardrail.yaml"
        self.config.write_text(yaml.safe_dump({"metrics": example_section(prom)}, sort_keys=False))

    def run(self, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        command = guardrail_command()
        env = {k: v for k, v in clean_env().items() if not k.startswith("PROMETHEUS_")}
        if command[0] == sys.executable:  # not installed: run the package from this checkout
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [
                *command,
                "check",
                "--config",
                str(self.config),
                "--flags",
                str(self.flags),
                "--state",
                str(self.tmp_path / "state.json"),
                "--audit",
                str(self.tmp_path / "audit.jsonl"),
                "--json",
                *extra,
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.tmp_path,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        try:
            doc = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"no JSON (exit {proc.returncode}): {proc.stdout!r} {proc.stderr!r}") from None
        return proc, doc


def test_aa_flag_never_halts(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(tmp_path, stack.prom, flag_file(tmp_path / "flags.yaml", AA, {"error_rate": 0.5}))
    for run in range(4):
        proc, doc = cli.run()
        assert proc.returncode == 0, (run, proc.stderr, doc)
        assert doc["exit_code"] == 0 and doc["halts"] == []
        (e,) = doc["evaluations"]
        assert e["verdict"] == "pass", e
        assert e["control"]["count"] > 1000 and e["treatment"]["count"] > 1000
        next_second()
    assert yaml.safe_load(cli.flags.read_text())["flags"][AA]["state"] == "ENABLED"


def test_three_times_the_error_rate_breaches_then_halts(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(tmp_path, stack.prom, flag_file(tmp_path / "flags.yaml", BAD, {"error_rate": 0.5}))

    first, doc = cli.run()
    assert first.returncode == 0, (first.stderr, doc)
    (e,) = doc["evaluations"]
    assert (e["flag"], e["metric"], e["verdict"], e["streak"]) == (BAD, "error_rate", "breach", 1), e
    assert 1.0 < e["relative_delta"] < 3.5, e  # 1 % vs 3 %: about +200 %
    assert doc["halts"] == []
    assert yaml.safe_load(cli.flags.read_text())["flags"][BAD]["state"] == "ENABLED"

    next_second()
    second, doc = cli.run()
    assert second.returncode == 1, (second.stderr, doc)
    assert doc["exit_code"] == 1
    (e,) = doc["evaluations"]
    assert (e["verdict"], e["streak"]) == ("breach", 2), e
    (halt,) = doc["halts"]
    assert (halt["flag"], halt["action"], halt["status"]) == (BAD, "revert", "done"), halt
    assert "error_rate" in halt["reason"]
    halted = yaml.safe_load(cli.flags.read_text())["flags"][BAD]
    assert halted["state"] == "DISABLED" and halted["defaultVariant"] == "control"


def test_latency_guardrails_report_exactly_what_promql_says(stack: Stack, tmp_path: Path) -> None:
    # Thresholds far above noise: this test is about the values matching PromQL, not about a verdict.
    # (error_rate at 0.5 breached on noise about once in a hundred runs: 1 % errors in a short window.)
    guardrails = {"p95_latency_ms": 1.0, "latency_mean_ms": 1.0, "error_rate": 3.0}
    cli = Cli(tmp_path, stack.prom, flag_file(tmp_path / "flags.yaml", LAT, guardrails))
    # A pinned instant in the recent past: the test's own queries at that `time` must see the same samples.
    proc, doc = cli.run("--now", format_time(instant()))
    assert proc.returncode == 0, (proc.stderr, doc)
    at = doc["now"]
    seen = set()
    for e in doc["evaluations"]:
        assert e["verdict"] == "pass", e
        for arm, variant in (("control", e["control_variant"]), ("treatment", e["treatment_variant"])):
            agg = e[arm]
            assert_matches_promql(stack.prom, e["metric"], LAT, variant, at, agg["value"], agg["count"])
            seen.add(e["metric"])
    assert seen == set(guardrails)
    p95 = next(e for e in doc["evaluations"] if e["metric"] == "p95_latency_ms")
    assert p95["treatment"]["value"] > p95["control"]["value"]  # 150 ms vs 120 ms medians


# ---- grouped templates: the same numbers in a handful of queries -----------------------------------------


def test_grouped_templates_give_the_per_series_numbers_in_one_query_per_metric_and_role(stack: Stack) -> None:
    from guardrail.model import AggregateKey
    from guardrail.sources import fetch_plan

    grouped_doc = yaml.safe_load((REPO / "configs" / "prometheus-grouped.yaml").read_text())
    end = instant()
    metrics = ("error_rate", "latency_mean_ms", "p95_latency_ms")
    plan: list[tuple[AggregateKey, MetricQuery]] = [
        ((f, v, m, WINDOW), MetricQuery(f, v, m, WINDOW, end))
        for m in metrics
        for f in (AA, BAD, LAT)
        for v in ("control", "treatment")
    ]

    def run(section: dict[str, Any]) -> tuple[dict[AggregateKey, Aggregate], int]:
        config = parse_prometheus_config({**section, "url": stack.prom.url}, source="configs/prometheus-grouped.yaml")

        async def go() -> tuple[dict[AggregateKey, Aggregate], int]:
            async with make_client(timeout=5.0) as client:
                source = PrometheusSource(config, client)
                return await fetch_plan(source, plan), source.requests

        return asyncio.run(go())

    grouped, grouped_requests = run(grouped_doc["metrics"])
    per_series, per_series_requests = run(example_section(stack.prom))
    assert grouped_requests == 2 * len(metrics)  # value + count per metric, for 3 flags x 2 arms
    assert per_series_requests == 2 * len(plan)
    # One `series` template per metric: value and count in a single query, told apart by a `stat` label.
    queries = grouped_doc["metrics"]["queries"]
    combined = {
        m: {
            "series": f'label_replace({q["value"]}, "stat", "value", "", "") or '
            f'label_replace({q["count"]}, "stat", "count", "", "")'
        }
        for m, q in queries.items()
    }
    single, single_requests = run({**grouped_doc["metrics"], "queries": combined})
    assert single_requests == len(metrics)
    assert single == grouped
    for key, agg in grouped.items():
        other = per_series[key]
        assert agg.usable and other.usable, (key, agg.error, other.error)
        assert agg.count == other.count, key
        assert agg.value is not None and other.value is not None
        assert math.isclose(agg.value, other.value, rel_tol=1e-9), (key, agg.value, other.value)


# ---- the quantile alternative: the share of requests slower than a bucket boundary ----------------------


def documented_slow_share_query() -> dict[str, str]:
    """The `slow_request_share` query exactly as docs/statistics.md gives it (so the doc is what is tested)."""
    text = (REPO / "docs" / "statistics.md").read_text()
    section = text.split("## Quantiles: test the share above a bucket boundary", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    query: dict[str, str] = yaml.safe_load(block)["slow_request_share"]
    return query


def test_the_documented_bucket_share_is_a_proportion_real_prometheus_answers_exactly(stack: Stack) -> None:
    from guardrail.config import parse_flag
    from guardrail.model import Method, MetricKind

    documented = documented_slow_share_query()
    assert 'le="0.5"' in documented["value"]
    # The generator's latencies (log-normal, medians 120 / 150 ms, sigma 0.3) are rarely above 0.5 s; its
    # 0.25 s bucket boundary gives shares of ~0.7 % and ~4.4 %, so the same query moves its boundary there.
    query = {k: v.replace('le="0.5"', 'le="0.25"') for k, v in documented.items()}
    section = {**example_section(stack.prom), "queries": {"slow_request_share": query}}
    end = instant()
    at = format_time(end)
    queries = [MetricQuery(LAT, v, "slow_request_share", WINDOW, end) for v in ("control", "treatment")]
    shares = query_source(stack.prom, queries, section)
    for variant, agg in zip(("control", "treatment"), shares, strict=True):
        assert agg.usable, agg.error
        s = sel(LAT, variant)
        # Independently: the requests above 0.25 s over all requests, from the cumulative buckets' counts.
        slow = stack.prom.scalar(
            f"sum(increase(http_request_duration_seconds_count{{{s}}}[{WINDOW}])) - "
            f'sum(increase(http_request_duration_seconds_bucket{{{s},le="0.25"}}[{WINDOW}]))',
            at=at,
        )
        total = stack.prom.scalar(f"sum(increase(http_request_duration_seconds_count{{{s}}}[{WINDOW}]))", at=at)
        assert slow is not None and total is not None and total > 1000
        assert agg.value is not None and math.isclose(agg.value, slow / total, rel_tol=1e-9, abs_tol=1e-12)
        assert agg.count == round(total) and 0.0 <= agg.value <= 1.0
    control, treatment = (a.value for a in shares)
    assert control is not None and treatment is not None
    assert 0.001 < control < 0.02 and 0.02 < treatment < 0.08  # ~0.7 % and ~4.4 %: the slower arm shows it
    # As the docs say: declared a proportion, it takes the default (sequential) test; as a quantile it could not.
    metadata = {
        "experiment_type": "ab",
        "guardrail.slow_request_share.kind": "proportion",
        "guardrail.slow_request_share.comparison": "relative_increase",
        "guardrail.slow_request_share.threshold": 0.1,
    }
    definition = {
        "state": "ENABLED",
        "variants": {"treatment": True, "control": False},
        "defaultVariant": "control",
        "targeting": {"fractional": [{"var": "targetingKey"}, ["treatment", 50], ["control", 50]]},
        "metadata": metadata,
    }
    flag, problems = parse_flag(LAT, definition)
    assert flag is not None and not problems, problems
    (declared,) = flag.guardrails
    assert declared.kind is MetricKind.PROPORTION and declared.method is Method.SEQUENTIAL
    # The same metric declared as a quantile under the sequential test is refused, naming the field.
    quantile = {**definition, "metadata": {**metadata, "guardrail.slow_request_share.kind": "quantile",
                                           "guardrail.slow_request_share.method": "sequential"}}  # fmt: skip
    refused, why = parse_flag(LAT, quantile)
    assert refused is None or not refused.guardrails
    assert any("bucket" in p.message for p in why), why
