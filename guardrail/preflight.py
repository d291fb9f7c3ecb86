"""Checks a run makes before it takes the lock or sends anything: what cannot work is found at start.

A problem here that would make the run unsafe (a credential that would travel in clear, a state or audit
path that cannot be written) is a GuardrailError naming the place and the fix, before any side effect. A
problem that only costs the alert (a malformed webhook URL) is a warning: the run still watches and halts
flags, because a typo in the pager settings must not stop every guardrail.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from guardrail.http import cleartext_hop, url_problem
from guardrail.model import ExitCode, GuardrailError
from guardrail.settings import Settings


def _token_problem(token: str) -> str | None:
    """An HTTP header value must be visible ASCII: a token with a newline (a mounted secret file) or a
    non-ASCII character would only fail at halt time, inside the PATCH."""
    if any(not (0x21 <= ord(c) <= 0x7E) for c in token):
        return "contains whitespace, a newline or a non-ASCII character (a stray newline from a secret file?)"
    return None


def check_urls(settings: Settings) -> list[str]:
    """Refuse malformed flag API and metrics URLs; return warnings for the webhook URL."""
    api_url = settings.flag_api_url or (str(settings.flags) if settings.flags_are_url else None)
    for name, url in (("FLAG_API_URL", api_url), ("METRICS_API_URL", settings.metrics_url)):
        if url and (why := url_problem(url)):
            raise GuardrailError(f"not a usable URL: {why}", field=name, exit_code=ExitCode.CONFIG)
    warnings = []
    if settings.webhook_url and (why := url_problem(settings.webhook_url)):
        # The URL is a secret: say what is wrong with it, never what it is.
        warnings.append(
            f"ALERT_WEBHOOK_URL is not a usable URL ({why}): flags are still watched and halted, "
            "but no alert can be sent until it is fixed"
        )
    return warnings


def check_credentials(settings: Settings) -> None:
    """A token or URL credentials that would travel in clear, or could never be sent, stop the run here."""
    api_url = settings.flag_api_url or (str(settings.flags) if settings.flags_are_url else None)
    if settings.flag_api_token and (why := _token_problem(settings.flag_api_token)):
        raise GuardrailError(f"the token {why}", field="FLAG_API_TOKEN", exit_code=ExitCode.CONFIG)
    if settings.flag_api_token and api_url and "@" in urlsplit(api_url).netloc:
        # httpx turns URL userinfo into a Basic Authorization header that replaces the bearer token.
        raise GuardrailError(
            "has user:password in it and FLAG_API_TOKEN is set: only one can be sent (the URL's would replace "
            "the token, and every halt would be refused); remove one",
            field="FLAG_API_URL",
            exit_code=ExitCode.CONFIG,
        )
    for name, url, has_secret in (
        ("FLAG_API_URL", api_url, bool(settings.flag_api_token)),
        ("METRICS_API_URL", settings.metrics_url, False),
    ):
        if not url:
            continue
        userinfo = urlsplit(url).password is not None or bool(urlsplit(url).username)
        if not (has_secret or userinfo) or settings.allow_insecure_http:
            continue
        hop = cleartext_hop(url)
        if hop is not None:
            what = "the API token" if has_secret else "the user:password in the URL"
            raise GuardrailError(
                f"refusing to send {what} over plain http to {hop}; use https, set NO_PROXY for a local "
                "API behind HTTP_PROXY, or pass --allow-insecure-http if you really mean it",
                field=name,
                exit_code=ExitCode.CONFIG,
            )


def _writable_file(path: Path, what: str, option: str, env: str) -> None:
    fix = f"point {option} (or {env}) at a writable file"
    if path.is_dir():
        raise GuardrailError(
            f"{what} path is a directory, not a file; {fix}", source=str(path), exit_code=ExitCode.CONFIG
        )
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise GuardrailError(
                    f"{ancestor} is a file, so {what} directory {parent} cannot exist; {fix}",
                    source=str(path),
                    exit_code=ExitCode.CONFIG,
                )
            if not os.access(ancestor, os.W_OK | os.X_OK) and ancestor == parent:
                raise GuardrailError(
                    f"{what} directory is not writable by this user; {fix}, or fix the directory's permissions",
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
    check_credentials(settings)
    if not dry_run:  # a dry run writes nothing
        check_paths(settings)
    return warnings
