"""A fake metrics + flag + webhook API: a real HTTP/1.1 server on 127.0.0.1, run on a thread.

End-to-end tests, the demo, fault tests and benchmarks run the real client code against it, not a mock.
Control-plane routes (`/_control/...`) let a subprocess or a shell script drive it as Python code does.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hmac
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

ROUTES = frozenset({"query", "flags", "patch", "force", "webhook"})
# Bodies are bytes, not dicts: `nan` and `truncated` must be invalid JSON, which json.dumps cannot produce.
_CANNED: dict[str, tuple[str, bytes]] = {
    "html": ("text/html", b"<html><body>502 Bad Gateway</body></html>"),
    "truncated": ("application/json", b'{"value": 0.0'),
    "null": ("application/json", b'{"value": null, "count": null}'),
    "nan": ("application/json", b'{"value": NaN, "count": 100}'),
    "negative_count": ("application/json", b'{"value": 0.01, "count": -5}'),
    "string_value": ("application/json", b'{"value": "abc", "count": 10}'),
}
# pretend: a write answers 200 with the definition it would produce, and stores nothing (a liar).
# trickle: headers, then one body byte every `delay` seconds, never finishing (a slow-loris peer).
MODES = frozenset({"status", "delay", "apply_then_delay", "reset", "ignore_field", "pretend", "trickle", *_CANNED})

Json = dict[str, Any]
# (status, content type, body, extra headers)
Answer = tuple[int, str, bytes, dict[str, str]]


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, "application/json", json.dumps(payload).encode(), headers or {}


def _error(status: int, message: str) -> Answer:
    return _json(status, {"error": message})


@dataclass
class _Fault:
    route: str
    mode: str
    match: dict[str, Any] = dataclasses.field(default_factory=dict)
    times: int | None = None
    every: int | None = None
    status: int | None = None
    retry_after: float | str | None = None
    delay: float = 0.0
    field: str | None = None
    seen: int = 0  # matching requests so far; drives `every`
    applied: int = 0  # requests it answered; drives `times`

    def __post_init__(self) -> None:
        # A rule that cannot fire would make a reliability test pass for the wrong reason: refuse it.
        if self.route not in ROUTES or self.mode not in MODES:
            raise ValueError(f"route must be one of {sorted(ROUTES)} and mode one of {sorted(MODES)}")
        if not isinstance(self.match, dict):
            raise ValueError("fault match must be an object")
        self.match = {str(k): str(v) for k, v in self.match.items()}
        if any(n is not None and (type(n) is not int or n < 1) for n in (self.times, self.every)):
            raise ValueError("fault times and every must be positive integers")
        if self.mode == "status" and type(self.status) is not int:
            raise ValueError("mode 'status' needs an integer 'status'")
        if self.mode in ("delay", "apply_then_delay", "trickle") and not isinstance(self.delay, int | float):
            raise ValueError(f"mode {self.mode!r} needs a number 'delay'")
        if self.mode == "ignore_field" and not isinstance(self.field, str):
            raise ValueError("mode 'ignore_field' needs a string 'field'")

    def matches(self, route: str, params: Mapping[str, str]) -> bool:
        return route == self.route and all(params.get(k) == v for k, v in self.match.items())


class FakeAPI:
    """The fake server and its state. Every state access holds `_lock`; no sleep ever does."""

    def __init__(
        self,
        *,
        flags: dict[str, dict[str, Any]] | None = None,
        token: str | None = "test-token",
        latency: float = 0.0,
        port: int = 0,
    ) -> None:
        self.token = token
        self.latency = latency
        self._port = port
        self._lock = threading.Lock()
        self._flags: dict[str, Json] = {}
        self._metrics: dict[tuple[str, str, str, str | None], Json] = {}
        self._faults: list[_Fault] = []
        self._alerts: list[Any] = []
        self._requests: list[Json] = []
        self._conns: set[socket.socket] = set()
        self._in_flight = 0  # requests received and not yet answered (events for tests, not timing)
        self.max_in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.set_flags(flags or {})

    # ---- lifecycle -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeAPI is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeAPI:
        if self._server is not None:
            return self
        # Loopback only: a test helper with a known token must never be reachable from the network.
        self._server = _Server(("127.0.0.1", self._port), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakeapi", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        # Idle keep-alive connections would otherwise keep being answered after stop(), hiding outages.
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAPI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- state -----------------------------------------------------------------------------------------
    def set_flags(self, flags: dict[str, dict[str, Any]]) -> None:
        if not isinstance(flags, dict) or not all(isinstance(v, dict) for v in flags.values()):
            raise ValueError("flags must map each key to a definition object")
        with self._lock:
            self._flags = copy.deepcopy(flags)

    def flag(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._flags.get(key)
            return copy.deepcopy(found) if found is not None else None

    def set_metric(
        self,
        flag: str,
        variant: str,
        metric: str,
        value: float | None,
        count: int | None,
        stddev: float | None = None,
        *,
        window: str | None = None,
    ) -> None:
        series: Json = {"value": value, "count": count}
        if stddev is not None:
            series["stddev"] = stddev
        with self._lock:
            self._metrics[(flag, variant, metric, window)] = series

    def add_fault(self, **rule: Any) -> None:
        fault = _Fault(**rule)  # unknown keys raise TypeError
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def alerts(self) -> list[Any]:
        with self._lock:
            return copy.deepcopy(self._alerts)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._requests)

    @property
    def in_flight(self) -> int:
        """Requests received and not answered yet (a delayed or trickled one stays in flight)."""
        with self._lock:
            return self._in_flight

    def count(self, method: str, path_prefix: str) -> int:
        method = method.upper()
        with self._lock:
            return sum(
                1 for r in self._requests if r["method"] == method and r["path"].startswith(path_prefix)
            )

    # ---- request handling (called from handler threads) ------------------------------------------------
    def _pick_fault(self, route: str, params: Mapping[str, str]) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                exhausted = fault.times is not None and fault.applied >= fault.times
                if exhausted or not fault.matches(route, params):
                    continue
                fault.seen += 1
                if fault.every is not None and fault.seen % fault.every != 0:
                    continue
                fault.applied += 1
                return fault
        return None

    def _set_metrics(self, specs: Any) -> None:
        for spec in specs if isinstance(specs, list) else [specs]:
            self.set_metric(**spec)  # a non-object, a missing or an unknown key raises TypeError

    def _query(self, params: Mapping[str, str]) -> Answer:
        base = (params.get("flag", ""), params.get("variant", ""), params.get("metric", ""))
        with self._lock:
            series = self._metrics.get((*base, params.get("window"))) or self._metrics.get((*base, None))
            return _json(200, series) if series is not None else _error(404, "no such series")

    def _authorized(self, header: str | None) -> bool:
        expected = f"Bearer {self.token}".encode()
        return self.token is None or hmac.compare_digest((header or "").encode(), expected)

    def _patch(self, key: str, body: Any, ignore: str | None, *, store: bool = True) -> Answer:
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        if not isinstance(body.get("metadata", {}), dict):
            return _error(400, "metadata must be an object")
        with self._lock:
            current = self._flags.get(key)
            if current is None:
                return _error(404, "no such flag")
            new = copy.deepcopy(current)
            applied = [name for name in body if name != ignore]  # ignore: a non-atomic server drops one field
            for name in applied:
                value = body[name]
                if name == "metadata":  # merged, as in JSON merge patch: a null value deletes the key
                    merged = {**(new.get("metadata") or {}), **value}
                    new["metadata"] = {k: v for k, v in merged.items() if v is not None}
                else:
                    new[name] = copy.deepcopy(value)
            if "state" in applied and new.get("state") not in ("ENABLED", "DISABLED"):
                return _error(400, "state must be ENABLED or DISABLED")
            if "defaultVariant" in applied and new.get("defaultVariant") not in (new.get("variants") or {}):
                return _error(400, "defaultVariant must name one of the variants")
            if store:
                self._flags[key] = new
            return _json(200, new)

    def _force(self, key: str, body: Any, *, store: bool = True) -> Answer:
        if not isinstance(body, dict) or not isinstance(body.get("variant"), str):
            return _error(400, 'body must be {"variant": NAME}')
        variant = body["variant"]
        with self._lock:
            current = self._flags.get(key)
            if current is None:
                return _error(404, "no such flag")
            if variant not in (current.get("variants") or {}):
                return _error(400, f"no variant {variant!r}")
            if not store:
                current = copy.deepcopy(current)
            current["defaultVariant"] = variant
            current.pop("targeting", None)  # without targeting every user gets the default variant
            current.setdefault("metadata", {})["guardrail_forced_variant"] = variant
            return _json(200, copy.deepcopy(current))

    def _all_flags(self) -> Answer:
        with self._lock:
            return _json(200, {"flags": self._flags})

    def _control(self, method: str, what: str, body: Any) -> Answer:
        try:
            if method == "GET" and what in ("alerts", "requests"):
                return _json(200, self.alerts if what == "alerts" else self.requests)
            if method == "GET" and what == "flags":
                return self._all_flags()
            if method == "POST" and what == "metrics":
                self._set_metrics(body)
            elif method == "POST" and what == "flags":
                if not isinstance(body, dict) or not isinstance(body.get("flags"), dict):
                    raise ValueError('body must be {"flags": {...}}')
                self.set_flags(body["flags"])
            elif method == "POST" and what == "faults":
                for rule in body if isinstance(body, list) else [body]:
                    self.add_fault(**rule)  # a non-object, a missing or an unknown key raises TypeError
            elif method == "DELETE" and what == "faults":
                self.clear_faults()
            else:
                return _error(404, "not found")
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        return _json(200, {"ok": True})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # benchmarks open many connections at once; the default 5 drops SYNs

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], api: FakeAPI) -> None:
        self.api = api
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and hang up are part of the tests; their broken pipes are not news.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # bounds threads parked on idle keep-alive connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: Nagle would add 40 ms to each
    parts: list[str]
    params: dict[str, str]
    body: Any

    @property
    def api(self) -> FakeAPI:
        return cast(_Server, self.server).api

    def setup(self) -> None:
        super().setup()
        with self.api._lock:
            self.api._conns.add(self.connection)

    def finish(self) -> None:
        with self.api._lock:
            self.api._conns.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # thousands of requests per benchmark: stderr is for real problems

    def _handle(self) -> None:
        api = self.api
        with api._lock:
            api._in_flight += 1
            api.max_in_flight = max(api.max_in_flight, api._in_flight)
        try:
            self._handle_counted()
        finally:
            with api._lock:
                api._in_flight -= 1

    def _handle_counted(self) -> None:
        received, method = time.time(), self.command
        split = urlsplit(self.path)
        self.parts = [unquote(p) for p in split.path.split("/") if p]
        self.params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self.body = json.loads(raw) if raw else None
        except ValueError:
            self.body = None
        api = self.api
        if self.parts[:1] == ["_control"]:
            self._send(api._control(method, "/".join(self.parts[1:]), self.body))
            return
        if api.latency > 0:
            time.sleep(api.latency)
        route, match_params = self._route()
        fault = api._pick_fault(route, match_params)
        mode, delay = (fault.mode, fault.delay) if fault is not None else ("", 0.0)
        entry: Json = {"method": method, "path": split.path, "query": self.params, "body": self.body}
        entry.update(status=0, time=received, fault=mode or None)
        if mode == "reset":
            self._log(entry)
            self._reset()
            return
        time.sleep(delay if mode == "delay" else 0.0)
        if mode == "trickle":
            self._log(entry)
            self._trickle(delay)
            return
        if fault is not None and mode == "status":
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            answer = _json(cast(int, fault.status), {"error": f"injected status {fault.status}"}, headers)
        elif fault is not None and mode in _CANNED:
            answer = (fault.status or 200, *_CANNED[mode], {})
        else:
            ignore = fault.field if fault is not None and mode == "ignore_field" else None
            answer = self._answer(route, ignore, store=mode != "pretend")
        time.sleep(delay if mode == "apply_then_delay" else 0.0)
        entry["status"] = answer[0]
        self._log(entry)
        self._send(answer)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

    def _route(self) -> tuple[str, dict[str, str]]:
        """The endpoint's name, and the parameters a fault rule's `match` is checked against."""
        method, parts = self.command, self.parts
        key = {"flag": parts[2]} if parts[:2] == ["v1", "flags"] and len(parts) > 2 else {}
        routes = {
            ("GET", "query"): ("query", self.params),
            ("GET", "v1/flags"): ("flags", key),
            ("GET", "v1/flags/*"): ("flags", key),
            ("PATCH", "v1/flags/*"): ("patch", key),
            ("PUT", "v1/flags/*/force"): ("force", key),
            ("POST", "webhook"): ("webhook", {}),
            ("GET", "webhook/last"): ("webhook_last", {}),
            ("POST", "inject"): ("inject", {}),
        }
        shape = "/".join("*" if i == 2 and key else p for i, p in enumerate(parts))
        if method == "POST" and parts[:1] == ["webhook"]:
            # Real webhook URLs carry their secret in the path (/services/T…/B…/…): accept any path below.
            return ("webhook", {})
        return routes.get((method, shape), ("", {}))

    def _answer(self, route: str, ignore: str | None, *, store: bool = True) -> Answer:
        api, body, key = self.api, self.body, self.parts[2] if len(self.parts) > 2 else None
        if route == "query":
            return api._query(self.params)
        if route == "flags":
            if key is None:
                return api._all_flags()
            found = api.flag(key)
            return _json(200, found) if found is not None else _error(404, "no such flag")
        if route in ("patch", "force") and key is not None:
            if not api._authorized(self.headers.get("Authorization")):
                return _error(401, "unauthorized")
            if route == "patch":
                return api._patch(key, body, ignore, store=store)
            return api._force(key, body, store=store)
        if route == "webhook":
            if body is None:
                return _error(400, "invalid_payload")
            with api._lock:
                api._alerts.append(body)
            return 200, "text/plain", b"ok", {}
        if route == "webhook_last":
            with api._lock:
                return _json(200, api._alerts[-1]) if api._alerts else _error(404, "no alert yet")
        if route == "inject":
            try:
                api._set_metrics(body if isinstance(body, dict) else [])
            except (ValueError, TypeError) as exc:
                return _error(400, str(exc))
            return _json(200, {"ok": True})
        return _error(404, "not found")

    def _log(self, entry: Json) -> None:
        with self.api._lock:
            self.api._requests.append(entry)

    def _send(self, answer: Answer) -> None:
        status, content_type, payload, headers = answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _trickle(self, every: float) -> None:
        """A 200 whose body never ends: one byte per `every` seconds until the client hangs up or the
        server stops. Each byte arrives well within a per-read timeout; only a total deadline ends it."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        with contextlib.suppress(OSError, ValueError):
            self.wfile.write(b"{")
            self.wfile.flush()
            while self.api._server is not None:
                time.sleep(every)
                self.wfile.write(b" ")
                self.wfile.flush()

    def _reset(self) -> None:
        # Linger 0 makes close() send RST instead of FIN: the client sees a reset, not a clean close.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # makefile() holds the descriptor open until closed
            self.connection.close()


