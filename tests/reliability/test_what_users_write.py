"""What users write means what it says: precedence, YAML anchors, outside text in reports and alerts,
big fleets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail.check import HaltResult, RunResult
from guardrail.config import parse_flags
from guardrail.fakeapi import FakeAPI
from guardrail.flags.flagd_text import apply_halt_to_text
from guardrail.model import GuardrailError, HaltAction, HaltResultStatus
from guardrail.report import to_text
from guardrail.settings import load_settings
from tests.conftest import NOW, flag_definition
from tests.reliability.conftest import Runner, api_env, breaching

# ---- precedence: option, then environment, then file ----------------------------------------------------

# (Settings attribute, config-file snippet, environment, option value, expected file/env/option values)
PRECEDENCE: list[tuple[str, dict[str, Any], dict[str, str], Any]] = [
    ("state_path", {"state": "file.json"}, {"GUARDRAIL_STATE": "env.json"}, Path("opt.json")),
    ("audit_path", {"audit": "file.jsonl"}, {"GUARDRAIL_AUDIT": "env.jsonl"}, Path("opt.jsonl")),
    (
        "flag_api_url",
        {"flag_api": {"url": "http://file.invalid"}},
        {"FLAG_API_URL": "http://env.invalid"},
        "http://opt.invalid",
    ),
    # No command-line option sets the metrics URL: environment over file.
    ("metrics_url", {"metrics": {"url": "http://file.invalid"}}, {"METRICS_API_URL": "http://env.invalid"}, None),
    ("budget", {"budget": 30}, {"GUARDRAIL_BUDGET": "20"}, 10.0),
]


@pytest.mark.parametrize("name,file_doc,env,option", PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_option_over_environment_over_file(
    tmp_path: Path, name: str, file_doc: dict[str, Any], env: dict[str, str], option: Any
) -> None:
    config = tmp_path / "guardrail.yaml"
    config.write_text(yaml.safe_dump(file_doc))
    from_file = getattr(load_settings(config=config, env={}), name)
    from_env = getattr(load_settings(config=config, env=env), name)
    option_name = {"flag_api_url": "flags"}.get(name, name)  # the option that sets it: --flags URL
    from_option = getattr(load_settings(config=config, env=env, overrides={option_name: option}), name)
    if option is None:
        option = from_env
    assert str(from_file).endswith(str(next(iter(_leaves(file_doc)))))
    assert str(from_env) == str(next(iter(env.values()))) or float(from_env) == float(next(iter(env.values())))
    assert from_option == option


def _leaves(doc: Any) -> list[Any]:
    if isinstance(doc, dict):
        return [leaf for v in doc.values() for leaf in _leaves(v)]
    return [doc]


def test_a_bad_budget_in_the_environment_is_named() -> None:
    with pytest.raises(GuardrailError, match="GUARDRAIL_BUDGET"):
        load_settings(env={"GUARDRAIL_BUDGET": "nan"})


# ---- a write to one flag never changes another ----------------------------------------------------------

BASE = """flags:
  a.b.c: &base
    state: ENABLED
    variants: {control: false, treatment: true}
    defaultVariant: control
    metadata: &meta
      experiment_type: ab
      guardrail.error_rate.comparison: relative_increase
      guardrail.error_rate.threshold: 0.1
