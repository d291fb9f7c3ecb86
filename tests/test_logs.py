"""`check --log-format json`: strict JSON lines on stderr, one per event, redacted."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from guardrail.check import HaltResult, RunResult
from guardrail.fakeapi import FakeAPI
from guardrail.logs import emit_error_log, emit_run_logs
from guardrail.model import (
    Aggregate,
    Comparison,
    Evaluation,
    ExitCode,
    FlagProblem,
    GuardrailError,
    HaltResultStatus,
    Method,
    Verdict,
)
from guardrail.redact import Redactor
from tests.conftest import NOW, TOKEN, flag_definition

SECRET = "hook-SECRET-0123456789"


def evaluation(
    verdict: Verdict,
    *,
    flag: str = "a.b.c",
    delta: float | None = 0.5,
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
        reason=f"{verdict.value} because",
        control=control or Aggregate(0.01, 500),
        treatment=treatment or Aggregate(0.015, 500),
        delta=delta,
        relative_delta=delta,
        streak=1,
    )


def sample_result() -> RunResult:
    return RunResult(
        now=NOW,
        dry_run=False,
        run_id="run-1",
        evaluations=(
            evaluation(Verdict.BREACH, delta=float("inf"), control=Aggregate(0.0, 500)),
            evaluation(Verdict.PASS, flag="d.e.f"),
            evaluation(
                Verdict.SKIP_NO_DATA, flag="g.h.i", delta=None, treatment=Aggregate.missing("metrics query: timeout")
            ),
        ),
        halts=(
            HaltResult("a.b.c", "revert", HaltResultStatus.FAILED, "error_rate 3x", detail=f"webhook {SECRET} refused"),
        ),
        problems=(FlagProblem("x.y.z", "must be a number", source="flags.yaml", field="metadata.x"),),
        skipped_flags={"old.flag.off": "disabled", "held.flag.one": "held by guardrail"},
        warnings=("state file was unreadable",),
    )


def strict_loads(line: str) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    loaded: dict[str, Any] = json.loads(line, parse_constant=refuse)
    return loaded


def test_one_strict_json_line_per_event() -> None:
    stream = io.StringIO()
    emit_run_logs(sample_result(), stream, redact=Redactor([SECRET]))
    lines = [strict_loads(x) for x in stream.getvalue().splitlines()]
    events = [x["event"] for x in lines]
    assert events == ["evaluation"] * 3 + ["halt", "flag_problem", "flag_not_evaluated", "warning", "run"]
    for x in lines:
        assert {"time", "level", "event", "run_id", "dry_run"} <= set(x)
        assert x["time"] == "2026-11-25T12:00:00Z" and x["run_id"] == "run-1"

    breach, passed, no_data = lines[:3]
    assert (breach["level"], passed["level"], no_data["level"]) == ("warning", "info", "warning")
    assert breach["flag"] == "a.b.c" and breach["metric"] == "error_rate" and breach["verdict"] == "breach"
    assert breach["delta"] == "inf" and breach["control"]["value"] == 0.0
    assert no_data["treatment"]["error"] == "metrics query: timeout"

    halt = lines[3]
    assert halt["level"] == "error" and halt["status"] == "failed" and halt["action"] == "revert"
    assert lines[4]["level"] == "error" and lines[4]["field"] == "metadata.x"
    assert lines[5]["flag"] == "held.flag.one"  # a merely disabled flag is not worth a line every run
    run = lines[-1]
    assert run["exit_code"] == int(ExitCode.HALT_FAILED) and run["level"] == "error"
    assert run["verdicts"] == {"breach": 1, "pass": 1, "skip:min_count": 0, "skip:warmup": 0, "skip:no_data": 1}
    assert SECRET not in stream.getvalue() and "***" in stream.getvalue()


def test_default_redactor_reads_the_contract_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_WEBHOOK_URL", SECRET)
    stream = io.StringIO()
    emit_run_logs(sample_result(), stream)
    assert SECRET not in stream.getvalue()


def test_error_line() -> None:
    stream = io.StringIO()
    error = GuardrailError(
        f"flag API list: connection refused {TOKEN}", source="http://x/v1/flags", exit_code=ExitCode.UNEVALUATED
    )
    emit_error_log(error, stream, redact=Redactor([TOKEN]), now=NOW)
    (line,) = [strict_loads(x) for x in stream.getvalue().splitlines()]
    assert line["event"] == "error" and line["level"] == "error" and line["exit_code"] == 3
    assert line["source"] == "http://x/v1/flags" and TOKEN not in stream.getvalue()


@pytest.mark.e2e
def test_check_log_format_json_end_to_end(fake_api: FakeAPI, run_cli: Any, tmp_path: Path) -> None:
    key = "checkout.payments.express-pay"
    fake_api.set_flags({key: flag_definition(extra_metadata={"guardrail.error_rate.confirmations": 1})})
    fake_api.set_metric(key, "control", "error_rate", 0.010, 5000)
    fake_api.set_metric(key, "treatment", "error_rate", 0.034, 5000)
    for arm in ("control", "treatment"):  # unit counts for the SRM gate (without them: one warning line)
        fake_api.set_metric(key, arm, "exposures", 5000, 5000)
    env = {
        "FLAG_API_URL": fake_api.url,
        "FLAG_API_TOKEN": TOKEN,
        "METRICS_API_URL": fake_api.url,
        "ALERT_WEBHOOK_URL": f"{fake_api.url}/webhook",
    }
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
    result = run_cli(
        "check",
        "--state",
        str(tmp_path / "s.json"),
        "--log-format",
        "json",
        "--json",
        "--now",
        now.isoformat(),
        env=env,
    )
    assert result.returncode == 1, result.stderr
    lines = [strict_loads(x) for x in result.stderr.splitlines()]
    assert [x["event"] for x in lines] == ["evaluation", "halt", "run"]
    assert lines[1]["status"] == "done" and lines[1]["alert"] == "sent"
    assert json.loads(result.stdout)["halts"][0]["flag"] == key  # stdout keeps the report
    assert TOKEN not in result.stderr and "/webhook" not in result.stderr

    down = run_cli(
        "check",
        "--state",
        str(tmp_path / "s.json"),
        "--log-format",
        "json",
        env={**env, "FLAG_API_URL": "http://127.0.0.1:9"},
    )
    assert down.returncode == 3
    first, *rest = down.stderr.splitlines()
    error = strict_loads(first)
    assert error["event"] == "error" and error["exit_code"] == 3 and "flag API list" in error["message"]
    assert rest and rest[-1].startswith("guardrail: error:")  # the plain message for people stays
