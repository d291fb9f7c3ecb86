"""`metrics.every`: warehouse guardrails on a longer cadence than cron. In-process `check` runs with `--now` over
a DuckDB warehouse: a run that is not due asks nothing, decides nothing and changes no flag's state; a due run
looks as usual, and the last look is kept in the state file."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from guardrail import report
from guardrail.cadence import cadence, parse_every
from guardrail.check import run_check
from guardrail.model import ExitCode, GuardrailError, State, Verdict
from guardrail.settings import load_settings
from guardrail.state import StateStore, from_dict, to_dict
from guardrail.status import build_report, to_text
from tests import sql_data as d
from tests.test_sql_e2e import write_setup

T1 = d.END.replace(tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wh") / "events.duckdb"
    d.load_duckdb(path, d.tables())
    return path


def test_not_due_runs_ask_nothing_and_change_no_flag_state(tmp_path: Path, warehouse: Path) -> None:
    db = tmp_path / "events.duckdb"
    db.write_bytes(warehouse.read_bytes())
    settings = load_settings(config=write_setup(tmp_path, f"duckdb:///{db}", "duckdb", every="10m"), env={})
    store = StateStore(tmp_path / "state.json")

    first = run_check(settings, now=T1)
    assert first.cadence is not None and first.cadence.due
    verdicts = {(e.flag, e.metric): e.verdict for e in first.evaluations}
    assert verdicts[(d.HARMFUL, "error_rate")] is Verdict.BREACH  # the default test halts at this first look
    assert first.exit_code is ExitCode.HALTED
    looked = store.load()
    assert looked.metrics_looked_at == T1
    audited = (tmp_path / "audit.jsonl").read_text().count("\n")

    # Two minutes later, and eight: not due. The warehouse is gone, so any query would be skip:no_data.
    db.rename(tmp_path / "away.duckdb")
    for minutes in (2, 8):
        now = T1 + timedelta(minutes=minutes)
        quiet = run_check(settings, now=now)
        assert quiet.cadence is not None and not quiet.cadence.due
        assert quiet.evaluations == () and quiet.halts == () and quiet.exit_code is ExitCode.OK
        assert quiet.cadence.next_look_at == T1 + timedelta(minutes=9)  # 10 minutes less a minute of cron slack
        text = report.to_text(quiet)
        assert "metrics not due (metrics.every 10 min): last look at 2026-11-25T12:00:00Z" in text
        assert "no guardrails evaluated" not in text and "skip" not in text
        doc = report.to_json(quiet)
        assert doc["cadence"] == {
            "every_minutes": 10.0,
            "due": False,
            "last_look_at": "2026-11-25T12:00:00Z",
            "next_look_at": "2026-11-25T12:09:00Z",
        }
        after = store.load()
        assert after.flags == looked.flags  # streaks, the sequential test's looks, first-seen: untouched
        assert after.metrics_looked_at == T1 and after.last_run_at == now  # the monitor ran: not stale
        assert (tmp_path / "audit.jsonl").read_text().count("\n") == audited  # no decision lines
        status = build_report(after, None, now=now, stale_after=5, flag_source=None, warnings=[])
        assert not status.stale
        assert "last metrics look: 2026-11-25T12:00:00Z" in to_text(status)

    # A person asking for one flag by name gets it looked at, due or not; the fleet's last look stays.
    (tmp_path / "away.duckdb").rename(db)
    asked = run_check(settings, now=T1 + timedelta(minutes=8), only=[d.HEALTHY])
    assert asked.cadence is None and {e.flag for e in asked.evaluations} == {d.HEALTHY}
    db.rename(tmp_path / "away.duckdb")
    assert store.load().metrics_looked_at == T1

    # Nine minutes after the last look the next run is due: it looks at the flags still watched.
    (tmp_path / "away.duckdb").rename(db)
    before = store.load()
    due = run_check(settings, now=T1 + timedelta(minutes=9))
    assert due.cadence is not None and due.cadence.due and due.exit_code is ExitCode.OK
    assert {e.flag for e in due.evaluations} == {d.HEALTHY} and all(e.verdict is Verdict.PASS for e in due.evaluations)
    looked_again = store.load()
    assert looked_again.metrics_looked_at == T1 + timedelta(minutes=9)
    assert looked_again.flags[d.HEALTHY] != before.flags[d.HEALTHY]  # this run was a look
    assert yaml.safe_load((tmp_path / "flags.yaml").read_text())["flags"][d.HARMFUL]["state"] == "DISABLED"


def test_without_every_every_run_looks_and_the_state_file_has_no_look_key(tmp_path: Path, warehouse: Path) -> None:
    settings = load_settings(config=write_setup(tmp_path, f"duckdb:///{warehouse}", "duckdb"), env={})
    result = run_check(settings, now=T1)
    assert result.cadence is None and result.evaluations and report.to_json(result)["cadence"] is None
    assert "metrics_looked_at" not in json.loads((tmp_path / "state.json").read_text())


@pytest.mark.parametrize("value", [10, "10", "0m", "5x", "15 min", "", "8d", True])
def test_a_bad_every_is_an_error_naming_the_field(tmp_path: Path, warehouse: Path, value: object) -> None:
    config = write_setup(tmp_path, f"duckdb:///{warehouse}", "duckdb", every=value)
    with pytest.raises(GuardrailError) as caught:
        load_settings(config=config, env={})
    assert caught.value.field == "metrics.every" and caught.value.source == str(config)


def test_due_rules() -> None:
    assert parse_every(None, source=None) is None
    assert [parse_every(v, source=None) for v in ("15m", "1h", "2d")] == [15.0, 60.0, 2880.0]
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert cadence(15, None, now).due  # the first run looks
    assert not cadence(15, now - timedelta(minutes=13, seconds=59), now).due
    assert cadence(15, now - timedelta(minutes=14), now).due  # cron's seconds of jitter do not cost a cycle
    assert cadence(15, now + timedelta(minutes=5), now).due  # a look "in the future" proves nothing about now


def test_the_last_look_round_trips_and_old_state_files_load() -> None:
    at = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert from_dict(to_dict(State(metrics_looked_at=at))).metrics_looked_at == at
    old = {"version": 1, "last_run_at": "2026-01-01T12:00:00Z", "flags": {}}
    assert from_dict(old).metrics_looked_at is None
    with pytest.raises(TypeError):
        from_dict({**old, "metrics_looked_at": 5})


@pytest.mark.parametrize(
    "metrics",
    [
        {
            "source": "prometheus",
            "url": "http://127.0.0.1:9090",
            "queries": {"m": {"value": "sum by (flag, variant) (x)", "count": "sum by (flag, variant) (y)"}},
        },
        {"source": "http", "url": "http://127.0.0.1:8080"},
    ],
)
def test_every_is_an_option_of_every_source(tmp_path: Path, metrics: dict[str, object]) -> None:
    config = tmp_path / "guardrail.yaml"
    config.write_text(yaml.safe_dump({"metrics": {**metrics, "every": "1h"}}))
    assert load_settings(config=config, env={}).metrics_every == 60.0
