"""Slack-compatible alerts (docs/contracts.md): every number the person paged needs, in one message.

A halt's alert context (the flag, the action, the reason, a link and the evaluation that triggered it,
as JSON) is captured when the halt is decided and kept in the write-ahead state, so a halt finished by a
later run still pages with the numbers that triggered it. The message is rendered once, at send time,
from that context and the halt's outcome: there is one text per outcome, never an edit of another.

Rendering is pure; posting goes through the shared retrying client. The webhook URL is a secret: errors
name "alert webhook", never the URL. Text from outside (flag keys, variant names, reasons, error details)
is escaped for Slack's mrkdwn, so it cannot forge links or mentions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx

from guardrail import codec
from guardrail.http import HTTPFailure, RetryPolicy, request
from guardrail.model import Evaluation, HaltAction, TextEnum


class AlertOutcome(TextEnum):
    DONE = "done"  # the flag was reverted or held, and a re-read showed it
    FAILED = "failed"  # the backend did not apply it: a person must act
    WOULD_HALT = "would_halt"  # dry run


def context(
    *,
    flag: str,
    action: HaltAction,
    evaluation: Evaluation,
    reason: str,
    link: str,
    report: str | None = None,
    rollback: bool = False,
) -> dict[str, Any]:
    """What the alert needs, as strict JSON (it is kept in the state file until the alert is delivered).
    `report`: the flag's page in the report site (`report.base_url`, docs/report.md). `rollback`: a ramp's
    rollback (treatment share to 0 and revert, docs/rollouts.md), worded as such."""
    return {
        "flag": flag,
        "action": action.value,
        "reason": reason,
        "link": link,
        "evaluation": codec.evaluation_dict(evaluation),
        **({"report": report} if report else {}),
        **({"rollback": True} if rollback else {}),
    }


def escape(text: Any) -> str:
    """Slack mrkdwn control characters (https://api.slack.com/reference/surfaces/formatting#escaping). A
    backtick in outside text would end the code span a flag key is shown in: it becomes a look-alike."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "\u02cb")


def _num(value: Any, digits: int = 4) -> str:
    x = codec.number(value)
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x and abs(x) < 1e-3) else f"{x:.{digits}f}"


def _pct(value: Any) -> str:
    x = codec.number(value)
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "+inf (control is 0)" if x > 0 else "-inf"
    return f"{x:+.2%}"


def _count(arm: Any) -> str:
    count = arm.get("count") if isinstance(arm, Mapping) else None
    return "n/a" if not isinstance(count, int) else f"{count:,}"


def _value(arm: Any) -> str:
    return _num(arm.get("value")) if isinstance(arm, Mapping) else "n/a"


def threshold_text(threshold: float, comparison: str) -> str:
    unit = f"{threshold:.2%}" if comparison.startswith("relative") else f"{threshold:g}"
    return f"{unit} ({comparison})"


_WHAT = {HaltAction.REVERT: "reverted to control", HaltAction.HOLD: "held at its current split"}
_TODO = {HaltAction.REVERT: "revert it to control", HaltAction.HOLD: "hold it at its current split"}


def headline(ctx: Mapping[str, Any], outcome: AlertOutcome, detail: str = "") -> str:
    flag, action = escape(ctx["flag"]), HaltAction(ctx["action"])
    metric = escape(ctx["evaluation"]["metric"])
    if ctx.get("rollback") and action is HaltAction.REVERT:
        return _rollback_headline(flag, metric, outcome, detail)
    if outcome is AlertOutcome.FAILED:
        return (
            f":warning: HALT FAILED: `{flag}` was NOT changed: {_TODO[action]} BY HAND. {metric} breached "
            f"its guardrail, and the flag backend did not apply the change: {escape(detail)}"
        )
    if outcome is AlertOutcome.WOULD_HALT:
        return f":mag: DRY RUN: `{flag}` would be {_WHAT[action]}: {metric} breached its guardrail"
    return f":rotating_light: AUTO-HALT: `{flag}` {_WHAT[action]}: {metric} breached its guardrail"


