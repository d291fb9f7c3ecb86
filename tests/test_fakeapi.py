"""The fake API is a test instrument: if it lies, every end-to-end and fault test built on it lies too."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
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


def test_inject_sets_a_metric(client: httpx.Client) -> None:
    body = {"flag": KEY, "variant": "treatment", "metric": "error_rate", "value": 0.04, "count": 500}
    assert client.post("/inject", json=body).status_code == 200
    assert client.get("/query", params=_q()).json() == {"value": 0.04, "count": 500}
    assert client.post("/inject", json={"flag": KEY}).status_code == 400


# ---- flags ---------------------------------------------------------------------------------------------
def test_flags_list_and_get(client: httpx.Client) -> None:
    assert client.get("/v1/flags").json() == {"flags": _flags()}
    assert client.get(f"/v1/flags/{KEY}").json() == _flags()[KEY]
    assert client.get("/v1/flags/no.such.flag").status_code == 404


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
    assert client.get("/webhook/last").status_code == 404
    for n in (1, 2):
        r = client.post("/webhook", json={"text": f"alert {n}"})
        assert (r.status_code, r.text) == (200, "ok")
    assert api.alerts == [{"text": "alert 1"}, {"text": "alert 2"}]
    assert client.get("/webhook/last").json() == {"text": "alert 2"}


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
    assert client.post(
        "/_control/faults", json={"route": "query", "mode": "status", "status": 500}
    ).is_success
    assert client.get("/query", params=_q()).status_code == 500
    assert client.delete("/_control/faults").is_success
    assert client.get("/query", params=_q()).status_code == 200
    assert client.post("/_control/faults", json=[{"route": "nope", "mode": "null"}]).status_code == 400
    assert (
        client.post("/_control/faults", json={"route": "query", "mode": "null", "typo": 1}).status_code == 400
    )
    flags = {"a.b.c": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}}
    assert client.post("/_control/flags", json={"flags": flags}).is_success
    assert client.get("/_control/flags").json() == {"flags": flags} == client.get("/v1/flags").json()
    client.post("/webhook", json={"text": "x"})
    assert client.get("/_control/alerts").json() == [{"text": "x"}]
    assert [r["path"] for r in client.get("/_control/requests").json()] == [
        "/query",
        "/query",
        "/query",
        "/v1/flags",
        "/webhook",
    ]


# ---- faults --------------------------------------------------------------------------------------------
def test_status_fault_times_then_recovers(api: FakeAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="status", status=503, times=2)
    codes = [client.get("/query", params=_q()).status_code for _ in range(4)]
    assert codes == [503, 503, 200, 200]
    assert [r["fault"] for r in api.requests] == ["status", "status", None, None]


def test_429_retry_after(api: FakeAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="status", status=429, retry_after=2, times=1)
    r = client.get("/query", params=_q())
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert client.get("/query", params=_q()).status_code == 200


def test_every_nth_is_deterministic(api: FakeAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="status", status=500, every=3)
    codes = [client.get("/query", params=_q()).status_code for _ in range(7)]
    assert codes == [200, 200, 500, 200, 200, 500, 200]


def test_match_and_rule_order(api: FakeAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="status", status=500, match={"variant": "treatment"}, times=1)
    api.add_fault(route="query", mode="status", status=403)
    assert client.get("/query", params=_q("control")).status_code == 403  # first rule does not match
    assert client.get("/query", params=_q("treatment")).status_code == 500
    assert client.get("/query", params=_q("treatment")).status_code == 403  # first rule exhausted
    api.clear_faults()
    assert client.get("/query", params=_q()).status_code == 200


def test_flag_route_faults_match_the_key(api: FakeAPI, client: httpx.Client) -> None:
    api.add_fault(route="flags", mode="status", status=500, match={"flag": KEY})
    api.add_fault(route="patch", mode="status", status=503)
    assert client.get("/v1/flags").status_code == 200
    assert client.get(f"/v1/flags/{KEY}").status_code == 500
    assert client.patch(f"/v1/flags/{KEY}", json={"state": "DISABLED"}, headers=AUTH).status_code == 503
    assert api.flag(KEY)["state"] == "ENABLED"  # type: ignore[index]


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("null", lambda r: r.json() == {"value": None, "count": None}),
        ("negative_count", lambda r: r.json() == {"value": 0.01, "count": -5}),
        ("string_value", lambda r: r.json() == {"value": "abc", "count": 10}),
        ("nan", lambda r: "NaN" in r.text and r.headers["content-type"] == "application/json"),
        ("html", lambda r: r.headers["content-type"] == "text/html" and "502 Bad Gateway" in r.text),
        ("truncated", lambda r: r.text == '{"value": 0.0'),
    ],
)
def test_bad_body_modes(api: FakeAPI, client: httpx.Client, mode: str, check: Any) -> None:
    api.add_fault(route="query", mode=mode, times=1)
    r = client.get("/query", params=_q())
    assert r.status_code == 200 and check(r)
    if mode in ("truncated", "html"):
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text)
    # Content-Length was right, so the same keep-alive connection still works.
    assert client.get("/query", params=_q()).json()["count"] == 1000


def test_reset_closes_without_answer(api: FakeAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="reset", times=1)
    with pytest.raises(httpx.TransportError):
        client.get("/query", params=_q())
    assert client.get("/query", params=_q()).status_code == 200
    assert [r["status"] for r in api.requests] == [0, 200]


def test_delay_makes_client_time_out_without_blocking_others(api: FakeAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="delay", delay=30.0, match={"variant": "treatment"}, times=1)
    with pytest.raises(httpx.ReadTimeout):
        client.get("/query", params=_q(), timeout=0.2)
    # The delayed request is still being served (in flight) while another is answered: no lock held.
    assert client.get("/query", params=_q("control")).status_code == 200
    assert api.in_flight == 1


def test_apply_then_delay_applies_although_client_times_out(api: FakeAPI, client: httpx.Client) -> None:
    api.add_fault(route="patch", mode="apply_then_delay", delay=0.6, times=1)
    with pytest.raises(httpx.ReadTimeout):
        client.patch(f"/v1/flags/{KEY}", json={"state": "DISABLED"}, headers=AUTH, timeout=0.2)
    assert client.get(f"/v1/flags/{KEY}").json()["state"] == "DISABLED"


def test_ignore_field_is_a_non_atomic_patch(api: FakeAPI, client: httpx.Client) -> None:
    api.set_flags({KEY: {**_flags()[KEY], "defaultVariant": "treatment"}})
    api.add_fault(route="patch", mode="ignore_field", field="defaultVariant")
    body = {"state": "DISABLED", "defaultVariant": "control"}
    new = client.patch(f"/v1/flags/{KEY}", json=body, headers=AUTH).json()
    assert (new["state"], new["defaultVariant"]) == ("DISABLED", "treatment")
    forced = client.put(f"/v1/flags/{KEY}/force", json={"variant": "control"}, headers=AUTH).json()
    assert forced["defaultVariant"] == "control"


def test_webhook_fault(api: FakeAPI, client: httpx.Client) -> None:
    api.add_fault(route="webhook", mode="status", status=500, times=1)
    assert client.post("/webhook", json={"text": "a"}).status_code == 500
    assert client.post("/webhook", json={"text": "b"}).status_code == 200
    assert api.alerts == [{"text": "b"}]


def test_invalid_fault_rules_are_refused(api: FakeAPI) -> None:
    with pytest.raises(ValueError):
        api.add_fault(route="query", mode="explode")
    with pytest.raises(ValueError):
        api.add_fault(route="query", mode="status")  # no status code
    with pytest.raises(ValueError):
        api.add_fault(route="query", mode="null", every=0)
    with pytest.raises(TypeError):
        api.add_fault(route="query", mode="null", time=1)


# ---- HTTP behaviour ------------------------------------------------------------------------------------
def test_keep_alive_reuses_one_connection(api: FakeAPI) -> None:
    api.add_fault(route="query", mode="html", every=2)
    conn = http.client.HTTPConnection("127.0.0.1", int(api.url.rsplit(":", 1)[1]), timeout=5)
    path = "/query?" + httpx.QueryParams(_q()).__str__()
    for _ in range(4):
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") is not None
        resp.read()
    assert conn.sock is not None  # never closed by the server
    conn.close()


def test_stop_closes_idle_keep_alive_connections() -> None:
    api = FakeAPI(flags=_flags()).start()
    with httpx.Client(base_url=api.url, timeout=2.0) as c:
        assert c.get("/v1/flags").status_code == 200
        api.stop()
        with pytest.raises(httpx.TransportError):
            c.get("/v1/flags")


def test_concurrent_requests_are_served_in_parallel() -> None:
    threads_n, per_thread, latency = 50, 10, 0.02
    errors: list[BaseException] = []
    with FakeAPI(flags=_flags(), latency=latency) as api:

        def worker() -> None:
            try:
                with httpx.Client(base_url=api.url, timeout=10.0) as c:
                    for _ in range(per_thread):
                        assert c.get(f"/v1/flags/{KEY}").status_code == 200
            except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert api.count("GET", "/v1/flags") == threads_n * per_thread
        # Requests were answered side by side: counted by the server, not inferred from a stopwatch.
        assert api.max_in_flight >= 2


# ---- command line --------------------------------------------------------------------------------------
def test_command_line(tmp_path: Path) -> None:
    flags_file = tmp_path / "flags.yaml"
    flag_yaml = (
        "state: ENABLED\n    variants: {treatment: true, control: false}\n    defaultVariant: control\n"
    )
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
    args += ["--token", "t0k"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardrail.fakeapi", *args], stdout=subprocess.PIPE, text=True, env=env
    )
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
            good = c.patch(
                f"/v1/flags/{KEY}", json={"state": "DISABLED"}, headers={"Authorization": "Bearer t0k"}
            )
            assert good.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out.splitlines()[0] == f"fakeapi listening on {url}"
