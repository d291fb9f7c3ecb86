"""Fault injection for the tests: the package's fake API (guardrail/fakeapi.py) that fails on demand.

`FaultyAPI.add_fault(route=..., mode=..., ...)` makes matching requests fail in one of the ways real
servers fail: an error status (with `Retry-After`), a slow answer, a write applied but answered too late,
a connection reset, a non-atomic PATCH, or a bad body (HTML, truncated JSON, null, NaN, negative count,
string value). `pretend` answers a write with the definition it would produce and keeps nothing (a liar); `trickle`
sends headers, then one body byte every `delay` seconds, never finishing (a slow-loris peer). `latency`
delays every request; `in_flight` and `max_in_flight` count requests being handled, so a test can wait
for an event instead of a stopwatch. `/_control/faults` (POST a rule or a list, DELETE to clear)
drives it from another process: `python -m tests.fakeserver_faults` takes the package server's options
plus `--latency`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from guardrail import fakeapi
from guardrail.fakeapi import Answer, FakeAPI, Handler, Request, error_answer, json_answer

ROUTES = frozenset({"query", "flags", "patch", "force", "webhook"})
# Bodies are bytes, not dicts: `nan` and `truncated` must be invalid JSON, which json.dumps cannot produce.
CANNED: dict[str, tuple[str, bytes]] = {
    "html": ("text/html", b"<html><body>502 Bad Gateway</body></html>"),
    "truncated": ("application/json", b'{"value": 0.0'),
    "null": ("application/json", b'{"value": null, "count": null}'),
    "nan": ("application/json", b'{"value": NaN, "count": 100}'),
    "negative_count": ("application/json", b'{"value": 0.01, "count": -5}'),
    "string_value": ("application/json", b'{"value": "abc", "count": 10}'),
}
MODES = frozenset({"status", "delay", "apply_then_delay", "reset", "ignore_field", "pretend", "trickle", *CANNED})


@dataclass
class Fault:
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


def match_params(request: Request) -> dict[str, str]:
    """What a rule's `match` is checked against: the query's parameters, or the flag key of a flag route."""
    if request.route == "query":
        return request.params
    return {"flag": request.key} if request.key is not None else {}


class FaultyAPI(FakeAPI):
    """The fake API plus fault rules, checked in the order added; the first live matching rule applies."""

    def __init__(self, *, latency: float = 0.0, **kwargs: Any) -> None:
        self.latency = latency
        self._faults: list[Fault] = []
        self._in_flight = 0  # requests received and not yet answered
        self.max_in_flight = 0
        super().__init__(**kwargs)

    @property
    def in_flight(self) -> int:
        """Requests being handled now (a delayed or trickled one stays in flight)."""
        with self._lock:
            return self._in_flight

    def __enter__(self) -> FaultyAPI:
        self.start()
        return self

    def record(self, request: Request, status: int, **extra: Any) -> None:
        super().record(request, status, **{"fault": None, **extra})

    def add_fault(self, **rule: Any) -> None:
        fault = Fault(**rule)  # unknown keys raise TypeError
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pick_fault(self, request: Request) -> Fault | None:
        params = match_params(request)
        with self._lock:
            for fault in self._faults:
                exhausted = fault.times is not None and fault.applied >= fault.times
                if exhausted or not fault.matches(request.route, params):
                    continue
                fault.seen += 1
                if fault.every is not None and fault.seen % fault.every != 0:
                    continue
                fault.applied += 1
                return fault
        return None

    def control(self, method: str, what: str, body: Any) -> Answer:
        if what != "faults":
            return super().control(method, what, body)
        try:
            if method == "POST":
                for rule in body if isinstance(body, list) else [body]:
                    self.add_fault(**rule)  # a non-object, a missing or an unknown key raises TypeError
            elif method == "DELETE":
                self.clear_faults()
            else:
                return error_answer(404, "not found")
        except (ValueError, TypeError) as exc:
            return error_answer(400, str(exc))
        return json_answer(200, {"ok": True})


class FaultyHandler(Handler):
    def reply(self, request: Request) -> None:
        api = cast(FaultyAPI, self.api)
        with api._lock:
            api._in_flight += 1
            api.max_in_flight = max(api.max_in_flight, api._in_flight)
        try:
            self._reply(api, request)
        finally:
            with api._lock:
                api._in_flight -= 1

    def _reply(self, api: FaultyAPI, request: Request) -> None:
        if api.latency > 0:
            time.sleep(api.latency)
        fault = api.pick_fault(request)
        if fault is None:
            super().reply(request)
            return
        mode = fault.mode
        if mode == "reset":
            api.record(request, 0, fault=mode)
            self._reset()
            return
        time.sleep(fault.delay if mode == "delay" else 0.0)
        if mode == "trickle":
            api.record(request, 200, fault=mode)
            self._trickle(fault.delay)
            return
        if mode == "status":
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            answer = json_answer(cast(int, fault.status), {"error": f"injected status {fault.status}"}, headers)
        elif mode in CANNED:
            answer = (fault.status or 200, *CANNED[mode], {})
        elif mode == "ignore_field" and isinstance(request.body, dict):
            # A non-atomic server: one field of the PATCH is dropped, the rest applied.
            body = {k: v for k, v in request.body.items() if k != fault.field}
            answer = api.respond(dataclasses.replace(request, body=body))
        else:
            answer = api.respond(request, store=mode != "pretend")
        time.sleep(fault.delay if mode == "apply_then_delay" else 0.0)
        api.record(request, answer[0], fault=mode)
        self.send(answer)

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


FaultyAPI.handler = FaultyHandler


def main(argv: list[str] | None = None) -> int:
    cli = fakeapi.parser()
    cli.prog = "python -m tests.fakeserver_faults"
    cli.add_argument("--latency", type=float, default=0.0, help="seconds every request waits")
    args = cli.parse_args(argv)
    try:
        api = fakeapi.build(args, FaultyAPI, latency=args.latency)
    except (OSError, ValueError, TypeError) as exc:
        print(f"fakeapi: {exc}", file=sys.stderr)
        return 2
    return fakeapi.serve(api, args.port_file)


if __name__ == "__main__":
    sys.exit(main())
