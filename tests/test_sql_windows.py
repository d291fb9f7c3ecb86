"""Per-flag windows (`guardrail_windows`): every flag's since-start window in one statement, on DuckDB and a real
PostgreSQL, giving exactly what one `:start`/`:end` statement per window gives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from guardrail.demo.warehouse import Tables
from guardrail.model import SINCE_START, GuardrailError, MetricQuery
from guardrail.sources.sql_config import parse_sql_config
from guardrail.sources.sql_windows import batches, uses_windows, with_windows
from tests import sql_data as d
from tests import test_source_sql as base

# The same seeded tables on DuckDB and a real PostgreSQL as tests/test_source_sql.py (its fixtures, re-used).
data, duck, pg, engine = base.data, base.duck, base.pg, base.engine
fetch, source = base.fetch, base.source

pytestmark = pytest.mark.postgres

WINDOWED = (d.EXAMPLES / "error_rate.since_start.sql").read_text("utf-8")
# Each flag's experiment started at its own time: three distinct since-start windows.
STARTED = {d.HARMFUL: 60, d.HEALTHY: 25, d.ABN: 41}


def since_start_plan(minutes: dict[str, int], end: datetime) -> list[Any]:
    """The plan the engine makes for sequential guardrails: the key's window is `since_start`, the query's the
    flag's own minutes."""
    return [
        ((flag, variant, "error_rate", SINCE_START), MetricQuery(flag, variant, "error_rate", f"{minutes[flag]}m", end))
        for flag, variant in d.PAIRS
    ]


def test_all_since_start_windows_in_one_statement_match_one_statement_per_window(
    engine: tuple[str, str, dict[str, str]], data: Tables
) -> None:
    dialect, url, env = engine
    end = d.END.replace(tzinfo=timezone.utc)  # aware, as the engine pins it: bound as naive UTC
    windowed = source(url, env, {"error_rate": WINDOWED})
    got = fetch(windowed, since_start_plan(STARTED, end))
    assert windowed.statements == 1

    plain = source(url, env, {"error_rate": d.template("error_rate", dialect)})
    want = fetch(plain, since_start_plan(STARTED, end))
    assert plain.statements == len(set(STARTED.values()))  # one per distinct start, the way it was
    assert got == want
    for (flag, variant, _metric, _window), agg in got.items():
        truth = d.truth(data, d.END - timedelta(minutes=STARTED[flag]), d.END)[(flag, variant)]["error_rate"]
        assert agg.usable and agg.count == truth["count"], (flag, variant, agg)
        assert agg.value == pytest.approx(truth["value"], rel=1e-9)
        assert agg.num_den_sum == pytest.approx(truth["num_den_sum"], rel=1e-9)


def test_one_flag_with_two_windows_of_a_metric_takes_a_second_statement(
    engine: tuple[str, str, dict[str, str]], data: Tables
) -> None:
    _dialect, url, env = engine
    src = source(url, env, {"error_rate": WINDOWED})
    plan = since_start_plan(STARTED, d.END) + d.plan(["error_rate"], "30m", d.END, [(d.HARMFUL, "treatment")])
    got = fetch(src, plan)
    assert src.statements == 2
    for key, minutes in (
        ((d.HARMFUL, "treatment", "error_rate", SINCE_START), 60),
        ((d.HARMFUL, "treatment", "error_rate", "30m"), 30),
    ):
        truth = d.truth(data, d.END - timedelta(minutes=minutes), d.END)[(d.HARMFUL, "treatment")]["error_rate"]
        assert got[key].count == truth["count"]


def test_a_failing_windowed_statement_names_the_metric_and_costs_only_it(
    engine: tuple[str, str, dict[str, str]],
) -> None:
    _dialect, url, env = engine
    broken = WINDOWED.replace("JOIN exposures x", "JOIN no_such_table x")
    src = source(url, env, {"error_rate": broken})
    got = fetch(src, since_start_plan(STARTED, d.END))
    for agg in got.values():
        assert agg.error is not None and "error_rate query (per-flag windows)" in agg.error
        assert "no_such_table" in agg.error


# ---- pure: the relation put in front of the template ---------------------------------------------------


