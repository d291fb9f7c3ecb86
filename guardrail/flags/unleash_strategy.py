"""Pure arithmetic on Unleash strategies: which strategy is guarded, its rollout and variant weights, and
the variants a halt or a ramp step writes (shapes measured against unleash-server 7.5.1).

Strategy variant weights are per mille. A variant is `fix` (its weight is kept) or `variable` (Unleash
spreads what the `fix` ones leave evenly over the `variable` ones, whatever weight was sent for them),
and Unleash refuses a strategy whose variants are all `fix`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLLOUT_VARIANTS = ("treatment", "control")  # the two arms of a rollout without strategy variants
TOTAL_WEIGHT = 1000  # Unleash strategy variant weights are per mille


@dataclass(frozen=True)
class Feature:
    """One feature in one environment, as the admin API shows it."""

    name: str
    project: str
    enabled: bool
    strategies: tuple[Mapping[str, Any], ...]  # in the environment, in Unleash's order
    tags: tuple[str, ...]  # values of the `guardrail` tag type only
    exists_in_environment: bool = True


def guarded_strategy(feature: Feature, environment: str) -> tuple[Mapping[str, Any] | None, str]:
    """The one enabled flexibleRollout strategy, or None and why there is not exactly one."""
    live = [s for s in feature.strategies if not s.get("disabled")]
    flexible = [s for s in live if s.get("name") == "flexibleRollout"]
    if not flexible:
        names = sorted({str(s.get("name")) for s in live}) or ["none"]
        return None, (
            f"no enabled flexibleRollout strategy in environment {environment!r} (strategies: {', '.join(names)}); "
            "guardrail needs one to know the split"
        )
    if len(flexible) > 1:
        ids = ", ".join(str(s.get("id")) for s in flexible)
        return None, f"{len(flexible)} enabled flexibleRollout strategies ({ids}); guardrail guards exactly one"
    return flexible[0], ""


def rollout_percent(strategy: Mapping[str, Any]) -> int | None:
    params = strategy.get("parameters")
    raw = params.get("rollout") if isinstance(params, Mapping) else None
    try:
        number = int(str(raw))
    except ValueError:
        return None
    return number if 0 <= number <= 100 else None


def variant_weights(strategy: Mapping[str, Any]) -> tuple[dict[str, int], str]:
    """Strategy variant name -> weight (per mille), or {} and why the variants are unusable."""
    variants = strategy.get("variants")
    if not isinstance(variants, Sequence) or isinstance(variants, str) or not variants:
        return {}, "the strategy has no variants"
    weights: dict[str, int] = {}
    for v in variants:
        name = v.get("name") if isinstance(v, Mapping) else None
        weight = v.get("weight") if isinstance(v, Mapping) else None
        if not isinstance(name, str) or not name or isinstance(weight, bool) or not isinstance(weight, int):
            return {}, f"variant {v!r} needs a name and a whole-number weight"
        if name in weights:
            return {}, f"variant {name!r} is listed twice"
        weights[name] = weight
    total = sum(weights.values())
    if total != TOTAL_WEIGHT or any(w < 0 for w in weights.values()):
        shown = ", ".join(f"{n}={w}" for n, w in weights.items())
        return {}, f"variant weights ({shown}) sum to {total}, not {TOTAL_WEIGHT}"
    return weights, ""


def serves_only(strategy: Mapping[str, Any], control: str) -> bool:
    weights, _ = variant_weights(strategy)
    return bool(weights) and weights.get(control) == TOTAL_WEIGHT


def strategy_serves_only(feature: Feature, sid: str, control: str) -> bool:
    return any(
        str(s.get("id")) == sid and not s.get("disabled") and serves_only(s, control) for s in feature.strategies
    )


def control_variants(strategy: Mapping[str, Any], control: str) -> list[dict[str, Any]]:
    """Everyone gets control: control 1000 `fix`, the rest `variable` (Unleash wants one variable variant;
    the variable ones share what the fixed ones leave, here 0)."""
    return [
        {
            **v,
            "weight": TOTAL_WEIGHT if v.get("name") == control else 0,
            "weightType": "fix" if v.get("name") == control else "variable",
        }
        for v in strategy.get("variants") or []
    ]


def weighted_variants(strategy: Mapping[str, Any], wanted: Mapping[str, int]) -> list[dict[str, Any]]:
    """Exact weights: every variant `fix` except one `variable` that takes the rest. Unleash spreads the
    remainder evenly over `variable` variants and ignores the weights sent for them."""
    variants = [dict(v) for v in strategy.get("variants") or []]
    last = max(range(len(variants)), key=lambda i: (wanted.get(str(variants[i].get("name")), 0), i))
    for i, v in enumerate(variants):
        v["weight"] = wanted.get(str(v.get("name")), 0)
        v["weightType"] = "variable" if i == last else "fix"
    return variants


@dataclass(frozen=True)
class Split:
    """A ramp step planned for one strategy: exact variant weights (per mille), or a rollout percent."""

    weights: Mapping[str, int] | None = None
    rollout: int | None = None

    @property
    def what(self) -> str:
        if self.weights is not None:
            return "variant weights " + ", ".join(f"{n}={w}" for n, w in self.weights.items())
        return f"rollout {self.rollout}%"

    def shown_by(self, strategy: Mapping[str, Any]) -> bool:
        if self.weights is not None:
            return variant_weights(strategy)[0] == dict(self.weights)
        return rollout_percent(strategy) == self.rollout

    def variants(self, strategy: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.weights is not None:
            return weighted_variants(strategy, self.weights)
        return [dict(v) for v in strategy.get("variants") or []]

    def parameters(self, strategy: Mapping[str, Any]) -> dict[str, Any] | None:
        if self.rollout is None:
            return None  # unchanged
        return {**(strategy.get("parameters") or {}), "rollout": str(self.rollout)}


def plan_split(strategy: Mapping[str, Any], shares: Mapping[str, int]) -> tuple[Split | None, str]:
    """Percent shares per variant to the strategy change, or None and why it cannot be made."""
    if strategy.get("variants"):
        weights, why = variant_weights(strategy)
        unknown = sorted(set(shares) - set(weights))
        if not weights or unknown:
            return None, why or f"unknown variants {unknown}"
        return Split(weights={name: shares.get(name, 0) * 10 for name in weights}), ""
    unknown = sorted(set(shares) - set(ROLLOUT_VARIANTS))
    if unknown:
        return None, f"unknown variants {unknown}; a rollout without variants has {list(ROLLOUT_VARIANTS)}"
    return Split(rollout=100 - shares.get("control", 0)), ""
