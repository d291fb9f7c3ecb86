"""Run settings: command-line options over environment variables over the config file.

FLAG_API_URL, FLAG_API_TOKEN, METRICS_API_URL and ALERT_WEBHOOK_URL are enough on their own. Secrets come
only from the environment: a config file names the variable (`token_env`, `webhook_url_env`) rather than
holding the value, so it can be committed.

Everything is parsed and validated here, before any lock is taken or anything written: the general keys
by this module, each adapter's own section by its plugin (guardrail/adapters.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail import files, redact
from guardrail.adapters import ConfigContext, Configured
from guardrail.flags import BACKENDS, FlagBackend
from guardrail.model import GuardrailError
from guardrail.rules import GuardrailRules, parse_rules
from guardrail.sources import SOURCES, MetricSource

GENERAL_KEYS = {
    "flags",
    "flag_backend",
    "metrics",
    "alert",
    "state",
    "audit",
    "defaults",
    "http",
    "lock_timeout",
    "budget",
    "guardrails",
    "report",
}
FLAGS_KEYS = {"source", "git"}  # `flags:` as a mapping
CONFIG_KEYS = GENERAL_KEYS | BACKENDS.sections() | SOURCES.sections()
DEFAULT_STATE = Path(".guardrail/state.json")
DEFAULT_AUDIT = Path(".guardrail/audit.jsonl")


@dataclass(frozen=True)
class Settings:
    metrics: Configured[Any, MetricSource]
    backend: Configured[Any, FlagBackend]
    flags: str | None = None  # where flag definitions come from (file path or URL), for messages
    webhook_url: str | None = field(default=None, repr=False)
    state_path: Path = DEFAULT_STATE
    audit_path: Path = DEFAULT_AUDIT
    timeout: float = 5.0
    retries: int = 3
    concurrency: int = 64
    lock_timeout: float = 10.0
    # Seconds one run may spend on reads; past it no new read starts and the run reports what it could
    # not do (exit 3). Under the 2-minute cron interval, so one run ends before the next starts.
    budget: float = 90.0
    defaults: Mapping[str, Any] = field(default_factory=dict)
    ca_bundle: str | None = None
    allow_insecure_http: bool = False
    config_path: str | None = None
    guardrail_rules: GuardrailRules | None = None  # the `guardrails:` section: options beside the flags
    report_dir: Path | None = None  # `report.dir`: refresh this site after each check run
    report_base_url: str | None = None  # `report.base_url`: alerts link to the flag's page under it
    metrics_every: float | None = None  # `metrics.every`, minutes: look at the metrics on a longer cadence

    def secrets(self) -> list[str]:
        return [*self.backend.secrets(), *self.metrics.secrets(), *([self.webhook_url] if self.webhook_url else [])]

    def backend_kind(self) -> str:
        return self.backend.name

    @property
    def flag_backend(self) -> str:
        return self.backend.name

    @property
    def metrics_source(self) -> str:
        return self.metrics.name

    @property
    def flag_api_url(self) -> str | None:
        return getattr(self.backend.config, "url", None)

    @property
    def metrics_url(self) -> str | None:
        config = self.metrics.config
        return getattr(config, "url", None) or getattr(getattr(config, "config", None), "url", None)


def _number(section: Mapping[str, Any], key: str, source: str, field_name: str, *, integer: bool = False) -> Any:
    value = section.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0 or value == float("inf"):
        kind = "a positive whole number" if integer else "a positive number"
        raise GuardrailError(f"must be {kind}, got {value!r}", source=source, field=field_name)
    return value


def _env_number(env: Mapping[str, str], name: str) -> float:
    try:
        value = float(env[name])
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise GuardrailError(f"must be a number of seconds >= 0, got {env[name]!r}", field=name)
    return value


def _validate_defaults(defaults: Mapping[str, Any], source: str) -> None:
    from guardrail.options import schema_errors

    for place, message in schema_errors({"defaults": dict(defaults)}, {}):
        raise GuardrailError(message, source=source, field=place.replace("metadata.", "", 1))


def _backend_name(ctx: ConfigContext) -> str:
    """Explicit `flag_backend`, else: a flag file is halted by rewriting it unless a flag API is configured."""
    from guardrail.flags.flagd_file import flags_location

    explicit = ctx.doc.get("flag_backend")
    if explicit is not None:
        if not isinstance(explicit, str) or explicit not in BACKENDS.names():
            raise GuardrailError(
                f"must be one of {', '.join(BACKENDS.names())}", source=ctx.source, field="flag_backend"
            )
        return explicit
    where = flags_location(ctx)
    api_url = ctx.env.get("FLAG_API_URL") or ctx.section("flag_api").get("url")
    if where and not where.startswith(("http://", "https://")) and not api_url:
        return "file"
    return "api"


def _read_config(config: Path | None) -> tuple[Mapping[str, Any], str]:
    if config is None:
        return {}, "<environment>"
    source = str(config)
    loaded = files.load_document(config)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        raise GuardrailError("config file must be a mapping", source=source)
    unknown = sorted(set(map(str, loaded)) - CONFIG_KEYS)
    if unknown:
        raise GuardrailError(f"unknown key(s) {unknown}; known: {sorted(CONFIG_KEYS)}", source=source, field=unknown[0])
    return loaded, source


def _report_section(section: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`report: {dir: PATH, base_url: https://...}` (docs/report.md)."""
    unknown = sorted(set(map(str, section)) - {"dir", "base_url"})
    if unknown:
        raise GuardrailError(
            f"unknown key(s) {unknown}; known: ['base_url', 'dir']", source=source, field=f"report.{unknown[0]}"
        )
    out: dict[str, Any] = {}
    if section.get("dir") is not None:
        if not isinstance(section["dir"], str) or not section["dir"]:
            raise GuardrailError("must be a directory path", source=source, field="report.dir")
        out["report_dir"] = Path(section["dir"])
    base = section.get("base_url")
    if base is not None:
        if not isinstance(base, str) or not base.startswith(("http://", "https://", "file://")):
            raise GuardrailError(f"must be an http(s) URL, got {base!r:.60}", source=source, field="report.base_url")
        out["report_base_url"] = base
    return out


