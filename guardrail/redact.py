"""The last line of defence for secrets: every text that leaves the process passes through a Redactor."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

MASK = "***"
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
        return text

    def __bool__(self) -> bool:
        return bool(self._secrets)
