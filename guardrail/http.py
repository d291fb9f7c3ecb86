"""Shared HTTP plumbing for the adapters: one client per run, retries with backoff, safe error text.

Every message built here names the operation, never the URL: the webhook URL is itself a secret and a
token must never reach output, so callers pass a human label ("metrics query", "alert webhook").
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies

import httpx

from guardrail.model import ExitCode, FailureKind, GuardrailError

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
        self.applied_anyway = False  # set by a caller that saw the write applied despite the failure
        self.status = status
        self.detail = detail
        text = f"{label}: {kind}"
        if status is not None:
            text += f" (HTTP {status})"
        if detail:
            text += f": {detail}"
        super().__init__(text)

    @property
    def failure(self) -> FailureKind:
        """The failure's kind, for self-metrics and alerts (never parsed from the text)."""
        if self.status is not None:
            return FailureKind.of_status(self.status)
        if self.kind == "timeout":
            return FailureKind.TIMEOUT
        return FailureKind.UNREACHABLE

    @property
    def permanent(self) -> bool:
        """A 4xx other than 408/429: asking again will not change the answer."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)


# Connections per httpcore pool. httpcore 1.0's pool rescans every connection, polling each idle socket,
# on every request and every release, and its keep-alive check is quadratic in the pool size
# (encode/httpx#3215, encode/httpcore#1035). 1,200 queries at 20 ms latency, 64 in flight: one pool of 64
# took 5-7 s, all of it client CPU; the fetch over pools of 1-2 takes ~0.72 s, of 4 ~0.85 s, of 8 ~0.95 s.
POOL_SIZE = 2


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells the pool set when it is closed: its connection is free again then."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        release, self._release = self._release, None  # httpx may close twice; count once
        try:
            await self._inner.aclose()
        finally:
            if release is not None:
                release()


class PoolSet(httpx.AsyncBaseTransport):
    """`connections` connections in small httpcore pools behind one transport (see POOL_SIZE); each
    request goes to the pool with the most free connections, so none queues while another has room."""

    def __init__(self, *, connections: int, verify: Any) -> None:
        count = max(1, -(-connections // POOL_SIZE))
        self._sizes = [connections // count + (i < connections % count) for i in range(count)]
        # One SSL context for every pool: building one loads the CA bundle (~10 ms each).
        context = httpx.create_ssl_context(verify=verify)
        self._pools = [
            httpx.AsyncHTTPTransport(
                verify=context, limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)
            )
            for n in self._sizes
        ]
        self._busy = [0] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = max(range(len(self._pools)), key=lambda i: self._sizes[i] - self._busy[i])
        self._busy[index] += 1

        def release() -> None:
            self._busy[index] -= 1

        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code, headers=response.headers,
            stream=_ReleasingStream(response.stream, release), extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def make_client(
    *,
    timeout: float = 10.0,
    concurrency: int = 32,
    ca_bundle: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One pooled client for a whole run. TLS is verified unless a CA bundle replaces the default."""
    verify: Any = ca_bundle if ca_bundle else True
    # httpx applies HTTP(S)_PROXY/ALL_PROXY only to the transport it builds itself: behind a proxy, keep it.
    if transport is None and not {"http", "https", "all"} & getproxies().keys():
        transport = PoolSet(connections=concurrency, verify=verify)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        limits=limits,
        verify=verify,
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
