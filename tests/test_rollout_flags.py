"""Ramp steps written to real flag stores: the flagd file (checked with the real flagd evaluator) and the API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail import config
from guardrail.flags.flagd_file import FlagdFileBackend
from guardrail.flags.flagd_split import apply_split_to_text
from guardrail.flags.http_api import HttpFlagBackend
from guardrail.http import make_client
from tests.fakeserver_faults import FaultyAPI

KEY = "checkout.payments.new-flow"
YAML_FILE = f"""\
# release train, do not reorder
flags:
  other.flag:   # untouched
    state: ENABLED
    variants: {{on: true, off: false}}
    defaultVariant: off
  {KEY}:
    state: ENABLED
    variants: {{treatment: true, control: false}}
    defaultVariant: control
    targeting:
      fractional:
        - {{var: targetingKey}}
        - [treatment, 0]   # set by guardrail
        - [control, 100]
    metadata:
      experiment_type: rollout
      guardrail.error_rate.comparison: relative_increase
      guardrail.error_rate.threshold: 0.1
      guardrail.ramp.steps: "1,5,25,50,100"
"""
STEPS = (1, 5, 25, 50, 100)


def shares(step: int) -> dict[str, int]:
    return {"treatment": step, "control": 100 - step}


def the_flag(path: Path) -> Any:
    loaded = asyncio.run(FlagdFileBackend(path).load())
    parsed = config.parse_flags(loaded.definitions, source=loaded.source)
    return next(f for f in parsed.flags if f.key == KEY)


def test_yaml_rewrite_changes_only_the_weights() -> None:
    new = apply_split_to_text(YAML_FILE, KEY, shares(5), json_format=False)
    old_lines, new_lines = YAML_FILE.splitlines(), new.splitlines()
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert changed == [
        ("        - [treatment, 0]   # set by guardrail", "        - [treatment, 5]   # set by guardrail"),
        ("        - [control, 100]", "        - [control, 95]"),
    ]


def test_json_rewrite_replaces_only_the_number_tokens_and_old_spelling() -> None:
    doc = {
        "flags": {
            KEY: {
                "state": "ENABLED",
                "variants": {"treatment": True, "control": False},
                "defaultVariant": "control",
                "targeting": {
                    "if": [
                        {"==": [{"var": "tier"}, "beta"]},
                        "treatment",
                        {"fractionalEvaluation": ["email", ["treatment", 0], ["control", 100]]},
                    ]
                },
                "metadata": {"experiment_type": "rollout"},
            }
        }
    }
    text = json.dumps(doc, indent=3)
    new = apply_split_to_text(text, KEY, shares(25), json_format=True)
    changed = [(a.strip(), b.strip()) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
    assert changed == [("0", "25"), ("100", "75")]  # only the two number tokens; every other byte stays
    assert json.loads(new)["flags"][KEY]["targeting"]["if"][2]["fractionalEvaluation"][1:] == [
        ["treatment", 25],
        ["control", 75],
    ]


def test_a_split_without_the_variant_is_refused_and_the_file_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(YAML_FILE)
    backend = FlagdFileBackend(path)
    outcome = asyncio.run(backend.set_split(the_flag(path), {"blue": 5, "control": 95}, "step"))
    assert not outcome.ok and "blue" in outcome.detail
    assert path.read_text() == YAML_FILE


def test_real_flagd_evaluator_after_each_step_share_and_stickiness(tmp_path: Path) -> None:
    """20,000 targeting keys through the real flagd evaluator after every step: the treatment's share is
    the step's ± 1.5 points, and every key in the treatment at one step is still in it at the next (flagd's
    fractional bucketing hashes flag key + targeting key into [0, 100) and walks the buckets in order, so a
    growing first bucket keeps its units; checked here, not assumed)."""
    pytest.importorskip("openfeature")
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType
    from openfeature.evaluation_context import EvaluationContext

    path = tmp_path / "flags.yaml"
    path.write_text(YAML_FILE)
    backend = FlagdFileBackend(path)
    keys = [f"unit-{i}" for i in range(20_000)]
    previous: set[str] = set()
    try:
        for step in STEPS:
            outcome = asyncio.run(backend.set_split(the_flag(path), shares(step), f"step {step}"))
            assert outcome.ok, outcome.detail
            assert yaml.safe_load(path.read_text())["flags"][KEY]["targeting"]["fractional"][1] == ["treatment", step]
            api.shutdown()
            api.set_provider_and_wait(
                FlagdProvider(resolver_type=ResolverType.IN_PROCESS, offline_flag_source_path=str(path))
            )
            client = api.get_client()
            treated = set()
            for k in keys:
                details = client.get_boolean_details(KEY, False, EvaluationContext(targeting_key=k))
                assert details.error_code is None, details.error_message
                if details.value:
                    treated.add(k)
            share = 100 * len(treated) / len(keys)
            assert abs(share - step) <= 1.5, (step, share)
            assert previous <= treated, f"{len(previous - treated)} units left the treatment at step {step}"
            previous = treated
    finally:
        api.shutdown()
    assert len(previous) == len(keys)


def test_api_backend_patches_targeting_and_rereads(tmp_path: Path) -> None:
    definition = yaml.safe_load(YAML_FILE)["flags"][KEY]
    with FaultyAPI(flags={KEY: definition}, token="t0k") as fake:

        async def go() -> Any:
            async with make_client(timeout=5, concurrency=2) as client:
                backend = HttpFlagBackend(fake.url, client, token="t0k")
                flag = config.parse_flags({KEY: definition}).flags[0]
                first = await backend.set_split(flag, shares(5), "step 2")
                again = await backend.set_split(flag, shares(5), "step 2")
                return first, again

        first, again = asyncio.run(go())
        assert first.ok and not first.already and again.already
        assert fake.flag(KEY)["targeting"]["fractional"][1:] == [["treatment", 5], ["control", 95]]
        (patch,) = [r for r in fake.requests if r["method"] == "PATCH"]
        assert set(patch["body"]) == {"targeting"}


def test_an_edit_made_during_the_step_is_kept_and_the_step_reapplied(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(YAML_FILE)
    backend = FlagdFileBackend(path)
    flag = the_flag(path)
    real_read = backend._read
    calls = {"n": 0}

    def read_then_someone_edits() -> Any:
        found = real_read()
        calls["n"] += 1
        if calls["n"] == 1:  # after guardrail read the file, a person commits another change to it
            path.write_text(path.read_text().replace("defaultVariant: off", "defaultVariant: on"))
        return found

    monkeypatch.setattr(backend, "_read", read_then_someone_edits)
    outcome = asyncio.run(backend.set_split(flag, shares(5), "step 2"))
    assert outcome.ok and "edited since it was read" in outcome.detail
    doc = yaml.safe_load(path.read_text())["flags"]
    assert doc["other.flag"]["defaultVariant"] is True  # the person's edit survived (`on` is YAML 1.1 true)
    assert doc[KEY]["targeting"]["fractional"][1:] == [["treatment", 5], ["control", 95]]


def _api_step(fake: FaultyAPI, definition: dict[str, Any], step: int, **policy: Any) -> Any:
    from guardrail.http import RetryPolicy

    async def go() -> Any:
        async with make_client(timeout=2, concurrency=2) as client:
            backend = HttpFlagBackend(fake.url, client, token="t0k", policy=RetryPolicy(**policy))
            return await backend.set_split(config.parse_flags({KEY: definition}).flags[0], shares(step), "step")

    return asyncio.run(go())


def test_api_step_whose_answer_is_lost_is_not_sent_twice() -> None:
    definition = yaml.safe_load(YAML_FILE)["flags"][KEY]
    with FaultyAPI(flags={KEY: definition}, token="t0k") as fake:
        fake.add_fault(route="patch", mode="reset", times=1)  # applied? no: the connection drops first
        outcome = _api_step(fake, definition, 5, attempts=3, backoff=0.01)
        assert outcome.ok, outcome.detail
        assert fake.flag(KEY)["targeting"]["fractional"][1:] == [["treatment", 5], ["control", 95]]
        fake.clear_faults()
        fake.add_fault(route="patch", mode="apply_then_delay", delay=3, times=1)  # applied, answer lost
        outcome = _api_step(fake, definition, 25, attempts=3, backoff=0.01)
        assert outcome.ok and "answer lost" in outcome.detail, outcome.detail
        # "answer lost ... but the split is": the re-read before the retry showed the step, so no second PATCH
        assert fake.flag(KEY)["targeting"]["fractional"][1:] == [["treatment", 25], ["control", 75]]


def test_api_step_refused_is_a_failed_step() -> None:
    definition = yaml.safe_load(YAML_FILE)["flags"][KEY]
    with FaultyAPI(flags={KEY: definition}, token="t0k") as fake:
        fake.add_fault(route="patch", mode="status", status=403)
        outcome = _api_step(fake, definition, 5, attempts=3, backoff=0.01)
        assert not outcome.ok and outcome.permanent
        assert fake.flag(KEY)["targeting"]["fractional"][1:] == [["treatment", 0], ["control", 100]]
