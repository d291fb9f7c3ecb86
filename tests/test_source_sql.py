"""The SQL source on real engines: DuckDB (embedded) and PostgreSQL (Debian's, started by tests/servers/postgres.py).

Each example template in examples/sql/ is run on both and checked against the same numbers computed with
numpy from the generated rows; every way a query can fail costs only its own metric."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guardrail.model import Aggregate, AggregateKey
from guardrail.sources.sql import SqlSource, parse_sql_config
from tests import sql_data as d
from tests.servers import postgres
from tests.sql_data import sqlalchemy_url

pytestmark = pytest.mark.postgres

PW_ENV = "GUARDRAIL_TEST_SQL_PASSWORD"


@pytest.fixture(scope="module")
def data() -> d.Tables:
    return d.tables()


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory, data: d.Tables) -> str:
    path = tmp_path_factory.mktemp("duck") / "events.duckdb"
    d.load_duckdb(path, data)
    return f"duckdb:///{path}"


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory, data: d.Tables) -> Iterator[postgres.PostgresServer]:
    server = postgres.start(tmp_path_factory.mktemp("pg"), password=secrets.token_hex(12))
    try:
        d.load_postgres(server.dsn(), data)
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["duckdb", "postgresql"])
def engine(request: pytest.FixtureRequest) -> tuple[str, str, dict[str, str]]:
    """(dialect, url, env): the same tables on each engine."""
    if request.param == "duckdb":
        return "duckdb", request.getfixturevalue("duck"), {}
    server: postgres.PostgresServer = request.getfixturevalue("pg")
    return "postgresql", sqlalchemy_url(server), {PW_ENV: server.password}


def source(url: str, env: dict[str, str], queries: dict[str, Any], **options: Any) -> SqlSource:
    section = {"source": "sql", "url": url, "queries": queries, **options}
    if env:
        section["password_env"] = PW_ENV
    return SqlSource(parse_sql_config(section, env, source="test.yaml"))


def fetch(src: SqlSource, plan: list[tuple[AggregateKey, Any]]) -> dict[AggregateKey, Aggregate]:
    async def go() -> dict[AggregateKey, Aggregate]:
        try:
            return await src.fetch(plan)
        finally:
            await src.aclose()

    return asyncio.run(go())


def templates(dialect: str) -> dict[str, str]:
    return {m: d.template(m, dialect) for m in d.METRICS}


@pytest.mark.parametrize("minutes", [60, 25])
def test_templates_match_the_numbers_computed_from_the_rows(
    engine: tuple[str, str, dict[str, str]], data: d.Tables, minutes: int
) -> None:
    dialect, url, env = engine
    src = source(url, env, templates(dialect))
    window = f"{minutes}m"
    # An aware end, as the engine pins it: the source must bind it as naive UTC.
    end = d.END.replace(tzinfo=timezone.utc)
    got = fetch(src, d.plan(d.METRICS, window, end))
    assert src.statements == len(d.METRICS)  # one statement per metric answers every flag and arm
    truth = d.truth(data, d.END - timedelta(minutes=minutes), d.END)
    for (flag, variant, metric, _w), agg in got.items():
        want = truth[(flag, variant)][metric]
        assert agg.error is None, agg.error
        assert agg.count == want["count"], (flag, variant, metric)
        if metric == "p95_latency_ms" and dialect == "duckdb":
            assert agg.value == pytest.approx(want["value"], rel=0.02)  # approx_quantile: a t-digest
        else:
            assert agg.value == pytest.approx(want["value"], rel=1e-9), (flag, variant, metric)
        for column in (
            "units",
            "unit_sum",
            "unit_sum_sq",
            "num_sum",
            "num_sum_sq",
            "den_sum",
            "den_sum_sq",
            "num_den_sum",
            "stddev",
        ):
            if column in want:
                assert getattr(agg, column) == pytest.approx(want[column], rel=1e-9), (metric, column)
    # The harmful arm really is worse in these tables (the end-to-end tests rely on it).
    harm = got[(d.HARMFUL, "treatment", "error_rate", window)].value
    assert harm is not None and harm > 3 * (got[(d.HARMFUL, "control", "error_rate", window)].value or 1)


def test_one_statement_per_metric_and_window_for_all_flags(engine: tuple[str, str, dict[str, str]]) -> None:
    dialect, url, env = engine
    src = source(url, env, templates(dialect))
    plan = d.plan(["error_rate"], "60m", d.END) + d.plan(["error_rate"], "30m", d.END)
    plan += d.plan(["conversion_rate"], "60m", d.END)
    got = fetch(src, plan)
    assert src.statements == 3
    assert all(a.usable for a in got.values())
    half, whole = got[(d.HEALTHY, "control", "error_rate", "30m")], got[(d.HEALTHY, "control", "error_rate", "60m")]
    assert half.count is not None and whole.count is not None and half.count < whole.count


def _broken_cases(dialect: str) -> dict[str, tuple[str, str]]:
    """metric -> (query, what the error must say)."""
    grouped = d.template("error_rate", dialect)
    sleep = (
        ("SELECT 'x' AS flag, 'y' AS variant, 0.0 AS value, 1 AS count, pg_sleep(60) AS s WHERE :start < :end")
        if dialect == "postgresql"
        else (
            "SELECT 'x' AS flag, 'y' AS variant, 0.0 AS value, COUNT(*) AS count FROM range(100000000) a, "
            "range(100000000) b WHERE :start < :end"
        )
    )
    return {
        "bad_sql": ("SELEC flag FROM events WHERE ts >= :start AND ts < :end", "syntax"),
        "no_count": (grouped.replace("SUM(requests) AS count,", ""), "no count column"),
        "two_rows": (
            grouped.replace("GROUP BY flag, variant", "GROUP BY flag, variant, requests > 10"),
            "2 rows for flag=",
        ),
        "nulls": (
            grouped.replace(
                "CAST(SUM(errors) AS DOUBLE PRECISION)",
                "CASE WHEN variant = 'treatment' THEN NULL ELSE SUM(errors) END * 1.0",
            ),
            "value is NULL",
        ),
        "slow": (sleep, "statement deadline of 1 s hit"),
    }


def test_each_broken_query_costs_only_its_own_metric(engine: tuple[str, str, dict[str, str]]) -> None:
    dialect, url, env = engine
    broken = _broken_cases(dialect)
    queries = {"error_rate": d.template("error_rate", dialect)} | {m: q for m, (q, _) in broken.items()}
    src = source(url, env, queries, timeout=1, concurrency=3)
    pairs = [(d.HARMFUL, "control"), (d.HARMFUL, "treatment")]
    got = fetch(src, d.plan(list(queries), "60m", d.END, pairs))
    for pair in pairs:
        assert got[(*pair, "error_rate", "60m")].usable  # the good metric is still decided
    for metric, (_query, says) in broken.items():
        errors = [got[(*pair, metric, "60m")].error for pair in pairs]
        if metric == "nulls":  # only the arm whose value is NULL
            assert errors[0] is None and says in str(errors[1]), errors
            continue
        for error in errors:
            assert error is not None and says in error.lower(), error
            assert f"{metric} query (60m)" in error
        if env:
            assert env[PW_ENV] not in str(errors)


def test_postgres_cancels_the_statement_itself(pg: postgres.PostgresServer) -> None:
    """A client that stops waiting leaves the query running; statement_timeout makes the server stop it."""
    import psycopg

    query = "SELECT 'x' AS flag, 'y' AS variant, 1.0 AS value, 1 AS count FROM pg_sleep(30) WHERE :start < :end"
    src = source(sqlalchemy_url(pg), {PW_ENV: pg.password}, {"slow": query}, timeout=0.5)
    got = fetch(src, d.plan(["slow"], "5m", d.END, [("x", "y")]))
    error = got[("x", "y", "slow", "5m")].error
    assert error is not None and "canceling statement due to statement timeout" in error
    with psycopg.connect(pg.dsn()) as conn:
        running = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' "
            "AND state = 'active' AND pid <> pg_backend_pid()"
        ).fetchone()
    assert running == (0,)


def test_postgres_sessions_are_read_only(pg: postgres.PostgresServer) -> None:
    query = "DELETE FROM events WHERE ts >= :start AND ts < :end RETURNING unit_id AS flag"
    src = source(sqlalchemy_url(pg), {PW_ENV: pg.password}, {"evil": query})
    got = fetch(src, d.plan(["evil"], "60m", d.END, [(d.HARMFUL, "control")]))
    assert "read-only transaction" in str(got[(d.HARMFUL, "control", "evil", "60m")].error)


def test_wrong_password_is_a_clear_error_that_never_shows_a_password(pg: postgres.PostgresServer) -> None:
    wrong = "not-the-Password-7731"
    src = source(sqlalchemy_url(pg), {PW_ENV: wrong}, {"error_rate": d.template("error_rate", "postgresql")})
    got = fetch(src, d.plan(["error_rate"], "60m", d.END, [(d.HARMFUL, "control")]))
    error = str(got[(d.HARMFUL, "control", "error_rate", "60m")].error)
    assert "password authentication failed" in error
    assert wrong not in error and pg.password not in error


def test_client_side_total_deadline_bounds_a_database_without_its_own(tmp_path: Path) -> None:
    """SQLite has no statement timeout: the total deadline answers, and the statement is interrupted."""
    query = (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
        "SELECT 'x' AS flag, 'y' AS variant, 1.0 AS value, COUNT(*) AS count FROM r WHERE :start < :end"
    )
    src = source(f"sqlite:///{tmp_path / 'x.db'}", {}, {"slow": query}, total_timeout=0.5)
    got = fetch(src, d.plan(["slow"], "5m", d.END, [("x", "y")]))
    assert "total deadline of 0.5 s" in str(got[("x", "y", "slow", "5m")].error)


def test_unreachable_database_is_no_data_not_a_crash() -> None:
    from tests.prom_fixtures import free_port

    src = source(
        f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/x",
        {},
        {"error_rate": d.template("error_rate", "postgresql")},
        timeout=2,
    )
    got = fetch(src, d.plan(["error_rate"], "5m", d.END, [("a", "b")]))
    error = str(got[("a", "b", "error_rate", "5m")].error)
    assert "connection" in error.lower() and "error_rate query (5m)" in error


def test_the_hourly_rollup_recipe_gives_the_raw_queries_numbers(engine: tuple[str, str, dict[str, str]]) -> None:
    """docs/sql.md's rollup for large tables: the same aggregates, per-unit sums included, over whole hours."""
    import sqlalchemy

    dialect, url, env = engine
    rollup = (d.EXAMPLES / "rollup" / "unit_hourly.sql").read_text()
    admin = url.replace("postgresql+psycopg://guardrail@", f"postgresql+psycopg://guardrail:{env.get(PW_ENV)}@")
    engine_ = sqlalchemy.create_engine(admin)
    with engine_.begin() as conn:
        conn.execute(sqlalchemy.text("DROP TABLE IF EXISTS unit_hourly"))
        conn.execute(sqlalchemy.text(rollup))
    engine_.dispose()
    raw = source(url, env, {"error_rate": d.template("error_rate", dialect)})
    rolled = source(url, env, {"error_rate": (d.EXAMPLES / "rollup" / "error_rate.sql").read_text()})
    plan = d.plan(["error_rate"], "60m", d.END)  # 11:00 to 12:00: whole hours
    want, got = fetch(raw, plan), fetch(rolled, plan)
    assert got == want and all(a.usable and a.units for a in got.values())


