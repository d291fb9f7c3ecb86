"""Metrics API faults against the real local server: affected guardrails skip with the cause, the others
are decided, exit 3 when something could not be evaluated, never a halt on bad data, never a traceback."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import flag_definition
from tests.fakeserver_faults import FaultyAPI
from tests.reliability.conftest import BAD, GOOD, Runner, api_env, breaching, doc, verdicts


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ({"mode": "delay", "delay": 2.0}, "timeout"),
        ({"mode": "reset"}, "connection reset"),
        ({"mode": "status", "status": 503}, "HTTP 503"),
        ({"mode": "status", "status": 429, "retry_after": 0}, "HTTP 429"),
        ({"mode": "html"}, "HTML"),
        ({"mode": "truncated"}, "not valid JSON"),
        ({"mode": "null"}, "null"),
        ({"mode": "nan"}, "nan"),
        ({"mode": "negative_count"}, "non-negative"),
        ({"mode": "string_value"}, "not a number"),
    ],
)
def test_a_failing_series_is_skipped_with_its_cause(
    api: FaultyAPI, runner: Runner, fault: dict[str, object], cause: str
) -> None:
    breaching(api, confirmations=1)
    api.add_fault(route="query", match={"flag": BAD, "variant": "treatment"}, **fault)
    result = runner.check("--timeout", "0.5", env=api_env(api))
    assert result.returncode == 3, result.stdout + result.stderr
    got = verdicts(result)
    assert got[BAD][0] == "skip:no_data" and cause.lower() in got[BAD][1].lower(), got[BAD]
    assert got[GOOD][0] == "pass"  # the others are decided normally
    assert doc(result)["halts"] == [] and api.flag(BAD)["state"] == "ENABLED"


def test_burst_of_5xx_is_retried_through(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    api.add_fault(route="query", mode="status", status=502, times=2, match={"flag": BAD, "variant": "treatment"})
    result = runner.check(env=api_env(api))
    assert result.returncode == 1  # retried, then decided: a real breach halts
    assert verdicts(result)[BAD][0] == "breach"


def test_connection_refused_everywhere_is_exit_3(runner: Runner, api: FaultyAPI) -> None:
    breaching(api)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = runner.check("--timeout", "0.5", env=api_env(api, METRICS_API_URL=closed))
    assert result.returncode == 3
    assert all(v[0] == "skip:no_data" and "connection refused" in v[1] for v in verdicts(result).values())


def test_flag_api_down_is_exit_3_with_a_clear_message(runner: Runner) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = runner("check", "--timeout", "0.5", env={"FLAG_API_URL": closed, "METRICS_API_URL": closed})
    assert result.returncode == 3
    assert "flag API list" in result.stderr and "connection refused" in result.stderr


def test_one_of_600_queries_failing(api: FaultyAPI, runner: Runner) -> None:
    flags = {}
    for i in range(100):
        key = f"svc.team.flag-{i:03d}"
        metadata: dict[str, object] = {
            f"guardrail.{m}.comparison": "relative_increase" for m in ("error_rate", "latency_ms", "cpu")
        }
        metadata |= {f"guardrail.{m}.threshold": 0.5 for m in ("error_rate", "latency_ms", "cpu")}
        flags[key] = flag_definition(extra_metadata=metadata)
        for m in ("error_rate", "latency_ms", "cpu"):
            api.set_metric(key, "control", m, 0.01 if m == "error_rate" else 100.0, 5000)
            api.set_metric(key, "treatment", m, 0.0101 if m == "error_rate" else 101.0, 5000)
    api.set_flags(flags)
    api.add_fault(
        route="query",
        mode="status",
        status=500,
        times=3,
        match={"flag": "svc.team.flag-042", "metric": "cpu", "variant": "control"},
    )
    result = runner.check(env=api_env(api))
    evaluations = doc(result)["evaluations"]
    assert len(evaluations) == 300
    skipped = [e for e in evaluations if e["verdict"] != "pass"]
    assert [(e["flag"], e["metric"], e["verdict"]) for e in skipped] == [("svc.team.flag-042", "cpu", "skip:no_data")]
    assert result.returncode == 3
    # 600 guardrail queries + 200 `exposures` unit counts for the SRM gate; one query retried twice more
    assert api.count("GET", "/query") == 600 + 200 + 2
