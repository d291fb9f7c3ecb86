"""The file backend: halting a flag by rewriting the flagd flag file in place, and nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail import config
from guardrail.flags import flagd_file
from guardrail.flags.flagd_file import FlagdFileBackend
from guardrail.flags.flagd_text import apply_halt_to_text
from guardrail.model import ExperimentType, Flag, GuardrailError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REASON = "error_rate: treatment 3.40% vs control 1.00% (+240%), threshold 10%"

# Three flags, comments everywhere, mixed flow/block style and quoting: what people really write.
THREE = """\
# Checkout flags, watched by flagd.
flags:
  # Express pay: 50/50 experiment.
  checkout.payments.express-pay:
    state: ENABLED                 # ENABLED | DISABLED
    variants: {treatment: true, control: false}
    defaultVariant: control
    targeting:
      fractional:                  # today's flagd name
        - {var: targetingKey}
        - [treatment, 50]
        - [control, 50]
    metadata:
      owner: 'payments-team'
      expiry: "2027-07-20"
      started_at: "2026-11-20T09:00:00Z"
      guardrail.error_rate.comparison: relative_increase
      guardrail.error_rate.threshold: 0.10   # ten percent

  # Search rollout, held (not reverted) on harm.
  search.ranking.new-model:
    state: "ENABLED"
    variants:
      new: "v2"
      old: "v1"
    defaultVariant: "old"
    targeting:
      fractional:
        - {var: targetingKey}
        - [new, 20]
        - [old, 80]
    metadata:
      experiment_type: rollout
      control_variant: old
      guardrail.error_rate.comparison: relative_increase
      guardrail.error_rate.threshold: 0.10

  # A flag with no guardrails at all; its last line has a comment.
  ui.theme.dark-mode:
    state: ENABLED
    variants: {dark: true, light: false}
    defaultVariant: light          # keep it light by default
