"""One seeded warehouse (exposures + events) for the SQL tests, loaded into DuckDB and a real PostgreSQL, and the
same numbers computed independently with numpy, so each template is checked against the truth."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.demo.warehouse import SCHEMA, Arm, Tables, generate, write_duckdb

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sql"
END = datetime(2026, 11, 25, 12, 0)  # naive UTC, as the tables hold it
START = END - timedelta(minutes=60)
HARMFUL, HEALTHY, ABN = "shop.checkout.harmful", "shop.search.healthy", "shop.cart.abn"
ARMS = (
    Arm(HARMFUL, "control", 3000, error_rate=0.01),
    Arm(HARMFUL, "treatment", 3000, error_rate=0.04, latency_ms=260.0, purchase_rate=0.07),
    Arm(HEALTHY, "control", 3000, error_rate=0.01),
    Arm(HEALTHY, "treatment", 3000, error_rate=0.01),
    Arm(ABN, "control", 1000),
    Arm(ABN, "a", 1000),
    Arm(ABN, "b", 1000, revenue=55.0),
)
PAIRS = tuple((a.flag, a.variant) for a in ARMS)
METRICS = ("error_rate", "conversion_rate", "revenue_per_user", "p95_latency_ms")


def tables() -> Tables:
    return generate(ARMS, start=START, end=END, seed=11)


def template(metric: str, dialect: str) -> str:
    specific = EXAMPLES / f"{metric}.{dialect}.sql"
    return (specific if specific.exists() else EXAMPLES / f"{metric}.sql").read_text("utf-8")


def load_duckdb(path: Path, data: Tables) -> None:
    write_duckdb(path, data)


def load_postgres(dsn: str, data: Tables) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in ("exposures", "events"):
            conn.execute(f"DROP TABLE IF EXISTS {name}")
        for statement in SCHEMA:
            conn.execute(statement)
        ex, ev = data.exposures, data.events
        with conn.cursor() as cur, cur.copy("COPY exposures (unit_id, flag, variant, exposed_at) FROM STDIN") as copy:
            for row in zip(ex["unit_id"], ex["flag"], ex["variant"], ex["exposed_at"].astype(datetime), strict=True):
                copy.write_row(row)
        values = [None if np.isnan(v) else float(v) for v in ev["value"]]
        with conn.cursor() as cur, cur.copy("COPY events (unit_id, ts, name, value) FROM STDIN") as copy:
            for row in zip(ev["unit_id"], ev["ts"].astype(datetime), ev["name"], values, strict=True):
                copy.write_row(row)
        conn.execute("CREATE INDEX ON events (ts)")
        conn.execute("CREATE INDEX ON exposures (unit_id)")
        conn.execute("ANALYZE")


# ---- the truth, from the arrays ---------------------------------------------------------------------


def truth(data: Tables, start: datetime, end: datetime) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """Per (flag, variant): each example metric's value, count and per-unit sums, computed with numpy."""
    ex, ev = data.exposures, data.events
    arm_of = {u: (f, v) for u, f, v in zip(ex["unit_id"], ex["flag"], ex["variant"], strict=True)}
    lo, hi = np.datetime64(start, "us"), np.datetime64(end, "us")
    inside = (ev["ts"] >= lo) & (ev["ts"] < hi)
    per_unit: dict[str, dict[str, Any]] = {}
    for unit, name, value in zip(ev["unit_id"][inside], ev["name"][inside], ev["value"][inside], strict=True):
        u = per_unit.setdefault(unit, {"requests": 0, "errors": 0, "purchases": 0, "revenue": 0.0, "lat": []})
        if name == "request":
            u["requests"] += 1
            u["lat"].append(value)
        elif name == "error":
            u["errors"] += 1
        else:
            u["purchases"] += 1
            u["revenue"] += value
    out: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for pair in sorted(set(arm_of.values())):
        units = [per_unit[u] for u, p in arm_of.items() if p == pair and u in per_unit]
        err_units = [u for u in units if u["requests"] + u["errors"] > 0]
        x = np.array([u["errors"] for u in err_units], float)
        d = np.array([u["requests"] for u in err_units], float)
        active = [u for u in units if u["requests"] > 0]
        conv = np.array([1.0 if u["purchases"] else 0.0 for u in active])
        rev = np.array([u["revenue"] for u in units if u["requests"] + u["purchases"] > 0])
        lat = np.concatenate([np.array(u["lat"]) for u in units]) if units else np.array([])
        out[pair] = {
            "error_rate": {
                "value": x.sum() / d.sum(),
                "count": d.sum(),
                "units": len(x),
                "num_sum": x.sum(),
                "num_sum_sq": (x * x).sum(),
                "den_sum": d.sum(),
                "den_sum_sq": (d * d).sum(),
                "num_den_sum": (x * d).sum(),
            },
            "conversion_rate": {
                "value": conv.mean(),
                "count": len(conv),
                "units": len(conv),
                "unit_sum": conv.sum(),
                "unit_sum_sq": (conv * conv).sum(),
            },
            "revenue_per_user": {
                "value": rev.mean(),
                "count": len(rev),
                "units": len(rev),
                "unit_sum": rev.sum(),
                "unit_sum_sq": (rev * rev).sum(),
                "stddev": rev.std(ddof=1),
            },
            "p95_latency_ms": {"value": float(np.percentile(lat, 95)), "count": len(lat)},
        }
    return out


def plan(metrics: Sequence[str], window: str, end: datetime, pairs: Sequence[tuple[str, str]] = PAIRS) -> list[Any]:
    from guardrail.model import MetricQuery

    return [((f, v, m, window), MetricQuery(f, v, m, window, end)) for m in metrics for f, v in pairs]


def sqlalchemy_url(server: Any) -> str:
    """A tests/servers/postgres.py server's SQLAlchemy URL, without the password (guardrail reads it from
    `password_env`)."""
    return f"postgresql+psycopg://guardrail@127.0.0.1:{server.port}/postgres"
