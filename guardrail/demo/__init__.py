"""`guardrail demo`: the whole halt loop on the built-in fake API, with nothing to install or run.

Two runs two minutes apart: express-pay's treatment has 3.4x control's error rate, so run 1 sees a
breach (1 of 2 confirmations) and run 2 halts it; the healthy search experiment passes both times.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import yaml

from guardrail import report
from guardrail.check import RunResult, run_check
from guardrail.fakeapi import FakeAPI
from guardrail.settings import load_settings

DEMO_TOKEN = "demo-token-not-a-secret"
METRICS = [
    # flag, variant, metric, value, count
    ("checkout.payments.express-pay", "control", "error_rate", 0.0100, 48_210),
    ("checkout.payments.express-pay", "treatment", "error_rate", 0.0340, 47_955),
    ("checkout.payments.express-pay", "control", "p95_latency_ms", 212.0, 48_210),
    ("checkout.payments.express-pay", "treatment", "p95_latency_ms", 219.0, 47_955),
    ("search.ranking.new-model", "control", "error_rate", 0.0051, 120_400),
    ("search.ranking.new-model", "treatment", "error_rate", 0.0052, 119_870),
    ("search.ranking.new-model", "control", "cart_abandonment_rate", 0.212, 8_100),
    ("search.ranking.new-model", "treatment", "cart_abandonment_rate", 0.209, 8_050),
]


def _show(title: str, result: RunResult) -> None:
    print(f"\n=== {title} ===")
    print(report.to_text(result))


def run_demo(state_dir: Path | None = None, now: datetime | None = None) -> int:
    flags = yaml.safe_load(resources.files("guardrail.demo").joinpath("flags.yaml").read_text("utf-8"))["flags"]
    start = now or datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="guardrail-demo-") as tmp, FakeAPI(
        flags=flags, token=DEMO_TOKEN
    ) as api:
        for flag, variant, metric, value, count in METRICS:
            api.set_metric(flag, variant, metric, value, count)
        base = Path(state_dir) if state_dir else Path(tmp)
        env = {"FLAG_API_URL": api.url, "FLAG_API_TOKEN": DEMO_TOKEN, "METRICS_API_URL": api.url,
               "ALERT_WEBHOOK_URL": f"{api.url}/webhook"}
        settings = load_settings(env=env, overrides={"state_path": base / "state.json",
                                                     "audit_path": base / "audit.jsonl"})
        print(f"guardrail demo: fake flag, metrics and webhook API on {api.url}")
        first = run_check(settings, now=start)
        _show("run 1 (cron, t+0 min)", first)
        second = run_check(settings, now=start + timedelta(minutes=2))
        _show("run 2 (cron, t+2 min)", second)

        halted = api.flag("checkout.payments.express-pay") or {}
        print("\n=== what the flag API holds now ===")
        print(f"checkout.payments.express-pay: state={halted.get('state')} "
              f"defaultVariant={halted.get('defaultVariant')}")
        print("\n=== the alert the on-call person got ===")
        for body in api.alerts:
            print(body.get("text"))
            for f in body.get("attachments", [{}])[0].get("fields", []):
                print(f"  {f['title']}: {f['value']}")
        audit_lines = len(settings.audit_path.read_text("utf-8").splitlines())
        print(f"\naudit log: {audit_lines} lines in {settings.audit_path}")
        ok = (
            int(first.exit_code) == 0
            and int(second.exit_code) == 1
            and halted.get("state") == "DISABLED"
            and len(api.alerts) == 1
        )
        print("\ndemo " + ("behaved as expected: breach, breach -> halted" if ok else "did NOT behave as expected"))
        sys.stdout.flush()
        return 0 if ok else 1
