"""`guardrail validate`: every finding kind, its place (file, flag, field, line), exit codes, output."""

from __future__ import annotations

import json
import textwrap
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from guardrail.model import Severity
from guardrail.validate import Finding, render_github, render_text, validate_paths

ROOT = Path(__file__).resolve().parent.parent
TODAY = date(2026, 11, 25)
KEY = "checkout.payments.express-pay"

GOOD = """\
flags:
  checkout.payments.express-pay:
    state: ENABLED
    variants: {treatment: true, control: false}
    defaultVariant: control
    targeting:
      fractional:
        - {var: targetingKey}
        - [treatment, 50]
        - [control, 50]
    metadata:
      owner: payments-team
      expiry: "2027-07-20"
      guardrail.error_rate.comparison: relative_increase
      guardrail.error_rate.threshold: 0.01
"""


def check(tmp_path: Path, text: str, name: str = "flags.yaml") -> tuple[list[Finding], int]:
    path = tmp_path / name
    path.write_text(text)
    return validate_paths([path], today=TODAY)


def with_metadata(*lines: str) -> str:
    return GOOD + "".join(f"      {line}\n" for line in lines)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def only(findings: list[Finding], severity: str = "error") -> Finding:
    matching = [f for f in findings if f.severity == severity]
    assert len(matching) == 1, findings
    return matching[0]


def test_clean_file_exit_0(tmp_path: Path) -> None:
    findings, code = check(tmp_path, GOOD)
    assert (findings, code) == ([], 0)
    assert render_text(findings) == "no problems found"
    assert render_github(findings) == ""


def test_examples_and_configs_are_clean() -> None:
    paths = sorted(
        p
        for d in ("examples", "configs")
        for pattern in ("**/*flags*.yaml", "**/*flags*.json")
        for p in (ROOT / d).glob(pattern)
    )
    assert {p.name for p in paths} >= {"flags.yaml", "flags.json", "abn-flags.yaml", "flags-rollout.yaml"}
    findings, code = validate_paths(paths, today=TODAY)
    # What is left to say about them is intended: quantiles (p95/p99) and the replay's threshold example keep
    # the threshold rule, with validate's warning, and flags with several guardrails split alpha (notes).
    rest = [f for f in findings if f.severity != "note" and not f.message.startswith("method threshold")]
    assert (rest, code) == ([], 0)


def test_nested_guardrails_list_is_an_error_with_the_flat_spelling(tmp_path: Path) -> None:
    text = with_metadata(
        "guardrails:",
        "  - {metric: p95_latency_ms, comparison: relative_increase, threshold: 0.10, min_count: 200}",
    )
    findings, code = check(tmp_path, text)
    finding = only(findings)
    assert code == 1
    assert (finding.flag, finding.field, finding.line) == (KEY, "metadata.guardrails", line_of(text, "guardrails:"))
    assert "flagd refuses non-scalar metadata" in finding.message
    for flat in (
        "guardrail.p95_latency_ms.comparison: relative_increase",
        "guardrail.p95_latency_ms.threshold: 0.1",
        "guardrail.p95_latency_ms.min_count: 200",
    ):
        assert flat in finding.message


@pytest.mark.parametrize(("value", "kind"), [("{team: a, lead: b}", "an object"), ("[a, b]", "a list")])
def test_object_or_list_in_metadata(tmp_path: Path, value: str, kind: str) -> None:
    text = with_metadata(f"owners: {value}")
    finding = only(check(tmp_path, text)[0])
    assert finding.field == "metadata.owners" and finding.line == line_of(text, "owners:")
    assert f"not {kind}" in finding.message


def test_top_level_metadata_must_be_scalar(tmp_path: Path) -> None:
    text = "metadata:\n  flagSetId: shop\n  tags: [a]\n" + GOOD
    finding = only(check(tmp_path, text)[0])
    assert (finding.flag, finding.field, finding.line) == (None, "metadata.tags", 3)


