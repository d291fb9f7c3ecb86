"""Proof with the real flagd evaluator that the files this tool writes do what they should.

The OpenFeature Python provider for flagd, in-process with a FILE source, evaluates a flag file exactly as
flagd does (same fractional bucketing, same schema checks, same DISABLED behaviour). It is the client
here: it reads the files before and after a halt, for 2,000 targeting keys.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail import config
from guardrail.flags.flagd_file import FlagdFileBackend
from guardrail.model import Flag
from tests.test_flagd_file import THREE, block

openfeature = pytest.importorskip("openfeature")
from openfeature import api  # noqa: E402
from openfeature.contrib.provider.flagd import FlagdProvider  # noqa: E402
from openfeature.contrib.provider.flagd.config import ResolverType  # noqa: E402
from openfeature.evaluation_context import EvaluationContext  # noqa: E402
from openfeature.flag_evaluation import FlagEvaluationDetails, Reason  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = [f"user-{i}" for i in range(2000)]
REASON = "error_rate: treatment 5.00% vs control 1.00% (+400%), threshold 1%"


def flag_files() -> list[Path]:
    """Every flagd flag file under examples/ and configs/ (files without a `flags` mapping are skipped:
    those directories also hold guardrail's own config files)."""
    found = []
    for directory in ("examples", "configs"):
        for pattern in ("**/*flags*.yaml", "**/*flags*.json"):
            for path in sorted((ROOT / directory).glob(pattern)):
                doc = yaml.safe_load(path.read_text())
                flags = doc.get("flags") if isinstance(doc, dict) else None
                if isinstance(flags, dict) and all(isinstance(v, dict) for v in flags.values()):
                    found.append(path)
    return found


class Evaluator:
    """A fresh in-process flagd provider reading one file (the previous one is shut down first)."""

    def __init__(self, path: Path) -> None:
        api.shutdown()
        provider = FlagdProvider(resolver_type=ResolverType.IN_PROCESS, offline_flag_source_path=str(path))
        # Waits for the file to be loaded (and raises if flagd's evaluator refuses it).
        api.set_provider_and_wait(provider)
        self.client = api.get_client()

    def details(self, key: str, default: Any, targeting_key: str) -> FlagEvaluationDetails[Any]:
        ctx = EvaluationContext(targeting_key=targeting_key)
        if isinstance(default, bool):
            return self.client.get_boolean_details(key, default, ctx)
        if isinstance(default, str):
            return self.client.get_string_details(key, default, ctx)
        if isinstance(default, int):
            return self.client.get_integer_details(key, default, ctx)
        if isinstance(default, float):
            return self.client.get_float_details(key, default, ctx)
        return self.client.get_object_details(key, default, ctx)

    def variants(self, key: str, default: Any) -> dict[str, tuple[Any, str | None]]:
        """targeting key -> (value, variant) for all 2,000 keys; fails on any evaluation error."""
        out = {}
        for targeting_key in KEYS:
            d = self.details(key, default, targeting_key)
            assert d.error_code is None, (key, d.error_code, d.error_message)
            out[targeting_key] = (d.value, d.variant)
        return out


@pytest.fixture
def evaluator_for() -> Iterator[Callable[[Path], Evaluator]]:
    yield Evaluator
    api.shutdown()


def control_value(path: Path, key: str) -> Any:
    definition = yaml.safe_load(path.read_text())["flags"][key]
    control = definition.get("metadata", {}).get("control_variant", "control")
    return definition["variants"][control]


def parsed(path: Path) -> dict[str, Flag]:
    loaded = asyncio.run(FlagdFileBackend(path).load())
    result = config.parse_flags(loaded.definitions, source=loaded.source)
    assert not result.problems, result.problems
    return {f.key: f for f in result.flags}


def copy(tmp_path: Path, source: Path) -> Path:
    target = tmp_path / source.name
    shutil.copyfile(source, target)
    return target


def assert_all_control(evaluator: Evaluator, key: str, control: Any) -> None:
    for targeting_key in KEYS:
        d = evaluator.details(key, control, targeting_key)
        assert d.error_code is None, d.error_message
        assert d.value == control, (targeting_key, d)
        assert d.reason == Reason.DISABLED or d.variant is not None


# ---- halt and hold, seen by the real evaluator ---------------------------------------------------------


@pytest.mark.parametrize("example", ["examples/flags.yaml", "examples/flags.json"])
def test_split_before_halt_and_control_for_everyone_after(tmp_path: Path, evaluator_for: Any, example: str) -> None:
    path = copy(tmp_path, ROOT / example)
    key = "checkout.payments.express-pay"
    control = control_value(path, key)

    before = evaluator_for(path)
    shares = Counter(variant for _value, variant in before.variants(key, control).values())
    assert set(shares) == {"treatment", "control"}
    assert 900 <= shares["treatment"] <= 1100  # about 50/50 (flagd's murmur3 bucketing)
    others = {
        other: control_value(path, other)
        for other in ("search.results.semantic-ranking", "checkout.cart.one-click-buy")
    }
    expected = {other: before.variants(other, default) for other, default in others.items()}

    outcome = asyncio.run(FlagdFileBackend(path).halt(parsed(path)[key], REASON))
    assert outcome.ok, outcome.detail
    after = evaluator_for(path)
    assert_all_control(after, key, control)
    d = after.details(key, control, KEYS[0])
    assert d.reason == Reason.DISABLED and d.flag_metadata["guardrail_reason"] == REASON
    for other, default in others.items():  # the other flags of the file evaluate exactly as before
        assert after.variants(other, default) == expected[other]


def test_abn_halt_reverts_every_arm(tmp_path: Path, evaluator_for: Any) -> None:
    path = copy(tmp_path, ROOT / "examples" / "abn-flags.yaml")
    key = "checkout.pricing.discount-banner"
    control = control_value(path, key)
    shares = Counter(v for _value, v in evaluator_for(path).variants(key, control).values())
    assert set(shares) == {"control", "treatment-a", "treatment-b"}
    assert all(560 <= n <= 780 for n in shares.values()), shares

    assert asyncio.run(FlagdFileBackend(path).halt(parsed(path)[key], REASON)).ok
    assert_all_control(evaluator_for(path), key, control)


def test_rollout_hold_leaves_the_split_exactly_as_it_was(tmp_path: Path, evaluator_for: Any) -> None:
    path = copy(tmp_path, ROOT / "configs" / "flags-rollout.yaml")
    key = "payments.gateway.new-router"
    flag = parsed(path)[key]
    assert flag.experiment_type.value == "rollout"
    before = evaluator_for(path).variants(key, False)
    assert 120 <= sum(v == "new-router" for _x, v in before.values()) <= 280  # about 10 %

    outcome = asyncio.run(FlagdFileBackend(path).hold(flag, REASON))
    assert outcome.ok, outcome.detail
    after = evaluator_for(path)
    assert after.variants(key, False) == before  # same variant for every key
    metadata = after.details(key, False, KEYS[0]).flag_metadata
    assert metadata["guardrail_hold"] is True and metadata["guardrail_reason"] == REASON


def test_commented_three_flag_file_keeps_comments_and_other_flags(tmp_path: Path, evaluator_for: Any) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(THREE)
    key = "checkout.payments.express-pay"
    others = {"search.ranking.new-model": "v1", "ui.theme.dark-mode": False}
    before = evaluator_for(path)
    assert Counter(v for _x, v in before.variants(key, False).values()).keys() == {"treatment", "control"}
    expected = {other: before.variants(other, default) for other, default in others.items()}

    assert asyncio.run(FlagdFileBackend(path).halt(parsed(path)[key], REASON)).ok
    new = path.read_text()
    assert block(new, "search.ranking.new-model", None) == block(THREE, "search.ranking.new-model", None)
    assert [line for line in THREE.splitlines() if line.lstrip().startswith("#")] == [
        line for line in new.splitlines() if line.lstrip().startswith("#")
    ]
    after = evaluator_for(path)
    assert_all_control(after, key, False)
    for other, default in others.items():
        assert after.variants(other, default) == expected[other]


# ---- every example is a valid flagd file ---------------------------------------------------------------


def test_there_are_examples_to_check() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in flag_files()}
    assert {
        "examples/flags.yaml",
        "examples/flags.json",
        "examples/abn-flags.yaml",
        "configs/flags-rollout.yaml",
    } <= names


