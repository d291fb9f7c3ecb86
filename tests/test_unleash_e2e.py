"""End to end: the installed `guardrail` command with `flag_backend: unleash` against the real
unleash-server (tests/servers/unleash.py), metrics from the project's fake API, alerts to its webhook.

The config file is the one docs/unleash.md shows, with the test server's URL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from guardrail.fakeapi import FakeAPI
from tests.servers.postgres import free_port
from tests.servers.unleash import Admin, UnleashServer

pytestmark = pytest.mark.e2e

BAD = "checkout.payments.express-pay"  # treatment errors at 3.4x control
GOOD = "search.ranking.new-model"  # no difference
TAGS = (
    "error_rate.threshold=0.10",
    "error_rate.comparison=relative_increase",
    "error_rate.method=threshold",  # the two-look halt path; the statistics are tested elsewhere
    "started_at=2026-11-20T09:00:00Z",
)
CONFIG = """\
flag_backend: unleash
unleash:
  url: {url}
  project: default
  environment: development
  token_env: UNLEASH_API_TOKEN
"""


def setup(admin: Admin, api: FakeAPI, tmp_path: Path, url: str) -> Path:
    for key in (BAD, GOOD):
        admin.create_flag(key, variants={"control": 500, "treatment": 500}, tags=TAGS)
    api.set_metric(BAD, "control", "error_rate", 0.010, 5000)
    api.set_metric(BAD, "treatment", "error_rate", 0.034, 5100)
    api.set_metric(GOOD, "control", "error_rate", 0.010, 5000)
    api.set_metric(GOOD, "treatment", "error_rate", 0.0101, 5000)
    config = tmp_path / "guardrail.yaml"
    config.write_text(CONFIG.format(url=url))
    return config


def env(server: UnleashServer, api: FakeAPI) -> dict[str, str]:
    return {
        "UNLEASH_API_TOKEN": server.admin_token,
        "METRICS_API_URL": api.url,
        "ALERT_WEBHOOK_URL": f"{api.url}/webhook",
    }


def test_check_lists_unleash_flags_then_halts_the_harmful_one(
    unleash_server: UnleashServer, unleash_admin: Admin, fake_api: FakeAPI, run_cli: Any, tmp_path: Path
) -> None:
    config = setup(unleash_admin, fake_api, tmp_path, unleash_server.url)
    args = ["check", "--config", str(config), "--state", str(tmp_path / "s.json"), "--audit", str(tmp_path / "a.jsonl")]
    variables = env(unleash_server, fake_api)

    dry = run_cli(*args, "--dry-run", "--json", "--now", "2026-11-25T12:00:00Z", env=variables)
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    seen = {
        (e["flag"], e["metric"], e["treatment_variant"], e["control_variant"], e["verdict"]) for e in doc["evaluations"]
    }
    assert seen == {
        (BAD, "error_rate", "treatment", "control", "breach"),
        (GOOD, "error_rate", "treatment", "control", "pass"),
    }
    assert doc["problems"] == []
    text = run_cli(*args, "--dry-run", "--now", "2026-11-25T12:00:00Z", env=variables)
    assert BAD in text.stdout and GOOD in text.stdout and "error_rate" in text.stdout
    status = run_cli("status", "--config", str(config), "--state", str(tmp_path / "s.json"), "--json", env=variables)
    listed = json.loads(status.stdout)
    assert {f["flag"] for f in listed["flags"]} >= {BAD, GOOD}, status.stderr
    assert listed["flag_source"].startswith(unleash_server.url)

    first = run_cli(*args, "--json", "--now", "2026-11-25T12:00:00Z", env=variables)
    assert first.returncode == 0, first.stderr
    assert unleash_admin.enabled(BAD)
    second = run_cli(*args, "--json", "--now", "2026-11-25T12:02:00Z", env=variables)
    assert second.returncode == 1, second.stderr
    (halt,) = json.loads(second.stdout)["halts"]
    assert halt["flag"] == BAD and halt["status"] == "done" and halt["action"] == "revert", halt
    assert unleash_admin.enabled(BAD) is False and unleash_admin.enabled(GOOD) is True
    assert unleash_admin.events(BAD)[0]["type"] == "feature-environment-disabled"

    (alert,) = fake_api.alerts
    fields = {f["title"]: f["value"] for f in alert["attachments"][0]["fields"]}
    assert fields["Flag definition"] == f"{unleash_server.url}/projects/default/features/{BAD}"

    third = run_cli(*args, "--json", "--now", "2026-11-25T12:04:00Z", env=variables)
    assert third.returncode == 0, third.stderr
    assert [e["type"] for e in unleash_admin.events(BAD)].count("feature-environment-disabled") == 1, [
        (e["type"], e.get("environment"), e["createdAt"]) for e in unleash_admin.events(BAD)
    ]

    for out in (dry, text, first, second, third):
        assert unleash_server.admin_token not in out.stdout + out.stderr
    for path in tmp_path.iterdir():
        assert not path.is_file() or unleash_server.admin_token not in path.read_text()


def test_unleash_down_is_exit_3_and_nothing_halts(fake_api: FakeAPI, run_cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "guardrail.yaml"
    config.write_text(CONFIG.format(url=f"http://127.0.0.1:{free_port()}"))  # nobody listens there
    result = run_cli(
        "check",
        "--config",
        str(config),
        "--state",
        str(tmp_path / "s.json"),
        env={"UNLEASH_API_TOKEN": "*:*.secret-token-value", "METRICS_API_URL": fake_api.url},
    )
    assert result.returncode == 3, result.stderr
    assert "Unleash unavailable" in result.stderr and "Traceback" not in result.stderr
    assert "secret-token-value" not in result.stdout + result.stderr
    assert fake_api.count("GET", "/query") == 0  # stopped before fetching a single metric


def test_refused_token_names_the_variable_never_the_token(
    unleash_server: UnleashServer, fake_api: FakeAPI, run_cli: Any, tmp_path: Path
) -> None:
    config = tmp_path / "guardrail.yaml"
    config.write_text(CONFIG.format(url=unleash_server.url))
    result = run_cli(
        "check",
        "--config",
        str(config),
        "--state",
        str(tmp_path / "s.json"),
        env={"UNLEASH_API_TOKEN": "*:development.wrong-secret", "METRICS_API_URL": fake_api.url},
    )
    assert result.returncode == 2, result.stderr
    assert "UNLEASH_API_TOKEN" in result.stderr and "HTTP 401" in result.stderr
    assert "wrong-secret" not in result.stdout + result.stderr


def test_missing_token_variable_is_a_config_error(run_cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "guardrail.yaml"
    config.write_text(CONFIG.format(url="http://127.0.0.1:4242"))
    result = run_cli("check", "--config", str(config), env={"METRICS_API_URL": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "unleash.token_env" in result.stderr and "UNLEASH_API_TOKEN is not set" in result.stderr


def test_a_harmful_rollout_is_held_at_its_split(
    unleash_server: UnleashServer, unleash_admin: Admin, fake_api: FakeAPI, run_cli: Any, tmp_path: Path
) -> None:
    key = "catalog.images.lazy-load"
    unleash_admin.create_flag(key, rollout=30, tags=(*TAGS, "experiment_type=rollout"))
    fake_api.set_metric(key, "control", "error_rate", 0.010, 5000)
    fake_api.set_metric(key, "treatment", "error_rate", 0.034, 5100)
    config = tmp_path / "guardrail.yaml"
    config.write_text(CONFIG.format(url=unleash_server.url))
    args = ["check", "--config", str(config), "--state", str(tmp_path / "s.json"), "--json"]
    variables = env(unleash_server, fake_api)
    before = unleash_admin.strategy(key)

    assert run_cli(*args, "--now", "2026-11-25T12:00:00Z", env=variables).returncode == 0
    second = run_cli(*args, "--now", "2026-11-25T12:02:00Z", env=variables)
    assert second.returncode == 1, second.stderr
    (halt,) = json.loads(second.stdout)["halts"]
    assert halt["flag"] == key and halt["action"] == "hold" and halt["status"] == "done", halt
    assert unleash_admin.tags(key) >= {"hold=true"}
    assert unleash_admin.strategy(key) == before and unleash_admin.enabled(key)
    assert unleash_admin.events(key)[0]["type"] == "feature-tagged"
