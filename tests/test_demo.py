"""`make demo` runs `guardrail demo`: the whole loop on the package's fake API, as the README describes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import NOW


def test_demo_breaches_then_halts_and_alerts(run_cli: Any) -> None:
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "fake flag, metrics and webhook API on http://127.0.0.1:" in out
    run1, run2 = out.index("=== run 1"), out.index("=== run 2")
    assert "HALTED" not in out[run1:run2] and "HALTED: checkout.payments.express-pay" in out[run2:]
    assert "checkout.payments.express-pay: state=DISABLED defaultVariant=control" in out
    assert "AUTO-HALT" in out and "demo behaved as expected" in out


def test_demo_keeps_its_files_where_asked(tmp_path: Path, capsys: Any) -> None:
    from guardrail.demo import run_demo

    assert run_demo(state_dir=tmp_path, now=NOW) == 0
    state = json.loads((tmp_path / "state.json").read_text("utf-8"))
    assert state["flags"]["checkout.payments.express-pay"]["halt"]["status"] == "done"
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text("utf-8").splitlines()]
    assert [line["flag"] for line in lines if line["type"] == "halt"] == ["checkout.payments.express-pay"]
    assert "search.ranking.new-model" not in {line["flag"] for line in lines if line["type"] == "halt"}
    assert "demo behaved as expected" in capsys.readouterr().out
