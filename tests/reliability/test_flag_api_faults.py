"""Flag API and webhook faults: one halt, never two; a refused halt says so loudly; alerts are retried."""

from __future__ import annotations

import time

from tests.conftest import TOKEN
from tests.fakeserver_faults import FaultyAPI
from tests.reliability.conftest import BAD, WEBHOOK_SECRET_PATH, Runner, api_env, breaching, doc


def test_patch_5xx_then_success_halts_once(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    api.add_fault(route="patch", mode="status", status=503, times=2)
    result = runner.check(env=api_env(api))
    assert result.returncode == 1
    assert api.flag(BAD)["state"] == "DISABLED" and api.flag(BAD)["defaultVariant"] == "control"
    applied = [r for r in api.requests if r["method"] == "PATCH" and r["status"] == 200]
    assert len(applied) == 1 and len(api.alerts) == 1


def test_patch_403_is_exit_4_pages_once_and_is_retried(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    api.add_fault(route="patch", mode="status", status=403)
    first = runner.check(env=api_env(api), now="2026-11-25T12:00:00Z")
    assert first.returncode == 4
    (halt,) = doc(first)["halts"]
    assert halt["status"] == "failed" and "403" in halt["detail"]
    (alert,) = api.alerts
    assert "HALT FAILED" in alert["text"] and "BY HAND" in alert["text"]
    second = runner.check(env=api_env(api), now="2026-11-25T12:02:00Z")
    assert second.returncode == 4 and len(api.alerts) == 1  # reported again, not paged again
    api.clear_faults()
    third = runner.check(env=api_env(api), now="2026-11-25T12:04:00Z")
    assert third.returncode == 1 and api.flag(BAD)["state"] == "DISABLED"
    assert len(api.alerts) == 2 and "AUTO-HALT" in api.alerts[1]["text"]


def test_timeout_after_the_server_applied_it_never_halts_twice(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    api.add_fault(route="patch", mode="apply_then_delay", delay=2.0)
    first = runner.check("--timeout", "0.5", env=api_env(api), now="2026-11-25T12:00:00Z")
    assert api.flag(BAD)["state"] == "DISABLED"
    assert first.returncode == 1, first.stdout  # the re-read saw the halt applied
    runner.check("--timeout", "0.5", env=api_env(api), now="2026-11-25T12:02:00Z")
    runner.check("--timeout", "0.5", env=api_env(api), now="2026-11-25T12:04:00Z")
    # The fake logs a request when it answers: wait for that event (every delayed PATCH answered).
    while api.in_flight:
        time.sleep(0.01)
    assert api.count("PATCH", "/v1/flags") == 1 and len(api.alerts) == 1


def test_non_atomic_patch_takes_the_force_path(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    api.add_fault(route="patch", mode="ignore_field", field="defaultVariant")
    api.set_flags({BAD: {**api.flag(BAD), "defaultVariant": "treatment"}})  # so ignoring it matters
    result = runner.check(env=api_env(api))
    assert result.returncode == 1
    assert api.count("PUT", f"/v1/flags/{BAD}/force") == 1
    assert api.flag(BAD)["defaultVariant"] == "control"
    assert "forced" in doc(result)["halts"][0]["detail"]


def test_rollout_is_held_not_reverted(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1, experiment_type="rollout")
    result = runner.check(env=api_env(api))
    assert result.returncode == 1
    flag = api.flag(BAD)
    assert flag["state"] == "ENABLED" and flag["metadata"]["guardrail_hold"] is True
    assert "targeting" in flag  # the split is untouched


def test_webhook_down_halt_stands_and_alert_is_delivered_later(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    api.add_fault(route="webhook", mode="status", status=500, times=3)
    env = api_env(api, ALERT_WEBHOOK_URL=api.url + WEBHOOK_SECRET_PATH)
    first = runner.check(env=env, now="2026-11-25T12:00:00Z")
    assert first.returncode == 1 and api.flag(BAD)["state"] == "DISABLED"
    assert doc(first)["halts"][0]["alert"].startswith("FAILED, will retry next run")
    assert api.alerts == []
    second = runner.check(env=env, now="2026-11-25T12:02:00Z")
    assert len(api.alerts) == 1 and "AUTO-HALT" in api.alerts[0]["text"]
    assert any("re-sent: sent" in w for w in doc(second)["warnings"])
    runner.check(env=env, now="2026-11-25T12:04:00Z")
    assert len(api.alerts) == 1 and api.count("PATCH", "/v1/flags") == 1
    text = runner.everything_written()
    assert TOKEN not in text and "SECRET" not in text
