"""Run settings: command-line options over environment variables over the config file.

The four variables of docs/contracts.md (FLAG_API_URL, FLAG_API_TOKEN, METRICS_API_URL, ALERT_WEBHOOK_URL)
are enough on their own. Secrets come only from the environment: a config file names the variable
(`token_env`, `webhook_url_env`) rather than holding the value, so it can be committed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail import files
from guardrail.model import ExitCode, GuardrailError

CONFIG_KEYS = {
    "flags", "flag_api", "flag_backend", "metrics", "alert", "state", "audit", "defaults", "http", "lock_timeout",
}
DEFAULT_STATE = Path(".guardrail/state.json")
DEFAULT_AUDIT = Path(".guardrail/audit.jsonl")


@dataclass(frozen=True)
class Settings:
    flags: str | None = None  # a flag file path, or an http(s) URL of a flag API
    flag_api_url: str | None = None
    flag_api_token: str | None = field(default=None, repr=False)
    flag_backend: str | None = None  # "api" | "file" | None (chosen from the other settings)
    metrics_source: str = "http"  # "http" | "prometheus"
    metrics_url: str | None = None
    metrics_section: Mapping[str, Any] = field(default_factory=dict)
    webhook_url: str | None = field(default=None, repr=False)
    state_path: Path = DEFAULT_STATE
    audit_path: Path = DEFAULT_AUDIT
    timeout: float = 5.0
    retries: int = 3
    concurrency: int = 64
    lock_timeout: float = 10.0
    defaults: Mapping[str, Any] = field(default_factory=dict)
    ca_bundle: str | None = None
    allow_insecure_http: bool = False
    config_path: str | None = None

    def secrets(self) -> list[str]:
        return [s for s in (self.flag_api_token, self.webhook_url) if s]

    @property
    def flags_are_url(self) -> bool:
        return bool(self.flags) and str(self.flags).startswith(("http://", "https://"))

    def backend_kind(self) -> str:
        """A file's flags are halted by rewriting the file unless a flag API is configured."""
        if self.flag_backend:
            return self.flag_backend
        if self.flags and not self.flags_are_url:
            return "api" if self.flag_api_url else "file"
        return "api"


def _section(doc: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, Mapping):
        raise GuardrailError("must be a mapping", source=source, field=key)
    return value


def _number(section: Mapping[str, Any], key: str, source: str, field_name: str, *, integer: bool = False) -> Any:
    value = section.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value <= 0:
        kind = "a positive whole number" if integer else "a positive number"
        raise GuardrailError(f"must be {kind}, got {value!r}", source=source, field=field_name)
    return value


def _validate_defaults(defaults: Mapping[str, Any], source: str) -> None:
    from guardrail.config import _schema_errors

    for place, message in _schema_errors({"defaults": dict(defaults)}, {}):
        raise GuardrailError(message, source=source, field=place.replace("metadata.", "", 1))


def load_settings(
    *,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    env = os.environ if env is None else env
    doc: Mapping[str, Any] = {}
    source = str(config) if config else "<environment>"
    if config is not None:
        loaded = files.load_document(config)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise GuardrailError("config file must be a mapping", source=source)
        unknown = sorted(set(map(str, loaded)) - CONFIG_KEYS)
        if unknown:
            raise GuardrailError(
                f"unknown key(s) {unknown}; known: {sorted(CONFIG_KEYS)}", source=source, field=unknown[0]
            )
        doc = loaded

    flags_cfg = doc.get("flags")
    if isinstance(flags_cfg, Mapping):
        flags_cfg = flags_cfg.get("source")
    if flags_cfg is not None and not isinstance(flags_cfg, str):
        raise GuardrailError("must be a path or URL", source=source, field="flags")
    flag_api = _section(doc, "flag_api", source)
    metrics = _section(doc, "metrics", source)
    alert = _section(doc, "alert", source)
    http = _section(doc, "http", source)
    defaults = _section(doc, "defaults", source)
    if defaults:
        _validate_defaults(defaults, source)

    token_env = str(flag_api.get("token_env", "FLAG_API_TOKEN"))
    webhook_env = str(alert.get("webhook_url_env", "ALERT_WEBHOOK_URL"))
    for forbidden, where in (("token", "flag_api"), ("webhook_url", "alert")):
        if forbidden in (flag_api if where == "flag_api" else alert):
            raise GuardrailError(
                "secrets do not belong in a config file; name an environment variable with "
                f"`{forbidden}_env` instead" if forbidden == "token" else
                "secrets do not belong in a config file; use `webhook_url_env: VAR`",
                source=source, field=f"{where}.{forbidden}",
            )
    metrics_source = str(metrics.get("source", "http"))
    if metrics_source not in ("http", "prometheus"):
        raise GuardrailError(
            f"unknown metrics source {metrics_source!r}; use http or prometheus", source=source, field="metrics.source"
        )
    backend = doc.get("flag_backend")
    if backend not in (None, "api", "file"):
        raise GuardrailError("must be `api` or `file`", source=source, field="flag_backend")

    values: dict[str, Any] = {
        "flags": flags_cfg,
        "flag_api_url": env.get("FLAG_API_URL") or flag_api.get("url"),
        "flag_api_token": env.get(token_env) or None,
        "flag_backend": backend,
        "metrics_source": metrics_source,
        "metrics_url": env.get("METRICS_API_URL") if metrics_source == "http" and env.get("METRICS_API_URL")
        else metrics.get("url"),
        "metrics_section": metrics,
        "webhook_url": env.get(webhook_env) or None,
        "state_path": Path(env.get("GUARDRAIL_STATE") or doc.get("state") or DEFAULT_STATE),
        "audit_path": Path(env.get("GUARDRAIL_AUDIT") or doc.get("audit") or DEFAULT_AUDIT),
        "defaults": defaults,
        "config_path": str(config) if config else None,
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
    if http.get("ca_bundle"):
        values["ca_bundle"] = str(http["ca_bundle"])
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    if values["flags"] is None and values["flag_api_url"]:
        values["flags"] = values["flag_api_url"]
    return Settings(**values)


def require(settings: Settings) -> None:
    """Refuse to start a run that cannot work, naming what is missing."""
    if not settings.flags:
        raise GuardrailError(
            "no flag definitions: pass --flags PATH|URL, set FLAG_API_URL, or set `flags:` in --config",
            exit_code=ExitCode.CONFIG,
        )
    if settings.metrics_source == "http" and not settings.metrics_url:
        raise GuardrailError(
            "no metrics source: set METRICS_API_URL, or `metrics:` in --config", exit_code=ExitCode.CONFIG
        )
    if settings.backend_kind() == "api" and not (settings.flag_api_url or settings.flags_are_url):
        raise GuardrailError("halting through the flag API needs FLAG_API_URL", exit_code=ExitCode.CONFIG)
