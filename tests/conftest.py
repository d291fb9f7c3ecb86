"""Shared fixtures: a fixed clock, flag builders, the real local fake API, and the installed command."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.fakeserver_faults import FaultyAPI

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
TOKEN = "tok-SECRET-4f9a8b7c6d5e"
SDK_USERS = 1000  # users the `sdk` fixture evaluates with Unleash's own Python SDK
ENV_KEYS = (
    "FLAG_API_URL",
    "FLAG_API_TOKEN",
    "METRICS_API_URL",
    "ALERT_WEBHOOK_URL",
    "GUARDRAIL_STATE",
    "GUARDRAIL_AUDIT",
    "UNLEASH_API_TOKEN",
)


def rollout_definition(share: int = 1, *, steps: str | None = "1,5,25,50,100", **metadata: Any) -> dict[str, Any]:
    """A ramped rollout flag at `share` % treatment, sequential error_rate guardrail, 30-minute steps; a
    metadata value of None removes that key."""
    meta: dict[str, Any] = {
        "experiment_type": "rollout",
        "guardrail.error_rate.comparison": "relative_increase",
        "guardrail.error_rate.threshold": 0.1,
        "guardrail.error_rate.method": "sequential",
        "guardrail.error_rate.confirmations": 1,
        "guardrail.ramp.steps": steps,
        "guardrail.ramp.step_minutes": 30,
        **metadata,
    }
    return {
        "state": "ENABLED",
        "variants": {"treatment": True, "control": False},
        "defaultVariant": "control",
        "targeting": {"fractional": [{"var": "targetingKey"}, ["treatment", share], ["control", 100 - share]]},
        "metadata": {k: v for k, v in meta.items() if v is not None},
    }


def flag_definition(
    *,
    state: str = "ENABLED",
    experiment_type: str = "ab",
    threshold: float = 0.10,
    metric: str = "error_rate",
    extra_metadata: dict[str, Any] | None = None,
    treatments: tuple[str, ...] = ("treatment",),
    method: str | None = "threshold",
) -> dict[str, Any]:
    """A valid flagd definition with one flat-spelled guardrail.

    `method` is a flag-wide default (`guardrail.method`) for every guardrail of the flag: the threshold rule,
    whose one-window verdicts most tests reason about; None leaves it out (guardrail's own default,
    sequential for proportions and means). A per-metric `guardrail.<metric>.method` still wins."""
    variants: dict[str, Any] = {"control": False, **{t: True for t in treatments}}
    share = 100 // (len(treatments) + 1)
    return {
        "state": state,
        "variants": variants,
        "defaultVariant": "control",
        "targeting": {"fractional": [{"var": "targetingKey"}, *[[t, share] for t in treatments], ["control", share]]},
        "metadata": {
            "owner": "team",
            "experiment_type": experiment_type,
            "started_at": "2026-11-20T09:00:00Z",
            f"guardrail.{metric}.comparison": "relative_increase",
            f"guardrail.{metric}.threshold": threshold,
            **({"guardrail.method": method} if method else {}),
            **(extra_metadata or {}),
        },
    }


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def fake_api() -> Iterator[FaultyAPI]:
    with FaultyAPI(token=TOKEN) as api:
        yield api


def guardrail_command() -> list[str]:
    """The installed console script beside this interpreter (what cron runs), else `python -m guardrail`."""
    script = Path(sys.executable).parent / "guardrail"
    return [str(script)] if script.exists() else [sys.executable, "-m", "guardrail"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(extra)
    return env


@pytest.fixture
def run_cli(tmp_path: Path) -> Any:
    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*guardrail_command(), *args],
            capture_output=True,
            text=True,
            env=clean_env(**(env or {})),
            cwd=tmp_path,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    return run


@pytest.fixture(scope="session")
def unleash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real unleash-server (pinned, tests/unleash/) on PostgreSQL for the whole test run."""
    from tests.servers import unleash

    server = unleash.start(tmp_path_factory.mktemp("unleash"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def unleash_admin(unleash_server: Any) -> Iterator[Any]:
    """The tests' own admin client; the flags a test creates are archived after it, so the next test's
    project listing holds only its own flags."""
    from tests.servers.unleash import Admin

    admin = Admin(unleash_server)
    try:
        yield admin
    finally:
        admin.archive_created()
        admin.close()


@pytest.fixture(scope="module")
def sdk_token(unleash_server: Any) -> str:
    """A backend token for Unleash's Python SDK, made through the admin API."""
    from tests.servers.unleash import Admin

    admin = Admin(unleash_server)
    try:
        return admin.backend_token()
    finally:
        admin.close()


@pytest.fixture
def sdk(unleash_server: Any, sdk_token: str, tmp_path: Path) -> Iterator[Any]:
    """answers(flag) -> {user id: variant name, or "disabled" when the flag is off for that user}, from a
    fresh SDK client each time (it fetches the definitions synchronously on start). No metrics, no
    registration, a local cache dir; destroyed after use, leaving no thread behind."""
    from UnleashClient import UnleashClient  # type: ignore[attr-defined]  # the SDK re-exports without __all__

    threads_before = set(threading.enumerate())
    made = iter(range(1_000_000))

    def answers(flag: str) -> dict[str, str]:
        client = UnleashClient(
            url=f"{unleash_server.url}/api",
            app_name="guardrail-tests",
            environment="development",
            instance_id=f"guardrail-tests-{next(made)}",
            custom_headers={"Authorization": sdk_token},
            disable_metrics=True,
            disable_registration=True,
            refresh_interval=3600,
            request_retries=0,
            cache_directory=str(tmp_path / "sdk-cache"),
        )
        try:
            client.initialize_client()
            assert client.is_initialized
            out = {}
            for i in range(SDK_USERS):
                context = {"userId": f"user-{i}"}
                variant = client.get_variant(flag, context)
                enabled = client.is_enabled(flag, context)
                out[f"user-{i}"] = (
                    (variant["name"] if variant["name"] != "disabled" else "on") if enabled else "disabled"
                )
            return out
        finally:
            client.destroy()

    yield answers
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(timeout=10)
    assert set(threading.enumerate()) <= threads_before, "the SDK left threads running"
