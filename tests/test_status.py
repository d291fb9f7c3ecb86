"""`guardrail status`: what the state and the flag source say, and a stale monitor as an incident."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail.config import parse_flags
from guardrail.fakeapi import FakeAPI
from guardrail.model import ExitCode, FlagState, GuardrailError, HaltAction, HaltRecord, HaltStatus, State, Streak
from guardrail.state import StateStore
from guardrail.status import build_report, read_state, run_status_command, to_json, to_text
from tests.conftest import NOW, TOKEN, flag_definition

KEY = "checkout.payments.express-pay"
OTHER = "search.ranking.new-model"

TOP_KEYS = {
    "version",
    "exit_code",
    "now",
    "last_run_at",
    "last_run_age_seconds",
    "stale",
    "stale_after_minutes",
    "stale_message",
    "flag_source",
    "metrics_looked_at",
    "flags",
    "warnings",
}
FLAG_KEYS = {
    "flag",
    "at_source",
    "held",
    "experiment_type",
    "watched",
    "not_watched",
    "warmup_remaining_minutes",
    "started_at",
    "first_seen_enabled",
    "guardrails",
    "halt",
    "ramp",
    "config_patterns",
}
GUARDRAIL_KEYS = {
    "id",
    "metric",
    "treatment_variant",
    "comparison",
    "threshold",
    "method",
    "confirmations",
    "min_count",
    "window",
    "alpha_per_comparison",
    "dispersion",
    "dispersion_windows",
    "suggested_dispersion",
    "in_definition",
    "streak",
    "last_breach_at",
    "last",
    "from",
}
HALT_KEYS = {
    "status",
    "action",
    "reason",
    "decided_at",
    "metric",
    "treatment_variant",
    "control_variant",
    "completed_at",
    "attempts",
    "last_error",
    "alert_delivered",
    "run_id",
}


def summary(verdict: str, at: datetime, streak: int) -> dict[str, Any]:
    return {
        "at": at.isoformat(),
        "verdict": verdict,
        "control": 0.01,
        "treatment": 0.034,
        "control_count": 5000,
        "treatment_count": 5100,
        "delta": 2.4,
        "streak": streak,
        "reason": "relative increase +240.00%",
    }


def halt_record() -> HaltRecord:
    return HaltRecord(
        status=HaltStatus.DONE,
        action=HaltAction.REVERT,
        reason="error_rate 3.4x control",
        metric="error_rate",
        decided_at=NOW - timedelta(minutes=4),
        treatment_variant="treatment",
        completed_at=NOW - timedelta(minutes=4),
        attempts=1,
        alert_delivered=True,
        run_id="run-abc",
        alert={"flag": "big"},
    )


def write_flags(path: Path, flags: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"flags": flags}))
    return path


def test_report_shows_guardrails_streaks_last_values_and_halts() -> None:
    started = (NOW - timedelta(minutes=10)).isoformat()
    parsed = parse_flags(
        {
            KEY: flag_definition(state="DISABLED"),
            OTHER: flag_definition(extra_metadata={"warmup_minutes": 30, "started_at": started}),
        }
    )
    state = State(
        flags={
            KEY: FlagState(
                first_seen_enabled=NOW - timedelta(hours=1),
                streaks={"error_rate@treatment": Streak(2, NOW - timedelta(minutes=4))},
                halt=halt_record(),
                last_evaluations={"error_rate@treatment": summary("breach", NOW - timedelta(minutes=4), 2)},
            ),
            "gone.flag.only-in-state": FlagState(streaks={"latency@b": Streak(1, NOW)}),
        },
        last_run_at=NOW - timedelta(minutes=2),
    )
    report = build_report(state, parsed, now=NOW, stale_after=10, flag_source="flags.yaml", warnings=[])
    doc = to_json(report)
    assert set(doc) == TOP_KEYS
    assert doc["stale"] is False and doc["exit_code"] == 0 and doc["last_run_age_seconds"] == 120
    flags = {f["flag"]: f for f in doc["flags"]}
    assert set(flags) == {KEY, OTHER, "gone.flag.only-in-state"}
    for f in flags.values():
        assert set(f) == FLAG_KEYS
        for g in f["guardrails"]:
            assert set(g) == GUARDRAIL_KEYS

    halted = flags[KEY]
    assert halted["at_source"] == "DISABLED" and halted["watched"] is False
    assert "halted by guardrail (done)" in halted["not_watched"]
    assert set(halted["halt"]) == HALT_KEYS  # the bulky prepared alert body is not status
    assert halted["halt"]["run_id"] == "run-abc" and halted["halt"]["alert_delivered"] is True
    (g,) = halted["guardrails"]
    assert g["streak"] == 2 and g["threshold"] == 0.10 and g["in_definition"] is True
    assert g["last"]["verdict"] == "breach" and g["last"]["treatment"] == 0.034

    warming = flags[OTHER]
    assert warming["watched"] is True and warming["warmup_remaining_minutes"] == 20.0
    assert warming["guardrails"][0]["last"] is None

    gone = flags["gone.flag.only-in-state"]
    assert gone["at_source"] is None and gone["watched"] is False
    assert gone["guardrails"][0]["id"] == "latency@b" and gone["guardrails"][0]["in_definition"] is False

    broken = parse_flags({"gone.flag.only-in-state": {"state": "ENABLED"}})
    again = build_report(state, broken, now=NOW, stale_after=10, flag_source="flags.yaml", warnings=[])
    (entry,) = [f for f in to_json(again)["flags"] if f["flag"] == "gone.flag.only-in-state"]
    assert entry["not_watched"] == "its definition has errors (see the warnings)"
    assert any("gone.flag.only-in-state" in w for w in again.warnings)

    text = to_text(report)
    assert "HALTED (revert)" in text and "run-abc" in text and "error_rate 3.4x control" in text
    assert "warmup: 20.0 min left" in text and "STALE" not in text
    json.dumps(doc, allow_nan=False)  # strict JSON


def test_each_sequential_guardrail_shows_its_share_of_alpha() -> None:
    """Two treatments × one sequential guardrail: each comparison runs at alpha / 2; the threshold rule has none."""
    definition = flag_definition(method=None, treatments=("a", "b"))
    definition["metadata"].update(
        {"guardrail.p95_latency_ms.comparison": "relative_increase", "guardrail.p95_latency_ms.threshold": 0.1}
    )
    parsed = parse_flags({KEY: definition})
    report = build_report(State(), parsed, now=NOW, stale_after=10, flag_source="flags.yaml", warnings=[])
    (flag,) = to_json(report)["flags"]
    shares = {g["id"]: g["alpha_per_comparison"] for g in flag["guardrails"]}
    assert shares == {"error_rate@a": 0.025, "error_rate@b": 0.025, "p95_latency_ms@a": None, "p95_latency_ms@b": None}
    assert to_text(report).count("alpha 0.025 per comparison") == 2


@pytest.mark.parametrize(
    ("last_run", "stale"), [(None, True), (NOW - timedelta(minutes=11), True), (NOW - timedelta(minutes=9), False)]
)
def test_stale_monitor_is_an_incident(last_run: datetime | None, stale: bool) -> None:
    report = build_report(
        State(last_run_at=last_run), parse_flags({}), now=NOW, stale_after=10, flag_source=None, warnings=[]
    )
    assert report.stale is stale
    assert report.exit_code == (ExitCode.UNEVALUATED if stale else ExitCode.OK)
    text = to_text(report)
    if stale:
        # Prominent: right under the header, not buried under the flags.
        assert text.splitlines()[2].startswith("STALE MONITOR")
        assert ("never" in text) is (last_run is None)
    else:
        assert "STALE" not in text


def test_command_reads_a_flag_file_and_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = write_flags(tmp_path / "flags.yaml", {KEY: flag_definition()})
    store = StateStore(tmp_path / "state.json")
    store.save(
        State(
            flags={KEY: FlagState(streaks={"error_rate@treatment": Streak(1, NOW)})},
            last_run_at=NOW - timedelta(minutes=1),
        )
    )
    code = run_status_command(flags=str(flags), config=None, state=store.path, as_json=True, stale_after=10, now=NOW)
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["exit_code"] == 0
    (flag,) = doc["flags"]
    assert flag["flag"] == KEY and flag["guardrails"][0]["streak"] == 1 and flag["watched"] is True

    code = run_status_command(flags=str(flags), config=None, state=store.path, as_json=False, stale_after=0.5, now=NOW)
    assert code == 3
    assert "STALE MONITOR" in capsys.readouterr().out


def test_status_does_not_need_the_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = write_flags(tmp_path / "flags.yaml", {KEY: flag_definition()})
    store = StateStore(tmp_path / "state.json", lock_timeout=0.1)
    store.save(State(last_run_at=NOW))
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with StateStore(store.path).locked():
            held.set()
            release.wait(600)  # until the test lets go, however slow the machine

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        code = run_status_command(
            flags=str(flags), config=None, state=store.path, as_json=True, stale_after=10, now=NOW
        )
        # It answered while the lock was still held (the holder only lets go below): it never waited.
        assert holder.is_alive() and not release.is_set()
        assert code == 0
        assert json.loads(capsys.readouterr().out)["last_run_at"] == "2026-11-25T12:00:00Z"
    finally:
        release.set()
        holder.join()


def test_corrupt_state_is_reported_and_left_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    state, warning = read_state(path)
    assert state == State() and warning is not None and "unreadable" in warning
    assert path.read_text() == "{not json"  # a read-only command moves nothing aside
    assert list(tmp_path.iterdir()) == [path]


def test_missing_and_newer_state(tmp_path: Path) -> None:
    state, warning = read_state(tmp_path / "none.json")
    assert state == State() and warning is not None and "has not run" in warning
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"version": 99, "flags": {}}))
    with pytest.raises(GuardrailError, match="newer"):
        read_state(newer)


def test_unreachable_source_still_shows_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(State(flags={KEY: FlagState(halt=halt_record())}, last_run_at=NOW))
    code = run_status_command(
        flags="http://127.0.0.1:9/v1/flags", config=None, state=store.path, as_json=True, stale_after=10, now=NOW
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert any("flag source unreadable" in w for w in doc["warnings"])
    (flag,) = doc["flags"]
    assert flag["flag"] == KEY and flag["halt"]["status"] == "done" and flag["at_source"] is None


def test_no_flag_source_at_all_is_a_warning_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAG_API_URL", raising=False)
    code = run_status_command(
        flags=None, config=None, state=tmp_path / "s.json", as_json=False, stale_after=10, now=NOW
    )
    out = capsys.readouterr().out
    assert code == 3  # never ran
    assert "no flag source configured" in out and "never completed a run" in out


def test_stale_after_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(GuardrailError, match="positive"):
        run_status_command(flags=None, config=None, state=tmp_path / "s.json", as_json=False, stale_after=0)


# ---- the installed command against the fake API -------------------------------------------------------------


@pytest.mark.e2e
def test_status_command_end_to_end(fake_api: FakeAPI, run_cli: Any, tmp_path: Path) -> None:
    fake_api.set_flags({KEY: flag_definition()})
    fake_api.set_metric(KEY, "control", "error_rate", 0.010, 5000)
    fake_api.set_metric(KEY, "treatment", "error_rate", 0.0101, 5000)
    env = {"FLAG_API_URL": fake_api.url, "FLAG_API_TOKEN": TOKEN, "METRICS_API_URL": fake_api.url}
    state = str(tmp_path / "s.json")

    never = run_cli("status", "--state", state, env=env)
    assert never.returncode == 3 and "STALE MONITOR" in never.stdout and "Traceback" not in never.stderr

    recent = (datetime.now(timezone.utc) - timedelta(minutes=1)).replace(microsecond=0).isoformat()
    assert run_cli("check", "--state", state, "--now", recent, env=env).returncode == 0
    ok = run_cli("status", "--state", state, "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["stale"] is False and doc["flags"][0]["guardrails"][0]["last"]["verdict"] == "pass"
    assert TOKEN not in ok.stdout + ok.stderr

    stale = run_cli("status", "--state", state, "--stale-after", "0.1", env=env)
    assert stale.returncode == 3 and "STALE MONITOR" in stale.stdout


def test_a_sequential_guardrail_shows_its_learnt_dispersion_and_the_value_to_configure() -> None:
    """The state's sequential test has seen 60 clustered windows (D ≈ 8): status shows D̂ and suggests it as
    the guardrail's `dispersion`; a guardrail with that floor already set is shown D̂ without a suggestion."""
    import numpy as np

    from guardrail import seqtest
    from guardrail.model import Comparison, SeqState

    rng = np.random.default_rng(9)
    seq, cum = SeqState(), np.zeros(4)
    settings = seqtest.Settings(Comparison.RELATIVE_INCREASE, 0.1, 0.05)
    for k in range(1, 61):
        p_c, p_t = rng.beta(1.42, 140.6, 2)
        cum += (1000.0, float(rng.binomial(1000, p_c)), 1000.0, float(rng.binomial(1000, p_t)))
        n_c, x_c, n_t, x_t = (float(x) for x in cum)
        control, treatment = seqtest.Sums(n_c, x_c, x_c), seqtest.Sums(n_t, x_t, x_t)
        seq, _ = seqtest.step(seq, control, treatment, minutes=2.0 * k, settings=settings, proportion=True)
    learnt = seqtest.dispersion(seq)
    floored = flag_definition(method=None, extra_metadata={"guardrail.error_rate.dispersion": 8.0})
    for definition, suggested in ((flag_definition(method=None), round(learnt, 1)), (floored, None)):
        parsed = parse_flags({KEY: definition})
        state = State(flags={KEY: FlagState(sequential={"error_rate@treatment": seq})}, last_run_at=NOW)
        report = build_report(state, parsed, now=NOW, stale_after=10, flag_source="flags.yaml", warnings=[])
        (flag,) = to_json(report)["flags"]
        (g,) = flag["guardrails"]
        assert g["dispersion_windows"] == 60 and g["suggested_dispersion"] == suggested
        assert g["dispersion"] == (learnt if suggested else max(8.0, learnt))
        text = to_text(report)
        assert f"dispersion {g['dispersion']:.2f} over 60 window(s)" in text
        assert (f"set `dispersion: {suggested:g}`" in text) if suggested else ("events cluster" not in text)
