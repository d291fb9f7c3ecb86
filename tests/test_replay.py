"""`guardrail replay`: recorded aggregates through the real engine, look by look."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from guardrail.model import SINCE_START, GuardrailError
from guardrail.replay import read_history, replay, run_replay_command

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "replay"


def row(time: str, variant: str, value: float, count: int = 5000, window: str = "5m", flag: str = "f.k") -> str:
    return json.dumps(
        {
            "time": time,
            "flag": flag,
            "metric": "error_rate",
            "variant": variant,
            "window": window,
            "value": value,
            "count": count,
        }
    )


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_groups_by_time_and_halts_at_the_second_breaching_look(tmp_path: Path, capsys: Any) -> None:
    history = write(
        tmp_path,
        [
            row("2026-11-25T12:00:00Z", "control", 0.01),
            row("2026-11-25T12:00:00Z", "treatment", 0.0102),
            row("2026-11-25T12:02:00Z", "treatment", 0.03),
            row("2026-11-25T12:02:00Z", "control", 0.01),
            row("2026-11-25T12:04:00Z", "control", 0.01),
            row("2026-11-25T12:04:00Z", "treatment", 0.03),
            row("2026-11-25T12:06:00Z", "control", 0.01),
            row("2026-11-25T12:06:00Z", "treatment", 0.03),
        ],
    )
    code = run_replay_command(history=history, flags=None, config=None, as_json=True)
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "flags": [
            {
                "flag": "f.k",
                "halted_at": "2026-11-25T12:04:00Z",
                "metric": "error_rate",
                "reason": doc["flags"][0]["reason"],
                "looks": 3,
            }
        ]
    }
    assert "2 consecutive" in doc["flags"][0]["reason"]


def test_no_halt(tmp_path: Path, capsys: Any) -> None:
    history = write(
        tmp_path, [row(f"2026-11-25T12:0{i}:00Z", v, 0.01) for i in range(0, 8, 2) for v in ("control", "treatment")]
    )
    assert run_replay_command(history=history, flags=None, config=None, as_json=True) == 0
    (result,) = json.loads(capsys.readouterr().out)["flags"]
    assert result["halted_at"] is None and result["metric"] is None and result["looks"] == 4


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"time": "2026-11-25T12:00:00Z"}', "missing"),
        ('{"time": "noon", "flag": "f", "metric": "m", "variant": "v", "value": 1, "count": 1}', "RFC 3339"),
        (
            '{"time": "2026-11-25T12:00:00Z", "flag": "f", "metric": "m", "variant": "v", "value": "x", "count": 1}',
            "must be a number",
        ),
        (
            '{"time": "2026-11-25T12:00:00Z", "flag": "f", "metric": "m", "variant": "v", "window": "soon", '
            '"value": 1, "count": 1}',
            "window",
        ),
        (
            '{"time": "2026-11-25T12:00:00Z", "flag": "f", "metric": "m", "variant": "v", "value": 1, "count": NaN}',
            "finite",
        ),
        (
            '{"time": "2026-11-25T12:00:00Z", "flag": "f", "metric": "m", "variant": "v", "value": 1, "count": 2.5}',
            "whole number",
        ),
        (
            '{"time": "2026-11-25T12:00:00Z", "flag": null, "metric": "m", "variant": "v", "value": 1, "count": 1}',
            "non-empty string",
        ),
        (
            '{"time": "2026-11-25T12:00:00Z", "flag": "f.k", "metric": "error_rate", "variant": "control", '
            '"window": "5m", "value": 0.02, "count": 5000}',
            "same time, flag, variant, metric and window as line 1",
        ),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, words: str) -> None:
    history = write(tmp_path, [row("2026-11-25T12:00:00Z", "control", 0.01), line])
    with pytest.raises(GuardrailError) as info:
        read_history(history)
    assert info.value.line == 2 and str(history) in str(info.value) and words in str(info.value)


def test_example_history_sequential_versus_threshold() -> None:
    from guardrail.replay import load_flags

    looks = read_history(EXAMPLES / "history.jsonl")
    sequential = {r.flag: r for r in replay(load_flags(EXAMPLES / "flags.yaml"), looks)}
    # The bad deploy lands at 10:00; the always-valid test halts it soon after and leaves search alone.
    express = sequential["checkout.payments.express-pay"]
    assert express.halted_at is not None and express.halted_at.hour == 10 and express.halted_at.minute <= 20
    assert sequential["search.ranking.new-model"].halted_at is None
    naive = {r.flag: r for r in replay(load_flags(EXAMPLES / "flags-threshold.yaml"), looks)}
    # The naive rule halts the healthy experiment on noise, before the bad deploy even happens.
    assert naive["search.ranking.new-model"].halted_at is not None


def test_since_start_rows_drive_sequential_guardrails_by_default(tmp_path: Path, capsys: Any) -> None:
    lines = []
    for i, minute in enumerate(range(0, 20, 2), start=1):
        n = 20_000 * i
        lines += [
            row(f"2026-11-25T12:{minute:02d}:00Z", "control", 0.01, n, "since_start"),
            row(f"2026-11-25T12:{minute:02d}:00Z", "treatment", 0.03, n, "since_start"),
        ]
    assert run_replay_command(history=write(tmp_path, lines), flags=None, config=None, as_json=True) == 1
    (result,) = json.loads(capsys.readouterr().out)["flags"]
    assert "always-valid" in result["reason"]


def test_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardrail",
            "replay",
            str(EXAMPLES / "history.jsonl"),
            "--flags",
            str(EXAMPLES / "flags.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    table = result.stdout.splitlines()
    assert table[2].split() == ["flag", "halted", "at", "metric", "looks"]
    assert table[3].split()[:3] == ["checkout.payments.express-pay", "2026-11-18T10:10:00Z", "error_rate"]
    assert table[4].split() == ["search.ranking.new-model", "no", "halt", "-", "60"]
    assert "search.ranking.new-model: no halt in 60 looks" in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "guardrail", "replay", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "file not found" in missing.stderr and "Traceback" not in missing.stderr


def test_looks_are_sorted_by_time_whatever_the_line_order(tmp_path: Path) -> None:
    lines = [
        row(f"2026-11-25T12:{m:02d}:00{zone}", v, 0.01)
        for m, zone in ((4, "Z"), (0, "+00:00"), (2, "Z"))
        for v in ("control", "treatment")
    ]
    looks = read_history(write(tmp_path, lines))
    assert [when.minute for when, _ in looks] == [0, 2, 4]
    assert set(looks[0][1]) == {("f.k", "control", "error_rate", "5m"), ("f.k", "treatment", "error_rate", "5m")}


def test_a_disabled_flag_is_still_replayed_and_an_absent_one_says_so(tmp_path: Path, capsys: Any) -> None:
    # A flag guardrail halted is DISABLED in today's file: that is the very experiment one replays.
    text = (EXAMPLES / "flags.yaml").read_text().replace("state: ENABLED", "state: DISABLED")
    text = text.replace(
        "flags:\n",
        "flags:\n  not.in.history:\n    state: ENABLED\n    variants: {treatment: true, "
        "control: false}\n    defaultVariant: control\n    metadata:\n"
        "      guardrail.error_rate.comparison: relative_increase\n"
        "      guardrail.error_rate.threshold: 0.1\n",
        1,
    )
    flags = tmp_path / "flags.yaml"
    flags.write_text(text)
    code = run_replay_command(history=EXAMPLES / "history.jsonl", flags=flags, config=None, as_json=True)
    results = {r["flag"]: r for r in json.loads(capsys.readouterr().out)["flags"]}
    assert code == 1
    assert results["checkout.payments.express-pay"]["halted_at"] == "2026-11-18T10:10:00Z"
    assert results["search.ranking.new-model"]["looks"] == 60
    absent = results["not.in.history"]
    assert absent["looks"] == 0 and absent["reason"] == "no aggregates for this flag in the history"


def test_without_flags_a_history_needs_a_control_variant(tmp_path: Path) -> None:
    history = write(tmp_path, [row("2026-11-25T12:00:00Z", "a", 0.01), row("2026-11-25T12:00:00Z", "b", 0.03)])
    with pytest.raises(GuardrailError) as info:
        run_replay_command(history=history, flags=None, config=None, as_json=True)
    assert info.value.flag == "f.k" and "'control'" in str(info.value) and str(history) in str(info.value)


def test_config_defaults_apply(tmp_path: Path, capsys: Any) -> None:
    lines = [
        row(f"2026-11-25T12:{m:02d}:00Z", v, 0.01 if v == "control" else 0.03)
        for m in range(0, 10, 2)
        for v in ("control", "treatment")
    ]
    config = tmp_path / "guardrail.yaml"
    config.write_text("defaults:\n  confirmations: 3\n")
    assert run_replay_command(history=write(tmp_path, lines), flags=None, config=config, as_json=True) == 1
    (result,) = json.loads(capsys.readouterr().out)["flags"]
    assert result["halted_at"] == "2026-11-25T12:04:00Z" and result["looks"] == 3  # third breach, not second


def test_json_keys_are_pinned(tmp_path: Path, capsys: Any) -> None:
    history = write(tmp_path, [row("2026-11-25T12:00:00Z", v, 0.01) for v in ("control", "treatment")])
    run_replay_command(history=history, flags=None, config=None, as_json=True)
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["flags"]
    assert list(doc["flags"][0]) == ["flag", "halted_at", "metric", "reason", "looks"]


def test_history_lines_may_carry_per_unit_sums(tmp_path: Path) -> None:
    rows = [
        {
            "time": "2026-11-18T10:00:00Z",
            "flag": "f",
            "variant": v,
            "metric": "error_rate",
            "window": "since_start",
            "value": 0.01,
            "count": 10_000,
            "units": 500,
            "num_sum": 100,
            "num_sum_sq": 900,
            "den_sum_sq": 250_000,
            "num_den_sum": 2_400,
        }
        for v in ("control", "treatment")
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ((_when, aggregates),) = read_history(path)
    agg = aggregates[("f", "control", "error_rate", SINCE_START)]
    assert (agg.units, agg.num_sum, agg.num_sum_sq, agg.den_sum_sq, agg.num_den_sum) == (
        500,
        100.0,
        900.0,
        250_000.0,
        2_400.0,
    )


def test_metrics_every_in_the_config_judges_only_the_looks_a_live_run_would_make(tmp_path: Path, capsys: Any) -> None:
    # Recorded every 2 minutes; with `metrics.every: 10m` a live run looks at 12:00, 12:10, 12:20 only, so the
    # second breaching look (the default confirmation) is 12:10, not 12:02.
    lines = [
        row(f"2026-11-25T12:{m:02d}:00Z", v, 0.01 if v == "control" else 0.03)
        for m in range(0, 30, 2)
        for v in ("control", "treatment")
    ]
    history = write(tmp_path, lines)
    assert run_replay_command(history=history, flags=None, config=None, as_json=True) == 1
    (plain,) = json.loads(capsys.readouterr().out)["flags"]
    assert plain["halted_at"] == "2026-11-25T12:02:00Z"
    config = tmp_path / "guardrail.yaml"
    config.write_text("metrics:\n  every: 10m\n")
    assert run_replay_command(history=history, flags=None, config=config, as_json=True) == 1
    (slow,) = json.loads(capsys.readouterr().out)["flags"]
    assert slow["halted_at"] == "2026-11-25T12:10:00Z" and slow["looks"] == 2
    run_replay_command(history=history, flags=None, config=config, as_json=False)
    assert "metrics.every 10 min: 3 of 15 recorded looks judged" in capsys.readouterr().out


def test_due_looks_follow_the_live_cadence_rule() -> None:
    from datetime import UTC, datetime, timedelta

    from guardrail.replay import due_looks

    start = datetime(2026, 11, 25, 12, tzinfo=UTC)
    # Cron drifts by seconds: 14 min 30 s after a look is due (60 s slack), 13 min 30 s is not.
    times = [start + timedelta(minutes=m) for m in (0, 2, 13.5, 14.5, 16, 29.5)]
    kept = [when for when, _ in due_looks([(t, {}) for t in times], 15.0)]
    assert kept == [start, start + timedelta(minutes=14.5), start + timedelta(minutes=29.5)]
    assert len(due_looks([(t, {}) for t in times], None)) == len(times)
