"""One bad number costs one guardrail or one flag, never the run: NaN, infinities, negatives, out of range,
overflow, wherever the number comes from (flag metadata, metrics answers, state)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from guardrail import engine
from guardrail.config import parse_flags
from guardrail.model import Aggregate, State, Verdict
from guardrail.validate import validate_paths
from tests.conftest import NOW, flag_definition
from tests.fakeserver_faults import FaultyAPI
from tests.reliability.conftest import BAD, GOOD, Runner, api_env, breaching, doc

NUMBER_OPTIONS = ("threshold", "min_count", "confirmations", "max_gap_minutes", "alpha", "tuning_n")
BAD_NUMBERS: list[Any] = [math.nan, math.inf, -math.inf, -1, 0, 1e308 * 10, 10**400]


@pytest.mark.parametrize("option", NUMBER_OPTIONS)
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_any_bad_guardrail_number_is_a_named_problem(option: str, value: Any) -> None:
    definition = flag_definition(extra_metadata={f"guardrail.error_rate.{option}": value})
    parsed = parse_flags({"f.k": definition}, source="flags.yaml")
    if parsed.flags:  # accepted only if the value is really usable
        g = parsed.flags[0].guardrails[0]
        got = getattr(g, option)
        assert isinstance(got, (int, float)) and math.isfinite(got) and got > 0, (option, value, got)
        assert option != "alpha" or got < 1
    else:
        (problem,) = parsed.problems
        assert problem.field == f"metadata.guardrail.error_rate.{option}", problem


@pytest.mark.parametrize("option", ["warmup_minutes"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -5, 10**400])
def test_bad_flag_wide_numbers_are_named(option: str, value: Any) -> None:
    parsed = parse_flags({"f.k": flag_definition(extra_metadata={option: value})}, source="flags.yaml")
    assert not parsed.flags and parsed.problems[0].field == f"metadata.{option}"


@pytest.mark.parametrize(
    "text",
    ["threshold: .nan", "max_gap_minutes: .nan", "alpha: .inf", "min_count: -3", "alpha: 1.5", "confirmations: 0"],
)
def test_validate_refuses_bad_numbers_in_yaml(tmp_path: Any, text: str) -> None:
    option, value = text.split(": ")
    path = tmp_path / "flags.yaml"
    path.write_text(
        "flags:\n  f.k:\n    state: ENABLED\n    variants: {control: false, treatment: true}\n"
        "    defaultVariant: control\n    metadata:\n"
        "      guardrail.error_rate.comparison: relative_increase\n"
        f"      guardrail.error_rate.threshold: {value if option == 'threshold' else '0.1'}\n"
        + (f"      guardrail.error_rate.{option}: {value}\n" if option != "threshold" else "")
    )
    findings, code = validate_paths([path], today=NOW.date())
    assert code == 1, findings
    assert any(option in str(getattr(f, "field", "")) + str(f) for f in findings)


@pytest.mark.parametrize(
    "metadata,needle",
    [
        ({"treatment_variants": ""}, "empty"),
        ({"treatment_variants": "control"}, "control"),
        ({"treatment_variants": "treatment, control"}, "control"),
    ],
)
def test_treatment_variants_that_cannot_be_an_experiment_are_problems(metadata: dict[str, Any], needle: str) -> None:
    parsed = parse_flags({"f.k": flag_definition(extra_metadata=metadata)}, source="flags.yaml")
    assert not parsed.flags
    (problem,) = parsed.problems
    assert problem.field == "metadata.treatment_variants" and needle in problem.message


def test_a_treatment_variant_with_weight_zero_is_a_problem() -> None:
    definition = flag_definition(extra_metadata={"treatment_variants": "treatment"})
    definition["targeting"] = {"fractional": [{"var": "targetingKey"}, ["treatment", 0], ["control", 100]]}
    parsed = parse_flags({"f.k": definition}, source="flags.yaml")
    assert not parsed.flags and "weight 0" in parsed.problems[0].message


def _agg(value: float, count: int, stddev: float | None = None) -> Aggregate:
    return Aggregate(value=value, count=count, stddev=stddev)


def _decide_one(definition: dict[str, Any], control: Aggregate, treatment: Aggregate) -> Any:
    (flag,) = parse_flags({"f.k": definition}).flags
    g = flag.guardrails[0]
    window = engine.logical_window(g)
    aggs = {("f.k", "control", g.metric, window): control, ("f.k", "treatment", g.metric, window): treatment}
    return engine.decide([flag], aggs, State(), NOW)


def test_stddev_that_overflows_is_no_data_for_that_guardrail() -> None:
    definition = flag_definition(
        metric="latency_ms",
        extra_metadata={"guardrail.latency_ms.method": "sequential", "guardrail.latency_ms.kind": "mean"},
    )
    decision = _decide_one(definition, _agg(100.0, 5000, 1e200), _agg(150.0, 5000, 1e200))
    (e,) = decision.evaluations
    assert e.verdict is Verdict.SKIP_NO_DATA and not decision.halts


def test_negative_quantile_in_control_is_no_data_not_a_breach() -> None:
    definition = flag_definition(metric="p95_latency_ms")
    decision = _decide_one(definition, _agg(-5.0, 5000), _agg(210.0, 5000))
    (e,) = decision.evaluations
    assert e.verdict is Verdict.SKIP_NO_DATA and "negative" in e.reason and not decision.halts


def test_huge_values_never_overflow_the_run() -> None:
    definition = flag_definition(metric="latency_ms", extra_metadata={"guardrail.latency_ms.kind": "mean"})
    decision = _decide_one(definition, _agg(1e-300, 5000), _agg(1e300, 5000))
    (e,) = decision.evaluations
    assert e.verdict in (Verdict.BREACH, Verdict.SKIP_NO_DATA)


def test_an_overflowing_flag_does_not_stop_a_harmful_one(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    api.set_flags(
        {
            **{k: api.flag(k) for k in (BAD,)},
            GOOD: flag_definition(
                metric="latency_ms",
                extra_metadata={"guardrail.latency_ms.method": "sequential", "guardrail.latency_ms.kind": "mean"},
            ),
        }
    )
    for variant, value in (("control", 100.0), ("treatment", 101.0)):
        api.set_metric(GOOD, variant, "latency_ms", value, 5000, stddev=1e200)
    result = runner.check(env=api_env(api), now="2026-11-25T12:00:00Z")
    assert result.returncode == 1, result.stderr
    assert api.flag(BAD)["state"] == "DISABLED"
    verdicts = {e["flag"]: e["verdict"] for e in doc(result)["evaluations"]}
    assert verdicts[GOOD] == "skip:no_data"
