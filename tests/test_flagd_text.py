"""The text edit of a halt or hold (guardrail/flags/flagd_text.py): the new text of a flag file, with
every other byte the author wrote kept. Writing it to the file is tests/test_flagd_file.py's."""

from __future__ import annotations

import json

import pytest
import yaml

from guardrail.flags import flagd_text
from guardrail.flags.flagd_text import apply_halt_to_text
from guardrail.model import GuardrailError
from tests.test_flagd_file import THREE, block

# ---- YAML ----------------------------------------------------------------------------------------------


def test_yaml_quoting_kept_and_yaml11_booleans_quoted() -> None:
    new = apply_halt_to_text(
        THREE, "search.ranking.new-model", action="revert", control_variant="old", reason="r", json_format=False
    )
    assert '    state: "DISABLED"' in new.splitlines()  # the author's double quotes
    # `off` written plain would read back as the boolean false in YAML 1.1 (PyYAML, the Python provider).
    text = THREE.replace("{dark: true, light: false}", '{"off": false, light: true}')
    new = apply_halt_to_text(
        text, "ui.theme.dark-mode", action="revert", control_variant="off", reason="no", json_format=False
    )
    assert yaml.safe_load(new)["flags"]["ui.theme.dark-mode"]["defaultVariant"] == "off"
    assert yaml.safe_load(new)["flags"]["ui.theme.dark-mode"]["metadata"]["guardrail_reason"] == "no"
    assert '    defaultVariant: "off"          # keep it light by default' in new.splitlines()


# ---- apply_halt_to_text --------------------------------------------------------------------------------


def test_apply_raises_key_error_for_a_missing_flag() -> None:
    with pytest.raises(KeyError):
        apply_halt_to_text(
            THREE, "no.such.flag", action="revert", control_variant="control", reason="r", json_format=False
        )


def test_apply_rejects_a_file_without_flags() -> None:
    with pytest.raises(GuardrailError, match="`flags`"):
        apply_halt_to_text("other: 1\n", "x", action="revert", control_variant="c", reason="r", json_format=False)


def test_apply_flow_style_flag_and_missing_metadata() -> None:
    text = (
        "flags:\n  a: {state: ENABLED, variants: {x: 1, y: 2}, defaultVariant: x}\n"
        "  b: {state: ENABLED, variants: {x: 1}, defaultVariant: x}\n"
    )
    new = apply_halt_to_text(text, "a", action="revert", control_variant="y", reason="why", json_format=False)
    assert new.splitlines()[2] == text.splitlines()[2]
    assert yaml.safe_load(new)["flags"]["a"] == {
        "state": "DISABLED",
        "variants": {"x": 1, "y": 2},
        "defaultVariant": "y",
        "metadata": {"guardrail_reason": "why"},
    }


def test_apply_null_metadata_and_reason_sanitised() -> None:
    text = "flags:\n  a:\n    state: ENABLED\n    variants: {x: 1, y: 2}\n    defaultVariant: x\n    metadata:\n"
    reason = "line one\nline two: # not a comment\r\n" + "x" * 1000
    new = apply_halt_to_text(text, "a", action="hold", control_variant="x", reason=reason, json_format=False)
    metadata = yaml.safe_load(new)["flags"]["a"]["metadata"]
    assert metadata["guardrail_hold"] is True
    assert metadata["guardrail_reason"].startswith("line one line two: # not a comment x")
    assert len(metadata["guardrail_reason"]) == flagd_text.MAX_REASON


def test_apply_keeps_crlf_line_endings() -> None:
    text = THREE.replace("\n", "\r\n")
    new = apply_halt_to_text(
        text, "search.ranking.new-model", action="hold", control_variant="old", reason="r", json_format=False
    )
    assert "\n" not in new.replace("\r\n", "")
    assert block(new, "ui.theme.dark-mode", None) == block(text, "ui.theme.dark-mode", None)


def test_apply_existing_reason_replaced_in_place() -> None:
    text = THREE.replace(
        "      experiment_type: rollout\n", "      experiment_type: rollout\n      guardrail_reason: 'old'\n"
    )
    new = apply_halt_to_text(
        text, "search.ranking.new-model", action="hold", control_variant="old", reason="new", json_format=False
    )
    assert "      guardrail_reason: 'new'" in new.splitlines()
    assert new.count("guardrail_reason") == 1


def test_apply_legacy_operator_and_nested_guardrails_untouched() -> None:
    text = (
        "flags:\n  a:\n    state: ENABLED\n    variants: {treatment: true, control: false}\n"
        "    defaultVariant: control\n    targeting:\n      fractionalEvaluation:\n"
        "      - {var: targetingKey}\n      - [treatment, 50]\n      - [control, 50]\n"
        "    metadata:\n      guardrails:\n"
        "      - {metric: error_rate, comparison: relative_increase, threshold: 0.1}\n"
    )
    new = apply_halt_to_text(text, "a", action="revert", control_variant="control", reason="r", json_format=False)
    assert "      - [treatment, 50]" in new.splitlines()  # the file's zero-offset sequence style is kept
    assert yaml.safe_load(new)["flags"]["a"]["metadata"]["guardrails"][0]["metric"] == "error_rate"


# ---- JSON ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("indent", ["\t", "    ", None])
def test_json_indent_detected(indent: str | None) -> None:
    doc = {
        "flags": {
            "a": {"state": "ENABLED", "variants": {"x": 1, "y": 2}, "defaultVariant": "x"},
            "b": {"state": "ENABLED", "variants": {"x": 1}, "defaultVariant": "x"},
        }
    }
    text = json.dumps(doc, indent=indent)
    new = apply_halt_to_text(text, "a", action="revert", control_variant="y", reason="r", json_format=True)
    doc["flags"]["a"].update(state="DISABLED", defaultVariant="y", metadata={"guardrail_reason": "r"})
    assert new == json.dumps(doc, indent=indent)  # no trailing newline before, none after
