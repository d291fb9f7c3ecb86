"""The run's orchestration, in-process against the real local fake server: load -> decide -> write ahead
-> halt -> alert -> audit, and each halt outcome's alert (no subprocess, so each test takes milliseconds)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from guardrail.check import run_check
from guardrail.model import ExitCode, HaltResultStatus, HaltStatus, Verdict
from guardrail.settings import Settings, load_settings
from guardrail.state import StateStore
from tests.conftest import NOW, TOKEN, flag_definition
from tests.fakeserver_faults import FaultyAPI

KEY = "checkout.payments.express-pay"
HOOK = "/webhook/T000/B000/hook-SECRET-xyz"


@pytest.fixture
def api() -> Iterator[FaultyAPI]:
    with FaultyAPI(token=TOKEN, flags={KEY: flag_definition()}) as server:
        yield server


def settings(api: FaultyAPI, tmp_path: Path, **env: str) -> Settings:
    base = {
        "FLAG_API_URL": api.url,
        "FLAG_API_TOKEN": TOKEN,
        "METRICS_API_URL": api.url,
        "ALERT_WEBHOOK_URL": f"{api.url}{HOOK}",
        **env,
    }
    return load_settings(
        env=base, overrides={"state_path": tmp_path / "state.json", "audit_path": tmp_path / "audit.jsonl"}
    )


def breaching(api: FaultyAPI) -> None:
    api.set_metric(KEY, "control", "error_rate", 0.010, 50_000)
    api.set_metric(KEY, "treatment", "error_rate", 0.034, 50_000)


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_breach_breach_halt_alert_audit(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api)
    s = settings(api, tmp_path)
    first = run_check(s, now=NOW)
    assert first.exit_code is ExitCode.OK and first.evaluations[0].verdict is Verdict.BREACH
    assert api.flag(KEY)["state"] == "ENABLED" and api.alerts == []

    second = run_check(s, now=NOW + timedelta(minutes=2))
    assert second.exit_code is ExitCode.HALTED
    [halt] = second.halts
    assert halt.status is HaltResultStatus.DONE and halt.alert == "sent"
    assert api.flag(KEY)["state"] == "DISABLED" and api.flag(KEY)["defaultVariant"] == "control"
    [body] = api.alerts
    assert body["text"].startswith(":rotating_light: AUTO-HALT: `checkout.payments.express-pay` reverted")

    record = StateStore(tmp_path / "state.json").load().flags[KEY].halt
    assert record is not None and record.status == HaltStatus.DONE and record.alert_delivered
    assert record.alert is None  # the context is dropped once the alert is delivered
    kinds = [line["type"] for line in audit(tmp_path)]
    assert kinds == ["decision", "decision", "halt"]

    third = run_check(s, now=NOW + timedelta(minutes=4))  # halted flags are not looked at again
    assert third.exit_code is ExitCode.OK and KEY in third.skipped_flags and api.count("PATCH", "/v1/flags") == 1


def test_dry_run_changes_nothing_and_writes_nothing(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api)
    s = settings(api, tmp_path)
    run_check(s, now=NOW)
    before = (tmp_path / "state.json").read_bytes()
    dry = run_check(s, now=NOW + timedelta(minutes=2), dry_run=True)
    assert dry.exit_code is ExitCode.HALTED and dry.halts[0].status is HaltResultStatus.WOULD_HALT
    assert api.flag(KEY)["state"] == "ENABLED" and api.alerts == [] and api.count("PATCH", "/v1/flags") == 0
    assert (tmp_path / "state.json").read_bytes() == before and len(audit(tmp_path)) == 1


def test_a_refused_halt_pages_once_as_failed_then_pages_the_success(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api)
    s = settings(api, tmp_path)
    run_check(s, now=NOW)
    api.add_fault(route="patch", mode="status", status=503, times=100)
    failed = run_check(s, now=NOW + timedelta(minutes=2))
    assert failed.exit_code is ExitCode.HALT_FAILED and failed.halts[0].status is HaltResultStatus.FAILED
    [page] = api.alerts
    assert page["text"].startswith(
        ":warning: HALT FAILED: `checkout.payments.express-pay` was NOT changed: revert it to control BY HAND."
    )
    assert "AUTO-HALT" not in page["text"]

    again = run_check(s, now=NOW + timedelta(minutes=4))
    assert again.exit_code is ExitCode.HALT_FAILED and again.halts[0].resumed
    assert len(api.alerts) == 1 and again.halts[0].alert.startswith("not re-sent")

    api.clear_faults()
    done = run_check(s, now=NOW + timedelta(minutes=6))
    assert done.exit_code is ExitCode.HALTED and done.halts[0].status is HaltResultStatus.DONE
    assert len(api.alerts) == 2 and api.alerts[1]["text"].startswith(":rotating_light: AUTO-HALT")
    # The success alert still carries the numbers of the evaluation that triggered the halt.
    fields = {f["title"]: f["value"] for f in api.alerts[1]["attachments"][0]["fields"]}
    assert fields["Treatment value"] == "0.0340" and fields["Control count"] == "50,000"


def test_an_undelivered_alert_is_sent_by_the_next_run(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api)
    s = settings(api, tmp_path)
    run_check(s, now=NOW)
    api.add_fault(route="webhook", mode="status", status=500, times=100)
    halted = run_check(s, now=NOW + timedelta(minutes=2))
    assert halted.exit_code is ExitCode.HALTED and halted.halts[0].alert.startswith("FAILED, will retry")
    assert api.alerts == []
    api.clear_faults()
    later = run_check(s, now=NOW + timedelta(minutes=4))
    assert any("earlier alert re-sent: sent" in w for w in later.warnings)
    assert len(api.alerts) == 1 and api.count("PATCH", "/v1/flags") == 1


def test_secrets_never_reach_state_audit_or_alert(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api)
    api.add_fault(route="patch", mode="status", status=503, times=100)
    s = settings(api, tmp_path)
    run_check(s, now=NOW)
    run_check(s, now=NOW + timedelta(minutes=2))
    written = (tmp_path / "state.json").read_text() + (tmp_path / "audit.jsonl").read_text() + json.dumps(api.alerts)
    assert TOKEN not in written and "hook-SECRET" not in written


def test_configuration_errors_come_before_the_lock(api: FaultyAPI, tmp_path: Path) -> None:
    from guardrail.model import GuardrailError

    s = load_settings(env={"FLAG_API_URL": api.url}, overrides={"state_path": tmp_path / "state.json"})
    with pytest.raises(GuardrailError, match="no metrics source"):
        run_check(s, now=NOW)
    assert list(tmp_path.iterdir()) == []  # no lock file, no state


def test_a_bad_adapter_section_fails_at_load_before_any_lock(tmp_path: Path) -> None:
    from guardrail.model import GuardrailError

    config = tmp_path / "guardrail.yaml"
    config.write_text(
        "metrics:\n  source: prometheus\n  url: http://127.0.0.1:9\n  queries:\n"
        "    error_rate: {value: 'sum(x{flag=\"$flag\"})', count: 'sum(y)'}\n"
    )
    try:
        load_settings(config=config, env={}, overrides={"state_path": tmp_path / "state.json"})
    except GuardrailError as exc:
        assert exc.field == "metrics.queries.error_rate.value" and "$variant" in exc.message
    else:
        raise AssertionError("a template without $variant must be refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guardrail.yaml"]