def _load_flags(path: str) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        if path.endswith(".json"):
            doc = json.load(fh)
        else:
            import yaml  # only the command line reads YAML; importing the server stays stdlib-only

            doc = yaml.safe_load(fh)
    if not isinstance(doc, dict) or not isinstance(doc.get("flags"), dict):
        raise ValueError(f"{path}: expected a top-level 'flags' mapping")
    return cast(dict[str, dict[str, Any]], doc["flags"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guardrail.fakeapi", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--flags", help="flagd file (YAML or JSON) with top-level 'flags'")
    parser.add_argument("--metrics", help="JSON list of set_metric arguments")
    parser.add_argument("--token", default="test-token", help="bearer token for writes; '' disables auth")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port-file", help="write the URL here once listening")
    args = parser.parse_args(argv)

    try:
        flags = _load_flags(args.flags) if args.flags else None
        api = FakeAPI(flags=flags, token=args.token or None, latency=args.latency, port=args.port)
        if args.metrics:
            with open(args.metrics, encoding="utf-8") as fh:
                specs = json.load(fh)
            api._set_metrics(specs)
    except (OSError, ValueError, TypeError) as exc:
        print(f"fakeapi: {exc}", file=sys.stderr)
        return 2

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    api.start()
    print(f"fakeapi listening on {api.url}", flush=True)
    if args.port_file:
        # Written whole then renamed, so a poller never reads half a URL.
        tmp = f"{args.port_file}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(api.url)
        os.replace(tmp, args.port_file)
    while not stopping.wait(0.2):
        pass
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
