"""Realistic report input made by the real engine: `check` runs, two minutes apart, against the fake API.

Nothing here writes state or audit JSON by hand: every decision, halt and hold in the files comes from
`run_check` (the code cron runs), with seeded noise in the aggregates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from guardrail.check import RunResult, run_check
from guardrail.fakeapi import FakeAPI
from guardrail.settings import Settings, load_settings

START = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
TOKEN = "tok-SECRET-report-7d1e"
# From outside, and hostile: a variant name is any string flagd allows as a variants key.
EVIL_VARIANT = '<img src=x onerror="document.title=1">"&'


def _flag(experiment_type: str, treatments: tuple[str, ...], metadata: dict[str, Any]) -> dict[str, Any]:
    share = 100 // (len(treatments) + 1)
    return {
        "state": "ENABLED",
        "variants": {"control": "c", **{t: t for t in treatments}},
        "defaultVariant": "control",
        "targeting": {
            "fractional": [
                {"var": "targetingKey"},
                *[[t, share] for t in treatments],
                ["control", 100 - share * len(treatments)],
            ]
        },
        "metadata": {
            "owner": "team",
            "experiment_type": experiment_type,
            "started_at": "2026-11-25T08:50:00Z",
            **metadata,
        },
    }


def flags() -> dict[str, Any]:
    return {
        # Two guardrails x two treatment arms; treatment-b's errors double after ten looks: halted.
        "checkout.payments.express-pay": _flag(
            "ab",
            ("treatment-a", "treatment-b"),
            {
                "guardrail.error_rate.comparison": "relative_increase",
                "guardrail.error_rate.threshold": 0.10,
                "guardrail.error_rate.method": "sequential",
                "guardrail.p95_latency_ms.comparison": "relative_increase",
                "guardrail.p95_latency_ms.threshold": 0.10,
                "guardrail.p95_latency_ms.window": "5m",
            },
        ),
        # Healthy rollout.
        "search.ranking.new-model": _flag(
            "rollout",
            ("treatment",),
            {"guardrail.error_rate.comparison": "relative_increase", "guardrail.error_rate.threshold": 0.10},
        ),
        # The metrics source has no series for it: every look is skip:no_data.
        "growth.onboarding.no-data": _flag(
            "ab",
            ("treatment",),
            {"guardrail.signup_errors.comparison": "absolute_increase", "guardrail.signup_errors.threshold": 0.01},
        ),
        # A rollout that breaches at its very first look (confirmations 1, the sequential default, said
        # explicitly): held before a second look.
        "ads.bidding.first-look": _flag(
            "rollout",
            ("treatment",),
            {
                "guardrail.error_rate.comparison": "relative_increase",
                "guardrail.error_rate.threshold": 0.10,
                "guardrail.error_rate.confirmations": 1,
            },
        ),
        # Hostile names must show as text.
        "web.ui.escape-test": _flag(
            "ab",
            (EVIL_VARIANT,),
            {"guardrail.error_rate.comparison": "relative_increase", "guardrail.error_rate.threshold": 0.10},
        ),
    }


@dataclass(frozen=True)
class Scenario:
    settings: Settings
    results: list[RunResult]
    api_url: str


def settings_for(api: FakeAPI, base: Path, **extra: Any) -> Settings:
    env = {
        "FLAG_API_URL": api.url,
        "FLAG_API_TOKEN": TOKEN,
        "METRICS_API_URL": api.url,
        "ALERT_WEBHOOK_URL": f"{api.url}/webhook",
    }
    return load_settings(
        env=env, overrides={"state_path": base / "state.json", "audit_path": base / "audit.jsonl", **extra}
    )


def _window_noise(series: str, window: int, mean: float, sd: float) -> float:
    """One window's events of one series, the same at every look: a since-start count only ever grows (the
    engine skips, with a warning, a since-start count that goes down)."""
    return max(0.0, random.Random(f"{series}/{window}").gauss(mean, sd))


def _set_looks(api: FakeAPI, look: int, rng: random.Random) -> None:
    per_look = 1500  # events per arm per two minutes
    n = per_look * (look + 1)
    for variant in ("control", "treatment-a", "treatment-b"):
        # Since-start error rate: 1 % until look 10, then treatment-b's new events fail at 2.5 %.
        fails = sum(
            _window_noise(variant, i, per_look * (0.025 if variant == "treatment-b" and i >= 10 else 0.01), 3.5)
            for i in range(look + 1)
        )
        api.set_metric("checkout.payments.express-pay", variant, "error_rate", fails / n, n)
        p95 = 212.0 * (1.0 + rng.gauss(0.0, 0.03)) * (1.04 if variant == "treatment-a" else 1.0)
        api.set_metric("checkout.payments.express-pay", variant, "p95_latency_ms", p95, per_look, window="5m")
    for variant in ("control", "treatment"):
        search = sum(_window_noise(f"search/{variant}", i, 2000 * 0.005, 3.0) for i in range(look + 1))
        api.set_metric(
            "search.ranking.new-model", variant, "error_rate", search / (2000 * (look + 1)), 2000 * (look + 1)
        )
        api.set_metric("ads.bidding.first-look", variant, "error_rate", 0.03 if variant == "treatment" else 0.01, 5000)
    api.set_metric("web.ui.escape-test", "control", "error_rate", 0.01, 3000)
    api.set_metric("web.ui.escape-test", EVIL_VARIANT, "error_rate", 0.0102, 3000)


def run_scenario(base: Path, looks: int = 24, **extra: Any) -> Scenario:
    """`looks` check runs, two minutes apart, through the real engine; state and audit under `base`."""
    rng = random.Random(20261125)
    with FakeAPI(flags=flags(), token=TOKEN) as api:
        settings = settings_for(api, base, **extra)
        results = []
        for look in range(looks):
            _set_looks(api, look, rng)
            results.append(run_check(settings, now=START + timedelta(minutes=2 * look)))
        return Scenario(settings, results, api.url)