# end of file
"""


def flags_of(path: Path) -> dict[str, Flag]:
    loaded = asyncio.run(FlagdFileBackend(path).load())
    parsed = config.parse_flags(loaded.definitions, source=loaded.source, lines=loaded.lines)
    return {f.key: f for f in parsed.flags}


def write(tmp_path: Path, text: str, name: str = "flags.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def block(text: str, start_key: str, end_key: str | None) -> str:
    """The lines of `text` from the line of `start_key:` up to (not including) the line of `end_key:`."""
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{start_key}:"))
    last = (
        len(lines)
        if end_key is None
        else next(i for i, line in enumerate(lines) if line.strip().startswith(f"{end_key}:"))
    )
    return "".join(lines[first:last])


def comments(text: str) -> list[str]:
    return [line[line.index("#") :] for line in text.splitlines() if "#" in line]


# ---- YAML round trip -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "others"),
    [
        ("checkout.payments.express-pay", [("search.ranking.new-model", "ui.theme.dark-mode")]),
        ("search.ranking.new-model", [("flags", "search.ranking.new-model"), ("ui.theme.dark-mode", None)]),
        ("ui.theme.dark-mode", [("flags", "ui.theme.dark-mode")]),
    ],
)
def test_halt_yaml_changes_one_flag_and_keeps_the_rest_byte_for_byte(
    tmp_path: Path, key: str, others: list[tuple[str, str | None]]
) -> None:
    path = write(tmp_path, THREE)
    flag = flags_of(path).get(key) or _plain_flag(key, control="light")
    outcome = asyncio.run(FlagdFileBackend(path).halt(flag, REASON))
    assert outcome.ok and not outcome.already, outcome.detail

    new = path.read_text(encoding="utf-8")
    for start, end in others:  # the untouched flags (and the file's head) are byte-for-byte the same
        assert block(new, start, end) == block(THREE, start, end)
    assert comments(new) == comments(THREE)  # every comment survives, in order
    before, after = yaml.safe_load(THREE)["flags"], yaml.safe_load(new)["flags"]
    assert list(after) == list(before)
    halted = after.pop(key)
    expected = before.pop(key)
    assert after == before
    assert halted["state"] == "DISABLED"
    assert halted["defaultVariant"] == flag.control_variant
    assert halted["metadata"]["guardrail_reason"] == REASON
    for field in ("variants", "targeting"):
        assert halted.get(field) == expected.get(field)
    assert {k: v for k, v in halted["metadata"].items() if k != "guardrail_reason"} == (expected.get("metadata") or {})


def _plain_flag(key: str, *, control: str) -> Flag:
    """A Flag for a definition without guardrails (parse_flag needs none to halt it)."""
    return Flag(
        key=key,
        enabled=True,
        default_variant=control,
        variants=(),
        control_variant=control,
        treatment_variants=(),
        experiment_type=ExperimentType.AB,
        guardrails=(),
    )


def test_halt_yaml_diff_is_only_the_halt(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    flag = flags_of(path)["checkout.payments.express-pay"]
    asyncio.run(FlagdFileBackend(path).halt(flag, REASON))
    old, new = THREE.splitlines(), path.read_text().splitlines()
    assert len(new) == len(old) + 1
    assert new[4] == "    state: DISABLED                # ENABLED | DISABLED"  # comment column kept
    assert [line for line in new if line not in old] == [new[4], f"      guardrail_reason: '{REASON}'"]
    # The new key goes at the end of the flag's metadata, before the blank line and the next comment.
    assert (
        new.index(f"      guardrail_reason: '{REASON}'")
        == old.index("  # Search rollout, held (not reverted) on harm.") - 1
    )


def test_hold_adds_two_metadata_keys_and_changes_nothing_else(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    flag = flags_of(path)["search.ranking.new-model"]
    outcome = asyncio.run(FlagdFileBackend(path).hold(flag, REASON))
    assert outcome.ok and "guardrail_hold" in outcome.detail
    old, new = THREE.splitlines(), path.read_text().splitlines()
    added = [line for line in new if line not in old]
    assert added == ["      guardrail_hold: true", f"      guardrail_reason: '{REASON}'"]
    assert [line for line in new if line not in added] == old
    held = yaml.safe_load(path.read_text())["flags"]["search.ranking.new-model"]
    assert held["state"] == "ENABLED" and held["defaultVariant"] == "old"
    assert flags_of(path)["search.ranking.new-model"].held


# ---- JSON ----------------------------------------------------------------------------------------------


def test_halt_json_stays_json_with_same_indent_and_other_flags_untouched(tmp_path: Path) -> None:
    original = (EXAMPLES / "flags.json").read_text()
    path = write(tmp_path, original, "flags.json")
    flag = flags_of(path)["checkout.payments.express-pay"]
    outcome = asyncio.run(FlagdFileBackend(path).halt(flag, REASON))
    assert outcome.ok, outcome.detail
    new = path.read_text()
    doc, before = json.loads(new), json.loads(original)
    assert list(doc) == list(before) and list(doc["flags"]) == list(before["flags"])
    halted = doc["flags"]["checkout.payments.express-pay"]
    assert (halted["state"], halted["defaultVariant"]) == ("DISABLED", "control")
    assert halted["metadata"]["guardrail_reason"] == REASON
    assert list(halted["metadata"])[:-1] == list(before["flags"]["checkout.payments.express-pay"]["metadata"])
    # The other flags' text is unchanged (the rest of the file after the halted flag).
    tail = original[original.index('    "search.results.semantic-ranking"') :]
    assert new.endswith(tail) and new.endswith("}\n")
    assert f'        "guardrail_reason": {json.dumps(REASON)}\n' in new  # the file's 2-space indent


# ---- the backend: atomic replace, mode, concurrent edits, failures -------------------------------------


def test_mode_is_kept_and_no_temp_file_left(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    os.chmod(path, 0o640)
    flag = flags_of(path)["checkout.payments.express-pay"]
    assert asyncio.run(FlagdFileBackend(path).halt(flag, REASON)).ok
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags.yaml"]


def test_halt_through_a_symlink_rewrites_the_target(tmp_path: Path) -> None:
    target = write(tmp_path, THREE, "real.yaml")
    link = tmp_path / "flags.yaml"
    link.symlink_to(target)
    flag = flags_of(link)["checkout.payments.express-pay"]
    assert asyncio.run(FlagdFileBackend(link).halt(flag, REASON)).ok
    assert link.is_symlink()
    assert yaml.safe_load(target.read_text())["flags"]["checkout.payments.express-pay"]["state"] == "DISABLED"


def test_edit_after_load_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    backend = FlagdFileBackend(path)
    loaded = asyncio.run(backend.load())
    flag = config.parse_flags(loaded.definitions, source=loaded.source).flags[0]
    # Someone edits the file (another flag, and a comment) after guardrail read it.
    edited = THREE.replace("defaultVariant: light", "defaultVariant: dark ").replace("# end of file", "# edited")
    path.write_text(edited)
    outcome = asyncio.run(backend.halt(flag, REASON))
    assert outcome.ok and "edited since it was read" in outcome.detail
    new = path.read_text()
    assert "# edited" in new and yaml.safe_load(new)["flags"]["ui.theme.dark-mode"]["defaultVariant"] == "dark"
    assert yaml.safe_load(new)["flags"][flag.key]["state"] == "DISABLED"


def test_edit_between_read_and_write_is_reapplied_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, THREE)
    flag = flags_of(path)["checkout.payments.express-pay"]
    real = apply_halt_to_text
    calls: list[str] = []

    def racing(text: str, key: str, **kwargs: Any) -> str:
        result = real(text, key, **kwargs)
        if not calls:  # the first time: someone saves the file while we are preparing ours
            path.write_text(text.replace("# end of file", "# their edit"))
        calls.append(text)
        return result

    monkeypatch.setattr(flagd_file, "apply_halt_to_text", racing)
    outcome = asyncio.run(FlagdFileBackend(path).halt(flag, REASON))
    assert outcome.ok, outcome.detail
    assert len(calls) == 2 and "# their edit" in calls[1]
    new = path.read_text()
    assert "# their edit" in new
    assert yaml.safe_load(new)["flags"][flag.key]["state"] == "DISABLED"


def test_file_that_keeps_changing_is_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, THREE)
    flag = flags_of(path)["checkout.payments.express-pay"]
    real = apply_halt_to_text
    edits = iter(range(100))

    def racing(text: str, key: str, **kwargs: Any) -> str:
        result = real(text, key, **kwargs)
        path.write_text(THREE + f"# edit {next(edits)}\n")
        return result

    monkeypatch.setattr(flagd_file, "apply_halt_to_text", racing)
    outcome = asyncio.run(FlagdFileBackend(path).halt(flag, REASON))
    assert not outcome.ok and not outcome.permanent and "kept changing" in outcome.detail
    assert path.read_text() == THREE + f"# edit {flagd_file.MAX_ATTEMPTS - 1}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags.yaml"]


def test_already_halted_or_held_is_not_rewritten(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    flags = flags_of(path)
    backend = FlagdFileBackend(path)
    assert asyncio.run(backend.halt(flags["checkout.payments.express-pay"], REASON)).ok
    assert asyncio.run(backend.hold(flags["search.ranking.new-model"], REASON)).ok
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    again = asyncio.run(backend.halt(flags["checkout.payments.express-pay"], "another reason"))
    held = asyncio.run(backend.hold(flags["search.ranking.new-model"], "another reason"))
    assert again.ok and again.already and held.ok and held.already
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_missing_flag_is_a_permanent_failure(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    outcome = asyncio.run(FlagdFileBackend(path).halt(_plain_flag("gone.flag", control="control"), REASON))
    assert not outcome.ok and outcome.permanent and "gone.flag" in outcome.detail
    assert path.read_text() == THREE


def test_missing_control_variant_is_a_permanent_failure(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    outcome = asyncio.run(FlagdFileBackend(path).halt(_plain_flag("ui.theme.dark-mode", control="nope"), REASON))
    assert not outcome.ok and outcome.permanent and "nope" in outcome.detail


def test_os_errors_become_failed_outcomes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, THREE)
    flag = flags_of(path)["checkout.payments.express-pay"]

    def refuse(*_args: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)  # what files.atomic_write renames with
    outcome = asyncio.run(FlagdFileBackend(path).halt(flag, REASON))
    assert not outcome.ok and not outcome.permanent and "Permission denied" in outcome.detail
    assert path.read_text() == THREE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags.yaml"]  # the temp file is cleaned up
    monkeypatch.undo()
    path.unlink()
    gone = asyncio.run(FlagdFileBackend(path).halt(flag, REASON))
    assert not gone.ok and "not found" in gone.detail


def test_two_halts_at_once_both_land(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    flags = flags_of(path)
    backend = FlagdFileBackend(path)

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(
                backend.halt(flags["checkout.payments.express-pay"], REASON),
                backend.hold(flags["search.ranking.new-model"], REASON),
            )
        )

    assert all(o.ok for o in asyncio.run(both()))
    doc = yaml.safe_load(path.read_text())["flags"]
    assert doc["checkout.payments.express-pay"]["state"] == "DISABLED"
    assert doc["search.ranking.new-model"]["metadata"]["guardrail_hold"] is True


# ---- load / get ----------------------------------------------------------------------------------------


def test_load_gives_definitions_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    backend = FlagdFileBackend(path)
    assert backend.name == "file"
    loaded = asyncio.run(backend.load())
    assert loaded.source == str(path)
    assert list(loaded.definitions) == [
        "checkout.payments.express-pay",
        "search.ranking.new-model",
        "ui.theme.dark-mode",
    ]
    assert loaded.lines == {
        "checkout.payments.express-pay": 4,
        "search.ranking.new-model": 21,
        "ui.theme.dark-mode": 39,
    }
    assert asyncio.run(backend.get("search.ranking.new-model"))["defaultVariant"] == "old"  # type: ignore[index]
    assert asyncio.run(backend.get("nope")) is None
    asyncio.run(backend.aclose())


@pytest.mark.parametrize(
    ("text", "name", "match"),
    [
        ("other: 1\n", "flags.yaml", "`flags`"),
        ("flags: [a, b]\n", "flags.yaml", "`flags`"),
        ("flags:\n  a: [\n", "flags.yaml", "not valid YAML"),
        ('{"flags": ', "flags.json", "not valid JSON"),
    ],
)
def test_load_errors_name_the_file(tmp_path: Path, text: str, name: str, match: str) -> None:
    path = write(tmp_path, text, name)
    with pytest.raises(GuardrailError, match=match) as err:
        asyncio.run(FlagdFileBackend(path).load())
    assert str(path) in str(err.value)


def test_load_size_limit(tmp_path: Path) -> None:
    path = write(tmp_path, THREE)
    with pytest.raises(GuardrailError, match="limit"):
        asyncio.run(FlagdFileBackend(path, max_bytes=100).load())


# ---- variants: control, treatments, A/B/n, legacy operator --------------------------------------------


def test_abn_example_has_two_treatments() -> None:
    flags = flags_of(EXAMPLES / "abn-flags.yaml")
    (flag,) = flags.values()
    assert flag.control_variant == "control"
    assert flag.treatment_variants == ("treatment-a", "treatment-b")


def test_custom_control_and_legacy_operator_read_the_same() -> None:
    definition = yaml.safe_load(THREE)["flags"]["search.ranking.new-model"]
    flag, problems = config.parse_flag("k", definition)
    assert not problems and flag is not None
    assert (flag.control_variant, flag.treatment_variants) == ("old", ("new",))
    legacy = {**definition, "targeting": {"fractionalEvaluation": definition["targeting"]["fractional"]}}
    old_flag, _ = config.parse_flag("k", legacy)
    assert old_flag is not None and old_flag.treatment_variants == ("new",)


def test_default_control_variant_is_control() -> None:
    flag = flags_of(EXAMPLES / "flags.yaml")["checkout.cart.one-click-buy"]
    assert (flag.control_variant, flag.treatment_variants) == ("control", ("treatment",))


def test_a_bug_in_the_rewrite_is_a_failed_outcome_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, THREE)
    flag = flags_of(path)["checkout.payments.express-pay"]

    def broken(*_args: Any, **_kwargs: Any) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(flagd_file, "apply_halt_to_text", broken)
    outcome = asyncio.run(FlagdFileBackend(path).halt(flag, REASON))
    assert not outcome.ok and "RuntimeError: boom" in outcome.detail
    assert path.read_text() == THREE
