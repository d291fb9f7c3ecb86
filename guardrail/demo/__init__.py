"""`guardrail demo`: the whole halt loop with nothing to install or run.

Metrics come from SQL over a DuckDB file of exposures and events the demo generates (the warehouse path:
guardrail/sources/sql.py, the queries in guardrail/demo/sql/, the same as examples/sql/); flags, the halt and
the alert go through the built-in fake flag API and webhook. Two runs two minutes apart: express-pay's
treatment has 3.4x control's error rate, so the default sequential test proves harm on run 1 and halts it
there (it controls its error rate over every look, so one breaching look is enough); run 2 no longer
watches the halted flag, and the healthy search experiment passes both times.
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
from guardrail.demo.warehouse import Arm, generate, write_duckdb
from guardrail.fakeapi import FakeAPI
from guardrail.model import Verdict
from guardrail.settings import load_settings

DEMO_TOKEN = "demo-token-not-a-secret"
EXPRESS, SEARCH = "checkout.payments.express-pay", "search.ranking.new-model"
# Per arm, over the 70 minutes of generated traffic. Seeded, so every demo decides on the same numbers.
ARMS = (
    Arm(EXPRESS, "control", 8000, error_rate=0.010, latency_ms=212.0),
    Arm(EXPRESS, "treatment", 8000, error_rate=0.034, latency_ms=219.0),
    Arm(SEARCH, "control", 8000, error_rate=0.005, purchase_rate=0.21),
    Arm(SEARCH, "treatment", 8000, error_rate=0.005, purchase_rate=0.21),
)
QUERIES = {
    "error_rate": "error_rate.sql",
    "p95_latency_ms": "p95_latency_ms.duckdb.sql",
    "conversion_rate": "conversion_rate.sql",
}


def make_warehouse(path: Path, now: datetime) -> int:
    """Exposures and events from 65 minutes before `now` to 5 minutes after (run 2 looks 2 minutes later)."""
    tables = generate(ARMS, start=now - timedelta(minutes=65), end=now + timedelta(minutes=5), seed=2026)
    write_duckdb(path, tables)
    return tables.event_count


def _show(title: str, result: RunResult) -> None:
    print(f"\n=== {title} ===")
    print(report.to_text(result))


def run_demo(state_dir: Path | None = None, now: datetime | None = None) -> int:
    flags = yaml.safe_load(resources.files("guardrail.demo").joinpath("flags.yaml").read_text("utf-8"))["flags"]
    start = now or datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="guardrail-demo-") as tmp, FakeAPI(flags=flags, token=DEMO_TOKEN) as api:
        base = Path(state_dir) if state_dir else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        warehouse = Path(tmp) / "events.duckdb"
        events = make_warehouse(warehouse, start)
        sql = resources.files("guardrail.demo").joinpath("sql")
        # A config file like a user's: metrics from SQL (guardrail/sources/sql.py), flags from the flag API.
        config = Path(tmp) / "guardrail.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "metrics": {
                        "source": "sql",
                        "url": f"duckdb:///{warehouse}",
                        "timeout": 30,
                        "queries": {metric: sql.joinpath(name).read_text("utf-8") for metric, name in QUERIES.items()},
                    }
                }
            ),
            "utf-8",
        )
        env = {"FLAG_API_URL": api.url, "FLAG_API_TOKEN": DEMO_TOKEN, "ALERT_WEBHOOK_URL": f"{api.url}/webhook"}
        settings = load_settings(
            config=config, env=env, overrides={"state_path": base / "state.json", "audit_path": base / "audit.jsonl"}
        )
        print(
            f"guardrail demo: metrics from SQL over a DuckDB warehouse ({events:,} events in {warehouse.name}); "
            f"fake flag API and webhook on {api.url}"
        )
        first = run_check(settings, now=start)
        _show("run 1 (cron, t+0 min)", first)
        second = run_check(settings, now=start + timedelta(minutes=2))
        _show("run 2 (cron, t+2 min)", second)

        halted = api.flag(EXPRESS)
        print("\n=== what the flag API holds now ===")
        print(
            f"checkout.payments.express-pay: state={halted.get('state')} defaultVariant={halted.get('defaultVariant')}"
        )
        print("\n=== the alert the on-call person got ===")
        for body in api.alerts:
            print(body.get("text"))
            for f in body.get("attachments", [{}])[0].get("fields", []):
                print(f"  {f['title']}: {f['value']}")
        audit_lines = len(settings.audit_path.read_text("utf-8").splitlines())
        print(f"\naudit log: {audit_lines} lines in {settings.audit_path}")
        healthy = [e.verdict for run in (first, second) for e in run.evaluations if e.flag == SEARCH]
        ok = (
            int(first.exit_code) == 1
            and [h.flag for h in first.halts] == [EXPRESS]
            and int(second.exit_code) == 0
            and not second.halts
            and healthy
            and all(v is Verdict.PASS for v in healthy)
            and halted.get("state") == "DISABLED"
            and len(api.alerts) == 1
        )
        outcome = "behaved as expected: harmful flag halted on run 1, healthy flag passed both runs"
        print("\ndemo " + (outcome if ok else "did NOT behave as expected"))
        sys.stdout.flush()
        return 0 if ok else 1
