"""`guardrail check` over a warehouse: from the same exposures and events tables, the harmful flag is halted and
the healthy one is not. DuckDB through the installed command (as cron runs it), PostgreSQL in-process."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail.check import run_check
from guardrail.model import ExitCode, Verdict
from guardrail.settings import load_settings
from tests import sql_data as d
from tests.servers import postgres
from tests.sql_data import sqlalchemy_url

pytestmark = pytest.mark.postgres
T1 = "2026-11-25T12:00:00Z"  # = sql_data.END
T2 = "2026-11-25T12:02:00Z"


def flag(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"owner": "shop", "experiment_type": "ab", "started_at": "2026-11-25T11:00:00Z"}
    for metric, options in metrics.items():
        for option, value in options.items():
            metadata[f"guardrail.{metric}.{option}"] = value
    return {
        "state": "ENABLED",
        "variants": {"control": False, "treatment": True},
        "defaultVariant": "control",
        "targeting": {"fractional": [{"var": "targetingKey"}, ["treatment", 50], ["control", 50]]},
        "metadata": metadata,
    }


ERROR_RATE = {"comparison": "relative_increase", "threshold": 0.10, "method": "sequential"}
FLAGS = {
    d.HARMFUL: flag({"error_rate": ERROR_RATE}),
    d.HEALTHY: flag(
        {
            "error_rate": ERROR_RATE,
            "p95_latency_ms": {"comparison": "relative_increase", "threshold": 0.10, "window": "60m"},
            "conversion_rate": {"comparison": "relative_decrease", "threshold": 0.30, "window": "60m"},
        }
    ),
}


def write_setup(tmp: Path, url: str, dialect: str, **metrics: Any) -> Path:
    (tmp / "flags.yaml").write_text(yaml.safe_dump({"flags": FLAGS}))
    queries: dict[str, Any] = {}
    for metric in ("error_rate", "p95_latency_ms", "conversion_rate"):
        specific = d.EXAMPLES / f"{metric}.{dialect}.sql"
        queries[metric] = {"file": str(specific if specific.exists() else d.EXAMPLES / f"{metric}.sql")}
    config = {
        "flags": str(tmp / "flags.yaml"),
        "flag_backend": "file",
        "metrics": {"source": "sql", "url": url, "timeout": 30, "queries": queries, **metrics},
        "state": str(tmp / "state.json"),
        "audit": str(tmp / "audit.jsonl"),
    }
    path = tmp / "guardrail.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_duckdb_halts_the_harmful_flag_through_the_installed_command(tmp_path: Path, run_cli: Any) -> None:
    db = tmp_path / "events.duckdb"
    d.load_duckdb(db, d.tables())
    config = write_setup(tmp_path, f"duckdb:///{db}", "duckdb")

    # The default sequential test halts at the first breaching look.
    first = run_cli("check", "--config", str(config), "--now", T1, "--json")
    assert first.returncode == ExitCode.HALTED, first.stdout + first.stderr
    verdicts = {(e["flag"], e["metric"]): e["verdict"] for e in json.loads(first.stdout)["evaluations"]}
    assert verdicts[(d.HARMFUL, "error_rate")] == Verdict.BREACH.value
    assert verdicts[(d.HEALTHY, "error_rate")] == Verdict.PASS.value
    assert verdicts[(d.HEALTHY, "p95_latency_ms")] == Verdict.PASS.value
    assert verdicts[(d.HEALTHY, "conversion_rate")] == Verdict.PASS.value
    after = yaml.safe_load((tmp_path / "flags.yaml").read_text())["flags"]
    assert after[d.HARMFUL]["state"] == "DISABLED"
    assert after[d.HEALTHY]["state"] == "ENABLED"
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["flag"] for r in audit if r["type"] == "halt" and r["status"] == "done"] == [d.HARMFUL]

    # The next run watches the healthy flag only, and the halted one stays halted.
    second = run_cli("check", "--config", str(config), "--now", T2, "--json")
    assert second.returncode == ExitCode.OK, second.stdout + second.stderr
    assert {e["flag"] for e in json.loads(second.stdout)["evaluations"]} == {d.HEALTHY}


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[postgres.PostgresServer]:
    server = postgres.start(tmp_path_factory.mktemp("pg"), password=secrets.token_hex(12))
    try:
        d.load_postgres(server.dsn(), d.tables())
        yield server
    finally:
        server.stop()


def test_postgres_halts_the_harmful_flag_and_keeps_the_password_out_of_everything(
    tmp_path: Path, pg: postgres.PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUARDRAIL_SQL_PASSWORD", pg.password)
    config = write_setup(tmp_path, sqlalchemy_url(pg), "postgresql", password_env="GUARDRAIL_SQL_PASSWORD")
    settings = load_settings(config=config)
    assert pg.password in settings.secrets()
    now1 = d.END.replace(tzinfo=timezone.utc)
    first = run_check(settings, now=now1)  # the default sequential test halts at the first breaching look
    assert first.exit_code == ExitCode.HALTED
    assert [h.flag for h in first.halts] == [d.HARMFUL] and first.halts[0].status == "done"
    second = run_check(settings, now=now1 + timedelta(minutes=2))
    assert second.exit_code == ExitCode.OK and not second.halts
    healthy = [e for run in (first, second) for e in run.evaluations if e.flag == d.HEALTHY]
    assert healthy and all(e.verdict is Verdict.PASS for e in healthy), [(e.metric, e.reason) for e in healthy]
    for path in (tmp_path / "state.json", tmp_path / "audit.jsonl", tmp_path / "flags.yaml"):
        assert pg.password not in path.read_text()


def test_postgres_down_is_unevaluated_not_a_crash(tmp_path: Path, run_cli: Any) -> None:
    from tests.prom_fixtures import free_port

    config = write_setup(
        tmp_path, f"postgresql+psycopg://guardrail@127.0.0.1:{free_port()}/postgres", "postgresql", timeout=2
    )
    result = run_cli("check", "--config", str(config), "--now", T1)
    assert result.returncode == ExitCode.UNEVALUATED, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "skip:no_data" in result.stdout
