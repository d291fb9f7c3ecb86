"""A ramp's rollback through the Unleash backend, against the real unleash-server, proven with Unleash's own
Python SDK (the `sdk` fixture, 1,000 users): the guarded strategy's treatment share goes to 0 and the
environment is switched off, so every user gets control, and still does after a person switches the flag
back on without touching the strategy."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from guardrail.fakeapi import FakeAPI
from tests.servers.unleash import Admin, UnleashServer

pytestmark = pytest.mark.e2e

TAGS = (
    "error_rate.threshold=0.10",
    "error_rate.comparison=relative_increase",
    "error_rate.method=sequential",
    "error_rate.confirmations=1",
    "experiment_type=rollout",
    "ramp.steps=1,5,25,50,100",
)
CONFIG = """\
flag_backend: unleash
unleash:
  url: {url}
  project: default
  environment: development
  token_env: UNLEASH_API_TOKEN
"""


def harmful(api: FakeAPI, key: str) -> None:
    """The step's 5 % of 400,000 units fail 3 % of checkouts, control 1 %."""
    api.set_metric(key, "control", "error_rate", 0.01, 380_000)
    api.set_metric(key, "treatment", "error_rate", 0.03, 20_000)


def check(server: UnleashServer, api: FakeAPI, run_cli: Any, tmp_path: Path) -> dict[str, Any]:
    config = tmp_path / "guardrail.yaml"
    config.write_text(CONFIG.format(url=server.url))
    done = run_cli(
        *("check", "--config", str(config), "--state", str(tmp_path / "s.json"), "--audit", str(tmp_path / "a.jsonl")),
        *("--json", "--now", "2026-12-01T09:35:00Z"),
        env={"UNLEASH_API_TOKEN": server.admin_token, "METRICS_API_URL": api.url},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


@pytest.mark.parametrize(
    ("variants", "everyone", "on_halt"),
    [
        (None, "disabled", "off"),  # a gradual rollout without variants: the treatment is "on", control is off
        ({"control": 950, "treatment": 50}, "control", "off"),  # strategy variants: control is a variant
        (None, "disabled", "control"),  # the flag stays on: rollout 0 %
        ({"control": 950, "treatment": 50}, "control", "control"),  # the flag stays on: control 1000
    ],
    ids=["rollout-percent", "variant-weights", "rollout-percent-on-halt-control", "variant-weights-on-halt-control"],
)
def test_rollback_takes_the_share_to_zero_so_switching_it_back_on_serves_control(
    variants: dict[str, int] | None,
    everyone: str,
    on_halt: str,
    unleash_server: UnleashServer,
    unleash_admin: Admin,
    fake_api: FakeAPI,
    sdk: Any,
    run_cli: Any,
    tmp_path: Path,
) -> None:
    key = f"ul.rollback.{everyone}.{on_halt}"
    tags = (*TAGS, f"on_halt={on_halt}")
    unleash_admin.create_flag(key, variants=variants, rollout=100 if variants else 5, tags=tags)
    harmful(fake_api, key)
    before = Counter(sdk(key).values())
    treated = before["on"] + before["treatment"]
    assert 20 <= treated <= 85, before  # ~5 % of 1,000 users get the treatment before the rollback

    result = check(unleash_server, fake_api, run_cli, tmp_path)
    (halt,) = result["halts"]
    assert halt["action"] == "revert" and halt["status"] == "done", halt
    assert halt["parts"] == {"share_zero": "done", "revert": "done"}  # `check --json` says it too
    (ramp,) = result["ramps"]
    assert ramp["action"] == "rollback" and ramp["status"] == "done", ramp
    lines = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    (line,) = [r for r in lines if r["type"] == "halt"]
    assert line["parts"] == {"share_zero": "done", "revert": "done"}, line["detail"]

    strategy = unleash_admin.strategy(key)
    if variants:
        assert {v["name"]: v["weight"] for v in strategy["variants"]} == {"control": 1000, "treatment": 0}
    else:
        assert strategy["parameters"]["rollout"] == "0"
    if on_halt == "control":  # the flag stays on, and its strategy gives everyone control
        assert unleash_admin.enabled(key)
        assert set(sdk(key).values()) == {everyone}
        return
    assert not unleash_admin.enabled(key)
    assert set(sdk(key).values()) == {"disabled"}  # switched off: nobody gets the treatment

    unleash_admin.call("POST", f"{unleash_admin.env_path(key)}/on")  # a person switches it back on, nothing else
    assert set(sdk(key).values()) == {everyone}  # all 1,000 users still get control