def test_unquoted_date_is_an_error(tmp_path: Path) -> None:
    text = GOOD.replace('expiry: "2027-07-20"', "expiry: 2027-07-20")
    finding = only(check(tmp_path, text)[0])
    assert finding.field == "metadata.expiry" and 'expiry: "2027-07-20"' in finding.message


@pytest.mark.parametrize(
    ("lines", "field", "needle", "message"),
    [
        (
            ["guardrail.cart.comparison: bigger", "guardrail.cart.threshold: 1"],
            "metadata.guardrail.cart.comparison",
            "cart.comparison",
            "'bigger' is not one of",
        ),
        (
            ["guardrail.cart.comparison: relative_increase", "guardrail.cart.threshold: 0"],
            "metadata.guardrail.cart.threshold",
            "cart.threshold",
            "less than or equal to the minimum of 0",
        ),
        (
            ["guardrail.cart.comparison: relative_increase", "guardrail.cart.threshold: -0.1"],
            "metadata.guardrail.cart.threshold",
            "cart.threshold",
            "less than or equal to the minimum of 0",
        ),
        (
            ["guardrail.cart.comparison: relative_increase"],
            "metadata.guardrail.cart",
            "cart.comparison",
            "'threshold' is a required property",
        ),
        (
            [
                "guardrail.cart.comparison: relative_increase",
                "guardrail.cart.threshold: 0.1",
                "guardrail.cart.colour: red",
            ],
            "metadata.guardrail.cart",
            "cart.comparison",
            "unknown option",
        ),
        (
            ["guardrail.cart.comparison: relative_increase", "guardrail.cart.threshold: high"],
            "metadata.guardrail.cart.threshold",
            "cart.threshold",
            "is not of type 'number'",
        ),
        (
            [
                "guardrail.cart.comparison: relative_increase",
                "guardrail.cart.threshold: 0.1",
                "guardrail.cart.min_count: 1.5",
            ],
            "metadata.guardrail.cart.min_count",
            "cart.min_count",
            "is not of type 'integer'",
        ),
        (["experiment_type: canary"], "metadata.experiment_type", "experiment_type", "is not one of"),
    ],
)
def test_guardrail_metadata_errors(tmp_path: Path, lines: list[str], field: str, needle: str, message: str) -> None:
    text = with_metadata(*lines)
    findings, code = check(tmp_path, text)
    errors = [f for f in findings if f.severity == "error"]
    assert code == 1
    assert any(f.field == field and message in f.message and f.line == line_of(text, needle) for f in errors), errors


def test_same_metric_in_both_spellings(tmp_path: Path) -> None:
    text = with_metadata("guardrails:", "  - {metric: error_rate, comparison: relative_increase, threshold: 0.1}")
    findings, code = check(tmp_path, text)
    assert code == 1
    twice = [f for f in findings if "listed twice" in f.message]
    assert [(f.field, f.line) for f in twice] == [("metadata.guardrails[0].metric", line_of(text, "- {metric"))]


def test_same_flat_key_twice(tmp_path: Path) -> None:
    text = with_metadata("guardrail.error_rate.threshold: 0.02")
    finding = only(check(tmp_path, text)[0])
    assert finding.field == "metadata.guardrail.error_rate.threshold"
    assert finding.line == len(text.splitlines()) and "written twice" in finding.message


def test_control_variant_that_does_not_exist(tmp_path: Path) -> None:
    text = with_metadata("control_variant: baseline")
    finding = only(check(tmp_path, text)[0])
    assert (finding.field, finding.line) == ("metadata.control_variant", line_of(text, "control_variant"))
    assert "'baseline'" in finding.message


def test_legacy_fractional_evaluation(tmp_path: Path) -> None:
    text = GOOD.replace("fractional:", "fractionalEvaluation:")
    findings, code = check(tmp_path, text)
    finding = only(findings)
    assert code == 1
    assert finding.field == "targeting.fractionalEvaluation"
    assert finding.line == line_of(text, "fractionalEvaluation")
    assert "rename it to `fractional`" in finding.message


