"""A real Prometheus server for tests: started on 127.0.0.1 with a temp TSDB, stopped in teardown.

The binary is Debian's (`apt-get install prometheus`, which .ci/run does) or any `prometheus` on PATH.
Everything here is bounded in time: a server that does not become ready, or data that does not arrive,
fails the test with the server's own log rather than hanging CI.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

DEBIAN_BINARY = "/usr/bin/prometheus"


def prometheus_binary() -> str | None:
    found = shutil.which("prometheus")
    if found:
        return found
    return DEBIAN_BINARY if os.access(DEBIAN_BINARY, os.X_OK) else None


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the server binds it a moment later; a clash fails loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_config(targets: Sequence[str], *, interval: str = "1s") -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return (
        "global:\n"
        f"  scrape_interval: {interval}\n"
        f"  evaluation_interval: {interval}\n"
        "scrape_configs:\n"
        "  - job_name: trafficgen\n"
        f"    scrape_interval: {interval}\n"
        f"    scrape_timeout: {interval}\n"
        "    static_configs:\n"
        f"      - targets: [{listed}]\n"
    )


class PrometheusServer:
    """One prometheus process. Use as a context manager, or start() / stop()."""

    def __init__(self, binary: str, workdir: Path, targets: Sequence[str], *, scrape_interval: str = "1s") -> None:
        self.binary = binary
        self.workdir = workdir
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready_timeout: float = 30.0) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(scrape_config(self.targets, interval=self.scrape_interval))
        for _attempt in range(3):  # another process may take the free port between probe and bind
            self.port = free_port()
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--storage.tsdb.retention.time=1h",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.workdir,
                )
            if self._wait_ready(ready_timeout):
                return self
            self.stop()
            if "address already in use" not in self.log():
                break
        raise RuntimeError(f"prometheus did not become ready in {ready_timeout:g} s; its log:\n{self.log()[-3000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def query(self, promql: str, *, at: str | None = None) -> dict[str, Any]:
        """An instant query straight to the HTTP API (the test's independent view of the data)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = at
        response = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10.0)
        body: dict[str, Any] = response.json()
        return body

    def scalar(self, promql: str, *, at: str | None = None) -> float | None:
        """The single number a query returns, or None when it returns no series."""
        body = self.query(promql, at=at)
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        result = data["result"]
        if not result:
            return None
        if len(result) != 1:
            raise AssertionError(f"query {promql!r} returned {len(result)} series")
        return float(result[0]["value"][1])

    def wait_until(self, ready: Callable[[], bool], *, timeout: float = 60.0, what: str = "data") -> float:
        """Poll until ready() is true; return the seconds it took. Bounded: fails with the log."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if ready():
                return time.monotonic() - started
            if self.process is None or self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"no {what} after {timeout:g} s; prometheus log:\n{self.log()[-3000:]}")
