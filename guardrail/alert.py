"""Slack-compatible alerts (docs/contracts.md): every number the person paged needs, in one message.

Building the payload is pure; posting it goes through the shared retrying client. The webhook URL is a
secret: errors name "alert webhook", never the URL.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from guardrail.http import HTTPFailure, RetryPolicy, request
from guardrail.model import Aggregate, Evaluation, HaltAction, Method


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "+inf (control is 0)" if value > 0 else "-inf"
    return f"{value:+.2%}"


def _agg(a: Aggregate | None) -> tuple[str, str]:
    if a is None:
        return "n/a", "n/a"
    return _num(a.value), "n/a" if a.count is None else f"{a.count:,}"


def threshold_text(e: Evaluation) -> str:
    unit = f"{e.threshold:.2%}" if e.comparison.relative else f"{e.threshold:g}"
    return f"{unit} ({e.comparison.value})"


def build_payload(
    *,
    flag: str,
    action: HaltAction,
    outcome: str,  # "halted" | "held" | "FAILED" | "would halt"
    evaluation: Evaluation,
    reason: str,
    link: str,
    detail: str = "",
) -> dict[str, Any]:
    """The alert body. Every field docs/contracts.md lists is always present."""
    e = evaluation
    treatment_value, treatment_count = _agg(e.treatment)
    control_value, control_count = _agg(e.control)
    what = "reverted to control" if action is HaltAction.REVERT else "held at its current split"
    if outcome == "FAILED":
        text = (
            f":warning: HALT FAILED: `{flag}` must be halted BY HAND ({what} was due). "
            f"{e.metric} breached its guardrail; the flag API did not apply the halt: {detail}"
        )
        color = "danger"
    elif outcome == "would halt":
        text = f":mag: DRY RUN: `{flag}` would be {what}: {e.metric} breached its guardrail"
        color = "warning"
    else:
        text = f":rotating_light: AUTO-HALT: `{flag}` {what}: {e.metric} breached its guardrail"
        color = "danger"
    fields = [
        {"title": "Guardrail metric", "value": e.metric, "short": True},
        {"title": "Treatment variant", "value": e.treatment_variant, "short": True},
        {"title": "Treatment value", "value": treatment_value, "short": True},
        {"title": "Control value", "value": control_value, "short": True},
        {"title": "Relative delta", "value": _pct(e.relative_delta), "short": True},
        {"title": "Threshold", "value": threshold_text(e), "short": True},
        {"title": "Treatment count", "value": treatment_count, "short": True},
        {"title": "Control count", "value": control_count, "short": True},
        {"title": "Consecutive breaches", "value": f"{e.streak} of {e.confirmations}", "short": True},
        {"title": "Action", "value": f"{action.value}: {outcome}", "short": True},
    ]
    if e.method is Method.SEQUENTIAL and e.bound is not None:
        fields.append(
            {"title": "Always-valid bound", "value": f"{_pct(e.bound) if e.comparison.relative else _num(e.bound)}"
             f" > threshold (p={_num(e.p_value, 3)})", "short": True}
        )
    fields += [
        {"title": "Flag key", "value": flag, "short": False},
        {"title": "Flag definition", "value": link, "short": False},
        {"title": "Reason", "value": reason, "short": False},
    ]
    if detail and outcome != "FAILED":
        fields.append({"title": "Detail", "value": detail, "short": False})
    return {
        "text": text,
        "attachments": [{"color": color, "fallback": text, "fields": fields}],
    }


async def post(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], *, policy: RetryPolicy = RetryPolicy()
) -> str | None:
    """Deliver an alert. Returns None on success, or why it failed (never containing the URL)."""
    try:
        await request(client, "POST", url, label="alert webhook", policy=policy, json=payload)
    except HTTPFailure as exc:
        return str(exc)
    return None


def mark_outcome(prepared: dict[str, Any], *, ok: bool, detail: str) -> dict[str, Any]:
    """Turn the alert prepared at decision time into the one to send once the halt's outcome is known."""
    if not prepared:
        return {}
    payload = {**prepared, "attachments": [dict(a) for a in prepared.get("attachments", [])]}
    attachment = payload["attachments"][0] if payload["attachments"] else {"fields": []}
    fields = [dict(f) for f in attachment.get("fields", [])]
    if ok:
        if detail:
            fields.append({"title": "Detail", "value": detail, "short": False})
    else:
        payload["text"] = (
            ":warning: HALT FAILED, act BY HAND: " + str(prepared.get("text", "")).split(": ", 1)[-1]
            + f". The flag API did not apply the halt: {detail}"
        )
        for f in fields:
            if f.get("title") == "Action":
                f["value"] = str(f["value"]).split(":")[0] + ": FAILED, must be done by hand"
        fields.append({"title": "Error", "value": detail, "short": False})
        attachment["color"] = "danger"
    attachment["fields"] = fields
    payload["attachments"] = [attachment]
    payload.setdefault("text", "")
    return payload
