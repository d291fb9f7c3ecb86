"""Secrets stay secret on every path: URL userinfo, proxies, and credentials that could never work."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrail.http import check_token_transport, cleartext_hop
from guardrail.model import GuardrailError
from guardrail.redact import Redactor, display_url
from tests.conftest import TOKEN
from tests.fakeserver_faults import FaultyAPI
from tests.reliability.conftest import BAD, Runner, api_env, breaching


def test_userinfo_in_the_flag_api_url_never_reaches_output_state_audit_or_alert(runner: Runner) -> None:
    with FaultyAPI(token=None) as api:  # a gateway that takes basic auth from the URL, no bearer token
        _userinfo_run(api, runner)


def _userinfo_run(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    with_userinfo = api.url.replace("http://", "http://admin:PASSWORDinURL@")
    env = api_env(api, FLAG_API_URL=with_userinfo, METRICS_API_URL=with_userinfo)
    env.pop("FLAG_API_TOKEN")
    api.add_fault(route="patch", mode="status", status=403, times=1)
    runner.check(env=env, now="2026-11-25T12:00:00Z")  # a failed halt: details in errors and alerts
    result = runner.check(env=env, now="2026-11-25T12:02:00Z")
    assert result.returncode == 1 and api.flag(BAD)["state"] == "DISABLED"
    runner("status", "--state", str(runner.workdir / "state.json"), "--flags", with_userinfo, env=env)
    assert "PASSWORDinURL" not in runner.everything_written()
    for alert in api.alerts:
        assert "PASSWORDinURL" not in str(alert)
        links = [f["value"] for f in alert["attachments"][0]["fields"] if f["title"] == "Flag definition"]
        assert links and links[0].startswith(api.url)


def test_redactor_masks_userinfo_in_any_url() -> None:
    redact = Redactor([])
    masked = redact("GET https://bob:hunter22@flags.example.com/v1 failed")
    assert masked == "GET https://***@flags.example.com/v1 failed"
    assert display_url("http://u:p@h:8080/x?y=1") == "http://h:8080/x?y=1"


def test_a_loopback_api_behind_an_http_proxy_is_not_exempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set, a request to http://127.0.0.1 goes to the proxy in clear: the loopback
    exemption is about where the bytes go, not what the URL says."""
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert cleartext_hop("http://127.0.0.1:8080") is not None
    with pytest.raises(GuardrailError, match="proxy"):
        check_token_transport("http://127.0.0.1:8080", allow_insecure_http=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert cleartext_hop("http://127.0.0.1:8080") is None
    monkeypatch.delenv("NO_PROXY")
    assert cleartext_hop("https://flags.example.com") is None  # tunnelled: the proxy sees ciphertext


def test_check_refuses_a_token_through_a_proxy_before_anything(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    env = api_env(api, HTTP_PROXY="http://proxy.invalid:3128", NO_PROXY="", no_proxy="")
    result = runner.check(env=env, now="2026-11-25T12:00:00Z")
    assert result.returncode == 2 and "proxy" in result.stderr
    assert api.requests == [] and TOKEN not in result.stderr


@pytest.mark.parametrize("token", ["tok-abc\n", "tok abc", "tök-abc"])
def test_a_token_that_cannot_be_sent_is_found_at_start(api: FaultyAPI, runner: Runner, token: str) -> None:
    breaching(api, confirmations=1)
    result = runner.check(env=api_env(api, FLAG_API_TOKEN=token), now="2026-11-25T12:00:00Z")
    assert result.returncode == 2 and "FLAG_API_TOKEN" in result.stderr
    assert api.requests == []  # found before any read, not at halt time
    assert token.strip() not in result.stderr


def test_userinfo_and_a_token_together_are_refused_at_start(api: FaultyAPI, runner: Runner) -> None:
    """httpx turns URL userinfo into a Basic Authorization header that replaces the bearer token: every
    halt would fail with 401. Found at start instead."""
    breaching(api, confirmations=1)
    env = api_env(api, FLAG_API_URL=api.url.replace("http://", "http://u:PASSWORDinURL@"))
    result = runner.check(env=env, now="2026-11-25T12:00:00Z")
    assert result.returncode == 2 and "FLAG_API_URL" in result.stderr and "FLAG_API_TOKEN" in result.stderr
    assert api.requests == [] and "PASSWORDinURL" not in result.stderr


def test_userinfo_over_plain_http_to_a_remote_host_is_refused(runner: Runner, tmp_path: Path) -> None:
    env = {"FLAG_API_URL": "http://u:PASSWORDinURL@flags.example.invalid", "METRICS_API_URL": "http://127.0.0.1:9"}
    result = runner("check", "--state", str(tmp_path / "s.json"), env=env)
    assert result.returncode == 2 and "plain http" in result.stderr
    assert "PASSWORDinURL" not in result.stderr + result.stdout


@pytest.mark.parametrize("bad", ["http://127.0.0.1:99999", "ftp://127.0.0.1/x", "http://", "127.0.0.1:8080"])
def test_a_malformed_api_url_is_refused_at_start_naming_the_variable(runner: Runner, tmp_path: Path, bad: str) -> None:
    result = runner(
        "check", "--state", str(tmp_path / "s.json"), env={"FLAG_API_URL": "http://127.0.0.1:9", "METRICS_API_URL": bad}
    )
    # Named by the variable, or by the setting it feeds (the metrics plugin checks the scheme first).
    assert result.returncode == 2, result.stderr
    assert "METRICS_API_URL" in result.stderr or "metrics.url" in result.stderr, result.stderr
    assert "internal error" not in result.stderr
