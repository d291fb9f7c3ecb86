"""SQL databases as a metrics source: one statement per guardrail metric and window answers every flag and arm.

Each guardrail metric maps to one SQL query (SQLAlchemy Core `text()`, bound `:start` and `:end`) that
returns one row per (flag, variant) for all flags at once; the column contract is in docs/sql.md. A run's
plan is grouped by (metric, window, end), each group's statement runs once, and its rows are mapped back to
the plan's (flag, variant) keys. 2,000 flags x 3 metrics is then 3 statements per window, not 12,000.

Deadlines are enforced by the database, because a client that stops waiting leaves the query running:
PostgreSQL gets `statement_timeout` on every session (https://www.postgresql.org/docs/15/runtime-config-client.html),
DuckDB is `interrupt()`ed from a timer (https://duckdb.org/docs/api/python/reference/#duckdb.DuckDBPyConnection.interrupt).
A client-side total deadline bounds the whole fetch on any database.

Nothing here raises for a failing database or a bad query: the keys of that one metric become
`Aggregate.missing(<the database's own message>)`, which the engine records as `skip:no_data`, and the
other metrics are still decided. The password lives only in the environment and is scrubbed from messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from guardrail.adapters import ConfigContext, Plugin, Runtime
from guardrail.model import Aggregate, AggregateKey, FailureKind, GuardrailError, MetricQuery
from guardrail.sources.sql_config import GRACE, SqlConfig, parse_sql_config
from guardrail.sources.sql_rows import Rows, aggregates_from_rows
from guardrail.sources.sql_windows import ARRAY_DIALECTS, MAX_FLAGS, batches, uses_windows, with_windows

T = TypeVar("T")
PER_FLAG = "per-flag windows"  # the window of a statement whose template joins guardrail_windows
__all__ = ["SqlConfig", "SqlSource", "naive_utc", "parse_sql_config", "window_bounds"]


# ---- running statements ------------------------------------------------------------------------------


def naive_utc(moment: datetime) -> datetime:
    """Bind times as naive UTC: SQLite and DuckDB compare an aware datetime against a TIMESTAMP column
    without converting it (measured: silently wrong windows), and every engine reads naive UTC the same."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def window_bounds(window: str, end: datetime) -> tuple[datetime, datetime]:
    from guardrail.config import window_minutes

    minutes = window_minutes(window)
    if not math.isfinite(minutes) or minutes <= 0:
        raise ValueError(window)
    stop = naive_utc(end)
    return stop - timedelta(minutes=minutes), stop


class StatementFailed(Exception):
    """Internal: a statement failed; the message is the database's own (password scrubbed)."""

    def __init__(self, message: str, kind: FailureKind) -> None:
        super().__init__(message)
        self.kind = kind


