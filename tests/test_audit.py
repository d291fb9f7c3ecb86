"""The audit log's line keys are a contract for the people who query it: pinned here, as `--json`'s are."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from guardrail import audit
from guardrail.check import run_check
from guardrail.fakeapi import FakeAPI
from guardrail.settings import load_settings
from tests.conftest import NOW, TOKEN, flag_definition

KEY = "checkout.payments.express-pay"

DECISION = [
    "time",
    "run_id",
    "dry_run",
    "type",
    "flag",
    "metric",
    "treatment_variant",
    "control_variant",
    "control",
    "treatment",
    "delta",
    "relative_delta",
    "threshold",
    "comparison",
    "method",
    "verdict",
    "streak",
    "confirmations",
    "bound",
    "p_value",
    "action",
    "reason",
]
HALT = [
    "time",
    "run_id",
    "dry_run",
    "type",
    "flag",
    "action",
    "status",
    "reason",
    "detail",
    "metric",
    "treatment_variant",
    "attempt",
    "alert",
    "resumed",
    "kind",
    "parts",
]


def test_declared_keys_are_the_pinned_ones() -> None:
    assert list(audit.DECISION_KEYS) == DECISION and list(audit.HALT_KEYS) == HALT


def test_a_run_writes_exactly_the_pinned_keys_in_strict_json(tmp_path: Path) -> None:
    with FakeAPI(token=TOKEN, flags={KEY: flag_definition()}) as api:
        api.set_metric(KEY, "control", "error_rate", 0.0, 50_000)  # relative delta is +inf: still strict JSON
        api.set_metric(KEY, "treatment", "error_rate", 0.034, 50_000)
        env = {"FLAG_API_URL": api.url, "FLAG_API_TOKEN": TOKEN, "METRICS_API_URL": api.url}
        s = load_settings(env=env, overrides={"state_path": tmp_path / "s.json", "audit_path": tmp_path / "a.jsonl"})
        run_check(s, now=NOW)
        run_check(s, now=NOW + timedelta(minutes=2))

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    lines = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines] == ["decision", "decision", "halt"]
    for line in lines:
        assert list(line) == (DECISION if line["type"] == "decision" else HALT)
        assert line["time"].endswith("Z")
    assert lines[0]["relative_delta"] == "inf"
