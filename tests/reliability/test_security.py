"""Secrets never leave the process; TLS is verified; tokens stay off plain http; files are private."""

from __future__ import annotations

import http.server
import json
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TOKEN, clean_env, guardrail_command
from tests.fakeserver_faults import FaultyAPI
from tests.reliability.conftest import BAD, WEBHOOK_SECRET_PATH, Runner, api_env, breaching, doc


def test_secrets_never_appear_anywhere_even_in_failures(api: FaultyAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    env = api_env(api, ALERT_WEBHOOK_URL=api.url + WEBHOOK_SECRET_PATH)
    api.add_fault(route="patch", mode="status", status=403, times=1)
    api.add_fault(route="webhook", mode="status", status=500, times=6)
    runner.check(env=env, now="2026-11-25T12:00:00Z")
    runner.check(
        "--log-format",
        "json",
        "--metrics-file",
        str(runner.workdir / "guardrail.prom"),
        env=env,
        now="2026-11-25T12:02:00Z",
    )
    runner("status", "--state", str(runner.workdir / "state.json"), env=env)
    # A webhook URL that refuses connections, with the secret in its path.
    closed = api_env(api, ALERT_WEBHOOK_URL="http://127.0.0.1:9" + WEBHOOK_SECRET_PATH)
    runner.check(env=closed, now="2026-11-25T12:04:00Z")
    text = runner.everything_written()
    assert TOKEN not in text
    assert "SECRET" not in text


def test_token_is_not_sent_over_plain_http_to_a_remote_host(runner: Runner, tmp_path: Path) -> None:
    env = {
        "FLAG_API_URL": "http://flags.example.invalid",
        "FLAG_API_TOKEN": TOKEN,
        "METRICS_API_URL": "http://127.0.0.1:9",
    }
    result = runner("check", "--state", str(tmp_path / "s.json"), env=env)
    assert result.returncode == 2 and "plain http" in result.stderr and "--allow-insecure-http" in result.stderr
    assert TOKEN not in result.stderr + result.stdout


def test_state_and_audit_are_private_even_with_a_permissive_umask(api: FaultyAPI, tmp_path: Path) -> None:
    breaching(api, confirmations=1)
    result = subprocess.run(
        [
            "sh",
            "-c",
            'umask 000 && exec "$@"',
            "sh",
            *guardrail_command(),
            "check",
            "--state",
            str(tmp_path / "s.json"),
            "--audit",
            str(tmp_path / "a.jsonl"),
        ],
        env=clean_env(**api_env(api)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    for name in ("s.json", "a.jsonl", "s.json.lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def https_metrics(tls_cert: tuple[Path, Path]) -> Iterator[str]:
    """A metrics API over TLS with a self-signed certificate, on 127.0.0.1."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"value": 0.01, "count": 5000}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_cert)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tls_is_verified_by_default_and_ca_bundle_trusts_a_private_ca(
    api: FaultyAPI, runner: Runner, https_metrics: str, tls_cert: tuple[Path, Path]
) -> None:
    breaching(api)
    env = api_env(api, METRICS_API_URL=https_metrics)
    refused = runner.check("--timeout", "2", env=env)
    assert refused.returncode == 3
    assert all(e["verdict"] == "skip:no_data" for e in doc(refused)["evaluations"])
    trusted = runner.check("--timeout", "2", "--ca-bundle", str(tls_cert[0]), env=env)
    assert trusted.returncode == 0, trusted.stdout
    assert all(e["verdict"] == "pass" for e in doc(trusted)["evaluations"])
    assert api.flag(BAD)["state"] == "ENABLED"
