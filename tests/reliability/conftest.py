"""Fixtures for the reliability suite: a fake API with a breaching flag, and the installed command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from guardrail.fakeapi import FakeAPI
from tests.conftest import TOKEN, clean_env, flag_definition, guardrail_command
from tests.fakeserver_faults import FaultyAPI

BAD = "checkout.payments.express-pay"
GOOD = "search.ranking.new-model"
WEBHOOK_SECRET_PATH = "/webhook/T0SECRET/B0SECRET/abcdefSECRETxyz"


def breaching(api: FakeAPI, *, confirmations: int = 2, experiment_type: str = "ab") -> None:
    api.set_flags(
        {
            BAD: flag_definition(
                experiment_type=experiment_type, extra_metadata={"guardrail.error_rate.confirmations": confirmations}
            ),
            GOOD: flag_definition(),
        }
    )
    for flag, treatment in ((BAD, 0.034), (GOOD, 0.0101)):
        api.set_metric(flag, "control", "error_rate", 0.010, 5000)
        api.set_metric(flag, "treatment", "error_rate", treatment, 5000)


def api_env(api: FakeAPI, **extra: str) -> dict[str, str]:
    env = {
        "FLAG_API_URL": api.url,
        "FLAG_API_TOKEN": TOKEN,
        "METRICS_API_URL": api.url,
        "ALERT_WEBHOOK_URL": api.url + "/webhook",
    }
    env.update(extra)
    return env


class Runner:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.outputs: list[str] = []

    def __call__(self, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*guardrail_command(), *args],
            capture_output=True,
            text=True,
            env=clean_env(**env),
            cwd=self.workdir,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        self.outputs += [result.stdout, result.stderr]
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def check(self, *args: str, env: dict[str, str], now: str | None = None) -> subprocess.CompletedProcess[str]:
        base = [
            "check",
            "--state",
            str(self.workdir / "state.json"),
            "--audit",
            str(self.workdir / "audit.jsonl"),
            "--json",
        ]
        return self(*base, *(["--now", now] if now else []), *args, env=env)

    def everything_written(self) -> str:
        """Every output and every file of the run directory: where a secret must never appear."""
        texts = list(self.outputs)
        for path in self.workdir.rglob("*"):
            if path.is_file():
                texts.append(path.read_text("utf-8", errors="replace"))
        return "\n".join(texts)


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


@pytest.fixture
def api() -> Any:
    with FaultyAPI(token=TOKEN) as server:
        yield server


def doc(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def verdicts(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    return {e["flag"]: (e["verdict"], e["reason"]) for e in doc(result)["evaluations"]}
