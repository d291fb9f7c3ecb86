"""Shared HTTP plumbing for the adapters: one client per run, retries with backoff, safe error text.

Every message built here names the operation, never the URL: the webhook URL is itself a secret and a
token must never reach output, so callers pass a human label ("metrics query", "alert webhook").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
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
        if self.kind == "deadline":
            return FailureKind.DEADLINE
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
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, release),
            extensions=response.extensions,
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


# ---- deadlines -------------------------------------------------------------------------------------------
# httpx's timeouts bound each socket operation (connect, each read, each write), not a call: a peer that
# sends one byte every few seconds never trips a 5 s read timeout and keeps a run, and its state lock,
# alive for as long as it likes. So every call here also runs under a total deadline (the per-call
# timeout), and a whole run under a budget (`run_budget`): past it, no new read starts.

# Monotonic time at which the run's budget ends; None = no budget (library use, tests).
_RUN_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("guardrail_run_deadline", default=None)
# Inside `side_effect()`: the write a run decided, and the reads that verify it, are not stopped by the
# budget (each try still has its total deadline): a halt is the point of the run.
_SIDE_EFFECT: contextvars.ContextVar[bool] = contextvars.ContextVar("guardrail_side_effect", default=False)


@contextlib.contextmanager
def run_budget(seconds: float | None) -> Iterator[None]:
    """Give every request made inside (on this task and the tasks it starts) a shared end time."""
    token = _RUN_DEADLINE.set(None if seconds is None else time.monotonic() + max(0.0, seconds))
    try:
        yield
    finally:
        _RUN_DEADLINE.reset(token)


@contextlib.contextmanager
def side_effect() -> Iterator[None]:
    token = _SIDE_EFFECT.set(True)
    try:
        yield
    finally:
        _SIDE_EFFECT.reset(token)


def budget_left() -> float | None:
    """Seconds left in the run's budget (None when there is none)."""
    deadline = _RUN_DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def _call_deadline(client: httpx.AsyncClient, method: str, kwargs: dict[str, Any]) -> float:
    """The total time one try may take: the per-call timeout, cut to what the run budget has left. Writes
    (a halt, an alert about it) and the reads inside `side_effect()` are not cut: they are what the run
    decided to do, and each is still bounded by the per-call timeout and the retry count."""
    given = kwargs.get("timeout")
    if isinstance(given, (int, float)):
        total = float(given)
    else:
        timeout = given if isinstance(given, httpx.Timeout) else client.timeout
        parts = [t for t in (timeout.read, timeout.connect, timeout.write, timeout.pool) if t is not None]
        total = max(parts) if parts else 30.0
    left = budget_left()
    if left is not None and not _exempt(method):
        total = min(total, left)
    return total


def _exempt(method: str) -> bool:
    return method.upper() != "GET" or _SIDE_EFFECT.get()


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


def _classify(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)  # an ExceptionGroup (3.11+): anyio's task groups wrap errors
    if isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
        return _classify(inner[0])
    if isinstance(exc, (httpx.TimeoutException, TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol, OverflowError, UnicodeError)):
        return "invalid URL"
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
        total = _call_deadline(client, method, kwargs)
        if total <= 0:
            raise last or HTTPFailure(label, "deadline", detail="the run's time budget is spent; not sent")
        try:
            # A total deadline for the whole try: connect, send, and the body however slowly it comes.
            response = await asyncio.wait_for(client.request(method, url, **kwargs), timeout=total)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            last = HTTPFailure(label, _classify(exc))
            if last.kind == "invalid URL":
                raise last from None  # asking again cannot fix the URL
        else:
            ok = response.status_code in ok_statuses if ok_statuses is not None else 200 <= response.status_code < 300
            if ok:
                return response
            last = HTTPFailure(label, "error status", status=response.status_code)
            if response.status_code not in retry_set:
                raise last
            hinted = _retry_after(response, policy)
            if hinted is not None:
                pause = hinted
        if attempt < policy.attempts:
            left = budget_left()
            if left is not None and not _exempt(method) and left <= pause:
                break  # no time for another try: fail now with the real cause
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


def url_problem(url: str) -> str | None:
    """Why `url` cannot be requested (checked at start, so a typo is not found only at halt time), or None.
    The text never repeats the URL: some URLs are secrets."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of 0-65535 or not a number
    except ValueError as exc:
        return f"bad port ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme must be http or https, got {parts.scheme or 'none'!r}"
    if not parts.hostname:
        return "no host"
    if port == 0:
        return "port 0"
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        return f"not accepted by the HTTP client ({type(exc).__name__})"
    return None


def proxy_for(url: str) -> str | None:
    """The proxy httpx would send a request for `url` through (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY), or None.
    Uses httpx's own matching so the answer is where the bytes really go."""
    from httpx._utils import URLPattern, get_environment_proxies  # the same code httpx's client runs

    target = httpx.URL(url)
    mounts = sorted(((URLPattern(k), v) for k, v in get_environment_proxies().items()), key=lambda kv: kv[0])
    for pattern, proxy in mounts:
        if pattern.matches(target):
            return proxy
    return None


def cleartext_hop(url: str) -> str | None:
    """The host that would read a request to `url` in clear (a non-loopback server, or an http proxy that
    is not on loopback), or None when the bytes stay encrypted or on this machine. A plain-http URL on
    loopback is only safe when no proxy sits between: with HTTP_PROXY set, the request goes to the proxy."""
    if urlsplit(url).scheme.lower() == "https":
        return None  # through a proxy, https is tunnelled (CONNECT): the proxy sees ciphertext
    proxy = proxy_for(url)
    if proxy is not None:
        return None if is_loopback(proxy) else f"the proxy {urlsplit(proxy).hostname} (HTTP_PROXY/ALL_PROXY)"
    return None if is_loopback(url) else f"the non-loopback host {urlsplit(url).hostname}"


def check_token_transport(
    url: str, *, allow_insecure_http: bool, what: str = "FLAG_API_URL", secret: str = "the API token"
) -> None:
    """A bearer token (or URL credentials) over plain http can be read by anyone on the path; only loopback
    is exempt, and only when no proxy stands between."""
    hop = cleartext_hop(url)
    if hop is None or allow_insecure_http:
        return
    scheme = urlsplit(url).scheme.lower()
    raise GuardrailError(
        f"refusing to send {secret} over plain {scheme or 'unknown scheme'} to {hop}; use https, set NO_PROXY "
        "for a local API behind HTTP_PROXY, or pass --allow-insecure-http if you really mean it",
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
