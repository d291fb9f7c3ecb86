"""A real unleash-server for tests: the version pinned in tests/unleash/package-lock.json, on 127.0.0.1.

`start(workdir)` installs the pinned server if node_modules does not hold it (`npm ci`, which
.ci/install.d/30-unleash.sh also runs), starts a fresh PostgreSQL (tests/servers/postgres.py), runs
tests/unleash/start.mjs on a free loopback port with a random bootstrap admin token
(INIT_ADMIN_API_TOKENS), waits for `GET /health` within a bounded deadline, and returns a handle whose
`stop()` ends exactly the processes it started, by PID. The server never reaches out: start.mjs turns
the version check and telemetry off.

`Admin` is the tests' own view of the server (plain httpx, independent of the backend under test): it
sets flags up the way a team would in the UI, makes SDK tokens and reads the event log.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.servers import postgres

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "unleash"
PINNED = "7.5.1"


def installed_version() -> str | None:
    try:
        return str(json.loads((PACKAGE_DIR / "node_modules/unleash-server/package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_installed(*, timeout: float = 600.0) -> None:
    """`npm ci` from the committed lockfile unless the pinned server is already there."""
    if installed_version() == PINNED:
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("node and npm are needed for the Unleash tests: `apt-get install nodejs npm`")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=PACKAGE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CI": "true"},
    )
    if done.returncode != 0 or installed_version() != PINNED:
        raise RuntimeError(f"npm ci in {PACKAGE_DIR} failed: {done.stderr.strip()[-2000:]}")


@dataclass
class UnleashServer:
    port: int
    admin_token: str = field(repr=False)
    process: subprocess.Popen[bytes] | None
    database: postgres.PostgresServer
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            self.database.stop()


def _ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            answer = httpx.get(f"{url}/health", timeout=2.0)
            if answer.status_code == 200 and answer.json().get("health") == "GOOD":
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    return False


def start(workdir: Path, *, ready_timeout: float = 120.0) -> UnleashServer:
    ensure_installed()
    workdir.mkdir(parents=True, exist_ok=True)
    database = postgres.start(workdir / "postgres")
    try:
        database.create_database("unleash")
        token = f"*:*.{secrets.token_hex(20)}"
        log_path = workdir / "unleash.log"
        for _attempt in range(3):  # another process may take the free port between probe and bind
            port = postgres.free_port()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "INIT_", "UNLEASH_"))},
                "GUARDRAIL_UNLEASH_PORT": str(port),
                "DATABASE_HOST": "127.0.0.1",
                "DATABASE_PORT": str(database.port),
                "DATABASE_USERNAME": postgres.SUPERUSER,
                "DATABASE_NAME": "unleash",
                "DATABASE_SSL": "false",
                "INIT_ADMIN_API_TOKENS": token,
                "SEND_TELEMETRY": "false",
                "CHECK_VERSION": "false",
                # The client API memoizes features per configuration revision, which a scheduled job
                # advances about once a second; off, an SDK started right after a write sees the write.
                "CLIENT_FEATURE_CACHING_ENABLED": "false",
                "LOG_LEVEL": "warn",
                "TZ": "UTC",
                "NODE_ENV": "production",
            }
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    ["node", "start.mjs"],
                    cwd=PACKAGE_DIR,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            server = UnleashServer(port, token, process, database, log_path)
            if _ready(server.url, process, ready_timeout):
                return server
            process.terminate()
            process.wait(timeout=20)
            if "EADDRINUSE" not in server.log():
                break
        raise RuntimeError(
            f"unleash-server did not become ready in {ready_timeout:g} s; its log:\n"
            f"{log_path.read_text(errors='replace')[-3000:]}"
        )
    except BaseException:
        database.stop()
        raise


class Admin:
    """The tests' independent admin client (sync httpx, the bootstrap admin token)."""

    def __init__(self, server: UnleashServer, project: str = "default", environment: str = "development") -> None:
        self.server = server
        self.project = project
        self.environment = environment
        self.http = httpx.Client(base_url=server.url, timeout=30.0, headers={"Authorization": server.admin_token})
        self.created: list[str] = []

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        answer = self.http.request(method, path, json=body)
        if answer.status_code not in ok:
            raise AssertionError(f"{method} {path}: HTTP {answer.status_code}: {answer.text[:500]}")
        return answer.json() if answer.content and "json" in answer.headers.get("content-type", "") else None

    def archive_created(self) -> None:
        for name in self.created:
            self.call("DELETE", f"/api/admin/projects/{self.project}/features/{quote(name, safe='')}")
        self.created.clear()

    def env_path(self, flag: str) -> str:
        return f"/api/admin/projects/{self.project}/features/{quote(flag, safe='')}/environments/{self.environment}"

    def ensure_tag_type(self) -> None:
        if self.http.get("/api/admin/tag-types/guardrail").status_code == 404:
            self.call("POST", "/api/admin/tag-types", {"name": "guardrail", "description": "guardrail options"})

    def create_flag(
        self,
        name: str,
        *,
        variants: dict[str, int] | None = None,
        rollout: int = 100,
        tags: tuple[str, ...] = (),
        enabled: bool = True,
    ) -> str:
        """A flag with one flexibleRollout strategy (variable-weight variants if given) and guardrail tags.
        Returns the strategy id."""
        self.call(
            "POST",
            f"/api/admin/projects/{self.project}/features",
            {"name": name, "type": "experiment" if variants else "release"},
        )
        self.created.append(name)
        strategy: dict[str, Any] = {
            "name": "flexibleRollout",
            "constraints": [],
            "parameters": {"rollout": str(rollout), "stickiness": "default", "groupId": name},
        }
        if variants:
            strategy["variants"] = [
                {"name": v, "weight": w, "weightType": "fix", "stickiness": "default"} for v, w in variants.items()
            ]
            strategy["variants"][-1]["weightType"] = "variable"
        created = self.call("POST", f"{self.env_path(name)}/strategies", strategy)
        if tags:
            self.ensure_tag_type()
        for value in tags:
            self.call("POST", f"/api/admin/features/{quote(name, safe='')}/tags", {"type": "guardrail", "value": value})
        if enabled:
            self.call("POST", f"{self.env_path(name)}/on")
        return str(created["id"])

    def feature(self, name: str) -> dict[str, Any]:
        """One flag as the admin API shows it (read independently of the backend; a GET writes no event)."""
        body: dict[str, Any] = self.call("GET", f"/api/admin/projects/{self.project}/features/{quote(name, safe='')}")
        return body

    def in_environment(self, name: str) -> dict[str, Any]:
        (here,) = [e for e in self.feature(name)["environments"] if e["name"] == self.environment]
        return dict(here)

    def enabled(self, name: str) -> bool:
        return bool(self.in_environment(name)["enabled"])

    def strategy(self, name: str) -> dict[str, Any]:
        (found,) = self.in_environment(name)["strategies"]
        return dict(found)

    def tags(self, name: str) -> set[str]:
        body = self.call("GET", f"/api/admin/features/{quote(name, safe='')}/tags")
        return {t["value"] for t in body["tags"] if t["type"] == "guardrail"}

    def backend_token(self, name: str = "guardrail-sdk-test") -> str:
        """A backend (SDK) token for the environment, made through the admin API as a team would."""
        made = self.call(
            "POST",
            "/api/admin/api-tokens",
            {
                "tokenName": name,
                "type": "backend",
                "environment": self.environment,
                "projects": [self.project],
            },
        )
        return str(made["secret"])

    def events(self, name: str) -> list[dict[str, Any]]:
        """Unleash's own event log for one flag, newest first (its latest 50). Not `/api/admin/events?feature=`:
        7.5.1 ignores that filter and answers the latest events of every flag."""
        body = self.call("GET", f"/api/admin/events/{quote(name, safe='')}")
        return [e for e in body["events"] if e.get("featureName") == name]
