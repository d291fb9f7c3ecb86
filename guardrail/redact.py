"""The last line of defence for secrets: every text that leaves the process passes through a Redactor."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# `scheme://user:password@host`: httpx sends the userinfo as basic auth, so it is a credential wherever it
# appears, whatever the URL (flag API, metrics, a webhook, a link in an alert).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]*@")


def display_url(url: str) -> str:
    """`url` without its userinfo, for messages, links and state."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# Every secret the settings of this process hold (guardrail.settings.load_settings adds them), so the
# CLI's error boundary and the log writer mask them too, whatever adapter they belong to.
_KNOWN: set[str] = set()
STANDARD_VARIABLES = ("FLAG_API_TOKEN", "ALERT_WEBHOOK_URL")


def remember(secrets: Iterable[str | None]) -> None:
    _KNOWN.update(s for s in secrets if s)


def process_redactor(extra: Iterable[str | None] = ()) -> Redactor:
    """The secrets this process knows: from the settings, the standard variables, and `extra`."""
    import os

    return Redactor([*_KNOWN, *(os.environ.get(v) for v in STANDARD_VARIABLES), *extra])


class Redactor:
    def __init__(self, secrets: Iterable[str | None]) -> None:
        found: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < 4:
                continue
            found.add(secret)
            userinfo = urlsplit(secret).netloc.rpartition("@")[0]
            if len(userinfo) >= 4:
                found.add(userinfo)
            # A webhook URL's path is the secret part; it may also show up without the scheme and host.
            parts = urlsplit(secret)
            if parts.scheme and parts.path and len(parts.path) > 8:
                found.add(parts.path)
        # Longest first, so a URL is masked whole before its path is.
        self._secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "@" in text:
            text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
        return text

    def __bool__(self) -> bool:
        return bool(self._secrets)
