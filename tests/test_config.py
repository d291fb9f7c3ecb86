"""Flag definitions to the model: both metadata spellings, schema validation, places in every error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guardrail.config import infer_kind, is_held, parse_flags
from guardrail.model import Comparison, ExperimentType, GuardrailError, Method, MetricKind
from guardrail.settings import load_settings, require
from tests.conftest import flag_definition

KEY = "checkout.payments.express-pay"


def nested(guardrails: list[dict[str, Any]]) -> dict[str, Any]:
    definition = flag_definition()
    definition["metadata"] = {"experiment_type": "ab", "guardrails": guardrails}
    return definition


def test_flat_and_nested_spellings_read_the_same() -> None:
    flat = flag_definition(
        method=None,
        extra_metadata={
            "guardrail.p95_latency_ms.comparison": "relative_increase",
            "guardrail.p95_latency_ms.threshold": 0.10,
            "guardrail.p95_latency_ms.min_count": 200,
        },
    )
    del flat["metadata"]["started_at"]
    flat["metadata"]["guardrail.error_rate.threshold"] = 0.01
    nest = nested(
        [
            {"metric": "error_rate", "comparison": "relative_increase", "threshold": 0.01},
            {"metric": "p95_latency_ms", "comparison": "relative_increase", "threshold": 0.10, "min_count": 200},
        ]
    )
    a = parse_flags({KEY: flat}).flags[0]
    b = parse_flags({KEY: nest}).flags[0]
    assert a.guardrails == b.guardrails
    assert [g.metric for g in a.guardrails] == ["error_rate", "p95_latency_ms"]
    assert a.guardrails[1].min_count == 200 and a.guardrails[1].kind is MetricKind.QUANTILE
    assert a.guardrails[0].comparison is Comparison.RELATIVE_INCREASE


def test_dispersion_is_a_known_floor_for_the_sequential_test() -> None:
    definition = flag_definition(extra_metadata={"guardrail.error_rate.dispersion": 4})
    assert parse_flags({KEY: definition}).flags[0].guardrails[0].dispersion == 4.0
    assert parse_flags({KEY: flag_definition()}).flags[0].guardrails[0].dispersion == 1.0


def test_flag_wide_and_config_defaults() -> None:
    definition = flag_definition(extra_metadata={"guardrail.method": "sequential", "guardrail.alpha": 0.01})
    flag = parse_flags({KEY: definition}, defaults={"confirmations": 3, "alpha": 0.2}).flags[0]
    g = flag.guardrails[0]
    assert g.method is Method.SEQUENTIAL and g.alpha == 0.01 and g.confirmations == 3


@pytest.mark.parametrize(
    ("metadata", "field", "words"),
    [
        ({"guardrail.error_rate.threshold": -1}, "metadata.guardrail.error_rate.threshold", "less than or equal"),
        ({"guardrail.error_rate.threshold": "high"}, "metadata.guardrail.error_rate.threshold", "not of type"),
        ({"guardrail.error_rate.comparison": "bigger"}, "metadata.guardrail.error_rate.comparison", "not one of"),
        ({"guardrail.error_rate.treshold": 0.1}, "metadata.guardrail.error_rate", "unknown option"),
        ({"guardrail.error_rate.min_count": 1.5}, "metadata.guardrail.error_rate.min_count", "integer"),
        ({"guardrail.error_rate.dispersion": 0.5}, "metadata.guardrail.error_rate.dispersion", "minimum"),
        ({"warmup_minutes": -5}, "metadata.warmup_minutes", "minimum"),
        ({"experiment_type": "canary"}, "metadata.experiment_type", "not one of"),
        ({"control_variant": "baseline"}, "metadata.control_variant", "not one of"),
        ({"started_at": "yesterday"}, "metadata.started_at", "RFC 3339"),
    ],
)
def test_bad_metadata_names_file_flag_and_field(metadata: dict[str, Any], field: str, words: str) -> None:
    definition = flag_definition(extra_metadata=metadata)
    parsed = parse_flags({KEY: definition, "other.flag.ok": flag_definition()}, source="flags.yaml", lines={KEY: 7})
    assert [f.key for f in parsed.flags] == ["other.flag.ok"]  # the other flag still runs
    problem = parsed.problems[0]
    assert problem.flag == KEY and problem.source == "flags.yaml" and problem.line == 7
    assert problem.field == field, problem
    assert words in problem.message
    assert str(problem).startswith(f"flags.yaml:7, flag '{KEY}', field '{field}'")


def test_missing_threshold_in_nested_spelling() -> None:
    parsed = parse_flags({KEY: nested([{"metric": "error_rate", "comparison": "relative_increase"}])})
    assert parsed.problems[0].field == "metadata.guardrails[0]"
    assert "threshold" in parsed.problems[0].message


def test_metric_listed_twice_across_spellings() -> None:
    definition = nested([{"metric": "error_rate", "comparison": "relative_increase", "threshold": 0.1}])
    definition["metadata"]["guardrail.error_rate.threshold"] = 0.2
    definition["metadata"]["guardrail.error_rate.comparison"] = "relative_increase"
    parsed = parse_flags({KEY: definition})
    assert "listed twice" in parsed.problems[0].message


@pytest.mark.parametrize("bad", [None, [], "x", {"state": "ON"}, {"state": "ENABLED", "variants": {}}])
def test_malformed_definitions_are_problems_not_crashes(bad: Any) -> None:
    parsed = parse_flags({KEY: bad})
    assert not parsed.flags and parsed.problems and parsed.problems[0].flag == KEY


def test_variants_control_treatments_and_legacy_operator() -> None:
    definition = flag_definition(treatments=("a", "b"))
    definition["targeting"] = {"fractionalEvaluation": definition["targeting"]["fractional"]}
    flag = parse_flags({KEY: definition}).flags[0]
    assert flag.control_variant == "control" and flag.treatment_variants == ("a", "b")
    rollout = parse_flags({KEY: flag_definition(experiment_type="rollout")}).flags[0]
    assert rollout.experiment_type is ExperimentType.ROLLOUT


def test_no_targeting_means_every_other_variant_is_a_treatment() -> None:
    definition = flag_definition()
    del definition["targeting"]
    assert parse_flags({KEY: definition}).flags[0].treatment_variants == ("treatment",)


def test_kind_inference() -> None:
    assert infer_kind("error_rate") is MetricKind.PROPORTION
    assert infer_kind("cart_abandonment_rate") is MetricKind.PROPORTION
    assert infer_kind("p95_latency_ms") is MetricKind.QUANTILE
    assert infer_kind("latency_p99") is MetricKind.QUANTILE
    assert infer_kind("order_value") is MetricKind.MEAN


def test_settings_from_environment_alone() -> None:
    env = {
        "FLAG_API_URL": "https://flags.example",
        "FLAG_API_TOKEN": "t0ken-xyz",
        "METRICS_API_URL": "https://metrics.example",
        "ALERT_WEBHOOK_URL": "https://hooks.example/x",
    }
    s = load_settings(env=env)
    require(s)
    assert s.flags == "https://flags.example" and s.backend_kind() == "api"
    assert s.metrics_url == "https://metrics.example" and s.secrets() == ["t0ken-xyz", "https://hooks.example/x"]
    assert "t0ken" not in repr(s) and "hooks.example" not in repr(s)


def test_file_flags_without_api_use_the_file_backend(tmp_path: Path) -> None:
    s = load_settings(env={"METRICS_API_URL": "http://m"}, overrides={"flags": str(tmp_path / "f.yaml")})
    assert s.backend_kind() == "file"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("bogus: 1\n", "bogus"),
        ("flag_api:\n  token: abc\n", "flag_api.token"),
        ("alert:\n  webhook_url: https://x\n", "alert.webhook_url"),
        ("metrics:\n  source: graphite\n", "metrics.source"),
        ("http:\n  timeout: -1\n", "http.timeout"),
        ("defaults:\n  confirmations: 0\n", "defaults.confirmations"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "guardrail.yaml"
    path.write_text(text)
    with pytest.raises(GuardrailError) as info:
        load_settings(config=path, env={})
    assert info.value.field == field
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("hold", "held"),
    [
        (True, True),
        ("true", True),
        ("TRUE", True),
        (" True ", True),
        (False, False),
        ("false", False),
        ("yes", False),
        (1, False),
        (None, False),
    ],
)
def test_is_held_is_one_rule_for_every_backend(hold: object, held: bool) -> None:
    definition = flag_definition(extra_metadata={"guardrail_hold": hold})
    assert is_held(definition) is held
    assert parse_flags({KEY: definition}).flags[0].held is held
    assert not is_held({"metadata": "not a mapping"}) and not is_held(None)
