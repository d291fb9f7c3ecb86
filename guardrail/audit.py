"""The audit log's lines (JSON Lines, one object per decision, halt and resume). Their keys are a
contract for the people who query the log (pinned by tests/test_audit.py; add keys, never rename).

Building a line is pure; guardrail/state.py's AuditLog appends them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from guardrail import codec
from guardrail.model import Evaluation, HaltRecord, HaltResult

DECISION_KEYS = (
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
)
HALT_KEYS = (
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
)


def _arm(a: Any) -> dict[str, Any] | None:
    return None if a is None else {"value": codec.finite(a.value), "count": a.count, "error": a.error}


def decision_line(run_id: str, now: datetime, e: Evaluation, action: str, dry_run: bool) -> dict[str, Any]:
    return {
        "time": codec.format_time(now),
        "run_id": run_id,
        "dry_run": dry_run,
        "type": "decision",
        "flag": e.flag,
        "metric": e.metric,
        "treatment_variant": e.treatment_variant,
        "control_variant": e.control_variant,
        "control": _arm(e.control),
        "treatment": _arm(e.treatment),
        "delta": codec.finite(e.delta),
        "relative_delta": codec.finite(e.relative_delta),
        "threshold": e.threshold,
        "comparison": e.comparison.value,
        "method": e.method.value,
        "verdict": e.verdict.value,
        "streak": e.streak,
        "confirmations": e.confirmations,
        "bound": codec.finite(e.bound),
        "p_value": e.p_value,
        "action": action,
        "reason": e.reason,
    }


def halt_line(run_id: str, now: datetime, result: HaltResult, record: HaltRecord) -> dict[str, Any]:
    return {
        "time": codec.format_time(now),
        "run_id": run_id,
        "dry_run": False,
        "type": "halt",
        "flag": result.flag,
        "action": result.action,
        "status": result.status.value,
        "reason": result.reason,
        "detail": result.detail,
        "metric": record.metric,
        "treatment_variant": record.treatment_variant,
        "attempt": record.attempts,
        "alert": result.alert,
        "resumed": result.resumed,
        "kind": None if result.kind is None else result.kind.value,
        "parts": None if result.parts is None else dict(result.parts),
    }
