"""Arbitrary flag files, metadata and metrics answers: a clear error naming the place, or that flag skipped;
never a halt on data that does not really breach, never a traceback."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail import engine, files
from guardrail.config import parse_flags
from guardrail.model import Aggregate, GuardrailError, State, Verdict
from guardrail.options import GUARDRAIL_OPTIONS
from guardrail.sources.http_api import parse_answer
from tests.conftest import NOW, flag_definition
from tests.reliability.conftest import Runner

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)
option_names = st.sampled_from([*GUARDRAIL_OPTIONS, "bogus"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=16), json_values, max_size=5))
def test_arbitrary_definitions_never_crash(definitions: dict[str, Any]) -> None:
    parsed = parse_flags(definitions, source="fuzz.yaml")
    for problem in parsed.problems:
        assert problem.source == "fuzz.yaml" and problem.message


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.sampled_from(["error_rate", "p95_latency_ms", "ünï.cödé", ""]), option_names).map(
            lambda t: f"guardrail.{t[0]}.{t[1]}"
        ),
        json_values,
        max_size=6,
    ),
    st.dictionaries(
        st.sampled_from(
            ["warmup_minutes", "started_at", "experiment_type", "control_variant", "guardrails", "treatment_variants"]
        ),
        json_values,
        max_size=3,
    ),
)
def test_arbitrary_metadata_is_a_named_problem_or_a_valid_flag(flat: dict[str, Any], other: dict[str, Any]) -> None:
    definition = flag_definition()
    definition["metadata"] = {**flat, **other}
    parsed = parse_flags({"f.k": definition}, source="fuzz.yaml")
    if parsed.flags:
        for g in parsed.flags[0].guardrails:
            assert g.threshold > 0 and math.isfinite(g.threshold) and g.min_count >= 1
    else:
        assert parsed.problems and all(p.flag == "f.k" for p in parsed.problems)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_is_parsed_or_refused_with_the_place(text: str) -> None:
    try:
        files.parse_text(text, source="flags.yaml")
    except GuardrailError as exc:
        assert "flags.yaml" in str(exc)


def test_alias_bomb_and_deep_nesting_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    for text, words in ((bomb, "aliases"), ("a: " + "[" * 5000 + "]" * 5000, "nesting")):
        try:
            files.parse_text(text, source="bomb.yaml")
        except GuardrailError as exc:
            assert words in str(exc) and "bomb.yaml" in str(exc)
        else:
            raise AssertionError("accepted")
    deep_json = '{"flags": ' + "[" * 5000 + "]" * 5000 + "}"
    try:
        files.parse_text(deep_json, source="deep.json")
    except GuardrailError as exc:
        assert "nesting" in str(exc)


def test_huge_and_hostile_files_through_the_installed_command(runner: Runner, tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w") as fh:  # 50 MB
        fh.write("flags:\n")
        line = "  # " + "x" * 1020 + "\n"
        for _ in range(50 * 1024):
            fh.write(line)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00flags")
    env = {"METRICS_API_URL": "http://127.0.0.1:9"}
    for path, words in ((big, "MB"), (bomb, "aliases"), (binary, "UTF-8")):
        result = runner("check", "--flags", str(path), "--state", str(tmp_path / "s.json"), env=env)
        assert result.returncode == 2, result.stderr
        assert str(path) in result.stderr and words in result.stderr
        result = runner("validate", str(path), env=env)
        assert result.returncode == 2 and "Traceback" not in result.stderr


numbers = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.integers(min_value=-10, max_value=10**9),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries({"value": numbers, "count": numbers}, optional={"stddev": numbers}),
    st.fixed_dictionaries({"value": numbers, "count": numbers}, optional={"stddev": numbers}),
)
def test_arbitrary_metrics_answers_halt_only_on_a_real_breach(
    control: dict[str, Any], treatment: dict[str, Any]
) -> None:
    flag = parse_flags({"f.k": flag_definition(extra_metadata={"guardrail.error_rate.confirmations": 1})}).flags[0]
    c, t = parse_answer(json.loads(json.dumps(control))), parse_answer(json.loads(json.dumps(treatment)))
    data = {("f.k", "control", "error_rate", "5m"): c, ("f.k", "treatment", "error_rate", "5m"): t}
    decision = engine.decide([flag], data, State(), NOW + timedelta(minutes=1))
    (e,) = decision.evaluations
    # The expected verdict, computed independently of the engine.
    usable = all(
        isinstance(a, Aggregate)
        and a.error is None
        and a.value is not None
        and a.count is not None
        and math.isfinite(a.value)
        and 0 <= a.value <= 1
        and a.count >= 0
        for a in (c, t)
    )
    if not usable:
        assert e.verdict is Verdict.SKIP_NO_DATA and not decision.halts
        return
    assert c.count is not None and t.count is not None and c.value is not None and t.value is not None
    if min(c.count, t.count) < 100:
        assert e.verdict is Verdict.SKIP_MIN_COUNT and not decision.halts
        return
    really = t.value > 0 if c.value == 0 else (t.value - c.value) / c.value > 0.10
    assert bool(decision.halts) == really
