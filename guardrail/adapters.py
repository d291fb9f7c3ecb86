"""How adapters plug in: one module per outside system, one registry line each.

A metrics source or a flag backend is a module that exposes `PLUGIN`, a record saying
- `parse(ctx)`: read and validate its own configuration (its config-file section, its environment
  variables, the command-line options it honours) into a frozen config object. It runs when the
  settings are loaded, before any lock is taken or anything is written, and raises GuardrailError naming
  the field;
- `secrets(config)`: every secret the config holds, so it is masked in output, logs, state, audit and
  alerts wherever it would appear;
- `ready(config)`: refuse, naming what is missing, a config that cannot serve a `check` run (status and
  resume only read, and may need less);
- `create(config, runtime)`: build the adapter for one run.

`guardrail/sources/__init__.py` and `guardrail/flags/__init__.py` each map a name to such a module.
Modules are imported only when chosen, so `guardrail --help` stays fast and an optional dependency
(a database driver) is needed only by the people who use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from guardrail.model import GuardrailError

if TYPE_CHECKING:
    import httpx

    from guardrail.http import RetryPolicy

C = TypeVar("C")
A = TypeVar("A")


@dataclass(frozen=True)
class ConfigContext:
    """What a plugin may read to build its config."""

    doc: Mapping[str, Any]  # the whole config file ({} without one)
    env: Mapping[str, str]
    source: str  # the config file's path, or "<environment>", for messages
    options: Mapping[str, Any] = field(default_factory=dict)  # command-line options (None = not given)

    def section(self, key: str) -> Mapping[str, Any]:
        value = self.doc.get(key) or {}
        if not isinstance(value, Mapping):
            raise GuardrailError("must be a mapping", source=self.source, field=key)
        return value

    def option(self, key: str) -> Any:
        return self.options.get(key)


@dataclass(frozen=True)
class Runtime:
    """What a run lends its adapters: one HTTP client, one retry policy, the run's limits."""

    client: httpx.AsyncClient
    policy: RetryPolicy
    timeout: float
    concurrency: int
    allow_insecure_http: bool = False
    read_only: bool = False  # status and resume only read: adapters hold back credentials they need to write


def _no_secrets(_config: Any) -> Sequence[str]:
    return ()


def _always_ready(_config: Any) -> None:
    return None


@dataclass(frozen=True)
class Plugin(Generic[C, A]):
    name: str
    summary: str  # one line, for docs and error messages
    parse: Callable[[ConfigContext], C]
    create: Callable[[C, Runtime], A]
    secrets: Callable[[C], Sequence[str]] = _no_secrets
    ready: Callable[[C], None] = _always_ready


@dataclass(frozen=True)
class Configured(Generic[C, A]):
    """A chosen plugin with its parsed config: what the settings carry."""

    plugin: Plugin[C, A]
    config: C

    @property
    def name(self) -> str:
        return self.plugin.name

    def secrets(self) -> list[str]:
        return [s for s in self.plugin.secrets(self.config) if s]

    def ready(self) -> None:
        self.plugin.ready(self.config)

    def create(self, runtime: Runtime) -> A:
        return self.plugin.create(self.config, runtime)


@dataclass(frozen=True)
class Entry:
    """One registry line: the adapter's module, and the top-level config-file keys it owns."""

    module: str
    sections: tuple[str, ...] = ()


class Registry(Generic[C, A]):
    """Names to adapter modules, imported on first use."""

    def __init__(self, what: str, entries: Mapping[str, Entry]) -> None:
        self.what = what
        self.entries = dict(entries)
        self.modules = {name: e.module for name, e in entries.items()}

    def sections(self) -> set[str]:
        return {s for e in self.entries.values() for s in e.sections}

    def names(self) -> list[str]:
        return list(self.modules)

    def get(self, name: str, *, source: str = "", field: str = "") -> Plugin[C, A]:
        module = self.modules.get(name)
        if module is None:
            raise GuardrailError(
                f"unknown {self.what} {name!r}; known: {', '.join(self.modules)}",
                source=source or None,
                field=field or None,
            )
        plugin = importlib.import_module(module).PLUGIN
        assert isinstance(plugin, Plugin) and plugin.name == name, f"{module}.PLUGIN is not {name!r}"
        return plugin

    def configure(self, name: str, ctx: ConfigContext, *, field: str) -> Configured[C, A]:
        plugin = self.get(name, source=ctx.source, field=field)
        return Configured(plugin, plugin.parse(ctx))
