"""A small fake metrics + flag + webhook API: a real HTTP/1.1 server on 127.0.0.1, run on a thread.

`guardrail demo` runs against it, and so can a first real run (`python -m guardrail.fakeapi --flags FILE
--metrics FILE`). It speaks the three HTTP contracts in docs/contracts.md. The tests extend it with
fault injection (tests/fakeserver_faults.py); the server shipped here never misbehaves on purpose.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hmac
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

Json = dict[str, Any]
# (status, content type, body, extra headers)
Answer = tuple[int, str, bytes, dict[str, str]]


def json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, "application/json", json.dumps(payload).encode(), headers or {}


def error_answer(status: int, message: str) -> Answer:
    return json_answer(status, {"error": message})


@dataclass(frozen=True)
class Request:
    """One parsed request. `route` names the endpoint: query, flags, patch, force, webhook, or ''."""

    method: str
    path: str
    route: str
    key: str | None  # the flag key of /v1/flags/{key}[/force]
    params: dict[str, str]
    body: Any  # parsed JSON, or None when absent or invalid
    authorization: str | None
    received: float


class FakeAPI:
    """The server and its state. Every state access holds `_lock`; no sleep ever does."""

    handler: ClassVar[type[Handler]]

    def __init__(
        self, *, flags: dict[str, dict[str, Any]] | None = None, token: str | None = "test-token", port: int = 0
    ) -> None:
        self.token = token
        self._port = port
        self._lock = threading.Lock()
        self._flags: dict[str, Json] = {}
        self._metrics: dict[tuple[str, str, str, str | None], Json] = {}
        self._alerts: list[Any] = []
        self._requests: list[Json] = []
        self._conns: set[socket.socket] = set()
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
        # Loopback only: a helper with a known token must never be reachable from the network.
        self._server = _Server(("127.0.0.1", self._port), self.handler, self)
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

    def flag(self, key: str) -> dict[str, Any]:
        """A copy of the flag's current definition; KeyError when there is none."""
        with self._lock:
            return copy.deepcopy(self._flags[key])

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
        """Serve this aggregate; `window=None` answers every window the series is not set for."""
        series: Json = {"value": value, "count": count}
        if stddev is not None:
            series["stddev"] = stddev
        with self._lock:
            self._metrics[(flag, variant, metric, window)] = series

    def set_metrics(self, specs: Any) -> None:
        for spec in specs if isinstance(specs, list) else [specs]:
            self.set_metric(**spec)  # a non-object, a missing or an unknown key raises TypeError

    @property
    def alerts(self) -> list[Any]:
        with self._lock:
            return copy.deepcopy(self._alerts)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._requests)

    def count(self, method: str, path_prefix: str) -> int:
        method = method.upper()
        with self._lock:
            return sum(1 for r in self._requests if r["method"] == method and r["path"].startswith(path_prefix))

    def record(self, request: Request, status: int, **extra: Any) -> None:
        """Append to the request log; status 0 means the connection was closed without an answer."""
        entry: Json = {
            "method": request.method,
            "path": request.path,
            "query": request.params,
            "body": request.body,
            "status": status,
            "time": request.received,
            **extra,
        }
        with self._lock:
            self._requests.append(entry)

    # ---- the three APIs (called from handler threads) --------------------------------------------------
    def respond(self, request: Request, *, store: bool = True) -> Answer:
        """The answer to one request. `store=False` answers a write as it would be, keeping nothing."""
        route, key = request.route, request.key
        if route == "query":
            return self._query(request.params)
        if route == "flags":
            if key is None:
                with self._lock:
                    return json_answer(200, {"flags": self._flags})
            with self._lock:
                found = self._flags.get(key)
                return json_answer(200, found) if found is not None else error_answer(404, "no such flag")
        if route in ("patch", "force") and key is not None:
            if not self._authorized(request.authorization):
                return error_answer(401, "unauthorized")
            if route == "patch":
                return self._patch(key, request.body, store=store)
            return self._force(key, request.body, store=store)
        if route == "webhook":
            if request.body is None:
                return error_answer(400, "invalid_payload")
            with self._lock:
                self._alerts.append(request.body)
            return 200, "text/plain", b"ok", {}
        return error_answer(404, "not found")

    def _query(self, params: dict[str, str]) -> Answer:
        base = (params.get("flag", ""), params.get("variant", ""), params.get("metric", ""))
        with self._lock:
            series = self._metrics.get((*base, params.get("window"))) or self._metrics.get((*base, None))
            return json_answer(200, series) if series is not None else error_answer(404, "no such series")

    def _authorized(self, header: str | None) -> bool:
        expected = f"Bearer {self.token}".encode()
        return self.token is None or hmac.compare_digest((header or "").encode(), expected)

    def _patch(self, key: str, body: Any, *, store: bool = True) -> Answer:
        if not isinstance(body, dict):
            return error_answer(400, "body must be a JSON object")
        if not isinstance(body.get("metadata", {}), dict):
            return error_answer(400, "metadata must be an object")
        with self._lock:
            current = self._flags.get(key)
            if current is None:
                return error_answer(404, "no such flag")
            new = copy.deepcopy(current)
            for name, value in body.items():
                if name == "metadata":  # merged, as in JSON merge patch (RFC 7396): a null value deletes the key
                    merged = {**(new.get("metadata") or {}), **value}
                    new["metadata"] = {k: v for k, v in merged.items() if v is not None}
                else:
                    new[name] = copy.deepcopy(value)
            if "state" in body and new.get("state") not in ("ENABLED", "DISABLED"):
                return error_answer(400, "state must be ENABLED or DISABLED")
            if "defaultVariant" in body and new.get("defaultVariant") not in (new.get("variants") or {}):
                return error_answer(400, "defaultVariant must name one of the variants")
            if store:
                self._flags[key] = new
            return json_answer(200, new)

    def _force(self, key: str, body: Any, *, store: bool = True) -> Answer:
        if not isinstance(body, dict) or not isinstance(body.get("variant"), str):
            return error_answer(400, 'body must be {"variant": NAME}')
        variant = body["variant"]
        with self._lock:
            current = self._flags.get(key)
            if current is None:
                return error_answer(404, "no such flag")
            if variant not in (current.get("variants") or {}):
                return error_answer(400, f"no variant {variant!r}")
            if not store:
                current = copy.deepcopy(current)
            current["defaultVariant"] = variant
            current.pop("targeting", None)  # without targeting every user gets the default variant
            current.setdefault("metadata", {})["guardrail_forced_variant"] = variant
            return json_answer(200, copy.deepcopy(current))

    # ---- control plane: lets a shell or another process set and read the state -------------------------
    def control(self, method: str, what: str, body: Any) -> Answer:
        try:
            if method == "GET" and what in ("alerts", "requests"):
                return json_answer(200, self.alerts if what == "alerts" else self.requests)
            if method == "GET" and what == "flags":
                with self._lock:
                    return json_answer(200, {"flags": self._flags})
            if method == "POST" and what == "metrics":
                self.set_metrics(body)
            elif method == "POST" and what == "flags":
                if not isinstance(body, dict) or not isinstance(body.get("flags"), dict):
                    raise ValueError('body must be {"flags": {...}}')
                self.set_flags(body["flags"])
            else:
                return error_answer(404, "not found")
        except (ValueError, TypeError) as exc:
            return error_answer(400, str(exc))
        return json_answer(200, {"ok": True})


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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # bounds threads parked on idle keep-alive connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: Nagle would add 40 ms to each

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
        received = time.time()
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.split("/") if p]
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if parts[:1] == ["_control"]:
            self.send(self.api.control(self.command, "/".join(parts[1:]), body))
            return
        key = parts[2] if parts[:2] == ["v1", "flags"] and len(parts) > 2 else None
        route = _route(self.command, parts, key)
        self.reply(
            Request(self.command, split.path, route, key, params, body, self.headers.get("Authorization"), received)
        )

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

    def reply(self, request: Request) -> None:
        answer = self.api.respond(request)
        self.api.record(request, answer[0])
        self.send(answer)

    def send(self, answer: Answer) -> None:
        status, content_type, payload, headers = answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


