"""`guardrail demo` (what `make demo` runs) exercises the SQL path: DuckDB warehouse -> breach, breach -> halt."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from guardrail.demo import run_demo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sql"
PACKAGED = Path(__file__).resolve().parent.parent / "guardrail" / "demo" / "sql"


def test_demo_halts_the_harmful_flag_from_the_duckdb_warehouse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_demo(state_dir=tmp_path, now=datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "metrics from SQL over a DuckDB warehouse" in out
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    decisions = {(r["flag"], r["metric"], r["run_id"]): r for r in audit if r["type"] == "decision"}
    assert {r["verdict"] for (f, _m, _r), r in decisions.items() if f == "search.ranking.new-model"} == {"pass"}
    assert [r["flag"] for r in audit if r["type"] == "halt"] == ["checkout.payments.express-pay"]
    # The default sequential test halts at the first breaching look: one decision on express-pay's error rate
    # (run 1), none after the halt. The numbers came from SQL: the per-arm counts are the warehouse's.
    express = [r for (f, m, _r), r in decisions.items() if f == "checkout.payments.express-pay" and m == "error_rate"]
    assert [r["verdict"] for r in express] == ["breach"] and express[0]["treatment"]["count"] > 50_000
    (halt,) = [r for r in audit if r["type"] == "halt"]
    assert halt["run_id"] == express[0]["run_id"]
    runs = {r["run_id"] for r in audit if r["type"] == "decision"}
    assert len(runs) == 2  # run 2 still decides the healthy flag, and passes it again
    assert "run 1 (cron, t+0 min)" in out and "HALTED: checkout.payments.express-pay (revert)" in out


def test_the_demo_ships_the_example_queries_unchanged() -> None:
    for packaged in PACKAGED.glob("*.sql"):
        assert packaged.read_text() == (EXAMPLES / packaged.name).read_text(), packaged.name
