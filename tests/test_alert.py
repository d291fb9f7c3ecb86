"""The alert carries every number the person paged needs (docs/contracts.md)."""

from __future__ import annotations

from guardrail import alert
from guardrail.model import Aggregate, Comparison, Evaluation, HaltAction, Method, Verdict

E = Evaluation("checkout.payments.express-pay", "error_rate", "treatment", "control",
               Comparison.RELATIVE_INCREASE, 0.01, Method.THRESHOLD, Verdict.BREACH, "relative increase",
               Aggregate(0.0100, 48210), Aggregate(0.0340, 47955), delta=2.4, relative_delta=2.4, streak=2,
               confirmations=2)
REQUIRED = {"Guardrail metric", "Treatment value", "Control value", "Relative delta", "Threshold",
            "Treatment count", "Control count", "Flag key", "Flag definition"}


def fields(payload: dict[str, object]) -> dict[str, str]:
    attachments = payload["attachments"]
    assert isinstance(attachments, list)
    return {f["title"]: f["value"] for f in attachments[0]["fields"]}


def test_payload_has_every_value() -> None:
    payload = alert.build_payload(flag=E.flag, action=HaltAction.REVERT, outcome="halted", evaluation=E,
                                  reason="r", link="https://flags/v1/flags/x")
    got = fields(payload)
    assert set(got) >= REQUIRED
    assert got["Treatment value"] == "0.0340" and got["Control value"] == "0.0100"
    assert got["Relative delta"] == "+240.00%" and got["Threshold"] == "1.00% (relative_increase)"
    assert got["Treatment count"] == "47,955" and got["Control count"] == "48,210"
    assert "AUTO-HALT" in str(payload["text"]) and E.flag in str(payload["text"])


def test_failed_outcome_says_by_hand_and_keeps_the_numbers() -> None:
    prepared = alert.build_payload(flag=E.flag, action=HaltAction.REVERT, outcome="halted", evaluation=E,
                                   reason="r", link="l")
    failed = alert.mark_outcome(prepared, ok=False, detail="flag API PATCH: error status (HTTP 403)")
    assert "HALT FAILED" in str(failed["text"]) and "BY HAND" in str(failed["text"])
    assert set(fields(failed)) >= REQUIRED
    assert fields(failed)["Error"].endswith("(HTTP 403)")
    assert "HALT FAILED" not in str(prepared["text"])  # the prepared alert is not modified


def test_rollout_hold_wording_and_zero_control() -> None:
    zero = Evaluation(**{**E.__dict__, "control": Aggregate(0.0, 100), "relative_delta": float("inf")})
    payload = alert.build_payload(flag=E.flag, action=HaltAction.HOLD, outcome="held", evaluation=zero,
                                  reason="r", link="l")
    assert "held at its current split" in str(payload["text"])
    assert fields(payload)["Relative delta"] == "+inf (control is 0)"
