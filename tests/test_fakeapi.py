"""The package's fake API (the demo's server) is also a test instrument: if it lies, every end-to-end test
built on it lies too. Its fault injection is tested in test_fakeserver_faults.py."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardrail.fakeapi import FakeAPI

KEY = "checkout.payments.express-pay"
AUTH = {"Authorization": "Bearer test-token"}
REPO = Path(__file__).resolve().parents[1]


def _flags() -> dict[str, dict[str, Any]]:
    return {
        KEY: {
            "state": "ENABLED",
            "variants": {"treatment": True, "control": False},
            "defaultVariant": "control",
            "targeting": {"fractional": [{"var": "targetingKey"}, ["treatment", 50], ["control", 50]]},
            "metadata": {"owner": "payments-team", "experiment_type": "ab"},
        }
    }


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    with FakeAPI(flags=_flags()) as server:
        server.set_metric(KEY, "treatment", "error_rate", 0.02, 1000)
        server.set_metric(KEY, "control", "error_rate", 0.01, 1000)
        yield server


@pytest.fixture
def client(api: FakeAPI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=5.0) as c:
        yield c


def _q(variant: str = "treatment", metric: str = "error_rate", **extra: str) -> dict[str, str]:
    return {"flag": KEY, "variant": variant, "metric": metric, "window": "5m", **extra}


# ---- metrics -------------------------------------------------------------------------------------------
def test_binds_loopback_only(api: FakeAPI) -> None:
    assert api.url.startswith("http://127.0.0.1:")
    assert api._server is not None and api._server.server_address[0] == "127.0.0.1"


def test_query_any_window_and_window_override(api: FakeAPI, client: httpx.Client) -> None:
    api.set_metric(KEY, "treatment", "error_rate", 0.5, 7, window="4320m")
    assert client.get("/query", params=_q()).json() == {"value": 0.02, "count": 1000}
    assert client.get("/query", params=_q(window="4320m")).json() == {"value": 0.5, "count": 7}
    assert client.get("/query", params=_q(end="2026-11-20T10:00:00Z")).json()["value"] == 0.02
    no_window = {k: v for k, v in _q().items() if k != "window"}
    assert client.get("/query", params=no_window).json()["count"] == 1000


def test_query_stddev_and_unknown_series(api: FakeAPI, client: httpx.Client) -> None:
    api.set_metric(KEY, "control", "p95_latency_ms", 120.0, 500, 15.5)
    assert client.get("/query", params=_q("control", "p95_latency_ms")).json() == {
        "value": 120.0,
        "count": 500,
        "stddev": 15.5,
    }
    r = client.get("/query", params=_q(metric="nope"))
    assert r.status_code == 404 and r.json() == {"error": "no such series"}


# ---- flags ---------------------------------------------------------------------------------------------
def test_flags_list_and_get(api: FakeAPI, client: httpx.Client) -> None:
    assert client.get("/v1/flags").json() == {"flags": _flags()}
    assert client.get(f"/v1/flags/{KEY}").json() == _flags()[KEY] == api.flag(KEY)
    assert client.get("/v1/flags/no.such.flag").status_code == 404
    with pytest.raises(KeyError):
        api.flag("no.such.flag")


def test_patch_requires_the_token(client: httpx.Client) -> None:
    body = {"state": "DISABLED"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-token"}):
        r = client.patch(f"/v1/flags/{KEY}", json=body, headers=headers)
        assert (r.status_code, r.json()) == (401, {"error": "unauthorized"})
    assert client.get(f"/v1/flags/{KEY}").json()["state"] == "ENABLED"


def test_patch_merges_metadata_and_answers_new_definition(api: FakeAPI, client: httpx.Client) -> None:
    body = {"state": "DISABLED", "defaultVariant": "control", "metadata": {"guardrail_reason": "error_rate"}}
    r = client.patch(f"/v1/flags/{KEY}", json=body, headers=AUTH)
    assert r.status_code == 200
    new = r.json()
    assert new["state"] == "DISABLED" and new["defaultVariant"] == "control"
    assert new["metadata"] == {
        "owner": "payments-team",
        "experiment_type": "ab",
        "guardrail_reason": "error_rate",
    }
    assert new["targeting"] == _flags()[KEY]["targeting"]
    assert api.flag(KEY) == new


def test_patch_errors(client: httpx.Client) -> None:
    assert client.patch("/v1/flags/no.such", json={"state": "DISABLED"}, headers=AUTH).status_code == 404
    assert client.patch(f"/v1/flags/{KEY}", json=["x"], headers=AUTH).status_code == 400
    assert client.patch(f"/v1/flags/{KEY}", content=b"not json", headers=AUTH).status_code == 400
    assert client.patch(f"/v1/flags/{KEY}", json={"defaultVariant": "nope"}, headers=AUTH).status_code == 400


def test_no_token_means_no_auth() -> None:
    with FakeAPI(flags=_flags(), token=None) as api, httpx.Client(base_url=api.url) as c:
        assert c.patch(f"/v1/flags/{KEY}", json={"state": "DISABLED"}).status_code == 200


def test_force_removes_targeting(api: FakeAPI, client: httpx.Client) -> None:
    assert client.put(f"/v1/flags/{KEY}/force", json={"variant": "control"}).status_code == 401
    r = client.put(f"/v1/flags/{KEY}/force", json={"variant": "treatment"}, headers=AUTH)
    assert r.status_code == 200
    new = r.json()
    assert new["defaultVariant"] == "treatment" and "targeting" not in new
    assert new["metadata"]["guardrail_forced_variant"] == "treatment"
    assert api.flag(KEY) == new
    assert client.put(f"/v1/flags/{KEY}/force", json={"variant": "other"}, headers=AUTH).status_code == 400


# ---- webhook, log, control plane -----------------------------------------------------------------------
def test_webhook_records_alerts(api: FakeAPI, client: httpx.Client) -> None:
    for n in (1, 2):
        r = client.post("/webhook", json={"text": f"alert {n}"})
        assert (r.status_code, r.text) == (200, "ok")
    assert api.alerts == [{"text": "alert 1"}, {"text": "alert 2"}]
    assert client.post("/webhook/T0/B0/secret", json={"text": "alert 3"}).status_code == 200  # any path below
    assert client.post("/webhook", content=b"not json").status_code == 400
    assert [a["text"] for a in api.alerts] == ["alert 1", "alert 2", "alert 3"]


def test_request_log_and_count(api: FakeAPI, client: httpx.Client) -> None:
    client.get("/query", params=_q())
    client.patch(f"/v1/flags/{KEY}", json={"state": "DISABLED"}, headers=AUTH)
    client.get("/_control/requests")
    log = api.requests
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("GET", "/query", 200),
        ("PATCH", f"/v1/flags/{KEY}", 200),
    ]
    assert log[0]["query"]["variant"] == "treatment" and log[1]["body"] == {"state": "DISABLED"}
    assert isinstance(log[0]["time"], float)
    assert api.count("get", "/query") == 1 and api.count("PATCH", "/v1/flags") == 1
    assert api.count("GET", "/v1") == 0


def test_control_plane(api: FakeAPI, client: httpx.Client) -> None:
    spec = {"flag": KEY, "variant": "treatment", "metric": "m", "value": 1.5, "count": 3, "window": "5m"}
    assert client.post("/_control/metrics", json=[spec]).status_code == 200
    assert client.get("/query", params=_q(metric="m")).json() == {"value": 1.5, "count": 3}
    assert client.post("/_control/metrics", json=[{"flag": KEY}]).status_code == 400
    assert client.post("/_control/faults", json={"route": "query", "mode": "status", "status": 500}).status_code == 404
    flags = {"a.b.c": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}}
    assert client.post("/_control/flags", json={"flags": flags}).is_success
    assert client.get("/_control/flags").json() == {"flags": flags} == client.get("/v1/flags").json()
    client.post("/webhook", json={"text": "x"})
    assert client.get("/_control/alerts").json() == [{"text": "x"}]
    assert [r["path"] for r in client.get("/_control/requests").json()] == [
        "/query",
        "/v1/flags",
        "/webhook",
    ]


# ---- HTTP behaviour ------------------------------------------------------------------------------------
def test_keep_alive_reuses_one_connection(api: FakeAPI) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(api.url.rsplit(":", 1)[1]), timeout=5)
    for path in ("/query?" + str(httpx.QueryParams(_q())), "/nope", f"/v1/flags/{KEY}", "/query"):
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") is not None
        resp.read()
    assert conn.sock is not None  # never closed by the server, 404s included
    conn.close()


def test_stop_closes_idle_keep_alive_connections() -> None:
    api = FakeAPI(flags=_flags()).start()
    with httpx.Client(base_url=api.url, timeout=2.0) as c:
        assert c.get("/v1/flags").status_code == 200
        api.stop()
        with pytest.raises(httpx.TransportError):
            c.get("/v1/flags")


# ---- command line --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("module", "extra"), [("guardrail.fakeapi", []), ("tests.fakeserver_faults", ["--latency", "0.01"])]
)
def test_command_line(tmp_path: Path, module: str, extra: list[str]) -> None:
    flags_file = tmp_path / "flags.yaml"
    flag_yaml = "state: ENABLED\n    variants: {treatment: true, control: false}\n    defaultVariant: control\n"
    flags_file.write_text(f"flags:\n  {KEY}:\n    {flag_yaml}")
    metrics_file = tmp_path / "metrics.json"
    metric = {"flag": KEY, "variant": "control", "metric": "error_rate", "value": 0.1, "count": 9}
    metrics_file.write_text(json.dumps([metric]))
    port_file = tmp_path / "url"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    args = ["--port-file", str(port_file), "--flags", str(flags_file), "--metrics", str(metrics_file)]
    args += ["--token", "t0k", *extra]
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert proc.poll() is None, "server exited early"
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.05)
        url = port_file.read_text()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=5) as c:
            assert c.get("/query", params=_q("control")).json() == {"value": 0.1, "count": 9}
            assert c.get(f"/v1/flags/{KEY}").json()["defaultVariant"] == "control"
            bad = c.patch(f"/v1/flags/{KEY}", json={"state": "DISABLED"}, headers=AUTH)
            assert bad.status_code == 401
            good = c.patch(f"/v1/flags/{KEY}", json={"state": "DISABLED"}, headers={"Authorization": "Bearer t0k"})
            assert good.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out.splitlines()[0] == f"fakeapi listening on {url}"
