"""Checks a run makes before it takes the lock or sends anything: what cannot work is found at start.

A problem that would make the run unsafe (URL credentials that would travel in clear, a malformed API
URL, a state or audit path that cannot be written) is a GuardrailError naming the place and the fix,
before any side effect. Each adapter checks its own credentials in its plugin's `ready` (the flag API's
token: guardrail/flags/http_api.py). A problem that only costs the alert (a malformed webhook URL) is a
warning: the run still watches and halts flags, because a typo in the pager settings must not stop every
guardrail.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from guardrail.http import check_token_transport, url_problem
from guardrail.model import ExitCode, GuardrailError
from guardrail.settings import Settings


def check_urls(settings: Settings) -> list[str]:
    """Refuse URL credentials that would go in clear; return warnings for the webhook URL. (Each adapter's
    plugin refuses a malformed URL of its own when the settings are read.)"""
    for name, url in (("FLAG_API_URL", settings.flag_api_url), ("METRICS_API_URL", settings.metrics_url)):
        if url and "@" in urlsplit(url).netloc:
            check_token_transport(
                url, allow_insecure_http=settings.allow_insecure_http, what=name, secret="the user:password in the URL"
            )
    warnings = []
    if settings.webhook_url and (why := url_problem(settings.webhook_url)):
        # The URL is a secret: say what is wrong with it, never what it is.
        warnings.append(
            f"ALERT_WEBHOOK_URL is not a usable URL ({why}): flags are still watched and halted, "
            "but no alert can be sent until it is fixed"
        )
    return warnings


def _writable_file(path: Path, what: str, option: str, env: str) -> None:
    fix = f"point {option} (or {env}) at a writable file"
    if path.is_dir():
        raise GuardrailError(
            f"{what} path is a directory, not a file; {fix}", source=str(path), exit_code=ExitCode.CONFIG
        )
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if not ancestor.exists():
            continue
        if not ancestor.is_dir():
            raise GuardrailError(
                f"{ancestor} is a file, so the {what} directory {parent} cannot exist; {fix}",
                source=str(path),
                exit_code=ExitCode.CONFIG,
            )
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise GuardrailError(
                f"{ancestor} is not writable by this user, so the {what} cannot be written "
                f"there; {fix}, or fix the directory's permissions",
                source=str(path),
                exit_code=ExitCode.CONFIG,
            )
        break
    if path.exists() and not os.access(path, os.W_OK):
        raise GuardrailError(
            f"{what} file is not writable by this user; {fix}, or fix its permissions",
            source=str(path),
            exit_code=ExitCode.CONFIG,
        )


def check_paths(settings: Settings) -> None:
    _writable_file(settings.state_path, "state", "--state", "GUARDRAIL_STATE")
    _writable_file(settings.audit_path, "audit log", "--audit", "GUARDRAIL_AUDIT")


def preflight(settings: Settings, *, dry_run: bool) -> list[str]:
    """Everything that can be known before the lock. Returns warnings for the report."""
    warnings = check_urls(settings)
    if not dry_run:  # a dry run writes nothing
        check_paths(settings)
    return warnings
