"""`guardrail simulate`: the vectorised twins agree with the engine look by look, and the numbers hold."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from guardrail import engine, scenarios, simulate, simvec
from guardrail.config import parse_flags
from guardrail.model import SINCE_START, Aggregate, State, Streak, Verdict
from guardrail.scenarios import Scenario
from tests.conftest import NOW, flag_definition

KEY = "sim.flag.key"
MARGIN = 3.0  # binomial standard errors above alpha before a Monte Carlo check fails


def engine_halts(s: Scenario, t: scenarios.Traffic) -> list[float]:
    """Feed the same synthetic since-start sums through engine.decide, one look and one run at a time."""
    treatments = tuple(f"t{a}" for a in range(1, 1 + s.treatments))
    comparison = "relative_decrease" if s.decrease else "relative_increase"
    definition = flag_definition(
        threshold=s.threshold,
        method=None,
        treatments=treatments,
        extra_metadata={
            "started_at": NOW.isoformat(),
            "guardrail.error_rate.comparison": comparison,
            "guardrail.error_rate.alpha": s.alpha,
            "guardrail.error_rate.dispersion": s.dispersion_floor,
        },
    )
    flag = parse_flags({KEY: definition}).flags[0]
    out = []
    for run in range(s.runs):
        state, halted = State(), float("inf")
        for minute in scenarios.looks(s):
            data = {}
            for arm, variant in enumerate(("control", *treatments)):
                n, x = float(t.units[arm, run, minute]), float(t.events[0, arm, run, minute])
                agg = Aggregate(x / n if n else 0.0, int(n))
                if t.unit is not None:  # what a warehouse source reports beside the aggregate
                    u = t.unit[:, arm, run, minute]
                    agg = replace(agg, units=int(u[0]), num_sum=x, num_sum_sq=float(u[1]), den_sum=n,
                                  den_sum_sq=float(u[2]), num_den_sum=float(u[3]))  # fmt: skip
                data[(KEY, variant, "error_rate", SINCE_START)] = agg
            decision = engine.decide([flag], data, state, NOW + timedelta(minutes=int(minute)))
            state = decision.state
            if decision.halts:
                halted = float(minute)
                break
        out.append(halted)
    return out


@pytest.mark.parametrize(
    "s",
    [
        Scenario(traffic=60, base_rate=0.02, effect=1.0, days=0.25, runs=4),
        Scenario(traffic=60, base_rate=0.02, effect=2.5, days=0.25, runs=4),
        Scenario(traffic=300, base_rate=0.02, effect=1.3, days=0.3, runs=4),
        Scenario(traffic=300, base_rate=0.02, effect=0.7, decrease=True, days=0.3, runs=4),
        # restarts, a capped lookback (counts go down at each reset), a ramp, clustering, two arms, a slow cron
        Scenario(traffic=200, effect=3.0, onset_minutes=300, days=0.3, runs=3, reset_hours=2.0, dispersion=3.0),
        Scenario(traffic=200, effect=1.6, days=0.3, runs=3, dispersion=3.0, dispersion_floor=2.5),  # `dispersion`
        Scenario(traffic=200, effect=1.4, ramp_days=0.2, days=0.3, runs=3, treatments=2, cadence=7),
        Scenario(traffic=21, base_rate=0.004, effect=3.0, days=0.25, runs=4),  # around min_count, zero arms
        # persistent users with the per-unit sums of a warehouse source: the unit-level variance floor
        Scenario(traffic=300, effect=1.3, days=0.3, runs=3, persistent_users=500, unit_sums=True, cadence=4),
        Scenario(traffic=300, effect=2.0, days=0.3, runs=3, persistent_users=300, unit_sums=True, cadence=6),
    ],
)
def test_vectorised_sequential_halts_exactly_where_the_engine_does(s: Scenario) -> None:
    t = scenarios.generate(s, np.random.default_rng(7))
    vectorised = simulate.judge(s, t, ["sequential"])["sequential"].tolist()
    assert vectorised == engine_halts(s, t)


@pytest.mark.parametrize("confirmations", [1, 2, 3])
def test_streak_rule_is_engine_next_streak(confirmations: int) -> None:
    """halts() against engine.next_streak itself, on random verdicts at irregular times: a gap longer than
    max(15 min, 1.5 × the last interval) restarts a streak; skips neither confirm nor clear it."""
    rng = np.random.default_rng(confirmations)
    looks = np.cumsum(rng.choice([1, 2, 5, 9, 16, 30], size=120)).astype(np.int64)
    verdicts = rng.choice([simvec.PASS, simvec.BREACH, simvec.SKIP], p=[0.3, 0.3, 0.4], size=(300, len(looks))).astype(
        np.int8
    )
    code = {simvec.PASS: Verdict.PASS, simvec.BREACH: Verdict.BREACH, simvec.SKIP: Verdict.SKIP_MIN_COUNT}
    expected = []
    for run in range(300):
        streak, halted, previous = Streak(), float("inf"), None
        for k, minute in enumerate(looks):
            verdict, now = code[int(verdicts[run, k])], NOW + timedelta(minutes=int(minute))
            streak = engine.next_streak(streak, verdict, now, 15.0, previous)
            previous = now
            if verdict is Verdict.BREACH and streak.count >= confirmations:
                halted = float(minute)
                break
        expected.append(halted)
    assert simvec.halts(verdicts, looks, confirmations, 15.0).tolist() == expected


def rate_bound(runs: int, alpha: float = 0.05) -> float:
    return alpha + MARGIN * math.sqrt(alpha * (1 - alpha) / runs)


@pytest.mark.parametrize(
    "s",
    [
        Scenario(effect=1.1, days=1.0, runs=200),  # the least favourable null: exactly at the threshold
        Scenario(effect=1.1, days=1.0, runs=200, dispersion=4.0),  # clustered events
        Scenario(effect=1.1, days=1.0, runs=200, ramp_days=0.5),  # Simpson: ramp while the base rate drifts
        Scenario(effect=1.1, days=1.0, runs=100, treatments=3),  # per experiment, 3 arms
    ],
    ids=["at-threshold", "clustered-D4", "ramp-drift", "three-arms"],
)
def test_false_halts_at_the_threshold_stay_within_alpha(s: Scenario) -> None:
    (outcome,) = simulate.simulate(s, ["sequential"], np.random.default_rng(11))
    assert outcome.summary()["halt_rate"] <= rate_bound(s.runs)


def test_a_known_dispersion_keeps_heavily_clustered_traffic_within_alpha() -> None:
    """At D = 8 the learnt dispersion alone lets early looks through (docs/statistics.md); the guardrail's
    `dispersion: 8` keeps the rate at alpha."""
    s = Scenario(effect=1.1, days=1.0, runs=200, dispersion=8.0)
    (learnt,) = simulate.simulate(s, ["sequential"], np.random.default_rng(13))
    (known,) = simulate.simulate(replace(s, dispersion_floor=8.0), ["sequential"], np.random.default_rng(13))
    assert known.summary()["halt_rate"] <= rate_bound(s.runs)
    assert known.summary()["halt_rate"] < learnt.summary()["halt_rate"]


def test_per_unit_sums_keep_persistent_users_within_alpha_where_window_variances_do_not() -> None:
    """Users with their own error rates make the arms differ by a fixed offset that no window-to-window
    dispersion sees; the per-unit sums of a warehouse source give the variance that covers it."""
    s = Scenario(effect=1.1, days=1.0, runs=200, persistent_users=2_000, cadence=10)
    (without,) = simulate.simulate(s, ["sequential"], np.random.default_rng(12))
    assert without.summary()["halt_rate"] > 2 * rate_bound(s.runs)  # the check below has teeth
    (with_units,) = simulate.simulate(replace(s, unit_sums=True), ["sequential"], np.random.default_rng(12))
    assert with_units.summary()["halt_rate"] <= rate_bound(s.runs)


def test_the_old_since_start_pooling_fails_the_ramp_and_the_threshold_rule_fails_a_a() -> None:
    """The checks above have teeth: the threshold rule halts healthy experiments."""
    (outcome,) = simulate.simulate(Scenario(effect=1.0, days=0.5, runs=50), ["threshold"], np.random.default_rng(3))
    assert outcome.summary()["halt_rate"] > 0.9


def test_real_harm_is_caught_fast_and_a_late_onset_too() -> None:
    (fast,) = simulate.simulate(Scenario(effect=3.0, days=0.2, runs=100), ["sequential"], np.random.default_rng(5))
    assert fast.summary()["halt_rate"] == 1.0 and fast.summary()["median_minutes_to_halt"] <= 8
    late = Scenario(effect=3.0, days=1.2, onset_minutes=1440, runs=40)
    (outcome,) = simulate.simulate(late, ["sequential"], np.random.default_rng(6))
    summary = outcome.summary()
    assert summary["halted"] == 40 and summary["median_minutes_to_halt"] <= 60


def test_oracle_is_a_lower_limit() -> None:
    (outcome,) = simulate.simulate(Scenario(effect=1.5, days=0.3, runs=60), ["sequential"], np.random.default_rng(8))
    summary = outcome.summary()
    assert summary["oracle_median_minutes"] is not None
    assert summary["oracle_median_minutes"] < summary["median_minutes_to_halt"]


def test_seed_makes_it_reproducible() -> None:
    s = Scenario(effect=1.5, days=0.2, runs=20)
    a = simulate.simulate(s, ["sequential"], np.random.default_rng(1))
    b = simulate.simulate(s, ["sequential"], np.random.default_rng(1))
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
            "0.3",
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
        "scenario",
        "method",
        "traffic",
        "effect",
        "runs",
        "halt_rate",
        "halt_rate_ci95",
        "median_minutes_to_halt",
        "oracle_median_minutes",
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
                "0.2",
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
    s = Scenario(effect=2.0, runs=10, days=0.2)
    per_run = (s.minutes + 1) * 2 * 2
    monkeypatch.setattr(simulate, "BATCH_CELLS", per_run * 3)  # batches of 3, 3, 3, 1
    (outcome,) = simulate.simulate(s, ["sequential"], np.random.default_rng(2))
    rng, expected = np.random.default_rng(2), []
    for size in (3, 3, 3, 1):
        part = replace(s, runs=size)
        expected += simulate.judge(part, scenarios.generate(part, rng), ["sequential"])["sequential"].tolist()
    assert outcome.halt_minutes.tolist() == expected and len(expected) == 10


def test_validate_quotes_what_simulate_measures_for_the_threshold_rule() -> None:
    """`guardrail validate` warns on every threshold-method guardrail with the A/A halt rate over 14 days;
    that number is this command's (textbook traffic, 500 events/min/arm, looks every 2 minutes)."""
    from guardrail import validate

    s = Scenario(effect=1.0, days=14.0, runs=20)
    (outcome,) = simulate.simulate(s, ["threshold"], np.random.default_rng(1))
    assert f"{outcome.summary()['halt_rate']:.0%}".replace("%", " %") == validate.THRESHOLD_AA_HALTS


def test_cli_suite_runs_every_production_like_scenario_of_the_docs() -> None:
    """`simulate --suite` (small: 2 runs) gives a row for every scenario the table in docs/statistics.md has."""
    result = subprocess.run(
        [sys.executable, "-m", "guardrail", "simulate", *("--suite", "--runs", "2", "--days", "0.2"), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["results"]
    docs = (Path(__file__).resolve().parent.parent / "docs" / "statistics.md").read_text("utf-8")
    table = docs[docs.index("## Measured: `guardrail simulate --suite`") :]
    documented = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "|" in line}
    names = {r["scenario"] for r in rows}
    assert len(names) == 17 and names <= documented
    assert all(r["oracle_median_minutes"] is not None for r in rows if r["effect"] > 1.1)
