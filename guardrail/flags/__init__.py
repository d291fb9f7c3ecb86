"""Flag backends, one module per outside system. Adding one: a module exposing `PLUGIN` (see
guardrail/adapters.py) and one line here."""

from __future__ import annotations

from typing import Any

from guardrail.adapters import Entry, Registry
from guardrail.flags.base import FlagBackend, HaltOutcome, LoadedFlags

BACKENDS: Registry[Any, FlagBackend] = Registry(
    "flag backend",
    {
        "api": Entry("guardrail.flags.http_api", sections=("flag_api",)),
        "file": Entry("guardrail.flags.flagd_file"),
        "unleash": Entry("guardrail.flags.unleash", sections=("unleash",)),
    },
)

__all__ = ["BACKENDS", "FlagBackend", "HaltOutcome", "LoadedFlags"]
