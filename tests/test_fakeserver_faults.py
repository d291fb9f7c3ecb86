"""The tests' fault injection (tests/fakeserver_faults.py): a fault rule that does not fire as written would
make a reliability test pass for the wrong reason."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from guardrail.fakeapi import Answer, Request, error_answer
from tests.fakeserver_faults import FaultyAPI
from tests.test_fakeapi import AUTH, KEY, _flags, _q


@pytest.fixture
def api() -> Iterator[FaultyAPI]:
    with FaultyAPI(flags=_flags()) as server:
        server.set_metric(KEY, "treatment", "error_rate", 0.02, 1000)
        server.set_metric(KEY, "control", "error_rate", 0.01, 1000)
        yield server


@pytest.fixture
def client(api: FaultyAPI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=5.0) as c:
        yield c


# ---- faults --------------------------------------------------------------------------------------------
def test_status_fault_times_then_recovers(api: FaultyAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="status", status=503, times=2)
    codes = [client.get("/query", params=_q()).status_code for _ in range(4)]
    assert codes == [503, 503, 200, 200]
    assert [r["fault"] for r in api.requests] == ["status", "status", None, None]


def test_429_retry_after(api: FaultyAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="status", status=429, retry_after=2, times=1)
    r = client.get("/query", params=_q())
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert client.get("/query", params=_q()).status_code == 200


def test_every_nth_is_deterministic(api: FaultyAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="status", status=500, every=3)
    codes = [client.get("/query", params=_q()).status_code for _ in range(7)]
    assert codes == [200, 200, 500, 200, 200, 500, 200]


def test_match_and_rule_order(api: FaultyAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="status", status=500, match={"variant": "treatment"}, times=1)
    api.add_fault(route="query", mode="status", status=403)
    assert client.get("/query", params=_q("control")).status_code == 403  # first rule does not match
    assert client.get("/query", params=_q("treatment")).status_code == 500
    assert client.get("/query", params=_q("treatment")).status_code == 403  # first rule exhausted
    api.clear_faults()
    assert client.get("/query", params=_q()).status_code == 200


def test_flag_route_faults_match_the_key(api: FaultyAPI, client: httpx.Client) -> None:
    api.add_fault(route="flags", mode="status", status=500, match={"flag": KEY})
    api.add_fault(route="patch", mode="status", status=503)
    assert client.get("/v1/flags").status_code == 200
    assert client.get(f"/v1/flags/{KEY}").status_code == 500
    assert client.patch(f"/v1/flags/{KEY}", json={"state": "DISABLED"}, headers=AUTH).status_code == 503
    assert api.flag(KEY)["state"] == "ENABLED"


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
def test_bad_body_modes(api: FaultyAPI, client: httpx.Client, mode: str, check: Any) -> None:
    api.add_fault(route="query", mode=mode, times=1)
    r = client.get("/query", params=_q())
    assert r.status_code == 200 and check(r)
    if mode in ("truncated", "html"):
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text)
    # Content-Length was right, so the same keep-alive connection still works.
    assert client.get("/query", params=_q()).json()["count"] == 1000


def test_reset_closes_without_answer(api: FaultyAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="reset", times=1)
    with pytest.raises(httpx.TransportError):
        client.get("/query", params=_q())
    assert client.get("/query", params=_q()).status_code == 200
    assert [r["status"] for r in api.requests] == [0, 200]


def test_delay_makes_client_time_out_without_blocking_others(api: FaultyAPI, client: httpx.Client) -> None:
    api.add_fault(route="query", mode="delay", delay=1.0, match={"variant": "treatment"}, times=1)
    with pytest.raises(httpx.ReadTimeout):
        client.get("/query", params=_q(), timeout=0.2)
    # A request held for a minute must not hold up another: the sleeping thread holds no lock.
    api.add_fault(route="query", mode="delay", delay=60.0, match={"variant": "treatment"}, times=1)
    held = threading.Thread(target=lambda: _get_quietly(api.url, _q()), daemon=True)
    held.start()
    deadline = time.monotonic() + 60
    while _in_flight(api) == 0:  # until the held request is being held at the server
        assert time.monotonic() < deadline, "the held request never reached the server"
        time.sleep(0.01)
    assert client.get("/query", params=_q("control"), timeout=20).status_code == 200


def _get_quietly(url: str, params: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"{url}/query", params=params, timeout=90)


def _in_flight(api: FaultyAPI) -> int:
    """How many requests the minute-long delay rule has picked up."""
    with api._lock:
        return sum(1 for f in api._faults if f.delay == 60.0 and f.applied)


def test_apply_then_delay_applies_although_client_times_out(api: FaultyAPI, client: httpx.Client) -> None:
    api.add_fault(route="patch", mode="apply_then_delay", delay=0.6, times=1)
    with pytest.raises(httpx.ReadTimeout):
        client.patch(f"/v1/flags/{KEY}", json={"state": "DISABLED"}, headers=AUTH, timeout=0.2)
    assert client.get(f"/v1/flags/{KEY}").json()["state"] == "DISABLED"


def test_ignore_field_is_a_non_atomic_patch(api: FaultyAPI, client: httpx.Client) -> None:
    api.set_flags({KEY: {**_flags()[KEY], "defaultVariant": "treatment"}})
    api.add_fault(route="patch", mode="ignore_field", field="defaultVariant")
    body = {"state": "DISABLED", "defaultVariant": "control"}
    new = client.patch(f"/v1/flags/{KEY}", json=body, headers=AUTH).json()
    assert (new["state"], new["defaultVariant"]) == ("DISABLED", "treatment")
    forced = client.put(f"/v1/flags/{KEY}/force", json={"variant": "control"}, headers=AUTH).json()
    assert forced["defaultVariant"] == "control"


def test_webhook_fault(api: FaultyAPI, client: httpx.Client) -> None:
    api.add_fault(route="webhook", mode="status", status=500, times=1)
    assert client.post("/webhook", json={"text": "a"}).status_code == 500
    assert client.post("/webhook", json={"text": "b"}).status_code == 200
    assert api.alerts == [{"text": "b"}]


def test_invalid_fault_rules_are_refused(api: FaultyAPI) -> None:
    with pytest.raises(ValueError):
        api.add_fault(route="query", mode="explode")
    with pytest.raises(ValueError):
        api.add_fault(route="query", mode="status")  # no status code
    with pytest.raises(ValueError):
        api.add_fault(route="query", mode="null", every=0)
    with pytest.raises(TypeError):
        api.add_fault(route="query", mode="null", time=1)


class _Rendezvous(FaultyAPI):
    """Every answer waits until `parties` requests are being handled at once: a server that handled one
    request at a time would never get there, and each wait would break (a 500 below)."""

    def __init__(self, parties: int) -> None:
        super().__init__(flags=_flags())
        self.barrier = threading.Barrier(parties, timeout=60)

    def respond(self, request: Request, *, store: bool = True) -> Answer:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            return error_answer(500, "requests were not handled in parallel")
        return super().respond(request, store=store)


def test_concurrent_requests_are_served_in_parallel() -> None:
    parties = 20
    with _Rendezvous(parties) as api:
        with ThreadPoolExecutor(parties) as pool:
            codes = list(
                pool.map(lambda _i: httpx.get(f"{api.url}/v1/flags/{KEY}", timeout=90).status_code, range(parties))
            )
        assert codes == [200] * parties
        assert api.count("GET", "/v1/flags") == parties


def test_keep_alive_survives_bad_bodies(api: FaultyAPI) -> None:
    api.add_fault(route="query", mode="html", every=2)
    conn = http.client.HTTPConnection("127.0.0.1", int(api.url.rsplit(":", 1)[1]), timeout=5)
    path = "/query?" + str(httpx.QueryParams(_q()))
    for _ in range(4):
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") is not None
        resp.read()
    assert conn.sock is not None  # never closed by the server
    conn.close()


def test_control_plane_faults(api: FaultyAPI, client: httpx.Client) -> None:
    assert client.post("/_control/faults", json={"route": "query", "mode": "status", "status": 500}).is_success
    assert client.get("/query", params=_q()).status_code == 500
    assert client.delete("/_control/faults").is_success
    assert client.get("/query", params=_q()).status_code == 200
    assert client.post("/_control/faults", json=[{"route": "nope", "mode": "null"}]).status_code == 400
    assert client.post("/_control/faults", json={"route": "query", "mode": "null", "typo": 1}).status_code == 400
    assert client.get("/_control/faults").status_code == 404
    # The package server's control plane is still there.
    spec = {"flag": KEY, "variant": "treatment", "metric": "m", "value": 1.5, "count": 3}
    assert client.post("/_control/metrics", json=spec).is_success
    assert client.get("/query", params=_q(metric="m")).json() == {"value": 1.5, "count": 3}
