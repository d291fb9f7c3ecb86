"""`check --metrics-file`: Prometheus textfile format, written atomically, with a counter that survives runs."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guardrail.http import HTTPFailure
from guardrail.model import (
    Aggregate,
    Comparison,
    Evaluation,
    ExitCode,
    FailureKind,
    GuardrailError,
    HaltResult,
    HaltResultStatus,
    Method,
    RunResult,
    Verdict,
)
from guardrail.selfmetrics import (
    API_ERROR_KINDS,
    api_errors,
    label_of,
    previous_halts_total,
    write_error_metrics,
    write_metrics_file,
)
from guardrail.sources import http_api, prometheus
from tests.conftest import NOW, TOKEN, flag_definition
from tests.fakeserver_faults import FaultyAPI


def evaluation(
    verdict: Verdict,
    *,
    flag: str = "a.b.c",
    control: Aggregate | None = None,
    treatment: Aggregate | None = None,
    variant: str = "treatment",
) -> Evaluation:
    return Evaluation(
        flag=flag,
        metric="error_rate",
        treatment_variant=variant,
        control_variant="control",
        comparison=Comparison.RELATIVE_INCREASE,
        threshold=0.1,
        method=Method.THRESHOLD,
        verdict=verdict,
        reason="because",
        control=control or Aggregate(0.01, 500),
        treatment=treatment or Aggregate(0.02, 500),
    )


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(path: Path, name: str, **labels: str) -> float:
    return samples(path)[(name, tuple(sorted(labels.items())))]


def prom_kind(body: Any) -> FailureKind:
    try:
        prometheus.parse_answer(body, flag="f", variant="v")
    except prometheus.NoData as exc:
        return exc.kind
    raise AssertionError("expected NoData")


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        (HTTPFailure("metrics query", "timeout").failure, "timeout"),
        (HTTPFailure("metrics query", "connection refused or unreachable").failure, "connection"),
        (HTTPFailure("metrics query", "connection reset").failure, "connection"),
        (HTTPFailure("flag API list", "transport error").failure, "connection"),
        (HTTPFailure("metrics query", "error status", status=503).failure, "status"),
        (HTTPFailure("flag API PATCH", "error status", status=403).failure, "status"),
        (http_api.parse_answer(None).kind, "invalid_answer"),
        (http_api.parse_answer({"value": None, "count": None}).kind, "invalid_answer"),
        (http_api.parse_answer({"value": "abc", "count": 3}).kind, "invalid_answer"),
        (http_api.parse_answer({"value": 0.1, "count": -5}).kind, "invalid_answer"),
        (http_api.parse_answer({"value": float("nan"), "count": 5}).kind, "invalid_answer"),
        (prom_kind({"status": "success", "warnings": ["partial"], "data": {}}), "invalid_answer"),
        (prom_kind({"status": "success", "data": {"resultType": "vector", "result": []}}), "invalid_answer"),
        (prom_kind({"status": "success", "data": {"resultType": "vector", "result": [{}, {}]}}), "invalid_answer"),
        (FailureKind.DEADLINE, "timeout"),
        (FailureKind.INTERNAL, "other"),
        (None, "other"),
    ],
)
def test_failure_kinds_map_to_stable_labels(kind: FailureKind | None, label: str) -> None:
    assert label_of(kind) == label


def test_every_failure_kind_has_a_label() -> None:
    assert {label_of(k) for k in FailureKind} <= set(API_ERROR_KINDS)


def test_api_errors_counts_each_failed_aggregate_once() -> None:
    down = Aggregate.missing("metrics query: timeout", FailureKind.TIMEOUT)
    result = RunResult(
        now=NOW,
        dry_run=False,
        run_id="r",
        evaluations=(
            # control is shared by both treatments of an A/B/n flag: one failed query, not two
            evaluation(Verdict.SKIP_NO_DATA, control=down, variant="b"),
            evaluation(Verdict.SKIP_NO_DATA, control=down, variant="c"),
            evaluation(
                Verdict.SKIP_NO_DATA, flag="x.y.z", treatment=Aggregate.missing("metrics query: answer is HTML")
            ),
            evaluation(Verdict.PASS, flag="ok.ok.ok"),
        ),
        halts=(
            HaltResult(
                "a.b.c",
                "revert",
                HaltResultStatus.FAILED,
                "r",
                detail="flag API PATCH: error status (HTTP 403)",
                kind=FailureKind.AUTH,
            ),
            HaltResult("d.e.f", "revert", HaltResultStatus.DONE, "r"),
        ),
    )
    assert api_errors(result) == {"timeout": 1, "connection": 0, "status": 1, "invalid_answer": 1, "other": 0}


def halted_result(n_done: int = 1, *, dry_run: bool = False) -> RunResult:
    status = HaltResultStatus.WOULD_HALT if dry_run else HaltResultStatus.DONE
    return RunResult(
        now=NOW,
        dry_run=dry_run,
        run_id="r",
        evaluations=(evaluation(Verdict.BREACH), evaluation(Verdict.PASS, flag="d.e.f")),
        halts=tuple(HaltResult(f"f.{i}.x", "revert", status, "why") for i in range(n_done)),
    )


def test_file_content_and_counter_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "guardrail.prom"
    write_metrics_file(path, halted_result(), duration=1.25, now=1_800_000_000.0)
    assert value(path, "guardrail_last_run_timestamp_seconds") == 1_800_000_000.0
    assert value(path, "guardrail_run_duration_seconds") == 1.25
    assert value(path, "guardrail_exit_code") == 1
    assert value(path, "guardrail_halts_total") == 1
    for verdict in Verdict:  # every verdict present, zeros included, so a rate over it never has gaps
        expected = 1 if verdict in (Verdict.BREACH, Verdict.PASS) else 0
        assert value(path, "guardrail_guardrails", verdict=verdict.value) == expected
    for kind in API_ERROR_KINDS:
        assert value(path, "guardrail_api_errors", kind=kind) == 0
    assert not any(name.endswith("_created") for name, _ in samples(path))

    write_metrics_file(path, halted_result(2), duration=0.5)
    assert value(path, "guardrail_halts_total") == 3
    write_metrics_file(path, RunResult(now=NOW, dry_run=False, run_id="r"), duration=0.5)
    assert value(path, "guardrail_halts_total") == 3 and value(path, "guardrail_exit_code") == 0
    write_metrics_file(path, halted_result(1, dry_run=True), duration=0.5)
    assert value(path, "guardrail_halts_total") == 3  # a dry run halts nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guardrail.prom"]  # no temp file left behind


def test_unreadable_previous_file_restarts_the_counter(tmp_path: Path) -> None:
    path = tmp_path / "guardrail.prom"
    path.write_text("this is {not prometheus\n")
    assert previous_halts_total(path) == 0
    write_metrics_file(path, halted_result(), duration=0.1)
    assert value(path, "guardrail_halts_total") == 1


def test_unwritable_path_warns_and_does_not_raise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    write_metrics_file(blocker / "sub" / "guardrail.prom", halted_result(), duration=0.1)
    assert "cannot write metrics file" in capsys.readouterr().err


def test_error_run_reports_its_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "m" / "guardrail.prom"  # the directory is created (a fresh volume)
    write_metrics_file(path, halted_result(2), duration=0.1)
    down = GuardrailError(
        "flag API list: connection refused or unreachable", exit_code=ExitCode.UNEVALUATED, kind=FailureKind.UNREACHABLE
    )
    write_error_metrics(path, down, duration=0.2)
    assert value(path, "guardrail_exit_code") == 3
    assert value(path, "guardrail_api_errors", kind="connection") == 1
    assert value(path, "guardrail_halts_total") == 2  # carried over
    assert value(path, "guardrail_guardrails", verdict="pass") == 0
    write_error_metrics(path, GuardrailError("locked", exit_code=ExitCode.LOCKED), duration=0.2)
    assert value(path, "guardrail_exit_code") == 5 and value(path, "guardrail_api_errors", kind="connection") == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "guardrail.prom"
    write_metrics_file(path, halted_result(), duration=0.1)
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=path.read_text(), capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.e2e
def test_check_writes_the_metrics_file(fake_api: FaultyAPI, run_cli: Any, tmp_path: Path) -> None:
    key = "checkout.payments.express-pay"
    fake_api.set_flags({key: flag_definition()})
    fake_api.set_metric(key, "control", "error_rate", 0.010, 5000)
    fake_api.set_metric(key, "treatment", "error_rate", 0.034, 5000)
    env = {"FLAG_API_URL": fake_api.url, "FLAG_API_TOKEN": TOKEN, "METRICS_API_URL": fake_api.url}
    path = tmp_path / "textfile" / "guardrail.prom"
    args = ["check", "--state", str(tmp_path / "s.json"), "--metrics-file", str(path)]
    clock = datetime.now(timezone.utc).replace(microsecond=0)
    assert run_cli(*args, "--now", (clock - timedelta(minutes=4)).isoformat(), env=env).returncode == 0
    assert value(path, "guardrail_halts_total") == 0 and value(path, "guardrail_exit_code") == 0
    assert run_cli(*args, "--now", (clock - timedelta(minutes=2)).isoformat(), env=env).returncode == 1
    assert value(path, "guardrail_halts_total") == 1 and value(path, "guardrail_exit_code") == 1
    assert value(path, "guardrail_guardrails", verdict="breach") == 1
    assert value(path, "guardrail_run_duration_seconds") > 0
    assert abs(value(path, "guardrail_last_run_timestamp_seconds") - clock.timestamp()) < 120

    fake_api.add_fault(route="query", mode="status", status=503)
    fake_api.set_flags({key: flag_definition(), "other.flag.x": flag_definition()})
    assert run_cli(*args, "--only", "other.flag.x", env=env).returncode == 3
    assert value(path, "guardrail_api_errors", kind="status") == 2  # control and treatment
    assert value(path, "guardrail_halts_total") == 1

    assert run_cli(*args, env={**env, "FLAG_API_URL": "http://127.0.0.1:9"}).returncode == 3
    assert value(path, "guardrail_exit_code") == 3 and value(path, "guardrail_api_errors", kind="connection") == 1
    assert TOKEN not in path.read_text()
