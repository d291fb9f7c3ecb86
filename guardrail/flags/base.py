"""The narrow interface every flag backend implements: load definitions, halt, hold, re-read.

The engine never sees a backend. A run loads flags through one, and carries out the engine's Halt
decisions through the same one. A backend never raises from halt/hold: it returns a HaltOutcome, and it
reports `ok` only when a re-read of the flag shows the change (an answer of 200 proves nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from guardrail.model import Flag, FlagProblem, HaltOutcome


@dataclass(frozen=True)
class LoadedFlags:
    """Raw flag definitions and where they came from. config.parse_flags turns them into Flags."""

    source: str  # file path or URL, for messages
    definitions: Mapping[str, Mapping[str, Any]]
    # Line numbers of each flag key in a YAML file, when known (for error messages).
    lines: Mapping[str, int] | None = None
    # Flags the backend could not turn into definitions (e.g. an Unleash strategy without variants); the
    # other flags still run, and these are reported like any flag problem.
    problems: tuple[FlagProblem, ...] = ()


__all__ = ["FlagBackend", "HaltOutcome", "LoadedFlags"]


class FlagBackend(Protocol):
    name: str

    async def load(self) -> LoadedFlags: ...

    async def halt(self, flag: Flag, reason: str) -> HaltOutcome:
        """Revert an experiment: state DISABLED, defaultVariant = control variant."""
        ...

    async def hold(self, flag: Flag, reason: str) -> HaltOutcome:
        """Hold a rollout at its current split: metadata guardrail_hold true + reason."""
        ...

    async def set_split(self, flag: Flag, shares: Mapping[str, int], reason: str) -> HaltOutcome:
        """Set the flag's fractional split to `shares` (variant -> whole percent, summing to 100): a ramp
        step. Done (ok) only when a re-read shows the new weights."""
        ...

    async def get(self, key: str) -> Mapping[str, Any] | None:
        """Re-read one definition (None when it does not exist)."""
        ...

    def link(self, key: str) -> str:
        """Where a person finds the flag (for alerts); never holds a secret."""
        ...

    async def aclose(self) -> None: ...
