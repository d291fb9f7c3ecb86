"""Guardrails declared in the config file (`guardrails:`), merged under each flag's own metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail.check import run_check
from guardrail.config import merge_guardrails, parse_flags
from guardrail.fakeapi import FakeAPI
from guardrail.model import Comparison, ExitCode, GuardrailError
from guardrail.rules import FROM_DEFAULTS, FROM_FLAG, parse_rules
from guardrail.settings import load_settings
from tests.conftest import NOW, flag_definition

PAY = "checkout.payments.express-pay"
CART = "checkout.cart.new-layout"
SEARCH = "search.ranking.new-model"
CFG = "guardrail.yaml"


def bare(**metadata: Any) -> dict[str, Any]:
    """A flagd experiment whose metadata carries no guardrail at all (as in a system that cannot)."""
    definition = flag_definition()
    definition["metadata"] = {"owner": "team", **metadata}
    return definition


def rules(section: Any) -> Any:
    return parse_rules(section, source=CFG)


def guardrail_of(definitions: dict[str, Any], key: str, section: Any, defaults: Any = None) -> Any:
    parsed = parse_flags(definitions, source="flags.yaml", rules=rules(section), defaults=defaults)
    assert not parsed.errors, parsed.errors
    (flag,) = [f for f in parsed.flags if f.key == key]
    return flag


# ---- the two spellings, and mistakes ------------------------------------------------------------------------


def test_nested_and_flat_spellings_read_the_same() -> None:
    nested = rules({"checkout.*": {"error_rate": {"comparison": "relative_increase", "threshold": 0.02}}})
    flat = rules({"checkout.*": {"error_rate.comparison": "relative_increase", "error_rate.threshold": 0.02}})
    prefixed = rules(
        {"checkout.*": {"guardrail.error_rate.comparison": "relative_increase", "guardrail.error_rate.threshold": 0.02}}
    )
    assert (
        nested.rules[0].metrics
        == flat.rules[0].metrics
        == prefixed.rules[0].metrics
        == {"error_rate": {"comparison": "relative_increase", "threshold": 0.02}}
    )


@pytest.mark.parametrize(
    ("section", "field", "match"),
    [
        (
            {"checkout.*": {"error_rate": {"threshold": "high"}}},
            'guardrails."checkout.*".error_rate.threshold',
            "is not of type 'number'",
        ),
        ({"checkout.*": {"error_rate.treshold": 0.1}}, 'guardrails."checkout.*".error_rate', "unknown option"),
        ({"checkout.*": {"experiment_type": "canary"}}, 'guardrails."checkout.*".experiment_type', "is not one of"),
        ({"checkout.*": {"colour": "blue"}}, 'guardrails."checkout.*".colour', "unknown option 'colour'"),
        ({"checkout.*": {"min_count": 0}}, 'guardrails."checkout.*".min_count', "less than the minimum"),
        ({"checkout.*": ["error_rate"]}, 'guardrails."checkout.*"', "must be a mapping"),
        (["checkout.*"], "guardrails", "must be a mapping"),
    ],
)
def test_mistakes_name_the_config_file_and_field(section: Any, field: str, match: str) -> None:
    with pytest.raises(GuardrailError, match=match) as caught:
        rules(section)
    assert caught.value.source == CFG and caught.value.field == field


def test_settings_read_the_section_and_refuse_mistakes_naming_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / CFG
    cfg.write_text("guardrails:\n  'checkout.*':\n    error_rate: {comparison: relative_increase, threshold: 0.02}\n")
    settings = load_settings(config=cfg, env={})
    assert settings.guardrail_rules is not None and settings.guardrail_rules.rules[0].pattern == "checkout.*"
    cfg.write_text("guardrails:\n  'checkout.*':\n    error_rate: {threshold: -1}\n")
    with pytest.raises(GuardrailError) as caught:
        load_settings(config=cfg, env={})
    assert str(caught.value).startswith(f"{cfg}, field 'guardrails.\"checkout.*\".error_rate.threshold'")


# ---- merging -------------------------------------------------------------------------------------------------


def test_a_flag_without_guardrail_metadata_gets_them_from_the_config() -> None:
    flag = guardrail_of(
        {PAY: bare()},
        PAY,
        {
            "checkout.*": {
                "warmup_minutes": 15,
                "error_rate": {"comparison": "relative_increase", "threshold": 0.02, "min_count": 300},
            }
        },
    )
    (g,) = flag.guardrails
    assert (g.metric, g.comparison, g.threshold, g.min_count) == ("error_rate", Comparison.RELATIVE_INCREASE, 0.02, 300)
    assert flag.warmup_minutes == 15


def test_the_flags_own_metadata_wins_option_by_option() -> None:
    definitions = {PAY: bare(**{"guardrail.error_rate.threshold": 0.05, "warmup_minutes": 5})}
    section = {
        "checkout.*": {
            "warmup_minutes": 60,
            "error_rate": {"comparison": "relative_increase", "threshold": 0.5, "confirmations": 3},
        }
    }
    flag = guardrail_of(definitions, PAY, section)
    (g,) = flag.guardrails
    assert g.threshold == 0.05  # the flag's
    assert g.comparison is Comparison.RELATIVE_INCREASE and g.confirmations == 3  # the config's
    assert flag.warmup_minutes == 5
    merged = merge_guardrails(PAY, definitions[PAY]["metadata"], rules=rules(section), defaults=None)
    assert merged.origins["error_rate.threshold"] == FROM_FLAG
    assert merged.origins["error_rate.comparison"] == 'config guardrails["checkout.*"]'
    assert merged.origins["warmup_minutes"] == FROM_FLAG


def test_most_specific_pattern_wins_option_by_option() -> None:
    section = {
        "*": {"min_count": 100, "error_rate": {"comparison": "relative_increase", "threshold": 0.3, "window": "10m"}},
        "checkout.*": {"error_rate": {"threshold": 0.2}},
        "checkout.payments.*": {"error_rate": {"threshold": 0.1}},
        PAY: {"min_count": 900},
    }
    definitions = {PAY: bare(), CART: bare(), SEARCH: bare()}
    by_key = {f.key: f.guardrails[0] for f in parse_flags(definitions, rules=rules(section)).flags}
    assert (by_key[PAY].threshold, by_key[PAY].min_count, by_key[PAY].window) == (0.1, 900, "10m")
    assert (by_key[CART].threshold, by_key[CART].min_count) == (0.2, 100)
    assert (by_key[SEARCH].threshold, by_key[SEARCH].min_count) == (0.3, 100)
    merged = merge_guardrails(PAY, {}, rules=rules(section), defaults=None)
    assert merged.patterns == (PAY, "checkout.payments.*", "checkout.*", "*")
    assert merged.origins["error_rate.min_count"] == f'config guardrails["{PAY}"]'
    assert merged.origins["error_rate.window"] == 'config guardrails["*"]'


def test_equal_specificity_first_written_wins() -> None:
    section = {
        "checkout.?art.*": {"error_rate": {"comparison": "relative_increase", "threshold": 0.1}},
        "checkout.c?rt.*": {"error_rate": {"threshold": 0.9}},
    }
    assert guardrail_of({CART: bare()}, CART, section).guardrails[0].threshold == 0.1


def test_config_defaults_sit_under_every_pattern() -> None:
    section = {"checkout.*": {"error_rate": {"comparison": "relative_increase", "threshold": 0.1}}}
    flag = guardrail_of({PAY: bare()}, PAY, section, defaults={"min_count": 700, "threshold": 0.9})
    assert (flag.guardrails[0].min_count, flag.guardrails[0].threshold) == (700, 0.1)
    merged = merge_guardrails(PAY, {}, rules=rules(section), defaults={"min_count": 700})
    assert merged.origins["error_rate.min_count"] == FROM_DEFAULTS


def test_a_glob_skips_flags_without_a_control_and_an_exact_key_is_an_error() -> None:
    plain = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    split = {**plain, "targeting": {"fractional": [{"var": "targetingKey"}, ["on", 20], ["off", 80]]}}
    section = {"*": {"error_rate": {"comparison": "relative_increase", "threshold": 0.1}}}
    parsed = parse_flags({"ops.kill-switch": plain, "ops.rollout": split, PAY: bare()}, rules=rules(section))
    assert not parsed.errors
    (warning,) = parsed.problems  # the kill switch is skipped quietly; the unnamed split is pointed out
    assert warning.flag == "ops.rollout" and warning.severity == "warning"
    assert "splits traffic, but it has no control variant 'control'" in warning.message
    assert {f.key: len(f.guardrails) for f in parsed.flags} == {"ops.kill-switch": 0, "ops.rollout": 0, PAY: 1}
    parsed = parse_flags({"ops.kill-switch": plain}, rules=rules({"ops.kill-switch": section["*"]}))
    assert parsed.errors and parsed.errors[0].field == "metadata.control_variant"


def test_incomplete_after_the_merge_names_the_config_field() -> None:
    parsed = parse_flags({PAY: bare()}, source="flags.yaml", rules=rules({"checkout.*": {"error_rate.threshold": 0.1}}))
    (error,) = parsed.errors
    assert "'comparison' is a required property" in error.message
    assert error.field == f'guardrails."checkout.*".error_rate in {CFG}'


# ---- the commands -------------------------------------------------------------------------------------------


CONFIG = """\
flags: flags.yaml
guardrails:
  "checkout.*":
    error_rate:
      comparison: relative_increase
      threshold: 0.10
      confirmations: 1
  "checkout.payments.*":
    error_rate.threshold: 0.05
