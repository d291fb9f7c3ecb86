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
from tests.conftest import clean_env, guardrail_command
from tests.fakeserver_faults import FaultyAPI
from tests.reliability.conftest import BAD, Runner, api_env, breaching


def start(workdir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*guardrail_command(), "check", "--state", str(workdir / "state.json"), "--audit",
         str(workdir / "audit.jsonl"), "--json", "--lock-timeout", "30", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(**env), cwd=workdir,
        stdin=subprocess.DEVNULL,
    )


def test_twenty_overlapping_runs_halt_once(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api, confirmations=1)
    api.latency = 0.02  # so the runs really overlap
    env = api_env(api)
    procs = [start(tmp_path, env) for _ in range(20)]
    results = [(p.wait(timeout=120), p.stdout.read() if p.stdout else "", p.stderr.read() if p.stderr else "")
               for p in procs]
    for code, _out, err in results:
        assert code in (0, 1, 5), err
        assert "Traceback" not in err
        if code == 5:
            assert "another guardrail run holds the state lock" in err
    assert sum(code == 1 for code, _o, _e in results) == 1
    assert api.count("PATCH", "/v1/flags") == 1 and len(api.alerts) == 1
    assert api.flag(BAD)["state"] == "DISABLED"


def test_200_kills_at_random_moments(api: FaultyAPI, tmp_path: Path) -> None:
    """SIGTERM and SIGKILL at random moments. After each: the state file loads; a streak is never counted
    twice; and once a halt was decided, the next complete run finishes it. Four lanes in parallel."""
    breaching(api, confirmations=2)
    api.latency = 0.005
    env = api_env(api)
    rng = random.Random(20261125)
    plan = [[(rng.uniform(0.05, 0.9), rng.choice((signal.SIGTERM, signal.SIGKILL))) for _ in range(50)]
            for _lane in range(4)]

    def lane(index: int) -> list[str]:
        workdir = tmp_path / f"lane{index}"
        workdir.mkdir()
        problems = []
        for attempt, (delay, sig) in enumerate(plan[index]):
            # Every attempt is the same look: however many runs die or finish, the streak stays at 1.
            proc = start(workdir, env, "--now", "2026-11-25T12:00:00Z", "--dry-run" if attempt % 10 == 9 else "--json")
            time.sleep(delay)
            proc.send_signal(sig)
            proc.wait(timeout=60)
            store = StateStore(workdir / "state.json")
            state = store.load()
            if store.warning:
                problems.append(f"lane {index} attempt {attempt}: {store.warning}")
            fs = state.flags.get(BAD)
            if fs is not None and fs.streaks and fs.streaks["error_rate@treatment"].count > 1:
                problems.append(f"lane {index} attempt {attempt}: streak counted twice")
            if fs is not None and fs.halt is not None:
                problems.append(f"lane {index} attempt {attempt}: halted on one look")
            lines = (workdir / "audit.jsonl").read_text().splitlines() if (workdir / "audit.jsonl").exists() else []
            for line in lines:
                json.loads(line)  # every audit line is whole
        return problems

    with ThreadPoolExecutor(4) as pool:
        problems = [p for found in pool.map(lane, range(4)) for p in found]
    assert problems == []
    assert api.count("PATCH", "/v1/flags") == 0  # one look can never confirm a breach

    # The second look: kill it mid-halt in lane 0 until a run gets past the write-ahead, then finish.
    workdir = tmp_path / "lane0"
    runner = Runner(workdir)
    # On a loaded machine every run of a lane may have been killed before it saved the first look; one
    # complete run of that same look records it (once: the streak stays 1 however often the look is run).
    first = runner.check(env=env, now="2026-11-25T12:00:00Z")
    assert first.returncode == 0 and StateStore(workdir / "state.json").load().flags[BAD].streaks[
        "error_rate@treatment"].count == 1
    runner.check(env=env, now="2026-11-25T12:02:00Z")
    assert api.flag(BAD)["state"] == "DISABLED"
    for lane_index in range(1, 4):
        Runner(tmp_path / f"lane{lane_index}").check(env=env, now="2026-11-25T12:02:00Z")
    assert api.count("PATCH", "/v1/flags") == 1  # the other lanes see the flag already halted


def test_a_halt_decided_by_a_killed_run_is_finished_by_the_next(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api, confirmations=1)
    # The PATCH hangs: the run has written its pending halt and is waiting on the API when it is killed.
    api.add_fault(route="patch", mode="delay", delay=5.0, times=1)
    proc = start(tmp_path, api_env(api))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = StateStore(tmp_path / "state.json").load() if (tmp_path / "state.json").exists() else None
        if state and state.flags.get(BAD) and state.flags[BAD].halt is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=30)
    pending = StateStore(tmp_path / "state.json").load().flags[BAD].halt
    assert pending is not None and pending.status == "pending"
    result = Runner(tmp_path).check(env=api_env(api))
    assert result.returncode == 1
    (halt,) = json.loads(result.stdout)["halts"]
    assert halt["resumed"] is True and halt["status"] == "done"
    assert api.flag(BAD)["state"] == "DISABLED" and len(api.alerts) == 1
