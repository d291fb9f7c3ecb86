"""End to end: the installed `guardrail` command against the project's real fake API on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKEN, flag_definition
from tests.fakeserver_faults import FaultyAPI

pytestmark = pytest.mark.e2e

KEY = "checkout.payments.express-pay"
HEALTHY = "search.ranking.new-model"


def serve(api: FaultyAPI) -> None:
    api.set_flags({KEY: flag_definition(), HEALTHY: flag_definition()})
    api.set_metric(KEY, "control", "error_rate", 0.010, 5000)
    api.set_metric(KEY, "treatment", "error_rate", 0.034, 5100)
    api.set_metric(HEALTHY, "control", "error_rate", 0.010, 5000)
    api.set_metric(HEALTHY, "treatment", "error_rate", 0.0101, 5000)


def env_for(api: FaultyAPI) -> dict[str, str]:
    return {
        "FLAG_API_URL": api.url,
        "FLAG_API_TOKEN": TOKEN,
        "METRICS_API_URL": api.url,
        "ALERT_WEBHOOK_URL": f"{api.url}/webhook",
    }


def test_breach_then_halt_with_alert_and_audit(fake_api: FaultyAPI, run_cli: Any, tmp_path: Path) -> None:
    serve(fake_api)
    args = ["check", "--state", str(tmp_path / "s.json"), "--audit", str(tmp_path / "a.jsonl"), "--json"]

    first = run_cli(*args, "--now", "2026-11-25T12:00:00Z", env=env_for(fake_api))
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    verdicts = {(e["flag"], e["verdict"], e["streak"]) for e in doc["evaluations"]}
    assert verdicts == {(KEY, "breach", 1), (HEALTHY, "pass", 0)}
    assert doc["halts"] == []
    assert fake_api.flag(KEY)["state"] == "ENABLED"
    assert fake_api.count("PATCH", "/v1/flags") == 0

    second = run_cli(*args, "--now", "2026-11-25T12:02:00Z", env=env_for(fake_api))
    assert second.returncode == 1, second.stderr
    doc = json.loads(second.stdout)
    assert doc["exit_code"] == 1
    (halt,) = doc["halts"]
    assert halt["flag"] == KEY and halt["status"] == "done" and halt["action"] == "revert"
    assert halt["alert"] == "sent"
    flag = fake_api.flag(KEY)
    assert flag["state"] == "DISABLED" and flag["defaultVariant"] == "control"
    assert "error_rate" in flag["metadata"]["guardrail_reason"]
    assert fake_api.flag(HEALTHY)["state"] == "ENABLED"

    (alert,) = fake_api.alerts
    assert KEY in alert["text"]
    fields = {f["title"]: f["value"] for f in alert["attachments"][0]["fields"]}
    assert fields["Guardrail metric"] == "error_rate"
    assert fields["Treatment value"] == "0.0340" and fields["Control value"] == "0.0100"
    assert fields["Relative delta"] == "+240.00%"
    assert fields["Threshold"].startswith("10.00%")
    assert fields["Treatment count"] == "5,100" and fields["Control count"] == "5,000"
    assert fields["Flag key"] == KEY
    assert fields["Flag definition"] == f"{fake_api.url}/v1/flags/{KEY}"

    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    decisions = [x for x in lines if x["type"] == "decision"]
    assert len(decisions) == 4
    last = [x for x in decisions if x["flag"] == KEY][-1]
    assert last["verdict"] == "breach" and last["action"] == "halt"
    assert last["control"]["value"] == 0.01 and last["treatment"]["count"] == 5100
    assert [x["status"] for x in lines if x["type"] == "halt"] == ["done"]

    # A third run: the flag is DISABLED now, nothing is halted twice.
    third = run_cli(*args, "--now", "2026-11-25T12:04:00Z", env=env_for(fake_api))
    assert third.returncode == 0, third.stderr
    assert fake_api.count("PATCH", "/v1/flags") == 1
    assert len(fake_api.alerts) == 1

    for out in (first, second, third):
        assert TOKEN not in out.stdout + out.stderr
        assert "/webhook" not in out.stdout + out.stderr
    for path in tmp_path.iterdir():
        text = path.read_text() if path.is_file() else ""
        assert TOKEN not in text and f"{fake_api.url}/webhook" not in text


def test_dry_run_changes_nothing(fake_api: FaultyAPI, run_cli: Any, tmp_path: Path) -> None:
    serve(fake_api)
    base = ["check", "--state", str(tmp_path / "s.json"), "--audit", str(tmp_path / "a.jsonl")]
    # Two real runs would halt; with confirmations 1 a single dry run already "would halt".
    fake_api.set_flags({KEY: flag_definition(extra_metadata={"guardrail.error_rate.confirmations": 1})})
    result = run_cli(*base, "--dry-run", env=env_for(fake_api))
    assert result.returncode == 1, result.stderr
    assert "WOULD HALT (dry run)" in result.stdout
    assert fake_api.flag(KEY)["state"] == "ENABLED"
    assert fake_api.count("PATCH", "/") == 0 and fake_api.count("PUT", "/") == 0
    assert fake_api.alerts == []
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "a.jsonl").exists()


def test_plain_text_output_when_not_a_tty(fake_api: FaultyAPI, run_cli: Any, tmp_path: Path) -> None:
    serve(fake_api)
    result = run_cli("check", "--state", str(tmp_path / "s.json"), env=env_for(fake_api))
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[1]
    for column in ("flag", "metric", "control", "treatment", "delta", "threshold", "counts", "verdict", "streak"):
        assert column in header
    assert "\x1b[" not in result.stdout  # no terminal colour codes in pipes and cron mail


def test_missing_configuration_is_exit_2_with_a_clear_message(run_cli: Any) -> None:
    result = run_cli("check")
    assert result.returncode == 2
    assert "no flag definitions" in result.stderr
    assert "Traceback" not in result.stderr


def test_halt_refused_is_exit_4_and_alert_says_failed(fake_api: FaultyAPI, run_cli: Any, tmp_path: Path) -> None:
    serve(fake_api)
    fake_api.set_flags({KEY: flag_definition(extra_metadata={"guardrail.error_rate.confirmations": 1})})
    fake_api.add_fault(route="patch", mode="status", status=403)
    result = run_cli("check", "--state", str(tmp_path / "s.json"), "--json", env=env_for(fake_api))
    assert result.returncode == 4, result.stderr
    (halt,) = json.loads(result.stdout)["halts"]
    assert halt["status"] == "failed" and "403" in halt["detail"]
    (alert,) = fake_api.alerts
    assert "HALT FAILED" in alert["text"] and "BY HAND" in alert["text"]
    assert fake_api.flag(KEY)["state"] == "ENABLED"