def test_flagd_structure_errors(tmp_path: Path) -> None:
    text = (
        GOOD.replace("[treatment, 50]", "[treatment, 50.5]")
        .replace("variants: {treatment: true, control: false}", "variants: {treatment: true, control: 0}")
        .replace("    state: ENABLED\n", "    state: ENABLED\n    description: express pay\n")
    )
    findings, _ = check(tmp_path, text)
    by_field = {f.field: f for f in findings}
    assert "whole number" in by_field["targeting.fractional"].message
    assert "one type" in by_field["variants"].message
    assert by_field["description"].line == line_of(text, "description:")


def test_split_naming_an_unknown_variant(tmp_path: Path) -> None:
    text = GOOD.replace("[control, 50]", "[control, 40]\n        - [ghost, 10]")
    finding = only(check(tmp_path, text)[0])
    assert finding.field == "targeting" and "ghost" in finding.message


@pytest.mark.parametrize(
    ("expiry", "expected"),
    [
        ('"2026-07-20"', "expired on 2026-07-20"),
        ('"2026-11-24T23:00:00Z"', "expired on 2026-11-24"),
        ('"2026-11-25"', None),
        ('"someday"', "not a date"),
    ],
)
def test_expiry(tmp_path: Path, expiry: str, expected: str | None) -> None:
    text = GOOD.replace('"2027-07-20"', expiry)
    findings, code = check(tmp_path, text)
    assert code == 0  # warnings alone pass CI
    if expected is None:
        assert findings == []
    else:
        finding = only(findings, "warning")
        assert finding.field == "metadata.expiry" and expected in finding.message
        assert finding.line == line_of(text, "expiry")


def test_tight_relative_threshold_warns_unless_sequential(tmp_path: Path) -> None:
    text = GOOD.replace("threshold: 0.01", "threshold: 0.002")
    assert check(tmp_path, text)[0] == []  # sequential by default: a tight threshold is fine
    findings, code = check(tmp_path, text + "      guardrail.error_rate.method: threshold\n")
    assert code == 0
    (noise,) = [f for f in findings if f.field == "metadata.guardrail.error_rate.threshold"]
    assert "below typical day-to-day noise" in noise.message and "sequential" in noise.message
    absolute = text.replace("relative_increase", "absolute_increase")
    assert check(tmp_path, absolute)[0] == []


def test_threshold_method_warns_with_the_simulated_a_a_rate(tmp_path: Path) -> None:
    text = GOOD + "      guardrail.error_rate.method: threshold\n"
    finding = only(check(tmp_path, text)[0], "warning")
    assert finding.field == "metadata.guardrail.error_rate.method"
    assert "100 % of healthy A/A experiments" in finding.message and "guardrail simulate" in finding.message


def test_split_alpha_is_shown_per_comparison(tmp_path: Path) -> None:
    text = with_metadata(
        "guardrail.p95_latency_ms.comparison: relative_increase",
        "guardrail.p95_latency_ms.threshold: 0.1",
        "guardrail.conversion_rate.comparison: relative_decrease",
        "guardrail.conversion_rate.threshold: 0.05",
    )
    notes = [f for f in check(tmp_path, text)[0] if f.severity == "note"]
    assert notes and all("alpha 0.025 per comparison" in f.message for f in notes)


def test_tight_threshold_in_nested_spelling_names_the_nested_field(tmp_path: Path) -> None:
    text = GOOD.replace("      guardrail.error_rate.comparison: relative_increase\n", "").replace(
        "      guardrail.error_rate.threshold: 0.01\n",
        "      guardrails:\n        - {metric: error_rate, comparison: relative_increase, threshold: 0.001}\n",
    )
    text = text.replace("threshold: 0.001}", "threshold: 0.001, method: threshold}")
    (warning,) = [f for f in check(tmp_path, text)[0] if f.field and f.field.endswith("threshold")]
    assert warning.field == "metadata.guardrails[0].threshold"
    assert warning.line == line_of(text, "- {metric")


