"""The SQL source's config (every bad field named) and its column contract (every bad result set explained)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from guardrail.model import GuardrailError
from guardrail.settings import load_settings
from guardrail.sources.sql import naive_utc, parse_sql_config, window_bounds
from guardrail.sources.sql_rows import Rows, aggregates_from_rows

Q = "SELECT flag, variant, value, count FROM m WHERE ts >= :start AND ts < :end"


def parse(env: dict[str, str] | None = None, **section: Any) -> Any:
    return parse_sql_config(
        {"source": "sql", "url": "duckdb:///x.duckdb", "queries": {"m": Q}, **section}, env or {}, source="g.yaml"
    )


@pytest.mark.parametrize(
    ("section", "field", "says"),
    [
        ({"url": "postgresql+psycopg://u:hunter2@db/x"}, "metrics.url", "holds a password"),
        ({"url": "postgresql+psycopg://u:@db/x"}, "metrics.url", "holds a password"),
        ({"url": "nonsense"}, "metrics.url", "not a database URL"),
        ({"url": "nosuchdb://h/x"}, "metrics.url", "no SQLAlchemy driver"),
        ({"url": "mysql+nosuchdriver://h/x"}, "metrics.url", "no SQLAlchemy driver"),
        ({"url": "postgresql+asyncpg://h/x"}, "metrics.url", "pip install 'guardrail[postgres]'"),
        ({"url": ""}, "metrics.url", "missing database URL"),
        ({"timeout": 0}, "metrics.timeout", "positive"),
        ({"timeout": True}, "metrics.timeout", "positive"),
        ({"concurrency": 1.5}, "metrics.concurrency", "whole number"),
        ({"querys": {}}, "metrics.querys", "unknown key"),
        ({"queries": {}}, "metrics.queries", "must map each guardrail metric"),
        ({"queries": {"m": "SELECT 1 WHERE :start < :stop"}}, "metrics.queries.m", "unknown bind parameter"),
        ({"queries": {"m": "SELECT flag FROM t WHERE ts >= :start"}}, "metrics.queries.m", "missing [':end']"),
        ({"queries": {"m": ""}}, "metrics.queries.m", "non-empty SQL"),
        ({"queries": {"m": {"file": "no/such.sql"}}}, "metrics.queries.m.file", "cannot read"),
        ({"queries": {"m": {"path": "x.sql"}}}, "metrics.queries.m", "{file: path/to/query.sql}"),
    ],
)
def test_bad_config_names_the_field(section: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(GuardrailError) as err:
        parse(**section)
    assert err.value.field == field and err.value.source == "g.yaml"
    assert says in err.value.message
    assert "hunter2" not in str(err.value)


def test_good_config_reads_the_password_from_the_environment_and_files_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "q.sql").write_text(Q)
    config = parse_sql_config(
        {
            "url": "postgresql+psycopg://guardrail@db:5432/events",
            "password_env": "PW",
            "timeout": 5,
            "queries": {"m": {"file": "q.sql"}, "n": Q},
        },
        {"PW": "s3cret-pw"},
        source="g.yaml",
        base_dir=tmp_path,
    )
    assert config.password == "s3cret-pw" and config.secrets() == ["s3cret-pw"]
    assert config.queries["m"] == Q and config.timeout == 5 and config.total_timeout == 15
    assert "s3cret-pw" not in repr(config)
    # PostgreSQL casts (`::`) and escaped colons are not bind parameters.
    parse(queries={"m": "SELECT ts::date AS d, '\\:x' FROM t WHERE ts >= :start AND ts < :end"})


def test_settings_accept_the_sql_source_and_treat_its_password_as_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "flags: flags.yaml\nmetrics:\n  source: sql\n  url: duckdb:///x.duckdb\n  password_env: PW\n"
        "  queries:\n    m: {file: q.sql}\n"
    )
    (tmp_path / "q.sql").write_text(Q)  # beside the config file, not the working directory
    settings = load_settings(config=path, env={"PW": "pw-value-123"})
    assert settings.metrics_source == "sql" and "pw-value-123" in settings.secrets()
    assert "pw-value-123" not in repr(settings)
    assert settings.metrics.config.queries == {"m": Q}


def test_a_missing_password_stops_a_check_run_but_not_status(tmp_path: Path) -> None:
    from guardrail.settings import require

    path = tmp_path / "g.yaml"
    path.write_text(
        "flags: flags.yaml\nmetrics:\n  source: sql\n  url: postgresql+psycopg://guardrail@db/events\n"
        "  password_env: NOT_SET_ANYWHERE\n  queries:\n    m: 'SELECT 1 WHERE :start < :end'\n"
    )
    settings = load_settings(config=path, env={})  # what status and resume read: no password needed
    with pytest.raises(GuardrailError) as err:
        require(settings)  # what a check run demands first, before any lock
    assert (err.value.field, err.value.source) == ("metrics.password_env", str(path))
    assert "NOT_SET_ANYWHERE is not set" in err.value.message


def test_times_are_bound_as_naive_utc() -> None:
    from datetime import datetime, timedelta, timezone

    end = datetime(2026, 11, 25, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert naive_utc(end) == datetime(2026, 11, 25, 12, 0)
    assert window_bounds("90m", end) == (datetime(2026, 11, 25, 10, 30), datetime(2026, 11, 25, 12, 0))
    with pytest.raises(ValueError):
        window_bounds("0m", end)


COLUMNS = ("flag", "variant", "value", "count", "units", "num_sum", "stddev")


def rows(*data: tuple[Any, ...], columns: tuple[str, ...] = COLUMNS) -> Rows:
    return Rows(columns=columns, rows=list(data))


def test_rows_map_back_by_flag_and_variant_and_carry_the_per_unit_columns() -> None:
    got = aggregates_from_rows(
        rows(
            ("f", "control", Decimal("0.01"), Decimal(1000), 90, 10.0, None),
            ("f", "treatment", 0.02, 1000, 91, 20.0, 0.5),
            ("other", "control", 0.5, 7, 1, 1.0, None),  # not planned: ignored
        ),
        [("f", "control"), ("f", "treatment")],
        label="m query (5m)",
    )
    assert got[("f", "control")].value == 0.01 and got[("f", "control")].count == 1000
    assert got[("f", "treatment")].units == 91 and got[("f", "treatment")].num_sum == 20.0
    assert got[("f", "treatment")].stddev == 0.5 and got[("f", "control")].unit_sum is None


@pytest.mark.parametrize(
    ("row", "says"),
    [
        (("f", "t", None, 10, 1, 1.0, None), "value is NULL (no events in the window's denominator?)"),
        (("f", "t", 0.1, None, 1, 1.0, None), "count is NULL"),
        (("f", "t", float("nan"), 10, 1, 1.0, None), "value is nan"),
        (("f", "t", "0.1", 10, 1, 1.0, None), "value is not a number"),
        (("f", "t", 0.1, -1, 1, 1.0, None), "count is not a non-negative whole number"),
        (("f", "t", 0.1, 2.5, 1, 1.0, None), "count is not a non-negative whole number"),
    ],
)
def test_a_bad_cell_costs_its_arm_with_the_cause(row: tuple[Any, ...], says: str) -> None:
    got = aggregates_from_rows(rows(row, ("f", "c", 0.1, 10, 1, 1.0, None)), [("f", "t"), ("f", "c")], label="m")
    assert str(got[("f", "t")].error).startswith(f"m: flag=f variant=t: {says}")
    assert got[("f", "c")].usable


def test_bad_optional_cells_are_dropped_not_fatal() -> None:
    got = aggregates_from_rows(rows(("f", "t", 0.1, 10, 2.5, None, -1.0)), [("f", "t")], label="m")[("f", "t")]
    assert got.usable and got.units is None and got.num_sum is None and got.stddev is None


def test_missing_rows_duplicates_and_missing_columns() -> None:
    got = aggregates_from_rows(
        rows(("f", "t", 0.1, 10, 1, 1.0, None), ("f", "t", 0.2, 10, 1, 1.0, None)), [("f", "t"), ("f", "c")], label="m"
    )
    assert "2 rows for flag=f variant=t" in str(got[("f", "t")].error)
    assert "no row for flag=f variant=c" in str(got[("f", "c")].error)
    got = aggregates_from_rows(rows(("f", "t", 0.1), columns=("flag", "variant", "val")), [("f", "t")], label="m")
    assert "no value, count column(s) in the result (columns: flag, variant, val)" in str(got[("f", "t")].error)