@pytest.mark.parametrize("path", flag_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_loads_in_the_real_evaluator(path: Path, evaluator_for: Any) -> None:
    flags = yaml.safe_load(path.read_text())["flags"]
    evaluator = evaluator_for(path)
    for key, definition in flags.items():
        default = definition["variants"][definition["defaultVariant"]]
        for targeting_key in KEYS[:50]:
            d = evaluator.details(key, default, targeting_key)
            assert d.error_code is None, (key, d.error_code, d.error_message)
            assert d.reason != Reason.ERROR


# ---- end to end: the installed command halts through the file --------------------------------------------


@pytest.mark.e2e
def test_installed_check_halts_through_the_file(tmp_path: Path, run_cli: Any, evaluator_for: Any) -> None:
    from guardrail.fakeapi import FakeAPI

    path = copy(tmp_path, ROOT / "examples" / "flags.yaml")
    original = path.read_text()
    key = "checkout.payments.express-pay"
    with FakeAPI(token=None) as fake:
        fake.set_metric(key, "control", "error_rate", 0.010, 10_000)
        fake.set_metric(key, "treatment", "error_rate", 0.050, 10_000)
        for variant in ("control", "treatment"):
            fake.set_metric(key, variant, "p95_latency_ms", 180.0, 10_000)
            fake.set_metric("checkout.cart.one-click-buy", variant, "error_rate", 0.01, 10_000)
            fake.set_metric("checkout.cart.one-click-buy", variant, "cart_abandonment_rate", 0.2, 10_000)
        for variant in ("semantic", "keyword"):
            fake.set_metric("search.results.semantic-ranking", variant, "search_error_rate", 0.001, 10_000)
            fake.set_metric("search.results.semantic-ranking", variant, "click_through_rate", 0.3, 10_000)
        args = [
            "check",
            "--flags",
            str(path),
            "--state",
            str(tmp_path / "state.json"),
            "--audit",
            str(tmp_path / "audit.jsonl"),
            "--json",
        ]
        env = {"METRICS_API_URL": fake.url}  # no FLAG_API_URL: the file is the backend

        # error_rate uses the default always-valid sequential test: one look of 1 % vs 5 % on 10,000 units
        # per arm is evidence enough (confirmations default to 1), so the first run halts.
        first = run_cli(*args, "--now", "2026-11-25T12:00:00Z", env=env)
        assert first.returncode == 1, first.stdout + first.stderr

    halted = yaml.safe_load(path.read_text())["flags"][key]
    assert (halted["state"], halted["defaultVariant"]) == ("DISABLED", "control")
    assert "error_rate" in halted["metadata"]["guardrail_reason"]
    new = path.read_text()
    assert block(new, "search.results.semantic-ranking", None) == block(
        original, "search.results.semantic-ranking", None
    )
    assert_all_control(evaluator_for(path), key, False)
