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
    # The numbers came from SQL: the per-arm counts are the warehouse's, not fixed values.
    express = [r for (f, m, _r), r in decisions.items() if f == "checkout.payments.express-pay" and m == "error_rate"]
    assert all(r["verdict"] == "breach" and r["treatment"]["count"] > 50_000 for r in express)


def test_the_demo_ships_the_example_queries_unchanged() -> None:
    for packaged in PACKAGED.glob("*.sql"):
        assert packaged.read_text() == (EXAMPLES / packaged.name).read_text(), packaged.name
