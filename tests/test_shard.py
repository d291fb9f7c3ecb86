"""`check --shard I/N`: N cron jobs split a fleet by a stable hash of the flag key, without overlap.

The assignment must not depend on the process (Python salts `hash()` per process with PYTHONHASHSEED),
must put every flag in exactly one shard, must spread flags evenly, and two real runs with their own state
files must evaluate disjoint flag sets that together cover the fleet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from guardrail.check import in_shard, parse_shard
from guardrail.fakeapi import FakeAPI
from guardrail.model import ExitCode, GuardrailError
from tests.conftest import TOKEN, flag_definition

KEYS = [f"team{i % 23}.area-{i % 7}.experiment-{i:04d}" for i in range(2000)]


def shard_of(key: str, count: int) -> int:
    (index,) = [i for i in range(count) if in_shard(key, (i, count))]  # exactly one, or this raises
    return index


def assignments_in_subprocess(seed: str, count: int) -> list[int]:
    code = (
        "import json, sys\n"
        "from guardrail.check import in_shard\n"
        "keys, n = json.load(sys.stdin), int(sys.argv[1])\n"
        "print(json.dumps([[i for i in range(n) if in_shard(k, (i, n))] for k in keys]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "-c", code, str(count)],
        input=json.dumps(KEYS),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    shards: list[list[int]] = json.loads(done.stdout)
    assert all(len(s) == 1 for s in shards)
    return [s[0] for s in shards]


def test_assignment_is_the_same_in_every_process() -> None:
    here = [shard_of(k, 4) for k in KEYS]
    # Different hash salts: a shard chosen with hash() would move flags between cron jobs every run.
    assert assignments_in_subprocess("1", 4) == here
    assert assignments_in_subprocess("4242", 4) == here


def test_assignment_is_pinned() -> None:
    """Changing the hash would silently move flags (and their streaks) to another job's state file."""
    assert [shard_of(k, 4) for k in ("checkout.payments.express-pay", "search.ranking.new-model", "a", "")] == [
        1,
        3,
        3,
        0,
    ]
    assert [shard_of(k, 3) for k in KEYS[:12]] == [1, 0, 0, 0, 1, 2, 0, 0, 0, 2, 1, 0]


@pytest.mark.parametrize("count", range(1, 9))
def test_every_flag_in_exactly_one_shard(count: int) -> None:
    members = [[k for k in KEYS if in_shard(k, (i, count))] for i in range(count)]
    flat = [k for shard in members for k in shard]
    assert len(flat) == len(KEYS)  # no flag in two shards
    assert set(flat) == set(KEYS)  # none in no shard


@pytest.mark.parametrize("count", range(2, 9))
def test_shards_are_roughly_balanced(count: int) -> None:
    sizes = Counter(shard_of(k, count) for k in KEYS)
    mean = len(KEYS) / count
    assert sorted(sizes) == list(range(count))
    # blake2b is uniform: a shard's size is Binomial(2000, 1/N), sd <= 22; 15 % of the mean is >= 2.5 sd.
    assert all(abs(n - mean) <= 0.15 * mean for n in sizes.values()), sizes


def test_no_shard_means_every_flag() -> None:
    assert all(in_shard(k, None) for k in KEYS[:50])
    assert parse_shard(None) is None and parse_shard("") is None


@pytest.mark.parametrize(("text", "parsed"), [("0/1", (0, 1)), ("0/2", (0, 2)), ("7/8", (7, 8)), (" 1/ 3", (1, 3))])
def test_parse_shard(text: str, parsed: tuple[int, int]) -> None:
    assert parse_shard(text) == parsed


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3", "1.0/2"])
def test_parse_shard_refuses(text: str) -> None:
    with pytest.raises(GuardrailError) as caught:
        parse_shard(text)
    assert caught.value.field == "--shard"


def test_bad_shard_is_a_usage_error(run_cli: Any) -> None:
    done = run_cli("check", "--shard", "2/2", "--flags", "none.yaml", env={"METRICS_API_URL": "http://127.0.0.1:9"})
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "--shard" in done.stderr


@pytest.mark.e2e
def test_two_shards_split_the_fleet(fake_api: FakeAPI, run_cli: Any, tmp_path: Path) -> None:
    keys = [f"team{i % 5}.experiment-{i:03d}" for i in range(40)]
    fake_api.set_flags({k: flag_definition() for k in keys})
    for k in keys:
        fake_api.set_metric(k, "control", "error_rate", 0.010, 5000)
        fake_api.set_metric(k, "treatment", "error_rate", 0.0101, 5000)
    env = {"FLAG_API_URL": fake_api.url, "FLAG_API_TOKEN": TOKEN, "METRICS_API_URL": fake_api.url}

    evaluated: list[set[str]] = []
    for index in (0, 1):
        state, audit = tmp_path / f"state-{index}.json", tmp_path / f"audit-{index}.jsonl"
        done = run_cli(
            "check",
            "--shard",
            f"{index}/2",
            "--state",
            str(state),
            "--audit",
            str(audit),
            "--json",
            "--now",
            "2026-11-25T12:00:00Z",
            env=env,
        )
        assert done.returncode == 0, done.stderr
        flags = {e["flag"] for e in json.loads(done.stdout)["evaluations"]}
        assert flags == {k for k in keys if in_shard(k, (index, 2))}
        # Each job keeps its own state and audit log, holding its own flags only.
        assert set(json.loads(state.read_text("utf-8"))["flags"]) == flags
        assert {json.loads(line)["flag"] for line in audit.read_text("utf-8").splitlines()} == flags
        evaluated.append(flags)

    assert not evaluated[0] & evaluated[1]
    assert evaluated[0] | evaluated[1] == set(keys)
    assert evaluated[0] and evaluated[1]
    # Each flag's two arms were queried once in all: no job fetched another job's flags.
    # (each arm's error_rate and its `exposures` unit count for the SRM gate)
    assert fake_api.count("GET", "/query") == 4 * len(keys)
