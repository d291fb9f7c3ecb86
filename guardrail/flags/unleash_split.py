"""The Unleash backend's strategy writes: a ramp step's split, and the `on_halt=control` halt (everyone gets
control through the strategy's variants). Both replace the one guarded flexibleRollout strategy with a
`PUT .../environments/{env}/strategies/{id}` built from the newest read, through the backend's verified
write (guardrail/flags/unleash.py `_write`: re-read before every retry and after the write; done only when
the re-read shows it). The arithmetic of weights is guardrail/flags/unleash_strategy.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from guardrail.flags import unleash_strategy as us
from guardrail.flags.base import HaltOutcome
from guardrail.model import FailureKind, Flag

if TYPE_CHECKING:
    from guardrail.flags.unleash import UnleashBackend


def same_strategy(backend: UnleashBackend, feature: us.Feature, fallback: Mapping[str, Any]) -> Mapping[str, Any]:
    """The guarded strategy as last read (a retry rebuilds its PUT from the newest read)."""
    fresh, _ = us.guarded_strategy(feature, backend.config.environment)
    return fresh if fresh is not None and fresh.get("id") == fallback.get("id") else fallback


async def put_strategy(
    backend: UnleashBackend,
    key: str,
    strategy: Mapping[str, Any],
    variants: Callable[[Mapping[str, Any]], list[dict[str, Any]]],
    parameters: Mapping[str, Any] | None = None,
) -> Any:
    """PUT replaces the whole strategy, so every field (constraints, segments, title, disabled) is sent
    back as read."""
    body = {
        "name": strategy.get("name"),
        "title": strategy.get("title"),
        "disabled": bool(strategy.get("disabled", False)),
        "constraints": strategy.get("constraints") or [],
        "segments": strategy.get("segments") or [],
        "parameters": dict(parameters if parameters is not None else strategy.get("parameters") or {}),
        "variants": variants(strategy),
    }
    url = f"{backend._env_path(key)}/strategies/{quote(str(strategy.get('id')), safe='')}"
    return await backend._call("PUT", url, "strategy update", once=True, body=body)


async def halt_to_control(backend: UnleashBackend, flag: Flag, current: us.Feature) -> HaltOutcome:
    """`on_halt=control`: the flag stays on and the strategy's variants give everyone control."""
    control = flag.control_variant
    strategy, why = us.guarded_strategy(current, backend.config.environment)
    if strategy is None:
        return HaltOutcome(ok=False, kind=FailureKind.REFUSED, detail=f"on_halt=control: {why}")
    sid = str(strategy.get("id"))
    if not strategy.get("variants"):
        # A rollout without strategy variants: its control is "outside the rollout", so everyone gets
        # control at `rollout: 0` (variants cannot say it: there are none).
        if us.rollout_percent(strategy) == 0:
            return HaltOutcome(ok=True, already=True, detail="strategy rollout already 0%: everyone gets control")

        def zero(f: us.Feature) -> Awaitable[Any]:
            base = same_strategy(backend, f, strategy)
            parameters = {**(base.get("parameters") or {}), "rollout": "0"}
            return put_strategy(backend, flag.key, base, lambda s: list(s.get("variants") or []), parameters)

        return await backend._write(
            flag.key,
            f"strategy {sid}: rollout 0% (everyone gets control)",
            current,
            lambda f: f.enabled and _rollout_of(f, sid, backend.config.environment) == 0,
            zero,
        )
    if us.serves_only(strategy, control):
        return HaltOutcome(ok=True, already=True, detail=f"strategy already gives everyone {control}")
    return await backend._write(
        flag.key,
        f"strategy {sid}: everyone gets {control} (control 1000 fix)",
        current,
        lambda f: f.enabled and us.strategy_serves_only(f, sid, control),
        lambda f: put_strategy(
            backend, flag.key, same_strategy(backend, f, strategy), lambda s: us.control_variants(s, control)
        ),
    )


def _rollout_of(feature: us.Feature, sid: str, environment: str) -> int | None:
    strategy, _ = us.guarded_strategy(feature, environment)
    return us.rollout_percent(strategy) if strategy is not None and str(strategy.get("id")) == sid else None


async def set_split(backend: UnleashBackend, flag: Flag, shares: Mapping[str, int]) -> HaltOutcome:
    """A ramp step; shares are whole percents per variant summing to 100. A strategy with variants gets
    those weights (per mille); a rollout without variants gets `parameters.rollout` = the treatment's
    share (unleash_strategy.plan_split)."""
    if sum(shares.values()) != 100 or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in shares.values()
    ):
        detail = f"shares {dict(shares)} are not whole percents summing to 100"
        return HaltOutcome(ok=False, kind=FailureKind.REFUSED, detail=detail)
    current, outcome = await backend._before(flag.key)
    if current is None:
        return outcome
    strategy, why = us.guarded_strategy(current, backend.config.environment)
    split, why = us.plan_split(strategy, shares) if strategy is not None else (None, why)
    if strategy is None or split is None:
        return HaltOutcome(ok=False, kind=FailureKind.REFUSED, detail=why)
    sid = str(strategy.get("id"))

    def applied(f: us.Feature) -> bool:
        s, _ = us.guarded_strategy(f, backend.config.environment)
        return s is not None and str(s.get("id")) == sid and split.shown_by(s)

    def send(f: us.Feature) -> Awaitable[Any]:
        base = same_strategy(backend, f, strategy)
        return put_strategy(backend, flag.key, base, split.variants, split.parameters(base))

    if applied(current):
        return HaltOutcome(ok=True, already=True, detail=f"{split.what} already set")
    return await backend._write(flag.key, f"strategy {sid}: {split.what}", current, applied, send)
