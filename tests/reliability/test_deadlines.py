"""Every outside call has a total deadline, and every run ends: a peer that trickles bytes cannot keep a
run (and its lock) alive past `--timeout` per call and `--budget` per run."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from guardrail.http import HTTPFailure, make_client, request, run_budget
from tests.fakeserver_faults import FaultyAPI
from tests.reliability.conftest import BAD, GOOD, Runner, api_env, breaching, doc


def test_a_trickling_answer_is_cut_at_the_total_deadline(api: FaultyAPI) -> None:
    """One byte every 0.2 s: each read is well inside a 1 s timeout, the body never ends. Without a total
    deadline this call would never return (the test's own 60 s guard would fail it)."""
    api.add_fault(route="query", mode="trickle", delay=0.2)

    async def go() -> HTTPFailure:
        async with make_client(timeout=1.0) as client:
            with pytest.raises(HTTPFailure) as caught:
                await asyncio.wait_for(
                    request(client, "GET", api.url + "/query?flag=a&variant=b&metric=c", label="metrics query"),
                    timeout=60,
                )
            return caught.value

    failure = asyncio.run(go())
    assert failure.kind == "timeout"


def test_the_run_budget_stops_new_reads_and_names_them(api: FaultyAPI) -> None:
    async def go() -> HTTPFailure:
        async with make_client(timeout=5.0) as client:
            with run_budget(0.0), pytest.raises(HTTPFailure) as caught:
                await request(client, "GET", api.url + "/v1/flags", label="flag API list")
            return caught.value

    failure = asyncio.run(go())
    assert failure.kind == "deadline" and "budget" in str(failure)


def test_a_trickling_metrics_server_ends_the_run_with_exit_3_and_the_lock_free(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    api.add_fault(route="query", mode="trickle", delay=0.2, match={"flag": GOOD})
    result = runner.check("--timeout", "1", "--budget", "30", env=api_env(api), now="2026-11-25T12:00:00Z")
    # The harmful flag is still decided and halted; the trickled one is reported as not evaluated.
    assert result.returncode == 1, result.stdout + result.stderr
    assert api.flag(BAD)["state"] == "DISABLED"
    verdicts = {e["flag"]: e for e in doc(result)["evaluations"]}
    assert verdicts[GOOD]["verdict"] == "skip:no_data" and "timeout" in verdicts[GOOD]["reason"]
    # The lock is free and every decision is in the audit log.
    again = runner.check("--lock-timeout", "0", "--dry-run", env=api_env(api), now="2026-11-25T12:02:00Z")
    assert again.returncode != 5
    lines = [json.loads(x) for x in (runner.workdir / "audit.jsonl").read_text().splitlines()]
    assert {(r["flag"], r["type"]) for r in lines} >= {(BAD, "decision"), (GOOD, "decision"), (BAD, "halt")}


def test_a_run_past_its_budget_reports_what_it_could_not_do(api: FaultyAPI, runner: Runner) -> None:
    """A budget already spent (0 s): nothing is read, the run says so with exit 3 and releases the lock."""
    breaching(api, confirmations=1)
    result = runner.check("--budget", "0", env=api_env(api), now="2026-11-25T12:00:00Z")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "budget" in result.stderr
    assert api.count("PATCH", "/v1/flags") == 0
    again = runner.check("--lock-timeout", "0", env=api_env(api), now="2026-11-25T12:02:00Z")
    assert again.returncode == 1


def test_unit_total_deadline_with_a_mock_transport_that_stalls() -> None:
    """The deadline covers the whole call, including a body that stalls between chunks."""

    class Stalling(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            while True:
                yield b" "
                await asyncio.sleep(0.05)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stalling())

    async def go() -> str:
        client = make_client(timeout=0.3, transport=httpx.MockTransport(handler))
        async with client:
            try:
                await request(client, "GET", "http://127.0.0.1:1/x", label="probe")
            except HTTPFailure as exc:
                return exc.kind
        return "no failure"

    assert asyncio.run(go()) == "timeout"


def test_writes_and_their_verification_are_not_cut_by_the_budget() -> None:
    """A halt the run decided, the re-read that verifies it and the alert about it are sent even when the
    budget is spent (each still bounded by the per-call timeout); a plain read is not."""
    from guardrail.http import side_effect

    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return httpx.Response(200, json={})

    async def go() -> list[str]:
        async with make_client(timeout=5.0, transport=httpx.MockTransport(handler)) as client:
            with run_budget(0.0):
                await request(client, "PATCH", "http://127.0.0.1:1/v1/flags/k", label="flag API PATCH")
                await request(client, "POST", "http://127.0.0.1:1/webhook", label="alert webhook")
                with side_effect():
                    await request(client, "GET", "http://127.0.0.1:1/v1/flags/k", label="flag API get")
                with pytest.raises(HTTPFailure):
                    await request(client, "GET", "http://127.0.0.1:1/query", label="metrics query")
        return seen

    assert asyncio.run(go()) == ["PATCH", "POST", "GET"]
