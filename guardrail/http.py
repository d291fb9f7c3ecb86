"""Shared HTTP plumbing for the adapters: one client per run, retries with backoff, safe error text.

Every message built here names the operation, never the URL: the webhook URL is itself a secret and a
token must never reach output, so callers pass a human label ("metrics query", "alert webhook").
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from guardrail.model import ExitCode, GuardrailError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # total tries, not extra ones
    backoff: float = 0.2  # first pause; doubles each time, with jitter
    max_backoff: float = 2.0
    # A cron run every two minutes cannot wait long for one answer; a longer Retry-After is capped.
    max_retry_after: float = 5.0


class HTTPFailure(Exception):
    """A request that did not produce a usable answer after the retries. `kind` is a short cause."""

    def __init__(self, label: str, kind: str, *, status: int | None = None, detail: str = "") -> None:
        self.label = label
        self.kind = kind
        self.status = status
        self.detail = detail
        text = f"{label}: {kind}"
        if status is not None:
            text += f" (HTTP {status})"
        if detail:
            text += f": {detail}"
        super().__init__(text)

    @property
    def permanent(self) -> bool:
        """A 4xx other than 408/429: asking again will not change the answer."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)


def make_client(
    *,
    timeout: float = 10.0,
    concurrency: int = 32,
    ca_bundle: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One pooled client for a whole run. TLS is verified unless a CA bundle replaces the default."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        limits=limits,
        verify=ca_bundle if ca_bundle else True,
        transport=transport,
        follow_redirects=False,
        headers={"User-Agent": "guardrail"},
    )


def _retry_after(response: httpx.Response, policy: RetryPolicy) -> float | None:
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            import datetime as _dt

            when = parsedate_to_datetime(raw)
            seconds = (when - _dt.datetime.now(when.tzinfo)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, policy.max_retry_after))


def _classify(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return "connection reset"
    return "transport error"


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    label: str,
    policy: RetryPolicy = RetryPolicy(),
    retry_statuses: Iterable[int] = RETRY_STATUSES,
    ok_statuses: Iterable[int] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request, retrying connect errors, timeouts, resets, 429 and 5xx with backoff.

    Returns the first response whose status is in `ok_statuses` (default: any 2xx). Raises HTTPFailure
    otherwise, with a message that never contains the URL or headers.
    """
    retry_set = frozenset(retry_statuses)
    last: HTTPFailure | None = None
    for attempt in range(1, policy.attempts + 1):
        pause = min(policy.max_backoff, policy.backoff * (2 ** (attempt - 1))) * (0.5 + random.random() / 2)
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            last = HTTPFailure(label, _classify(exc))
        else:
            ok = (
                response.status_code in ok_statuses
                if ok_statuses is not None
                else 200 <= response.status_code < 300
            )
            if ok:
                return response
            last = HTTPFailure(label, "error status", status=response.status_code)
            if response.status_code not in retry_set:
                raise last
            hinted = _retry_after(response, policy)
            if hinted is not None:
                pause = hinted
        if attempt < policy.attempts:
            await asyncio.sleep(pause)
    assert last is not None
    raise last


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_transport(url: str, *, allow_insecure_http: bool, what: str = "FLAG_API_URL") -> None:
    """A bearer token over plain http can be read by anyone on the path; only loopback is exempt."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "https" or allow_insecure_http or is_loopback(url):
        return
    raise GuardrailError(
        f"refusing to send the API token over plain {scheme or 'unknown scheme'} to a non-loopback host; "
        "use https, or pass --allow-insecure-http if you really mean it",
        field=what,
        exit_code=ExitCode.CONFIG,
    )


def json_body(response: httpx.Response) -> Any:
    """Parse a JSON body; raise ValueError with a short cause (HTML error pages, truncation)."""
    ctype = response.headers.get("content-type", "")
    text = response.text
    if "html" in ctype or text.lstrip().startswith("<"):
        raise ValueError("answer is HTML, not JSON (a proxy or error page?)")
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"answer is not valid JSON ({exc.msg} at char {exc.pos})") from None