def test_exposures_template_counts_each_arms_units_for_the_sample_ratio_check(
    engine: tuple[str, str, dict[str, str]], data: d.Tables
) -> None:
    """examples/sql/exposures.sql: the distinct units first exposed in the window, per arm, as numpy counts them."""
    dialect, url, env = engine
    src = source(url, env, {"exposures": d.template("exposures", dialect)})
    end, start = d.END.replace(tzinfo=timezone.utc), d.START - timedelta(minutes=1)  # exposed just before START
    got = fetch(src, d.plan(("exposures",), "61m", end))
    ex = data.exposures
    lo, hi = np.datetime64(start, "us"), np.datetime64(d.END, "us")
    inside = (ex["exposed_at"] >= lo) & (ex["exposed_at"] < hi)
    for (flag, variant, _m, _w), agg in got.items():
        mine = inside & (ex["flag"] == flag) & (ex["variant"] == variant)
        want = len(set(ex["unit_id"][mine].tolist()))
        assert agg.error is None and agg.count == want and agg.value == want, (flag, variant)
    assert all(agg.count for agg in got.values())  # every arm has units: the check is not vacuous


def test_an_in_memory_duckdb_reads_files_in_its_queries(tmp_path: Path) -> None:
    """docs/sql.md's Parquet recipe: `duckdb:///:memory:` (SQLAlchemy's per-thread pool takes no size)."""
    import duckdb

    parquet = tmp_path / "arms.parquet"
    duckdb.sql("SELECT 'f' AS flag, 'control' AS variant, 0.25 AS value, 40 AS count").write_parquet(str(parquet))
    query = f"SELECT * FROM read_parquet('{parquet}') WHERE CAST(:start AS TIMESTAMP) < CAST(:end AS TIMESTAMP)"
    src = source("duckdb:///:memory:", {}, {"m": query}, concurrency=2)
    got = fetch(src, d.plan(["m"], "5m", d.END, [("f", "control")]))
    assert got[("f", "control", "m", "5m")] == Aggregate(value=0.25, count=40)


def test_duckdb_settings_ride_on_the_url() -> None:
    """docs/sql.md: `?memory_limit=...&threads=...` bounds what the embedded database may take."""
    query = (
        "SELECT 'f' AS flag, 'control' AS variant, CAST(current_setting('threads') AS DOUBLE) AS value, "
        "1 AS count WHERE CAST(:start AS TIMESTAMP) < CAST(:end AS TIMESTAMP)"
    )
    src = source("duckdb:///:memory:?memory_limit=300MB&threads=1", {}, {"m": query})
    got = fetch(src, d.plan(["m"], "5m", d.END, [("f", "control")]))
    assert got[("f", "control", "m", "5m")].value == 1.0
