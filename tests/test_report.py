"""The JSON document of `guardrail check --json` is a contract: its keys are pinned here."""

from __future__ import annotations

import json
import math

from guardrail import report
from guardrail.check import HaltResult, RunResult
from guardrail.model import Aggregate, Comparison, Evaluation, FlagProblem, HaltResultStatus, Method, Verdict
from tests.conftest import NOW


def result() -> RunResult:
    e = Evaluation(
        "f.k",
        "error_rate",
        "treatment",
        "control",
        Comparison.RELATIVE_INCREASE,
        0.1,
        Method.THRESHOLD,
        Verdict.BREACH,
        "why",
        Aggregate(0.0, 500),
        Aggregate(0.01, 400),
        delta=math.inf,
        relative_delta=math.inf,
        streak=2,
        confirmations=2,
    )
    return RunResult(
        now=NOW,
        dry_run=False,
        run_id="r1",
        evaluations=(e,),
        halts=(HaltResult("f.k", "revert", HaltResultStatus.DONE, "why", "PATCH applied", "sent"),),
        problems=(FlagProblem("g.k", "bad", "flags.yaml", "metadata.x", 3),),
        skipped_flags={"h.k": "disabled"},
        warnings=("w",),
    )


def test_json_keys_are_pinned() -> None:
    doc = report.to_json(result())
    assert list(doc) == [
        "version",
        "exit_code",
        "dry_run",
        "run_id",
        "now",
        "evaluations",
        "halts",
        "problems",
        "skipped_flags",
        "warnings",
        "ramps",
        "srm",
        "cadence",
    ]
    assert list(doc["evaluations"][0]) == [
        "flag",
        "metric",
        "treatment_variant",
        "control_variant",
        "verdict",
        "reason",
        "control",
        "treatment",
        "delta",
        "relative_delta",
        "threshold",
        "comparison",
        "method",
        "streak",
        "confirmations",
        "bound",
        "p_value",
    ]
    assert list(doc["evaluations"][0]["control"]) == ["value", "count", "stddev", "error"]
    assert list(doc["halts"][0]) == ["flag", "action", "status", "reason", "detail", "alert", "resumed", "parts"]
    assert list(doc["problems"][0]) == ["flag", "source", "field", "line", "severity", "message"]
    assert doc["exit_code"] == 1 and doc["now"] == "2026-11-25T12:00:00Z"


def test_json_is_strict_even_with_infinite_deltas() -> None:
    text = json.dumps(report.to_json(result()), allow_nan=False)
    assert json.loads(text)["evaluations"][0]["delta"] == "inf"


def test_text_has_every_column_and_the_why() -> None:
    text = report.to_text(result())
    assert "flag" in text and "counts c/t" in text and "streak" in text
    assert "HALTED: f.k (revert)" in text
    assert "flags.yaml:3, flag 'g.k', field 'metadata.x': bad" in text
    assert "+inf" in text and "2/2" in text