"""


def write_files(tmp_path: Path) -> Path:
    definition = bare(**{"guardrail.error_rate.min_count": 250})
    (tmp_path / "flags.yaml").write_text(yaml.safe_dump({"flags": {PAY: definition, SEARCH: bare()}}))
    (tmp_path / CFG).write_text(CONFIG)
    return tmp_path / CFG


def test_validate_with_config_shows_the_merged_result_and_origins(tmp_path: Path, run_cli: Any) -> None:
    cfg = write_files(tmp_path)
    done = run_cli("validate", "--config", str(cfg))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"flags.yaml: flag {PAY} (config patterns: checkout.payments.*, checkout.*)" in out
    assert (
        'error_rate: comparison=relative_increase (config guardrails["checkout.*"]), threshold=0.05 '
        '(config guardrails["checkout.payments.*"]), confirmations=1 (config guardrails["checkout.*"]), '
        "min_count=250 (flag metadata)"
    ) in out
    assert SEARCH not in out  # no guardrails anywhere for it


def test_validate_config_error_exits_2_naming_file_and_field(tmp_path: Path, run_cli: Any) -> None:
    cfg = write_files(tmp_path)
    cfg.write_text(CONFIG.replace("threshold: 0.10", "threshold: ten"))
    done = run_cli("validate", "--config", str(cfg))
    assert done.returncode == 2
    assert f"{cfg}, field 'guardrails.\"checkout.*\".error_rate.threshold'" in done.stderr
    assert "Traceback" not in done.stderr


def test_status_json_says_where_each_value_came_from(tmp_path: Path, run_cli: Any) -> None:
    cfg = write_files(tmp_path)
    done = run_cli("status", "--config", str(cfg), "--state", str(tmp_path / "s.json"), "--json")
    doc = json.loads(done.stdout)
    (flag,) = [f for f in doc["flags"] if f["flag"] == PAY]
    assert flag["config_patterns"] == ["checkout.payments.*", "checkout.*"]
    (row,) = flag["guardrails"]
    assert row["threshold"] == 0.05 and row["min_count"] == 250
    assert row["from"] == {
        "comparison": 'config guardrails["checkout.*"]',
        "threshold": 'config guardrails["checkout.payments.*"]',
        "method": "built-in default",
        "confirmations": 'config guardrails["checkout.*"]',
        "min_count": FROM_FLAG,
        "window": "built-in default",
    }
    text = run_cli("status", "--config", str(cfg), "--state", str(tmp_path / "s.json")).stdout
    assert (
        'from: comparison config guardrails["checkout.*"]; threshold config guardrails["checkout.payments.*"]' in text
    )


def test_check_halts_with_guardrails_from_the_config_only(tmp_path: Path, fake_api: FakeAPI) -> None:
    cfg = write_files(tmp_path)
    # +12 %: over the 5 % of checkout.payments.*, under the 10 % of checkout.*. The default sequential test
    # halts on the first look only with enough data to prove harm beyond 5 % (about 8 standard errors here),
    # which it could not prove beyond 10 % (about 2).
    fake_api.set_metric(PAY, "control", "error_rate", 0.010, 5_000_000)
    fake_api.set_metric(PAY, "treatment", "error_rate", 0.0112, 5_000_000)
    settings = load_settings(
        config=cfg,
        env={"METRICS_API_URL": fake_api.url},
        overrides={
            "flags": str(tmp_path / "flags.yaml"),
            "state_path": tmp_path / "s.json",
            "audit_path": tmp_path / "a.jsonl",
        },
    )
    result = run_check(settings, now=NOW)
    assert result.exit_code == ExitCode.HALTED
    assert [h.flag for h in result.halts] == [PAY]
    assert "vs threshold 5.00%" in result.halts[0].reason
    assert yaml.safe_load((tmp_path / "flags.yaml").read_text())["flags"][PAY]["state"] == "DISABLED"


def test_the_docs_example_resolves_as_its_table_says() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "guardrails-in-config.md").read_text()
    example = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    merged = merge_guardrails(PAY, {}, rules=rules(example["guardrails"]), defaults=None)
    (error_rate, _latency) = merged.guardrails
    assert error_rate == {
        "metric": "error_rate",
        "min_count": 500,
        "comparison": "relative_increase",
        "threshold": 0.05,
        "confirmations": 2,
    }
    assert merged.origins["error_rate.threshold"] == f'config guardrails["{PAY}"]'
    assert merged.origins["error_rate.min_count"] == 'config guardrails["*"]'
    with pytest.raises(GuardrailError) as caught:
        rules({"checkout.*": {"error_rate": {"threshold": "ten"}}})
    assert str(caught.value) == (
        "guardrail.yaml, field 'guardrails.\"checkout.*\".error_rate.threshold': 'ten' is not of type 'number'"
    )


def test_a_ramp_schedule_can_come_from_the_config() -> None:
    definition = flag_definition(experiment_type="rollout")
    definition["targeting"]["fractional"] = [{"var": "targetingKey"}, ["treatment", 0], ["control", 100]]
    section = {
        "checkout.*": {"ramp": {"steps": "1,5,25,100", "step_minutes": 60}, "srm.action": "warn"},
        PAY: {"guardrail.ramp.advance": "proven_safe"},
    }
    definition["metadata"]["guardrail.ramp.step_minutes"] = 15  # the flag's own wins
    flag = guardrail_of({PAY: definition}, PAY, section)
    assert flag.ramp is not None
    assert list(flag.ramp.steps) == [1, 5, 25, 100] and flag.ramp.advance.value == "proven_safe"
    assert flag.ramp.step_minutes[0] == 15 and flag.srm.action.value == "warn"
    merged = merge_guardrails(PAY, definition["metadata"], rules=rules(section), defaults=None)
    assert merged.origins["ramp.steps"] == 'config guardrails["checkout.*"]'
    assert merged.origins["ramp.advance"] == f'config guardrails["{PAY}"]'
    assert merged.origins["ramp.step_minutes"] == FROM_FLAG
    with pytest.raises(GuardrailError, match="unknown ramp option 'stepz'") as caught:
        rules({"checkout.*": {"ramp": {"stepz": "1,5"}}})
    assert caught.value.field == 'guardrails."checkout.*".ramp.stepz'


def test_unleash_tags_completed_by_the_config() -> None:
    """A flag server's flags get the same merge: a tag sets the threshold, the config the comparison."""
    from tests.test_unleash_unit import AB, KEY, definition, feature

    partial, problems = definition(feature([AB], tags=("error_rate.threshold=0.05",)))
    assert partial is not None and problems == []
    section = {"checkout.*": {"error_rate": {"comparison": "relative_increase", "threshold": 0.5}}}
    (g,) = guardrail_of({KEY: partial}, KEY, section).guardrails
    assert (g.comparison, g.threshold) == (Comparison.RELATIVE_INCREASE, 0.05)
    parsed = parse_flags({KEY: partial}, source="unleash")  # without the config: still reported, by the run
    assert parsed.errors and "'comparison' is a required property" in parsed.errors[0].message