async def in_thread(work: Callable[[], T], *, deadline: float, on_timeout: Callable[[], None]) -> T:
    """Run blocking `work` on a daemon thread and wait at most `deadline` seconds.

    Not asyncio.to_thread: a statement the database fails to cancel would keep the default executor, and
    with it `asyncio.run`'s shutdown (which joins executor threads), alive past every deadline."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # handed to the awaiting task, which decides
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the run gave up on this statement
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="guardrail-sql", daemon=True).start()
    try:
        return await asyncio.wait_for(future, deadline)
    except (asyncio.TimeoutError, asyncio.CancelledError):  # our deadline, or the run's total one
        on_timeout()
        raise


class SqlSource:
    """MetricSource over SQLAlchemy. `fetch(plan)` answers a whole run; `query(q)` one aggregate."""

    name = "sql"

    def __init__(self, config: SqlConfig) -> None:
        from sqlalchemy import create_engine

        self.config = config
        self.statements = 0  # statements sent, for benchmarks and the run's log
        url = self._url()
        self.dialect = url.get_backend_name()
        connect_args: dict[str, Any] = {}
        if self.dialect == "postgresql":
            # Every session: the database cancels a statement past the deadline, and a template can only read.
            ms = max(1, int(config.timeout * 1000))
            connect_args["options"] = f"-c statement_timeout={ms} -c default_transaction_read_only=on"
            connect_args["connect_timeout"] = max(1, math.ceil(min(config.timeout, 10.0)))
            connect_args["application_name"] = "guardrail"
        elif self.dialect == "duckdb" and url.database not in (None, "", ":memory:"):
            # A DuckDB file admits one writer process; guardrail only reads, and must not lock out the loader.
            connect_args["read_only"] = True
        pool: dict[str, Any] = {"pool_size": config.concurrency, "max_overflow": 0}
        if url.database in (None, "", ":memory:"):
            # An in-memory database (DuckDB over Parquet files, SQLite) gets SQLAlchemy's per-thread pool, which
            # takes no size; a connection per statement is what that needs (each reads the files itself).
            from sqlalchemy.pool import NullPool

            pool = {"poolclass": NullPool}
        self.engine = create_engine(url, connect_args=connect_args, pool_pre_ping=False, **pool)

    def _url(self) -> Any:
        from sqlalchemy.engine import make_url

        url = make_url(self.config.database_url)
        return url.set(password=self.config.password) if self.config.password else url

    def __repr__(self) -> str:
        return f"SqlSource(url={self.config.database_url!r}, metrics={sorted(self.config.queries)})"

    def _scrub(self, text: str) -> str:
        for secret in self.config.secrets():
            text = text.replace(secret, "***")
        return text

    def _execute(self, sql: str, params: Mapping[str, Any], handle: dict[str, Any], limit: int) -> Rows:
        """Blocking: one statement on a pooled connection. Runs on a daemon thread."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError

        timer: threading.Timer | None = None
        try:
            with self.engine.connect() as conn:
                raw: Any = conn.connection.driver_connection
                handle["raw"] = raw
                if self.dialect == "duckdb":
                    # DuckDB has no statement timeout setting: interrupt the connection from a timer.
                    def interrupt() -> None:
                        handle["interrupted"] = True
                        raw.interrupt()

                    timer = threading.Timer(self.config.timeout, interrupt)
                    timer.daemon = True
                    timer.start()
                result = conn.execute(text(sql), dict(params))
                columns = [str(c).lower() for c in result.keys()]  # noqa: SIM118 (iterating gives rows)
                # Row by row into plain tuples: a fetchmany() list beside its tuple copy held the result twice.
                rows: list[tuple[Any, ...]] = []
                for row in result:
                    rows.append(tuple(row))
                    if len(rows) > limit:
                        break
                result.close()
                conn.rollback()
        except DBAPIError as exc:
            raise StatementFailed(*self._db_message(exc, handle)) from None
        except SQLAlchemyError as exc:
            raise StatementFailed(self._scrub(str(exc).split("\n")[0])[:300], FailureKind.REFUSED) from None
        finally:
            if timer is not None:
                timer.cancel()
        if len(rows) > limit:
            raise StatementFailed(
                f"returned more than {limit:,} rows: one row per (flag, variant) is expected (GROUP BY flag, variant)",
                FailureKind.BAD_ANSWER,
            )
        return Rows(columns=columns, rows=rows)

    def _db_message(self, exc: Any, handle: Mapping[str, Any]) -> tuple[str, FailureKind]:
        """The database's own words (password scrubbed), and what kind of failure they describe."""
        from sqlalchemy.exc import OperationalError

        orig = exc.orig
        message = " ".join(str(orig).split()) if orig is not None else "database error"
        lowered = message.lower()
        if handle.get("interrupted") or "statement timeout" in lowered:
            message = (
                f"statement deadline of {self.config.timeout:g} s hit, the database cancelled it ({message}); "
                "see docs/sql.md for a per-unit rollup or a longer cadence"
            )
            kind = FailureKind.TIMEOUT
        elif "password authentication failed" in lowered or "permission denied" in lowered:
            kind = FailureKind.AUTH
        elif isinstance(exc, OperationalError) and "raw" not in handle:
            kind = FailureKind.UNREACHABLE  # no connection was made
        else:
            kind = FailureKind.REFUSED  # the query itself: asking again will not help
        return self._scrub(message)[:400], kind

    def _cancel(self, handle: Mapping[str, Any]) -> None:
        """The client's deadline passed: ask the database to stop, so the query does not run on unseen."""
        raw = handle.get("raw")
        try:
            if self.dialect == "duckdb" and raw is not None:
                raw.interrupt()
            elif raw is not None and hasattr(raw, "cancel"):
                raw.cancel()  # psycopg: sends a cancel request on a separate connection
        except Exception:  # best effort: the statement_timeout still stops it
            pass

    async def _group(
        self, metric: str, window: str, end: datetime, items: Sequence[tuple[AggregateKey, MetricQuery]]
    ) -> dict[AggregateKey, Aggregate]:
        def every(error: str, kind: FailureKind) -> dict[AggregateKey, Aggregate]:
            return {key: Aggregate.missing(error, kind) for key, _q in items}

        sql = self.config.queries.get(metric)
        if sql is None:
            return every(f"no SQL configured for metric {metric!r} in metrics.queries", FailureKind.NOT_FOUND)
        params: dict[str, Any]
        try:
            if window == PER_FLAG:
                # One row of guardrail_windows per flag of the statement (batches keep it one window a flag).
                starts = {q.flag: window_bounds(q.window, end)[0] for _key, q in items}
                sql, params = with_windows(sql, sorted(starts.items()), naive_utc(end), dialect=self.dialect)
            else:
                start, stop = window_bounds(window, end)
                params = {"start": start, "end": stop}
        except ValueError:
            bad = sorted({q.window for _key, q in items})
            return every(f"window {bad[0]!r} is not a duration such as 5m", FailureKind.INTERNAL)
        handle: dict[str, Any] = {}
        limit = max(100_000, 10 * len(items))
        self.statements += 1
        try:
            rows = await in_thread(
                lambda: self._execute(sql, params, handle, limit),
                deadline=self.config.timeout + GRACE,
                on_timeout=lambda: self._cancel(handle),
            )
        except StatementFailed as exc:
            return every(f"{metric} query ({window}): {exc}", exc.kind)
        except asyncio.TimeoutError:
            return every(
                f"{metric} query ({window}): no answer within {self.config.timeout + GRACE:g} s; "
                "cancel sent to the database",
                FailureKind.TIMEOUT,
            )
        pairs = {(q.flag, q.variant) for _key, q in items}
        found = aggregates_from_rows(rows, pairs, label=f"{metric} query ({window})")
        return {key: found[(q.flag, q.variant)] for key, q in items}

    async def fetch(self, plan: Sequence[tuple[AggregateKey, MetricQuery]]) -> dict[AggregateKey, Aggregate]:
        """Every aggregate of the plan: one statement per (metric, window, end), at most `concurrency` at once,
        all within `total_timeout`. Never raises for database or data errors."""
        groups: dict[tuple[str, str, datetime], list[tuple[AggregateKey, MetricQuery]]] = defaultdict(list)
        per_flag: dict[tuple[str, datetime], list[tuple[tuple[AggregateKey, MetricQuery], str, str]]] = defaultdict(
            list
        )
        windowed = {metric for metric, sql in self.config.queries.items() if uses_windows(sql)}
        for key, q in plan:
            if q.metric in windowed:
                per_flag[(q.metric, q.end)].append(((key, q), q.flag, q.window))
            else:
                groups[(q.metric, q.window, q.end)].append((key, q))
        # A template that joins guardrail_windows answers every flag's own window in one statement.
        specs: list[tuple[tuple[str, str, datetime], list[tuple[AggregateKey, MetricQuery]]]] = list(groups.items())
        for (metric, end), triples in per_flag.items():
            limit = sys.maxsize if self.dialect in ARRAY_DIALECTS else MAX_FLAGS
            specs += [((metric, PER_FLAG, end), batch) for batch in batches(triples, limit)]
        results: dict[AggregateKey, Aggregate] = {}
        gate = asyncio.Semaphore(self.config.concurrency)

        async def one(spec: tuple[str, str, datetime], items: list[tuple[AggregateKey, MetricQuery]]) -> None:
            async with gate:
                try:
                    results.update(await self._group(*spec, items))
                except Exception as exc:  # a bug here must cost this metric, not the run
                    failed = Aggregate.missing(f"sql source failed: {type(exc).__name__}", FailureKind.INTERNAL)
                    results.update({k: failed for k, _ in items})

        tasks = [asyncio.ensure_future(one(spec, items)) for spec, items in specs]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.config.total_timeout)
            for task in pending:
                task.cancel()
        late = f"sql source: total deadline of {self.config.total_timeout:g} s (metrics.total_timeout) passed first"
        return {key: results.get(key, Aggregate.missing(late, FailureKind.DEADLINE)) for key, _q in plan}

    async def query(self, q: MetricQuery) -> Aggregate:
        key: AggregateKey = (q.flag, q.variant, q.metric, q.window)
        return (await self.fetch([(key, q)]))[key]

    async def aclose(self) -> None:
        self.engine.dispose()


# ---- the plugin -------------------------------------------------------------------------------------


def _parse(ctx: ConfigContext) -> SqlConfig:
    base = Path(ctx.source).parent if ctx.source != "<environment>" else Path(".")
    return parse_sql_config(ctx.section("metrics"), ctx.env, source=ctx.source, base_dir=base)


def _create(config: SqlConfig, _runtime: Runtime) -> SqlSource:
    return SqlSource(config)


def _secrets(config: SqlConfig) -> list[str]:
    return config.secrets()


def _ready(config: SqlConfig) -> None:
    """A check run needs the password the config names; status and resume, which never query, do not."""
    if config.password_env and not config.password:
        raise GuardrailError(
            f"environment variable {config.password_env} is not set", source=config.origin, field="metrics.password_env"
        )


PLUGIN = Plugin(
    name="sql",
    summary="SQL over a database via SQLAlchemy (DuckDB, PostgreSQL, ...): one query per metric for all flags",
    parse=_parse,
    create=_create,
    secrets=_secrets,
    ready=_ready,
)
