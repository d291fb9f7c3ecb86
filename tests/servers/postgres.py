"""A throwaway PostgreSQL server for tests: Debian's binaries, a fresh cluster, loopback only, stopped by PID.

`start(workdir)` runs `initdb` into a new data directory, starts `postgres` on 127.0.0.1 and a free port
with its unix socket in the data directory (never /var/run/postgresql), waits until it accepts
connections, and returns a handle with `port`, `pid`, `dsn(db)`, `create_database(name)` and `stop()`.

PostgreSQL refuses to run as root ("root" execution of the PostgreSQL server is not permitted), and CI
runs as root: then the server runs as the `postgres` user that Debian's package creates, in a data
directory under the system temp dir (the caller's workdir, e.g. pytest's 0700 tmp dir, is not
reachable by another user). As any other user it runs as that user, in `workdir`. Authentication is
`trust` on loopback: the cluster lives for one test session and holds nothing. `start(..., password=...)`
makes TCP connections need that password (scram-sha-256) instead, for tests that prove a password is
checked and never shown; `settings` adds server settings (`-c name=value`).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "guardrail"
RUN_AS_WHEN_ROOT = "postgres"


def bindir() -> Path:
    """The newest Debian PostgreSQL (`/usr/lib/postgresql/<major>/bin`), else whatever is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("PostgreSQL is not installed: `apt-get install postgresql` (.ci/install.d/10-debian.sh)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    datadir: Path
    port: int
    process: subprocess.Popen[bytes] | None
    log_path: Path
    user: str | None  # the OS user the server runs as, when not ours
    owns_datadir: bool  # the data dir was made here (outside workdir) and is removed at stop()
    _bin: Path = field(default_factory=bindir)
    password: str | None = field(default=None, repr=False)  # set: TCP connections need it

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, database: str = "postgres") -> str:
        secret = f":{self.password}" if self.password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through Debian's psql over TCP (the client needs no special user)."""
        done = subprocess.run(
            [
                str(self._bin / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PGPASSWORD": self.password} if self.password else None,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM = PostgreSQL's "smart" shutdown wait would block on idle clients; SIGINT is "fast"."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(2)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self.owns_datadir:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_ready(server: PostgresServer, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            return False
        done = subprocess.run(
            [str(server._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(server.port), "-U", SUPERUSER],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )
        if done.returncode == 0:
            return True
        time.sleep(0.1)
    return False


def start(
    workdir: Path,
    *,
    ready_timeout: float = 60.0,
    password: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> PostgresServer:
    """initdb + postgres on 127.0.0.1:<free port>; raises with the server's log when it does not come up."""
    binaries = bindir()
    workdir.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    user = RUN_AS_WHEN_ROOT if as_root else None
    if as_root:
        datadir = Path(tempfile.mkdtemp(prefix="guardrail-pg-"))
        shutil.chown(datadir, user=RUN_AS_WHEN_ROOT, group=RUN_AS_WHEN_ROOT)
    else:
        datadir = Path(tempfile.mkdtemp(prefix="pg-", dir=workdir))
    pgdata = datadir / "data"
    log_path = workdir / "postgres.log"
    auth = ["--auth=trust"]
    if password:
        pwfile = datadir / "pwfile"
        pwfile.write_text(password + "\n")
        if user:
            shutil.chown(pwfile, user=user, group=user)
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    extra = [arg for name, value in (settings or {}).items() for arg in ("-c", f"{name}={value}")]
    init = subprocess.run(
        [
            str(binaries / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            SUPERUSER,
            *auth,
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        user=user,
        group=user,
        cwd=datadir,
    )
    if init.returncode != 0:
        if as_root:
            shutil.rmtree(datadir, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")

    server = PostgresServer(datadir, 0, None, log_path, user, owns_datadir=as_root, _bin=binaries, password=password)
    for _attempt in range(3):  # another process may take the free port between probe and bind
        server.port = free_port()
        with log_path.open("ab") as log:
            server.process = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(pgdata),
                    "-p",
                    str(server.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={datadir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=50",
                    "-c",
                    "shared_buffers=32MB",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=user,
                group=user,
                cwd=datadir,
            )
        if _wait_ready(server, ready_timeout):
            return server
        text = server.log()
        owns, server.owns_datadir = server.owns_datadir, False
        server.stop()
        server.owns_datadir = owns
        if "could not bind" not in text and "already in use" not in text:
            break
    server.stop()
    raise RuntimeError(f"postgres did not become ready in {ready_timeout:g} s; its log:\n{server.log()[-3000:]}")