def _rollback_headline(flag: str, metric: str, outcome: AlertOutcome, detail: str) -> str:
    """A ramp's rollback is two writes; a failed one may be half done, and the detail says which half."""
    if outcome is AlertOutcome.FAILED:
        return (
            f":warning: ROLLBACK FAILED: `{flag}` was NOT fully rolled back: set its treatment share to 0 and "
            f"revert it to control BY HAND. {metric} breached its guardrail, and the flag backend did not apply "
            f"both changes: {escape(detail)}"
        )
    if outcome is AlertOutcome.WOULD_HALT:
        return f":mag: DRY RUN: `{flag}` would be rolled back (treatment share 0, control): {metric} breached"
    return (
        f":rotating_light: AUTO-ROLLBACK: `{flag}` rolled back: treatment share 0 and reverted to control: "
        f"{metric} breached its guardrail"
    )


def render(ctx: Mapping[str, Any], outcome: AlertOutcome, detail: str = "") -> dict[str, Any]:
    """The webhook body for one outcome. Every field the contract names is always present."""
    e = ctx["evaluation"]
    action = HaltAction(ctx["action"])
    text = headline(ctx, outcome, detail)
    status = {
        AlertOutcome.DONE: "done",
        AlertOutcome.FAILED: "FAILED, must be done by hand",
        AlertOutcome.WOULD_HALT: "dry run, nothing changed",
    }[outcome]
    fields = [
        {"title": "Guardrail metric", "value": escape(e["metric"]), "short": True},
        {"title": "Treatment variant", "value": escape(e["treatment_variant"]), "short": True},
        {"title": "Treatment value", "value": _value(e.get("treatment")), "short": True},
        {"title": "Control value", "value": _value(e.get("control")), "short": True},
        {"title": "Relative delta", "value": _pct(e.get("relative_delta")), "short": True},
        {"title": "Threshold", "value": threshold_text(float(e["threshold"]), str(e["comparison"])), "short": True},
        {"title": "Treatment count", "value": _count(e.get("treatment")), "short": True},
        {"title": "Control count", "value": _count(e.get("control")), "short": True},
        {"title": "Consecutive breaches", "value": f"{e['streak']} of {e['confirmations']}", "short": True},
        {"title": "Action", "value": f"{action.value}: {status}", "short": True},
    ]
    if e.get("method") == "sequential" and codec.number(e.get("bound")) is not None:
        bound = _pct(e["bound"]) if str(e["comparison"]).startswith("relative") else _num(e["bound"])
        fields.append(
            {
                "title": "Always-valid bound",
                "value": f"{bound} > threshold (p={_num(e.get('p_value'), 3)})",
                "short": True,
            }
        )
    fields += [
        {"title": "Flag key", "value": escape(ctx["flag"]), "short": False},
        {"title": "Flag definition", "value": escape(ctx["link"]), "short": False},
        *([{"title": "Guardrail report", "value": escape(ctx["report"]), "short": False}] if ctx.get("report") else []),
        {"title": "Reason", "value": escape(ctx["reason"]), "short": False},
    ]
    if detail:
        fields.append(
            {"title": "Error" if outcome is AlertOutcome.FAILED else "Detail", "value": escape(detail), "short": False}
        )
    color = "warning" if outcome is AlertOutcome.WOULD_HALT else "danger"
    return {"text": text, "attachments": [{"color": color, "fallback": text, "fields": fields}]}


async def post(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], *, policy: RetryPolicy = RetryPolicy()
) -> str | None:
    """Deliver an alert. Returns None on success, or why it failed (never containing the URL)."""
    try:
        await request(client, "POST", url, label="alert webhook", policy=policy, json=payload)
    except HTTPFailure as exc:
        return str(exc)
    return None
