"""A real PostgreSQL for tests and benchmarks: `initdb` in a temp dir, 127.0.0.1 on a free port, stopped by PID.

    server = start(tmp_path)      # PgServer(port, dsn, pid, stop())
    ... psycopg.connect(server.dsn) ...
    server.stop()

The binaries are Debian's (`apt-get install postgresql`: /usr/lib/postgresql/<major>/bin) or any `initdb`
on PATH. PostgreSQL refuses to run as root, and CI runs as root: then the cluster belongs to the `postgres`
system user (the Debian package creates it) and the server is exec'd under it with `setpriv`, so the PID
we hold is the postmaster's own. As any other user it runs as that user. Self-contained: stdlib only
(psycopg is used for the readiness probe when installed, else pg_isready).

Host connections need the password (scram-sha-256), so a test can prove a password never leaks; the
socket directory lives in the cluster's temp dir, never /var/run/postgresql.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

USER = "guardrail"
DATABASE = "postgres"


def bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:  # often a symlink into /usr/lib/postgresql/<major>/bin, where pg_isready also lives
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (or put initdb on PATH)")
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    port: int
    dsn: str  # libpq URI with the password: postgresql://guardrail:PASS@127.0.0.1:PORT/postgres
    pid: int
    password: str = field(repr=False)
    root: Path = Path()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    owns_root: bool = False

    @property
    def url(self) -> str:
        """SQLAlchemy URL without the password (guardrail's config takes it from password_env)."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def log(self) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of our postmaster, by PID; SIGKILL if it does not go in time."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _demote() -> tuple[list[str], int | None, int | None]:
    """The command prefix and ids that run PostgreSQL as a non-root user."""
    if os.geteuid() != 0:
        return [], None, None
    entry = pwd.getpwnam("postgres")  # created by Debian's postgresql package
    prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--"]
    return prefix, entry.pw_uid, entry.pw_gid


def _ready(server: PgServer, bindir: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            return False
        probe = subprocess.run(
            [
                str(bindir / "pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(server.port),
                "-U",
                USER,
                "-d",
                DATABASE,
                "-t",
                "1",
            ],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=10,
        )
        if probe.returncode == 0:
            return True
        time.sleep(0.1)
    return False


def start(tmpdir: Path, *, ready_timeout: float = 60.0, settings: dict[str, str] | None = None) -> PgServer:
    """initdb + postgres on 127.0.0.1; returns when it accepts connections. Bounded: fails with its log.
    `settings` are extra server settings (`-c name=value`), e.g. {"shared_preload_libraries": "pg_stat_statements"}."""
    extra = [arg for name, value in (settings or {}).items() for arg in ("-c", f"{name}={value}")]
    bindir = bin_dir()
    prefix, uid, gid = _demote()
    if uid is not None:
        # The postgres user must reach the data dir; pytest's root-owned 0700 tmp dirs are closed to it.
        root, owns = Path(tempfile.mkdtemp(prefix="guardrail-pgtest-")), True
        os.chown(root, uid, gid if gid is not None else -1)
    else:
        root, owns = Path(tmpdir) / "postgres", False
        root.mkdir(parents=True, exist_ok=True)
    password = "pg-" + secrets.token_hex(12)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if uid is not None:
        os.chown(pwfile, uid, gid if gid is not None else -1)
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if uid is not None:
        os.chown(sockets, uid, gid if gid is not None else -1)
    init = subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    if init.returncode != 0:
        if owns:
            shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
    for _attempt in range(3):  # another process may take the free port between probe and bind
        port = _free_port()
        with (root / "postgres.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    *prefix,
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-k",
                    str(sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=50",
                    "-c",
                    "shared_buffers=64MB",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = PgServer(
            port=port,
            dsn=f"postgresql://{USER}:{password}@127.0.0.1:{port}/{DATABASE}",
            pid=process.pid,
            password=password,
            root=root,
            process=process,
            owns_root=owns,
        )
        try:
            ready = _ready(server, bindir, time.monotonic() + ready_timeout)
        except BaseException:
            server.stop()
            raise
        if ready:
            return server
        log_text = server.log()
        server.owns_root = False
        server.stop()
        if "could not bind" not in log_text and "already in use" not in log_text:
            break
    with contextlib.suppress(Exception):
        if owns:
            shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"postgres did not become ready in {ready_timeout:g} s; its log:\n{log_text[-3000:]}")