"""
SHARING = {
    "alias": BASE + "  d.e.f: *base\n",
    "merge_key": BASE + "  d.e.f:\n    <<: *base\n    state: ENABLED\n",
    "shared_metadata": BASE + "  d.e.f:\n    state: ENABLED\n    variants: {control: false, treatment: true}\n"
    "    defaultVariant: control\n    metadata: *meta\n",
}


@pytest.mark.parametrize("text", SHARING.values(), ids=list(SHARING))
@pytest.mark.parametrize("action", ["revert", "hold"])
def test_yaml_anchors_never_let_a_halt_change_another_flag(text: str, action: Any) -> None:
    try:
        new = apply_halt_to_text(text, "a.b.c", action=action, control_variant="control", reason="r", json_format=False)
    except GuardrailError as exc:
        assert "d.e.f" in str(exc)  # refused, naming the flag that shares it
        return
    assert yaml.safe_load(new)["flags"]["d.e.f"] == yaml.safe_load(text)["flags"]["d.e.f"]


def test_a_flag_file_with_shared_anchors_is_a_failed_halt_not_two(tmp_path: Path, api: FakeAPI, runner: Runner) -> None:
    flags = tmp_path / "flags.yaml"
    flags.write_text(SHARING["alias"])
    for flag in ("a.b.c", "d.e.f"):
        api.set_metric(flag, "control", "error_rate", 0.01, 5000)
        api.set_metric(flag, "treatment", "error_rate", 0.05 if flag == "a.b.c" else 0.01, 5000)
    env = {"METRICS_API_URL": api.url}
    result = runner.check("--flags", str(flags), env=env, now="2026-11-25T12:00:00Z")
    result = runner.check("--flags", str(flags), env=env, now="2026-11-25T12:02:00Z")
    assert flags.read_text() == SHARING["alias"]
    assert result.returncode == 4 and "d.e.f" in result.stdout


# ---- outside text cannot forge report lines or inject markup -------------------------------------------


def test_a_flag_key_with_a_newline_is_a_problem_not_a_report_line() -> None:
    parsed = parse_flags({"x\nHALTED: prod.payments (revert)": flag_definition()}, source="f.yaml")
    assert not parsed.flags and "control characters" in parsed.problems[0].message
    assert "\n" not in str(parsed.problems[0].flag)


def test_outside_text_in_the_report_stays_on_its_line() -> None:
    result = RunResult(
        now=NOW,
        dry_run=False,
        run_id="r",
        halts=(
            HaltResult(
                "f.k",
                "revert",
                HaltResultStatus.FAILED,
                "reason",
                detail="server said\nHALTED: other.flag (revert)\x1b[2J",
            ),
        ),
    )
    text = to_text(result)
    assert not any(line.startswith("HALTED: other.flag") for line in text.splitlines())
    assert "\x1b" not in text


def test_alert_text_from_outside_is_escaped_for_slack() -> None:
    from guardrail import alert
    from guardrail.model import Comparison, Evaluation, Method, Verdict

    e = Evaluation(
        flag="f<!channel>",
        metric="error_rate",
        treatment_variant="<https://evil.example|click>",
        control_variant="control",
        comparison=Comparison.RELATIVE_INCREASE,
        threshold=0.1,
        method=Method.THRESHOLD,
        verdict=Verdict.BREACH,
        reason="r",
        control=None,
        treatment=None,
        delta=None,
        relative_delta=None,
        streak=1,
        confirmations=1,
        bound=None,
        p_value=None,
    )
    ctx = alert.context(
        flag="f<!channel>`x", action=HaltAction.REVERT, evaluation=e, reason="a & b <!here>", link="http://h/f?a=1&b=2"
    )
    for outcome in alert.AlertOutcome:
        payload = alert.render(ctx, outcome, "server said <!everyone>")
        body = json.dumps(payload)
        assert "<!channel>" not in body and "<!here>" not in body and "<!everyone>" not in body
        assert "<https://evil" not in body
        assert "&lt;!channel&gt;" in payload["text"] and "`x" not in payload["text"]


# ---- a fleet in one file ----------------------------------------------------------------------------------


def test_ten_thousand_flags_in_one_file_are_accepted(tmp_path: Path) -> None:
    from guardrail import files

    flags = {
        f"team{i % 50}.svc{i}.feature-{i}": flag_definition(
            extra_metadata={
                "guardrail.p95_latency_ms.comparison": "relative_increase",
                "guardrail.p95_latency_ms.threshold": 0.1,
                "warmup_minutes": 30,
            }
        )
        for i in range(10_000)
    }
    path = tmp_path / "flags.json"  # JSON keeps the test fast; YAML goes through the same size limit
    path.write_text(json.dumps({"flags": flags}, indent=2))
    assert path.stat().st_size > 5 * 1024 * 1024
    parsed = parse_flags(files.load_document(path)["flags"], source=str(path))
    assert len(parsed.flags) == 10_000 and not parsed.problems


def test_a_fleet_larger_than_the_limit_can_raise_it(tmp_path: Path, runner: Runner, api: FakeAPI) -> None:
    breaching(api, confirmations=2)
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"flags": {"a.b.c": flag_definition()}}) + " " * (2 * 1024 * 1024))
    env = {**api_env(api), "GUARDRAIL_MAX_FILE_MB": "1"}
    refused = runner.check("--flags", str(path), "--dry-run", env=env)
    assert refused.returncode == 2 and "GUARDRAIL_MAX_FILE_MB" in refused.stderr
    env["GUARDRAIL_MAX_FILE_MB"] = "3"
    assert runner.check("--flags", str(path), "--dry-run", env=env).returncode != 2


@pytest.mark.parametrize("name", ["timeout", "budget", "lock_timeout"])
def test_an_infinite_deadline_option_is_refused(name: str) -> None:
    """`--timeout inf` would undo the total deadline every call must have."""
    with pytest.raises(GuardrailError, match="finite"):
        load_settings(env={}, overrides={name: float("inf")})