FakeAPI.handler = Handler


def _route(method: str, parts: list[str], key: str | None) -> str:
    if method == "POST" and parts[:1] == ["webhook"]:
        # Real webhook URLs carry their secret in the path (/services/T…/B…/…): accept any path below.
        return "webhook"
    shape = "/".join("*" if i == 2 and key else p for i, p in enumerate(parts))
    routes = {
        ("GET", "query"): "query",
        ("GET", "v1/flags"): "flags",
        ("GET", "v1/flags/*"): "flags",
        ("PATCH", "v1/flags/*"): "patch",
        ("PUT", "v1/flags/*/force"): "force",
    }
    return routes.get((method, shape), "")


# ---- command line ----------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m guardrail.fakeapi", description=__doc__.split("\n\n")[0])
    cli.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    cli.add_argument("--flags", help="flagd file (YAML or JSON) with top-level 'flags'")
    cli.add_argument("--metrics", help='JSON list of {"flag", "variant", "metric", "value", "count"} objects')
    cli.add_argument("--token", default="test-token", help="bearer token for writes; '' disables auth")
    cli.add_argument("--port-file", help="write the URL here once listening")
    return cli


def build(args: argparse.Namespace, api_class: type[FakeAPI] = FakeAPI, **extra: Any) -> FakeAPI:
    """The server the parsed arguments describe; raises OSError/ValueError/TypeError on bad input."""
    flags = _load_flags(args.flags) if args.flags else None
    api = api_class(flags=flags, token=args.token or None, port=args.port, **extra)
    if args.metrics:
        with open(args.metrics, encoding="utf-8") as fh:
            api.set_metrics(json.load(fh))
    return api


def serve(api: FakeAPI, port_file: str | None) -> int:
    """Run until SIGTERM or SIGINT."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        api.start()
    except OSError as exc:  # e.g. the port is taken
        print(f"fakeapi: cannot listen on 127.0.0.1:{api._port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"fakeapi listening on {api.url}", flush=True)
    if port_file:
        # Written whole then renamed, so a poller never reads half a URL.
        tmp = f"{port_file}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(api.url)
        os.replace(tmp, port_file)
    while not stopping.wait(0.2):
        pass
    api.stop()
    return 0


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
    args = parser().parse_args(argv)
    try:
        api = build(args)
    except (OSError, ValueError, TypeError) as exc:
        print(f"fakeapi: {exc}", file=sys.stderr)
        return 2
    return serve(api, args.port_file)


if __name__ == "__main__":
    sys.exit(main())