def test_the_relation_becomes_the_templates_first_cte_or_its_own_with() -> None:
    at = datetime(2026, 1, 1, 12, 0)
    sql, params = with_windows(
        "-- note\n/* more */\n  with recursive a AS (SELECT 1) SELECT * FROM guardrail_windows", [("f", at)], at
    )
    assert sql.startswith(
        "-- note\n/* more */\n  with recursive guardrail_windows (flag, start_ts, end_ts) AS (VALUES ("
    )
    assert sql.endswith("), a AS (SELECT 1) SELECT * FROM guardrail_windows")
    assert params == {"start": at, "end": at, "gw_flag_0": "f", "gw_start_0": at}
    plain, _ = with_windows("SELECT * FROM guardrail_windows", [("f", at), ("g", at - timedelta(hours=1))], at)
    assert plain.startswith("WITH guardrail_windows (flag, start_ts, end_ts) AS (VALUES (CAST(:gw_flag_0 AS VARCHAR)")
    assert ":gw_start_1" in plain and plain.endswith("\nSELECT * FROM guardrail_windows")
    # A flag key is a bound parameter, never text in the statement.
    evil, params = with_windows("SELECT * FROM guardrail_windows", [("x'); DROP TABLE events; --", at)], at)
    assert "DROP" not in evil and params["gw_flag_0"].startswith("x');")


def test_batches_keep_one_window_per_flag_and_a_bounded_size() -> None:
    items = [("a1", "a", "60m"), ("a2", "a", "60m"), ("b1", "b", "30m"), ("a3", "a", "5m"), ("c1", "c", "9m")]
    assert batches(items) == [["a1", "a2", "b1", "c1"], ["a3"]]
    assert batches(items, limit=2) == [["a1", "a2", "b1"], ["a3", "c1"]]
    assert uses_windows("select * FROM Guardrail_Windows w") and not uses_windows("SELECT my_guardrail_windows_x")


def test_a_windowed_template_needs_no_start_or_end_but_a_plain_one_does() -> None:
    section = {"source": "sql", "url": "duckdb:///:memory:"}
    without = "SELECT w.flag, 'c' AS variant, 1.0 AS value, 1 AS count FROM guardrail_windows w"
    assert parse_sql_config({**section, "queries": {"m": without}}, {}, source="c.yaml").queries["m"] == without
    with pytest.raises(GuardrailError, match="join guardrail_windows") as caught:
        parse_sql_config({**section, "queries": {"m": "SELECT 1 AS flag"}}, {}, source="c.yaml")
    assert caught.value.field == "metrics.queries.m"


def test_postgres_and_duckdb_get_two_bound_arrays_however_many_flags() -> None:
    at = datetime(2026, 1, 1, 12, 0)
    windows = [(f"flag-{i}", at - timedelta(minutes=i)) for i in range(20_000)]
    sql, params = with_windows("SELECT * FROM guardrail_windows", windows, at, dialect="postgresql")
    assert sql.startswith("WITH guardrail_windows (flag, start_ts, end_ts) AS (SELECT unnest(CAST(:gw_flags AS")
    assert len(sql) < 300 and set(params) == {"start", "end", "gw_flags", "gw_starts"}
    assert params["gw_flags"][-1] == "flag-19999" and params["start"] == at - timedelta(minutes=19_999)


def test_other_engines_get_a_values_list_sqlite_among_them(tmp_path: Path) -> None:
    """SQLite: no arrays, times kept as text (so no casts); the windows still pick each flag's own rows."""
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine_ = sqlalchemy.create_engine(url)
    with engine_.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE t (flag VARCHAR, ts TIMESTAMP)"))
        for flag, minutes in (("a", 5), ("a", 20), ("b", 5), ("b", 20), ("b", 40)):
            conn.execute(
                sqlalchemy.text("INSERT INTO t VALUES (:f, :ts)"), {"f": flag, "ts": d.END - timedelta(minutes=minutes)}
            )
    engine_.dispose()
    query = (
        "SELECT w.flag, 'control' AS variant, 1.0 AS value, COUNT(t.ts) AS count FROM guardrail_windows w "
        "LEFT JOIN t ON t.flag = w.flag AND t.ts >= w.start_ts AND t.ts < w.end_ts GROUP BY w.flag"
    )
    src = source(url, {}, {"m": query})
    plan = [
        ((flag, "control", "m", SINCE_START), MetricQuery(flag, "control", "m", f"{minutes}m", d.END))
        for flag, minutes in (("a", 10), ("b", 30))
    ]
    got = fetch(src, plan)
    assert src.statements == 1
    assert got[("a", "control", "m", SINCE_START)].count == 1 and got[("b", "control", "m", SINCE_START)].count == 2
