"""`check --metrics-file PATH`: the run's own health in Prometheus textfile-collector format.

node_exporter's textfile collector reads `*.prom` files from a directory
(https://github.com/prometheus/node_exporter#textfile-collector); prometheus_client's
`write_to_textfile` writes a temp file beside PATH and renames it over PATH, so the collector never
reads half a file (its temp name does not end in `.prom`, so it is never collected either).

Series (one file per guardrail instance; with --shard give each shard its own file and a distinct
`instance`/`job` at scrape time, or the series collide):

- guardrail_last_run_timestamp_seconds  gauge: when the run finished (wall clock). Alert when
  `time() - guardrail_last_run_timestamp_seconds > 600`: the monitor is not running.
- guardrail_run_duration_seconds        gauge: how long the run took.
- guardrail_guardrails{verdict}         gauge: evaluations of this run per verdict, every verdict present.
- guardrail_halts_total                 counter: halts carried out, over the life of this file.
- guardrail_api_errors{kind}            gauge: metric queries and halt calls of this run that failed, by
  kind (timeout | connection | status | invalid_answer | other), every kind present.
- guardrail_exit_code                   gauge: the run's exit code (0 ok, 1 halted, 2 config, 3 data
  unavailable, 4 halt failed, 5 locked).

Why the counter is read back from the previous file: each run is a new process, so a counter must carry
its value from somewhere. The file itself is that place (no sidecar to keep in step, nothing in the
state file that the engine does not need). A deleted or unreadable file restarts it at 0, which
Prometheus's rate()/increase() read as an ordinary counter reset.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from guardrail.model import ExitCode, FailureKind, GuardrailError, HaltResultStatus, RunResult, Verdict

API_ERROR_KINDS = ("timeout", "connection", "status", "invalid_answer", "other")
HALTS_TOTAL = "guardrail_halts_total"

# The `kind` label of guardrail_api_errors: a stable, small set for dashboards, read from the failure kind
# every failed aggregate and halt carries (never from its text).
_LABEL = {
    FailureKind.TIMEOUT: "timeout",
    FailureKind.DEADLINE: "timeout",
    FailureKind.UNREACHABLE: "connection",
    FailureKind.SERVER_ERROR: "status",
    FailureKind.AUTH: "status",
    FailureKind.REFUSED: "status",
    FailureKind.NOT_FOUND: "status",
    FailureKind.CONFLICT: "status",
    FailureKind.BAD_ANSWER: "invalid_answer",
    FailureKind.INTERNAL: "other",
}


def label_of(kind: FailureKind | None) -> str:
    return _LABEL.get(kind, "other") if kind is not None else "other"


def api_errors(result: RunResult) -> dict[str, int]:
    """Failed metric queries (each aggregate once, though control is shared by every treatment) and
    failed halt calls of one run, by kind."""
    failures: dict[tuple[str, str, str], str] = {}
    for e in result.evaluations:
        if e.verdict is not Verdict.SKIP_NO_DATA:
            continue
        for variant, agg in ((e.control_variant, e.control), (e.treatment_variant, e.treatment)):
            if agg is not None and agg.error is not None:
                failures[(e.flag, variant, e.metric)] = label_of(agg.kind)
    counts = dict.fromkeys(API_ERROR_KINDS, 0)
    for kind in failures.values():
        counts[kind] += 1
    for h in result.halts:
        if h.status == HaltResultStatus.FAILED:
            counts[label_of(h.kind)] += 1
    return counts


def previous_halts_total(path: Path) -> float:
    """The counter's value in the file the previous run wrote; 0 when there is none (a counter reset)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text("utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == HALTS_TOTAL and sample.value >= 0:
                    return float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return 0.0


class _RunCollector(Collector):
    """A fixed snapshot of one run. Built as metric families rather than Gauge/Counter objects: those
    would add a `_created` series holding this short process's start time, which means nothing here."""

    def __init__(
        self,
        *,
        finished: float,
        duration: float,
        verdicts: dict[str, int],
        halts_total: float,
        errors: dict[str, int],
        exit_code: int,
    ) -> None:
        self.finished = finished
        self.duration = duration
        self.verdicts = verdicts
        self.halts_total = halts_total
        self.errors = errors
        self.exit_code = exit_code

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "guardrail_last_run_timestamp_seconds",
            "Unix time at which the last guardrail check run finished.",
            value=self.finished,
        )
        yield GaugeMetricFamily(
            "guardrail_run_duration_seconds", "Duration of the last guardrail check run.", value=self.duration
        )
        verdicts = GaugeMetricFamily(
            "guardrail_guardrails", "Guardrail evaluations of the last run, by verdict.", labels=["verdict"]
        )
        for verdict, n in self.verdicts.items():
            verdicts.add_metric([verdict], n)
        yield verdicts
        yield CounterMetricFamily(
            "guardrail_halts", "Flags halted or held by guardrail (cumulative).", value=self.halts_total
        )
        errors = GaugeMetricFamily(
            "guardrail_api_errors",
            "Failed metric queries and flag API halt calls in the last run, by kind.",
            labels=["kind"],
        )
        for kind, n in self.errors.items():
            errors.add_metric([kind], n)
        yield errors
        yield GaugeMetricFamily(
            "guardrail_exit_code", "Exit code of the last guardrail check run.", value=self.exit_code
        )


def _write(path: Path, collector: _RunCollector) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # e.g. a fresh PersistentVolumeClaim
        write_to_textfile(str(path), registry)
    except OSError as exc:
        # The run's result matters more than its metrics: warn, and keep the run's exit code and output.
        print(f"guardrail: warning: cannot write metrics file {path}: {exc.strerror or exc}", file=sys.stderr)


def write_metrics_file(path: Path, result: RunResult, *, duration: float, now: float | None = None) -> None:
    """Write the metrics of one finished run to PATH, atomically. Never raises for an unwritable PATH."""
    done = sum(1 for h in result.halts if h.status == HaltResultStatus.DONE)  # a dry run's would_halt is not a halt
    verdicts = {v.value: 0 for v in Verdict}
    for e in result.evaluations:
        verdicts[e.verdict.value] += 1
    _write(
        path,
        _RunCollector(
            finished=time.time() if now is None else now,
            duration=duration,
            verdicts=verdicts,
            halts_total=previous_halts_total(path) + done,
            errors=api_errors(result),
            exit_code=int(result.exit_code),
        ),
    )


def write_error_metrics(path: Path, error: GuardrailError, *, duration: float, now: float | None = None) -> None:
    """A run that stopped before deciding (config error, flag source unreachable, lock held) still
    reports its exit code, so a dashboard shows why rather than silence."""
    errors = dict.fromkeys(API_ERROR_KINDS, 0)
    if error.exit_code is ExitCode.UNEVALUATED:  # the flag source could not be read
        errors[label_of(error.kind)] += 1
    _write(
        path,
        _RunCollector(
            finished=time.time() if now is None else now,
            duration=duration,
            verdicts={v.value: 0 for v in Verdict},
            halts_total=previous_halts_total(path),
            errors=errors,
            exit_code=int(error.exit_code),
        ),
    )
