"""`guardrail simulate`: the vectorised path agrees with the engine look by look, and the numbers hold."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from guardrail import engine, simulate
from guardrail.config import parse_flags
from guardrail.model import SINCE_START, Aggregate, State, Streak, Verdict
from tests.conftest import NOW, flag_definition

KEY = "sim.flag.key"


def arm(n: np.ndarray, e: np.ndarray, run: int, lo: int, hi: int) -> Aggregate:
    count = int(n[run, hi] - n[run, lo])
    errors = int(e[run, hi] - e[run, lo])
    return Aggregate(errors / count if count else 0.0, count)


def engine_halts(s: simulate.Scenario, t: simulate.Traffic, method: str) -> list[float]:
    """Feed the same synthetic data through the real engine, one look at a time, one run at a time."""
    extra = {"started_at": NOW.isoformat(), "guardrail.error_rate.confirmations": s.confirmations}
    if method == "sequential":
        extra["guardrail.error_rate.method"] = "sequential"
        extra["guardrail.error_rate.alpha"] = s.alpha
    flag = parse_flags({KEY: flag_definition(threshold=s.threshold, extra_metadata=extra)}).flags[0]
    looks = simulate.look_minutes(s)
    out = []
    for run in range(s.runs):
        state, halted = State(), float("inf")
        for minute in looks:
            lo = 0 if method == "sequential" else max(0, minute - simulate.WINDOW_MINUTES)
            window = SINCE_START if method == "sequential" else "5m"

            data = {
                (KEY, "control", "error_rate", window): arm(t.n_control, t.e_control, run, lo, int(minute)),
                (KEY, "treatment", "error_rate", window): arm(t.n_treatment, t.e_treatment, run, lo, int(minute)),
            }
            decision = engine.decide([flag], data, state, NOW + timedelta(minutes=int(minute)))
            state = decision.state
            if decision.halts:
                halted = float(minute)
                break
        out.append(halted)
    return out


@pytest.mark.parametrize("method", ["threshold", "sequential"])
@pytest.mark.parametrize(
    ("traffic", "base_rate", "effect", "days", "runs"),
    [
        (60.0, 0.02, 1.0, 0.25, 6),
        (60.0, 0.02, 2.5, 0.25, 6),
        (300.0, 0.02, 1.3, 0.25, 6),
        # Around min_count in a 5-minute window, and arms at 0 errors: skips, and the shrunk proportions.
        (21.0, 0.004, 3.0, 0.25, 6),
        (500.0, 0.01, 1.0, 1.0, 5),  # the brief's size: 5 runs x 1 day, 720 looks each
    ],
)
def test_vectorised_path_halts_exactly_where_the_engine_does(
    method: str, traffic: float, base_rate: float, effect: float, days: float, runs: int
) -> None:
    s = simulate.Scenario(
        traffic=traffic,
        base_rate=base_rate,
        effect=effect,
        threshold=0.10,
        days=days,
        cadence=2,
        runs=runs,
        alpha=0.05,
        confirmations=2,
    )
    t = simulate.generate(s, np.random.default_rng(7))
    looks = simulate.look_minutes(s)
    judge = simulate.threshold_verdicts if method == "threshold" else simulate.sequential_verdicts
    vectorised = simulate.halts(s, judge(s, t, looks), looks).tolist()
    assert vectorised == engine_halts(s, t, method)


@pytest.mark.parametrize("confirmations", [1, 2, 3])
def test_streak_rule_is_engine_next_streak(confirmations: int) -> None:
    """halts() against engine.next_streak itself, on random verdicts at irregular times: gaps longer than
    max_gap (15 min) must restart a streak, skips must neither confirm nor clear it."""
    rng = np.random.default_rng(confirmations)
    s = simulate.Scenario(
        traffic=1,
        base_rate=0.5,
        effect=1,
        threshold=0.1,
        days=1,
        cadence=2,
        runs=300,
        alpha=0.05,
        confirmations=confirmations,
    )
    looks = np.cumsum(rng.choice([1, 2, 5, 9, 16, 30], size=120)).astype(np.int64)
    verdicts = rng.choice(
        [simulate.PASS, simulate.BREACH, simulate.SKIP], p=[0.3, 0.3, 0.4], size=(s.runs, len(looks))
    ).astype(np.int8)
    code = {simulate.PASS: Verdict.PASS, simulate.BREACH: Verdict.BREACH, simulate.SKIP: Verdict.SKIP_MIN_COUNT}
    expected = []
    for run in range(s.runs):
        streak, halted = Streak(), float("inf")
        for k, minute in enumerate(looks):
            verdict = code[int(verdicts[run, k])]
            streak = engine.next_streak(streak, verdict, NOW + timedelta(minutes=int(minute)), s.max_gap_minutes)
            if verdict is Verdict.BREACH and streak.count >= confirmations:
                halted = float(minute)
                break
        expected.append(halted)
    assert simulate.halts(s, verdicts, looks).tolist() == expected
    if confirmations > 1:  # the check has teeth: without the max_gap rule the answer would differ
        no_gap_rule = simulate.halts(replace(s, max_gap_minutes=1e9), verdicts, looks).tolist()
        assert no_gap_rule != expected


def scenario(effect: float, runs: int = 200, days: float = 2.0) -> simulate.Scenario:
    return simulate.Scenario(
        traffic=500,
        base_rate=0.01,
        effect=effect,
        threshold=0.10,
        days=days,
        cadence=2,
        runs=runs,
        alpha=0.05,
        confirmations=2,
    )


def test_sequential_aa_false_halt_rate_is_within_alpha() -> None:
    (outcome,) = simulate.simulate(scenario(1.0), ["sequential"], np.random.default_rng(11))
    rate = outcome.summary()["halt_rate"]
    # alpha plus a 3-sigma binomial margin at 200 runs: fails if the test stops being always-valid.
    assert rate <= 0.05 + 3 * (0.05 * 0.95 / 200) ** 0.5


def test_naive_rule_halts_healthy_experiments() -> None:
    (outcome,) = simulate.simulate(scenario(1.0, runs=50, days=1.0), ["threshold"], np.random.default_rng(3))
    assert outcome.summary()["halt_rate"] > 0.9  # the naive rule's known defect, reproduced


def test_real_harm_is_caught_fast() -> None:
    (outcome,) = simulate.simulate(scenario(3.0, runs=100, days=0.5), ["sequential"], np.random.default_rng(5))
    summary = outcome.summary()
    assert summary["halt_rate"] == 1.0
    assert summary["median_minutes_to_halt"] <= 14


def test_seed_makes_it_reproducible() -> None:
    a = simulate.simulate(scenario(1.5, runs=20, days=0.5), ["sequential"], np.random.default_rng(1))
    b = simulate.simulate(scenario(1.5, runs=20, days=0.5), ["sequential"], np.random.default_rng(1))
    assert a[0].halt_minutes.tolist() == b[0].halt_minutes.tolist()


def test_wilson_interval() -> None:
    low, high = simulate.wilson(0, 200)
    assert low == 0.0 and 0.018 < high < 0.02
    low, high = simulate.wilson(100, 200)
    assert low == pytest.approx(0.4314, abs=1e-3) and high == pytest.approx(0.5686, abs=1e-3)


def test_cli_json() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardrail",
            "simulate",
            "--runs",
            "20",
            "--days",
            "1",
            "--effect",
            "1",
            "--effect",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["results"]) == 4
    assert set(doc["results"][0]) >= {
        "method",
        "traffic",
        "effect",
        "runs",
        "halt_rate",
        "halt_rate_ci95",
        "median_minutes_to_halt",
        "p90_minutes_to_halt",
    }


def test_cli_rejects_bad_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "guardrail", "simulate", "--method", "magic"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "magic" in result.stderr and "Traceback" not in result.stderr


def test_a_scenario_gives_the_same_numbers_whatever_else_the_command_runs() -> None:
    def run(*extra: str) -> dict[tuple[str, float, float], dict[str, object]]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "guardrail",
                "simulate",
                "--runs",
                "20",
                "--days",
                "0.5",
                "--effect",
                "1.5",
                *extra,
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return {(r["method"], r["traffic"], r["effect"]): r for r in json.loads(result.stdout)["results"]}

    alone, with_others = run(), run("--effect", "3", "--traffic", "500", "--traffic", "50")
    for method in ("sequential", "threshold"):
        assert alone[(method, 500, 1.5)] == with_others[(method, 500, 1.5)]


def test_runs_are_judged_in_batches_of_bounded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    s = scenario(2.0, runs=10, days=0.5)
    monkeypatch.setattr(simulate, "BATCH_CELLS", 720 * 3)  # 3 runs per batch: batches of 3, 3, 3, 1
    (outcome,) = simulate.simulate(s, ["sequential"], np.random.default_rng(2))
    rng, expected = np.random.default_rng(2), []
    looks = simulate.look_minutes(s)
    for size in (3, 3, 3, 1):
        part = replace(s, runs=size)
        expected += simulate.halts(
            part, simulate.sequential_verdicts(part, simulate.generate(part, rng), looks), looks
        ).tolist()
    assert outcome.halt_minutes.tolist() == expected and len(expected) == 10
