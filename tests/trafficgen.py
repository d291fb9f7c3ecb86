"""A traffic generator: fake per-variant HTTP traffic for one flag, exposed as Prometheus metrics.

It exports, labelled {flag, variant}:
  http_requests_total                 counter
  http_request_errors_total           counter
  http_request_duration_seconds       histogram (buckets around 0.05-2.5 s, for a p95 of ~0.1-0.5 s)
from its own prometheus_client registry on 127.0.0.1, and a background thread adds traffic at a set rate
per variant, with a set error rate and a log-normal latency per variant (seeded, so runs are comparable).
It stops by itself after `duration` seconds, so a forgotten one cannot run forever.

Importable (the Prometheus end-to-end test starts several) and runnable:

    python tests/trafficgen.py --port 9101 --flag checkout.payments.express-pay \
        --error-rate control=0.01 --error-rate treatment=0.03 --rps 200 \
        --latency control=0.12 --latency treatment=0.12 --duration 300
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# Log-normal spread of latencies: with a median m, p95 = m * exp(1.645 * 0.3) ~= 1.64 m.
LATENCY_SIGMA = 0.3


class TrafficGenerator:
    """Serve the metrics of one flag's variants and keep adding traffic until stop() or `duration`."""

    def __init__(
        self,
        flag: str,
        *,
        error_rates: Mapping[str, float],
        latencies: Mapping[str, float] | None = None,
        rps: float = 200.0,
        duration: float = 300.0,
        port: int = 0,
        host: str = "127.0.0.1",
        seed: int = 1,
        tick: float = 0.05,
    ) -> None:
        if not error_rates:
            raise ValueError("need at least one variant (error_rates)")
        for variant, p in error_rates.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"error rate of {variant!r} must be in [0, 1], got {p}")
        latencies = dict(latencies or {})
        unknown = set(latencies) - set(error_rates)
        if unknown:
            raise ValueError(f"latency given for variants without an error rate: {sorted(unknown)}")
        self.flag = flag
        self.error_rates = dict(error_rates)
        self.latencies = {v: latencies.get(v, 0.12) for v in error_rates}  # median seconds per variant
        self.rps = rps  # requests per second, per variant
        self.duration = duration
        self.host = host
        self.requested_port = port
        self.tick = tick
        self.rng = random.Random(seed)
        self.registry = CollectorRegistry()
        labels = ("flag", "variant")
        self.requests = Counter("http_requests", "Requests served.", labels, registry=self.registry)
        self.errors = Counter("http_request_errors", "Requests that failed.", labels, registry=self.registry)
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Request latency.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Touch every series once so both arms exist (at 0) from the first scrape on.
        for variant in self.error_rates:
            self.requests.labels(flag, variant)
            self.errors.labels(flag, variant)
            self.latency.labels(flag, variant)
        self.emitted = {v: 0 for v in self.error_rates}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: object | None = None
        self.port = port
        self.started_at: float | None = None

    @property
    def target(self) -> str:
        """host:port, as a Prometheus scrape target."""
        return f"{self.host}:{self.port}"

    def start(self) -> TrafficGenerator:
        server, _thread = start_http_server(self.requested_port, addr=self.host, registry=self.registry)
        self._server = server
        self.port = int(server.server_port)
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"trafficgen-{self.flag}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        server = self._server
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
            self._server = None

    def __enter__(self) -> TrafficGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until the generator stops (duration elapsed or stop() called)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def _run(self) -> None:
        assert self.started_at is not None
        deadline = self.started_at + self.duration
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            # Emit what the elapsed time calls for, not a fixed batch per tick, so a late tick does not
            # lower the rate.
            due = int(self.rps * (now - self.started_at))
            for variant in self.error_rates:
                self._emit(variant, due - self.emitted[variant])
            self._stop.wait(self.tick)
        self._stop.set()

    def _emit(self, variant: str, n: int) -> None:
        if n <= 0:
            return
        p = self.error_rates[variant]
        mu = math.log(self.latencies[variant])
        errors = sum(1 for _ in range(n) if self.rng.random() < p)
        hist = self.latency.labels(self.flag, variant)
        for _ in range(n):
            hist.observe(self.rng.lognormvariate(mu, LATENCY_SIGMA))
        # Errors before requests: a scrape between the two lines then over- not under-counts the rate,
        # and never shows more errors than requests for long.
        self.errors.labels(self.flag, variant).inc(errors)
        self.requests.labels(self.flag, variant).inc(n)
        self.emitted[variant] += n


def _pairs(values: Sequence[str], what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in values:
        variant, sep, number = item.partition("=")
        if not sep or not variant:
            raise argparse.ArgumentTypeError(f"--{what} wants VARIANT=NUMBER, got {item!r}")
        try:
            out[variant] = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{what} {item!r}: {number!r} is not a number") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="port to serve /metrics on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--flag", required=True, help="flag key, the `flag` label")
    parser.add_argument(
        "--error-rate",
        action="append",
        default=[],
        metavar="VARIANT=P",
        help="error probability per variant (repeat per variant)",
    )
    parser.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="VARIANT=SECONDS",
        help="median latency per variant (default 0.12)",
    )
    parser.add_argument("--rps", type=float, default=200.0, help="requests per second per variant")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds until it stops by itself")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        error_rates = _pairs(args.error_rate, "error-rate") or {"control": 0.01, "treatment": 0.01}
        gen = TrafficGenerator(
            args.flag,
            error_rates=error_rates,
            latencies=_pairs(args.latency, "latency"),
            rps=args.rps,
            duration=args.duration,
            port=args.port,
            host=args.host,
            seed=args.seed,
        )
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    gen.start()
    print(
        f"serving http://{gen.target}/metrics for {args.duration:g} s "
        f"(flag {args.flag}, variants {sorted(error_rates)})",
        flush=True,
    )
    try:
        gen.wait()
    except KeyboardInterrupt:
        pass
    finally:
        gen.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
