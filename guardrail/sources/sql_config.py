"""The SQL source's configuration: the `metrics:` section (URL without a password, the password's variable,
deadlines, one query per metric) checked field by field, before any lock. See docs/sql.md."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail.model import GuardrailError
from guardrail.sources.sql_windows import uses_windows

SECTION_KEYS = ("source", "url", "password_env", "timeout", "total_timeout", "concurrency", "queries", "every")
BIND_NAMES = frozenset({"start", "end"})
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONCURRENCY = 2
GRACE = 5.0  # seconds the client waits past the database's own deadline before it gives up on a statement


@dataclass(frozen=True)
class SqlConfig:
    # As configured: never holds a password. Not `url`: the settings read `url` as an http(s) metrics API.
    database_url: str
    queries: Mapping[str, str]
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT  # per statement, enforced by the database where it can
    total_timeout: float = 2 * DEFAULT_TIMEOUT + GRACE  # the whole fetch, client side
    concurrency: int = DEFAULT_CONCURRENCY
    password_env: str | None = None  # the variable named by the config (checked when a run starts)
    origin: str = "<config>"  # the config file, for messages

    def secrets(self) -> list[str]:
        return [self.password] if self.password else []


# ---- configuration ---------------------------------------------------------------------------------


def _positive(section: Mapping[str, Any], key: str, default: float, *, source: str, integer: bool = False) -> float:
    value = section.get(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not 0 < value < math.inf:
        kind = "a positive whole number" if integer else "a positive number of seconds"
        raise GuardrailError(f"must be {kind}, got {value!r}", source=source, field=f"metrics.{key}")
    return float(value)


def _query_text(metric: Any, spec: Any, *, source: str, base_dir: Path) -> str:
    where = f"metrics.queries.{metric}"
    if not isinstance(metric, str):
        raise GuardrailError("metric names must be strings", source=source, field=where)
    if isinstance(spec, Mapping):
        extra = sorted(str(k) for k in spec if k != "file")
        if extra or not isinstance(spec.get("file"), str):
            raise GuardrailError("must be SQL text or {file: path/to/query.sql}", source=source, field=where)
        path = base_dir / spec["file"]
        try:
            spec = path.read_text("utf-8")
        except OSError as exc:
            raise GuardrailError(f"cannot read {path}: {exc.strerror}", source=source, field=f"{where}.file") from None
    if not isinstance(spec, str) or not spec.strip():
        raise GuardrailError("must be a non-empty SQL query", source=source, field=where)
    from sqlalchemy import text

    names = set(text(spec).compile().params)
    unknown = sorted(names - BIND_NAMES)
    if unknown:
        raise GuardrailError(
            f"unknown bind parameter(s) {[':' + n for n in unknown]}; only :start and :end are bound "
            r"(write \: for a literal colon)",
            source=source,
            field=where,
        )
    absent = sorted(BIND_NAMES - names)
    if absent and not uses_windows(spec):
        # Without both bounds the query ignores the run's pinned window: arms and runs would not compare.
        raise GuardrailError(
            f"must filter on the window with :start and :end (missing {[':' + n for n in absent]}), "
            "e.g. WHERE ts >= :start AND ts < :end, or join guardrail_windows (docs/sql.md)",
            source=source,
            field=where,
        )
    return spec


def parse_sql_config(
    section: Mapping[str, Any], env: Mapping[str, str], *, source: str, base_dir: Path | None = None
) -> SqlConfig:
    """The `metrics:` mapping of a config file -> SqlConfig. Raises GuardrailError naming the field."""
    if not isinstance(section, Mapping):
        raise GuardrailError("must be a mapping", source=source, field="metrics")
    unknown = sorted(str(k) for k in section if k not in SECTION_KEYS)
    if unknown:
        raise GuardrailError(
            f"unknown key(s) {unknown}; known: {list(SECTION_KEYS)}", source=source, field=f"metrics.{unknown[0]}"
        )
    if section.get("source", "sql") != "sql":
        raise GuardrailError(f"expected `sql`, got {section.get('source')!r}", source=source, field="metrics.source")
    raw_url = section.get("url")
    if not isinstance(raw_url, str) or not raw_url.strip():
        raise GuardrailError(
            "missing database URL, e.g. duckdb:///var/lib/guardrail/events.duckdb or "
            "postgresql+psycopg://guardrail@db:5432/events",
            source=source,
            field="metrics.url",
        )
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(raw_url.strip())
    except ArgumentError:
        # SQLAlchemy's message repeats the URL, which may hold a password: say it in our words.
        raise GuardrailError(
            "not a database URL (dialect+driver://user@host:port/database)", source=source, field="metrics.url"
        ) from None
    if url.password is not None:
        raise GuardrailError(
            "the URL holds a password; config files get committed, so remove it and name an environment "
            "variable with `password_env` (e.g. password_env: GUARDRAIL_SQL_PASSWORD)",
            source=source,
            field="metrics.url",
        )
    try:
        dialect = url.get_dialect()
        dialect.import_dbapi()  # the driver module itself (psycopg, duckdb, ...): missing is a config error
    except NoSuchModuleError:
        raise GuardrailError(
            f"no SQLAlchemy driver for {url.drivername!r}: DuckDB (duckdb:///) comes with guardrail, PostgreSQL "
            "needs `pip install 'guardrail[postgres]'` (postgresql+psycopg://), others their dialect package",
            source=source,
            field="metrics.url",
        ) from None
    except ImportError as exc:
        raise GuardrailError(
            f"the driver for {url.drivername!r} is not installed (no module {exc.name!r}); "
            + ("pip install 'guardrail[postgres]'" if url.get_backend_name() == "postgresql" else "install it"),
            source=source,
            field="metrics.url",
        ) from None

    if getattr(dialect, "is_async", False):
        raise GuardrailError(
            f"{url.drivername!r} is an asyncio driver; use a synchronous one (e.g. postgresql+psycopg://)",
            source=source,
            field="metrics.url",
        )
    password = None
    password_env = section.get("password_env")
    if password_env is not None:
        if not isinstance(password_env, str) or not password_env.strip():
            raise GuardrailError("must name an environment variable", source=source, field="metrics.password_env")
        password = env.get(password_env.strip()) or None  # missing: `ready` refuses a check run

    timeout = _positive(section, "timeout", DEFAULT_TIMEOUT, source=source)
    total = _positive(section, "total_timeout", 2 * timeout + GRACE, source=source)
    concurrency = int(_positive(section, "concurrency", DEFAULT_CONCURRENCY, source=source, integer=True))
    raw_queries = section.get("queries")
    if not isinstance(raw_queries, Mapping) or not raw_queries:
        raise GuardrailError(
            "must map each guardrail metric to one SQL query (see docs/sql.md)", source=source, field="metrics.queries"
        )
    base = base_dir if base_dir is not None else Path(".")
    queries = {str(m): _query_text(m, spec, source=source, base_dir=base) for m, spec in raw_queries.items()}
    return SqlConfig(
        database_url=raw_url.strip(),
        queries=queries,
        password=password,
        timeout=timeout,
        total_timeout=total,
        concurrency=concurrency,
        password_env=password_env.strip() if isinstance(password_env, str) else None,
        origin=source,
    )