def load_settings(
    *,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    env = os.environ if env is None else env
    options = {k: v for k, v in (overrides or {}).items() if v is not None}
    doc, source = _read_config(config)
    ctx = ConfigContext(doc=doc, env=env, source=source, options=options)

    alert = ctx.section("alert")
    http = ctx.section("http")
    defaults = ctx.section("defaults")
    if defaults:
        _validate_defaults(defaults, source)
    if "webhook_url" in alert:
        raise GuardrailError(
            "secrets do not belong in a config file; use `webhook_url_env: VAR`",
            source=source,
            field="alert.webhook_url",
        )
    webhook_env = str(alert.get("webhook_url_env", "ALERT_WEBHOOK_URL"))

    metrics_name = ctx.section("metrics").get("source", "http")
    if not isinstance(metrics_name, str) or metrics_name not in SOURCES.names():
        raise GuardrailError(
            f"unknown metrics source {metrics_name!r}; use {' or '.join(SOURCES.names())}",
            source=source,
            field="metrics.source",
        )
    backend_name = _backend_name(ctx)
    _check_flags_section(ctx, backend_name)
    backend = BACKENDS.configure(backend_name, ctx, field="flag_backend")
    metrics = SOURCES.configure(metrics_name, ctx, field="metrics.source")

    from guardrail.cadence import parse_every

    values: dict[str, Any] = {
        "metrics": metrics,
        "metrics_every": parse_every(ctx.section("metrics").get("every"), source=source),
        "backend": backend,
        "flags": _flags_text(ctx, backend),
        "webhook_url": env.get(webhook_env) or None,
        "state_path": Path(env.get("GUARDRAIL_STATE") or doc.get("state") or DEFAULT_STATE),
        "audit_path": Path(env.get("GUARDRAIL_AUDIT") or doc.get("audit") or DEFAULT_AUDIT),
        "defaults": defaults,
        "config_path": str(config) if config else None,
        "guardrail_rules": parse_rules(doc["guardrails"], source=source) if doc.get("guardrails") else None,
        **_report_section(ctx.section("report"), source),
    }
    for key, field_name, integer in (
        ("timeout", "http.timeout", False),
        ("retries", "http.retries", True),
        ("concurrency", "http.concurrency", True),
    ):
        number = _number(http, key, source, field_name, integer=integer)
        if number is not None:
            values[key] = number
    if doc.get("lock_timeout") is not None:
        values["lock_timeout"] = _number(doc, "lock_timeout", source, "lock_timeout")
    if doc.get("budget") is not None:
        values["budget"] = _number(doc, "budget", source, "budget")
    if env.get("GUARDRAIL_BUDGET"):
        values["budget"] = _env_number(env, "GUARDRAIL_BUDGET")
    if http.get("ca_bundle"):
        values["ca_bundle"] = str(http["ca_bundle"])
    for key in (
        "state_path",
        "audit_path",
        "timeout",
        "concurrency",
        "lock_timeout",
        "ca_bundle",
        "allow_insecure_http",
        "retries",
        "budget",
    ):
        if key in options:
            values[key] = options[key]
            if isinstance(options[key], float) and not math.isfinite(options[key]):
                # An infinite --timeout or --budget would undo the deadline every call and run must have.
                raise GuardrailError(f"must be a finite number, got {options[key]}", field="--" + key.replace("_", "-"))
    settings = Settings(**values)
    redact.remember(settings.secrets())  # masked in every message from here on, whatever prints it
    return settings


def _check_flags_section(ctx: ConfigContext, backend_name: str) -> None:
    """`flags:` as a mapping knows `source` and `git`; flags in git are a way of the file backend only."""
    raw = ctx.doc.get("flags")
    git = bool(ctx.option("git"))
    if isinstance(raw, Mapping):
        unknown = sorted(set(map(str, raw)) - FLAGS_KEYS)
        if unknown:
            raise GuardrailError(
                f"unknown key(s) {unknown}; known: {sorted(FLAGS_KEYS)}", source=ctx.source, field=f"flags.{unknown[0]}"
            )
        git = git or raw.get("git") not in (None, False)
    if git and backend_name != "file":
        raise GuardrailError(
            f"flags in git need a flag file and the file backend, not {backend_name!r}",
            source=ctx.source,
            field="flags.git",
        )


def _flags_text(ctx: ConfigContext, backend: Configured[Any, FlagBackend]) -> str | None:
    from guardrail.flags.flagd_file import flags_location

    where = flags_location(ctx)
    if where:
        return where
    url = getattr(backend.config, "url", None)
    return str(url) if url else None


def require(settings: Settings) -> None:
    """Refuse to start a run that cannot work, naming what is missing (before any lock or write)."""
    settings.backend.ready()
    settings.metrics.ready()
