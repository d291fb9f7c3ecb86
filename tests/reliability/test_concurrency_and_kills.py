"""Overlapping runs and runs killed at random moments: one PATCH, one alert, state always loads."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from guardrail.state import StateStore
from tests.conftest import TOKEN, clean_env, guardrail_command
from tests.fakeserver_faults import FaultyAPI
from tests.reliability.conftest import BAD, Runner, api_env, breaching


def start(workdir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *guardrail_command(),
            "check",
            "--state",
            str(workdir / "state.json"),
            "--audit",
            str(workdir / "audit.jsonl"),
            "--json",
            "--lock-timeout",
            "30",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(**env),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
    )


def test_twenty_overlapping_runs_halt_once(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api, confirmations=1)
    api.latency = 0.02  # so the runs really overlap
    env = api_env(api)
    procs = [start(tmp_path, env) for _ in range(20)]
    results = [
        (p.wait(timeout=120), p.stdout.read() if p.stdout else "", p.stderr.read() if p.stderr else "") for p in procs
    ]
    for code, _out, err in results:
        assert code in (0, 1, 5), err
        assert "Traceback" not in err
        if code == 5:
            assert "another guardrail run holds the state lock" in err
    assert sum(code == 1 for code, _o, _e in results) == 1
    assert api.count("PATCH", "/v1/flags") == 1 and len(api.alerts) == 1
    assert api.flag(BAD)["state"] == "DISABLED"


def _kill_after(proc: subprocess.Popen[str], api: FaultyAPI, requests: int, sig: int) -> None:
    """Kill `proc` once `api` has answered `requests` more requests (an event, not a delay), or leave it
    when it ended first. A loaded machine changes how long that takes, never where the kill lands."""
    target = len(api.requests) + requests
    while proc.poll() is None and len(api.requests) < target:
        time.sleep(0.002)  # polls for the event; the outcome never depends on this pause
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=120)


def test_200_kills_at_random_moments(tmp_path: Path) -> None:
    """SIGTERM and SIGKILL at random points of a run: before its first request, between any two of its
    requests, or after the last (while it writes state and audit). After each: the state file loads; a
    streak is never counted twice; one look never halts. Then a complete run of the next look halts once.
    Four lanes in parallel, each with its own fake API so each lane's kill points are its own requests."""
    rng = random.Random(20261125)
    # A run makes 5 requests (the flag list, 4 queries); 6 means "after the last one".
    plan = [
        [(rng.randint(0, 6), rng.choice((signal.SIGTERM, signal.SIGKILL))) for _ in range(50)] for _lane in range(4)
    ]

    def lane(index: int) -> list[str]:
        workdir = tmp_path / f"lane{index}"
        workdir.mkdir()
        problems = []
        with FaultyAPI(token=TOKEN) as api:
            breaching(api, confirmations=2)
            env = api_env(api)
            for attempt, (after, sig) in enumerate(plan[index]):
                # Every attempt is the same look: however many runs die or finish, the streak stays at 1.
                proc = start(
                    workdir, env, "--now", "2026-11-25T12:00:00Z", "--dry-run" if attempt % 10 == 9 else "--json"
                )
                _kill_after(proc, api, after, sig)
                store = StateStore(workdir / "state.json")
                state = store.load()
                if store.warning:
                    problems.append(f"lane {index} attempt {attempt}: {store.warning}")
                fs = state.flags.get(BAD)
                if fs is not None and fs.streaks and fs.streaks["error_rate@treatment"].count > 1:
                    problems.append(f"lane {index} attempt {attempt}: streak counted twice")
                if fs is not None and fs.halt is not None:
                    problems.append(f"lane {index} attempt {attempt}: halted on one look")
                audit = workdir / "audit.jsonl"
                for line in audit.read_text().splitlines() if audit.exists() else []:
                    json.loads(line)  # every audit line is whole
            if api.count("PATCH", "/v1/flags"):
                problems.append(f"lane {index}: a PATCH on one look")
            # The first look, completed; then the second look halts exactly once.
            runner = Runner(workdir)
            runner.check(env=env, now="2026-11-25T12:00:00Z")
            second = runner.check(env=env, now="2026-11-25T12:02:00Z")
            if second.returncode != 1 or api.flag(BAD)["state"] != "DISABLED":
                problems.append(f"lane {index}: second look did not halt: {second.returncode} {second.stderr}")
            runner.check(env=env, now="2026-11-25T12:04:00Z")
            if api.count("PATCH", "/v1/flags") != 1 or len(api.alerts) != 1:
                problems.append(f"lane {index}: {api.count('PATCH', '/v1/flags')} PATCHes, {len(api.alerts)} alerts")
        return problems

    with ThreadPoolExecutor(4) as pool:
        problems = [p for found in pool.map(lane, range(4)) for p in found]
    assert problems == []


def test_a_halt_decided_by_a_killed_run_is_finished_by_the_next(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api, confirmations=1)
    # The PATCH never answers (within this run's 600 s timeout): the run has written its pending halt and
    # is waiting on the API when it is killed. The kill waits for that event, however slow the machine.
    api.add_fault(route="patch", mode="trickle", delay=1.0, times=1)
    proc = start(tmp_path, api_env(api), "--timeout", "600")
    while proc.poll() is None:
        state = StateStore(tmp_path / "state.json").read()[0] if (tmp_path / "state.json").exists() else None
        if state and state.flags.get(BAD) and state.flags[BAD].halt is not None:
            break
        time.sleep(0.01)  # polls for the event
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.kill()
    proc.wait(timeout=30)
    pending = StateStore(tmp_path / "state.json").load().flags[BAD].halt
    assert pending is not None and pending.status == "pending"
    result = Runner(tmp_path).check(env=api_env(api))
    assert result.returncode == 1
    (halt,) = json.loads(result.stdout)["halts"]
    assert halt["resumed"] is True and halt["status"] == "done"
    assert api.flag(BAD)["state"] == "DISABLED" and len(api.alerts) == 1
