"""The fast schema check never says yes where jsonschema says no, and says yes to ordinary flags (so it is used).
Seeded random documents: valid ones, and each mutated in one place."""

from __future__ import annotations

import random
from typing import Any

from guardrail.options import _validator, schema
from guardrail.schema_fast import certainly_valid

OPTIONS: tuple[str, ...] = ("metric", "comparison", "threshold", "min_count", "confirmations", "max_gap_minutes")
OPTIONS += ("window", "method", "alpha", "kind", "tuning_n")
ODD: list[Any] = [None, True, False, 0, -1, 0.0, 5.0, 1e13, 1e16, "", "x", "a b", "é" * 201, "5m\n", "0m", [], {}]
ODD += ["sequential", "relative_increase", 0.5, 0.6, 100, 101, 525601, "2026-13-01T00:00:00Z", "2026-01-01"]
ODD += ["2026-01-01T00:00:00Z", "2026-02-30T00:00:00+01:00", 1e12, 10**12, 10**12 + 1, "ab", "proportion", 3]


def good_options(rng: random.Random, required: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if required or rng.random() < 0.5:
        out |= {
            "metric": rng.choice(["error_rate", "p95_latency_ms", "a:b-c"]),
            "comparison": rng.choice(["relative_increase", "absolute_decrease"]),
            "threshold": rng.choice([0.1, 5, 1e12]),
        }
    for name, values in (
        ("min_count", [1, 100, 10**12]),
        ("confirmations", [1, 2, 100]),
        ("max_gap_minutes", [0.5, 15, 525600]),
        ("window", ["5m", "60m", "1h", "9999999d"]),
        ("method", ["threshold", "sequential"]),
        ("alpha", [0.05, 0.5, 1e-9]),
        ("kind", ["proportion", "mean", "quantile"]),
        ("tuning_n", [1, 1e15]),
    ):
        if rng.random() < 0.3:
            out[name] = rng.choice(values)
    return out


def good_document(rng: random.Random) -> dict[str, Any]:
    doc: dict[str, Any] = {"guardrails": [good_options(rng, True) for _ in range(rng.randint(0, 4))]}
    for name, values in (
        ("experiment_type", ["ab", "rollout", "experiment"]),
        ("started_at", ["2026-11-25T11:00:00Z", "2026-11-25T11:00:00.5+02:00", "2024-02-29t00:00:00z"]),
        ("warmup_minutes", [0, 30, 525600]),
        ("control_variant", ["control", "off"]),
        ("treatment_variants", ["a,b", ""]),
        ("guardrail_hold", [True, "reason"]),
        ("defaults", [good_options(rng, False)]),
        ("owner", ["team"]),
    ):
        if rng.random() < 0.5:
            doc[name] = rng.choice(values)
    return doc


def mutate(rng: random.Random, doc: dict[str, Any]) -> None:
    """One change somewhere: a value replaced by an odd one, a key added, or a required option removed."""
    targets: list[dict[str, Any]] = [doc, *doc["guardrails"]]
    if isinstance(doc.get("defaults"), dict):
        targets.append(doc["defaults"])
    target = rng.choice(targets)
    roll = rng.random()
    if roll < 0.6:
        name = rng.choice(
            [
                *OPTIONS,
                "experiment_type",
                "started_at",
                "warmup_minutes",
                "control_variant",
                "treatment_variants",
                "guardrail_hold",
                "defaults",
                "guardrails",
            ]
        )
        target[name] = rng.choice(ODD)
    elif roll < 0.8:
        target[rng.choice(["bogus", "Metric", "threshold "])] = 1
    elif target is not doc and target.get("metric") and doc["guardrails"]:
        target.pop(rng.choice(["metric", "comparison", "threshold"]), None)
    else:
        doc["guardrails"] = [good_options(rng, True) for _ in range(101)]


def test_never_yes_where_jsonschema_says_no_and_yes_for_ordinary_flags() -> None:
    validator = _validator()
    assert schema()["$defs"]["options"]["additionalProperties"] is False  # what _option's last line mirrors
    rng = random.Random(20261203)
    said_yes = disagreements = 0
    for _ in range(4000):
        doc = good_document(rng)
        if rng.random() < 0.7:
            mutate(rng, doc)
        valid = validator.is_valid(doc)
        fast = certainly_valid(doc)
        assert not (fast and not valid), doc
        said_yes += fast
        disagreements += valid and not fast
    assert said_yes > 1000  # it really is the common path
    assert disagreements < said_yes // 10  # and falls back to jsonschema only for odd documents


def test_ordinary_documents_take_the_fast_path() -> None:
    doc = {
        "experiment_type": "ab",
        "started_at": "2026-11-20T09:00:00Z",
        "guardrails": [{"metric": "error_rate", "comparison": "relative_increase", "threshold": 0.1}],
    }
    assert certainly_valid(doc) and _validator().is_valid(doc)
    assert not certainly_valid({**doc, "guardrails": [{"metric": "error_rate"}]})
    assert not certainly_valid({**doc, "started_at": "2026-02-30T00:00:00Z"})
