"""The alert carries every number the person paged needs, and says exactly what happened."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from guardrail import alert
from guardrail.alert import AlertOutcome
from guardrail.model import Aggregate, Comparison, Evaluation, HaltAction, Method, Verdict

E = Evaluation(
    "checkout.payments.express-pay",
    "error_rate",
    "treatment",
    "control",
    Comparison.RELATIVE_INCREASE,
    0.01,
    Method.THRESHOLD,
    Verdict.BREACH,
    "relative increase",
    Aggregate(0.0100, 48210),
    Aggregate(0.0340, 47955),
    delta=2.4,
    relative_delta=2.4,
    streak=2,
    confirmations=2,
)
REQUIRED = {
    "Guardrail metric",
    "Treatment value",
    "Control value",
    "Relative delta",
    "Threshold",
    "Treatment count",
    "Control count",
    "Flag key",
    "Flag definition",
}


def ctx(e: Evaluation = E, action: HaltAction = HaltAction.REVERT, flag: str = E.flag) -> dict[str, Any]:
    return alert.context(flag=flag, action=action, evaluation=e, reason="r", link="https://flags/v1/flags/x")


def fields(payload: dict[str, Any]) -> dict[str, str]:
    return {f["title"]: f["value"] for f in payload["attachments"][0]["fields"]}


def test_payload_has_every_value() -> None:
    got = fields(alert.render(ctx(), AlertOutcome.DONE))
    assert set(got) >= REQUIRED
    assert got["Treatment value"] == "0.0340" and got["Control value"] == "0.0100"
    assert got["Relative delta"] == "+240.00%" and got["Threshold"] == "1.00% (relative_increase)"
    assert got["Treatment count"] == "47,955" and got["Control count"] == "48,210"
    assert got["Action"] == "revert: done"


@pytest.mark.parametrize(
    ("action", "outcome", "text"),
    [
        (
            HaltAction.REVERT,
            AlertOutcome.DONE,
            ":rotating_light: AUTO-HALT: `checkout.payments.express-pay` reverted to control: error_rate breached its "
            "guardrail",
        ),
        (
            HaltAction.HOLD,
            AlertOutcome.DONE,
            ":rotating_light: AUTO-HALT: `checkout.payments.express-pay` held at its current split: "
            "error_rate breached its guardrail",
        ),
        (
            HaltAction.REVERT,
            AlertOutcome.FAILED,
            ":warning: HALT FAILED: `checkout.payments.express-pay` was NOT changed: revert it to control BY HAND. "
            "error_rate breached its guardrail, and the flag backend did not apply the change: flag API PATCH: error "
            "status (HTTP 403)",
        ),
        (
            HaltAction.HOLD,
            AlertOutcome.FAILED,
            ":warning: HALT FAILED: `checkout.payments.express-pay` was NOT changed: hold it at its current split BY "
            "HAND. error_rate breached its guardrail, and the flag backend did not apply the change: flag API PATCH: "
            "error status (HTTP 403)",
        ),
        (
            HaltAction.REVERT,
            AlertOutcome.WOULD_HALT,
            ":mag: DRY RUN: `checkout.payments.express-pay` would be reverted to control: error_rate breached its "
            "guardrail",
        ),
    ],
)
def test_each_outcome_has_one_exact_text(action: HaltAction, outcome: AlertOutcome, text: str) -> None:
    detail = "flag API PATCH: error status (HTTP 403)"
    payload = alert.render(ctx(action=action), outcome, detail if outcome is AlertOutcome.FAILED else "")
    assert payload["text"] == text and payload["attachments"][0]["fallback"] == text
    assert set(fields(payload)) >= REQUIRED
    if outcome is AlertOutcome.FAILED:
        assert fields(payload)["Error"] == detail
        assert fields(payload)["Action"] == f"{action.value}: FAILED, must be done by hand"
        assert "AUTO-HALT" not in payload["text"] and "reverted to control" not in payload["text"]


def test_rollout_hold_wording_and_zero_control() -> None:
    zero = dataclasses.replace(E, control=Aggregate(0.0, 100), relative_delta=float("inf"))
    payload = alert.render(ctx(zero, HaltAction.HOLD), AlertOutcome.DONE)
    assert "held at its current split" in str(payload["text"])
    assert fields(payload)["Relative delta"] == "+inf (control is 0)"


def test_context_is_strict_json_and_renders_after_a_round_trip() -> None:
    import json

    zero = dataclasses.replace(E, control=Aggregate(0.0, 100), relative_delta=float("inf"))
    kept = json.loads(json.dumps(ctx(zero), allow_nan=False))
    assert alert.render(kept, AlertOutcome.DONE) == alert.render(ctx(zero), AlertOutcome.DONE)


def test_outside_text_cannot_inject_slack_markup() -> None:
    evil = "a.b.c <!channel> <https://evil|click> & co"
    payload = alert.render(ctx(flag=evil), AlertOutcome.FAILED, detail="<@U123> broke")
    flat = json_text = str(payload)
    assert "<!channel>" not in flat and "<https://evil" not in json_text and "<@U123>" not in flat
    assert "&lt;!channel&gt;" in payload["text"] and "&amp; co" in fields(payload)["Flag key"]