def test_quantile_with_sequential_method_is_an_error(tmp_path: Path) -> None:
    text = with_metadata(
        "guardrail.p95_latency_ms.comparison: relative_increase",
        "guardrail.p95_latency_ms.threshold: 0.1",
        "guardrail.p95_latency_ms.method: sequential",
    )
    finding = only(check(tmp_path, text)[0], "error")
    assert finding.field == "metadata.guardrail.p95_latency_ms.method"
    assert finding.line == line_of(text, "p95_latency_ms.method") and "bucket boundary" in finding.message


def test_json_files_get_findings_with_lines(tmp_path: Path) -> None:
    doc: dict[str, Any] = json.loads((ROOT / "examples" / "flags.json").read_text())
    doc["flags"][KEY]["metadata"]["guardrail.error_rate.comparison"] = "bigger"
    text = json.dumps(doc, indent=2)
    finding = only(check(tmp_path, text, "flags.json")[0])
    assert finding.field == "metadata.guardrail.error_rate.comparison"
    assert finding.line == line_of(text, '"guardrail.error_rate.comparison"')


# ---- exit codes ---------------------------------------------------------------------------------------


def test_not_a_flag_file_is_a_finding(tmp_path: Path) -> None:
    findings, code = check(tmp_path, "other: 1\n")
    assert code == 1 and only(findings).field == "flags"


@pytest.mark.parametrize(
    ("text", "name", "message", "line"),
    [("flags:\n  a: [\n", "flags.yaml", "not valid YAML", 3), ('{"flags": }', "flags.json", "not valid JSON", 1)],
)
def test_unparseable_is_exit_2(tmp_path: Path, text: str, name: str, message: str, line: int) -> None:
    findings, code = check(tmp_path, text, name)
    finding = only(findings)
    assert code == 2 and message in finding.message and finding.line == line


def test_unreadable_wins_over_findings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(with_metadata("control_variant: nope"))
    findings, code = validate_paths([bad, tmp_path / "missing.yaml"], today=TODAY)
    assert code == 2
    assert [(Path(f.path).name, f.message) for f in findings][-1] == ("missing.yaml", "file not found")


# ---- output -------------------------------------------------------------------------------------------


def test_render_text() -> None:
    findings = [
        Finding("b.yaml", None, None, None, Severity.ERROR, "file not found"),
        Finding("a.yaml", KEY, "metadata.expiry", 7, Severity.WARNING, "expired"),
    ]
    assert render_text(findings).splitlines() == [
        f"a.yaml:7: warning: flag {KEY} field metadata.expiry: expired",
        "b.yaml: error: file not found",
        "1 error(s), 1 warning(s)",
    ]


def test_render_github_escapes() -> None:
    findings = [
        Finding("dir,x/a:b.yaml", KEY, "metadata.x", 12, Severity.ERROR, "100% bad\r\nsecond line"),
        Finding("c.yaml", None, None, None, Severity.WARNING, "no line: here, ok"),
    ]
    assert render_github(findings).splitlines() == [
        "::warning file=c.yaml,title=guardrail::no line: here, ok",
        "::error file=dir%2Cx/a%3Ab.yaml,line=12,title=guardrail::"
        f"flag {KEY} field metadata.x: 100%25 bad%0D%0Asecond line",
    ]


def test_cli_validate_github_format(tmp_path: Path, run_cli: Any) -> None:
    bad = tmp_path / "flags.yaml"
    bad.write_text(textwrap.dedent(GOOD).replace("fractional:", "fractionalEvaluation:"))
    result = run_cli("validate", "--format", "github", str(bad))
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith(f"::error file={bad},line=7,title=guardrail::flag {KEY} field targeting")
    clean = run_cli("validate", str(ROOT / "examples" / "flags.yaml"), str(ROOT / "examples" / "flags.json"))
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_plain_feature_flag_without_guardrails_is_fine(tmp_path: Path) -> None:
    text = GOOD + (
        "  ui.theme.dark-mode:\n    state: ENABLED\n"
        "    variants: {dark: true, light: false}\n    defaultVariant: light\n"
    )
    assert check(tmp_path, text) == ([], 0)
