"""The report in a real browser: Debian's headless Chromium, driven over the DevTools protocol by
Playwright, with the network off. Each test reads the DOM back, fails on any console error, page error or
request that is not the page's own file (or the loopback server that serves it), and saves a screenshot
under its tmp dir.

State and audit logs are made by the real engine (tests/report_scenario.py), and the site by the
installed `guardrail report` command.
"""

from __future__ import annotations

import concurrent.futures
import functools
import http.server
import os
import random
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from guardrail.config import format_time
from guardrail.fakeapi import FakeAPI
from tests.report_scenario import EVIL_VARIANT, START, TOKEN, run_scenario

CHROMIUM = os.environ.get("GUARDRAIL_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
BUILT = "2026-11-25T09:50:00Z"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: .ci/install.d/10-debian.sh installs chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def off_loop(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a `check` (asyncio.run) on its own thread: Playwright's sync API keeps a loop on this one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


class Watched:
    """A page whose console errors, page errors and outside requests are collected."""

    def __init__(self, browser: Browser, *, offline: bool = True, allowed: str = "file://") -> None:
        self.context = browser.new_context(offline=offline, viewport={"width": 1000, "height": 900}, timezone_id="UTC")
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on(
            "request", lambda r: None if r.url.startswith((allowed, "data:", "about:")) else self.outside.append(r.url)
        )

    def open(self, url: str) -> Page:
        self.page.goto(url, wait_until="load")
        return self.page

    def check_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.outside == [], f"the page fetched from outside: {self.outside}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Any]:
    opened: list[Watched] = []

    def make(**kw: Any) -> Watched:
        w = Watched(browser, **kw)
        opened.append(w)
        return w

    yield make
    for w in opened:
        w.close()


def build(run_cli: Any, base: Path, out: Path, now: str = BUILT) -> None:
    result = run_cli(
        "report",
        "--state",
        str(base / "state.json"),
        "--audit",
        str(base / "audit.jsonl"),
        "--out",
        str(out),
        "--now",
        now,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def scenario_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 check runs of five flags (a halt, a hold at the first look, no data, healthy, hostile names)."""
    base = tmp_path_factory.mktemp("scenario")
    off_loop(run_scenario, base)
    return base


@pytest.fixture
def site(scenario_site: Path, run_cli: Any, tmp_path: Path) -> Path:
    out = tmp_path / "site"
    build(run_cli, scenario_site, out)
    return out


def charts(page: Page) -> dict[str, dict[str, Any]]:
    return page.eval_on_selector_all(
        "svg.chart",
        """els => Object.fromEntries(els.map(s => [
        s.getAttribute('data-guardrail'), {
          points: +s.getAttribute('data-points'),
          threshold: s.querySelectorAll('.threshold').length,
          thresholdY: s.querySelector('.threshold') ? s.querySelector('.threshold').getBBox().y : null,
          zeroY: s.querySelector('.zero').getBBox().y,
          estimate: s.querySelector('.estimate') ? s.querySelector('.estimate').getBoundingClientRect().width : 0,
          bound: s.querySelectorAll('.bound').length,
          breaches: s.querySelectorAll('.breach').length,
          events: Array.from(s.querySelectorAll('.event')).map(e => e.getAttribute('data-kind')),
          empty: s.querySelectorAll('.empty').length,
          visible: s.getBoundingClientRect().width > 100,
        }]))""",
    )


def test_flag_page_one_chart_per_guardrail_and_arm(site: Path, watched: Any, tmp_path: Path) -> None:
    w = watched()
    page = w.open((site / "flags" / "checkout.payments.express-pay.html").as_uri())
    got = charts(page)
    assert set(got) == {
        "error_rate@treatment-a",
        "error_rate@treatment-b",
        "p95_latency_ms@treatment-a",
        "p95_latency_ms@treatment-b",
    }
    for gid, c in got.items():
        assert c["visible"] and c["threshold"] == 1, gid
        assert c["thresholdY"] < c["zeroY"], f"{gid}: a +10 % threshold is drawn above the zero line"
        assert c["events"] == ["halt"], f"{gid}: the halt is marked on every chart of the flag"
        assert c["points"] >= 14 and c["estimate"] > 300, gid
    # The default sequential test gives an always-valid p-value, not a bound (a ramp step's confidence
    # sequence does: tests/test_site.py); the threshold method draws the per-run delta alone.
    assert got["error_rate@treatment-b"]["bound"] == 0 and got["p95_latency_ms@treatment-b"]["bound"] == 0
    assert "always-valid test proves harm" in page.inner_text('section[data-guardrail="error_rate@treatment-b"]')
    assert got["error_rate@treatment-b"]["breaches"] == 1 and got["error_rate@treatment-a"]["breaches"] == 0
    assert page.inner_text("#status") == "halted"
    rows = page.eval_on_selector_all("table.last-run tbody tr", "rs => rs.map(r => r.cells[0].textContent)")
    assert sorted(rows) == sorted(got)
    assert "breach" in page.inner_text("table.last-run")
    page.screenshot(path=str(tmp_path / "flag.png"), full_page=True)
    assert (tmp_path / "flag.png").stat().st_size > 10_000
    w.check_clean()


def test_index_sorted_halts_first_and_filters(site: Path, watched: Any, tmp_path: Path) -> None:
    w = watched()
    page = w.open((site / "index.html").as_uri())
    statuses = page.eval_on_selector_all("#flags tbody tr .badge", "bs => bs.map(b => b.textContent)")
    assert statuses == ["halted", "held", "no data", "ok", "ok"]
    page.fill("#q", "no data")
    expect(page.locator("#shown")).to_have_text("1")
    visible = page.eval_on_selector_all("#flags tbody tr:not([hidden]) a", "as => as.map(a => a.textContent)")
    assert visible == ["growth.onboarding.no-data"]
    page.fill("#q", "")
    expect(page.locator("#shown")).to_have_text("5")
    page.click("text=ads.bidding.first-look")
    page.wait_for_selector("svg.chart")
    assert page.url.endswith("/flags/ads.bidding.first-look.html")
    page.screenshot(path=str(tmp_path / "index.png"))
    w.check_clean()


def test_stale_warning_follows_the_viewing_time(site: Path, watched: Any) -> None:
    """The last run was 09:46; viewed at 09:50 all is well, viewed at 10:30 cron has stopped."""
    for at, stale in (("2026-11-25T09:50:00Z", False), ("2026-11-25T10:30:00Z", True)):
        w = watched()
        w.page.clock.set_fixed_time(datetime.fromisoformat(at.replace("Z", "+00:00")))
        page = w.open((site / "index.html").as_uri())
        assert page.is_visible("#stale") is stale, at
        assert "44 min ago" in page.inner_text("body") if stale else "4 min ago" in page.inner_text("body")
        w.check_clean()


def test_no_data_and_first_look_halt(site: Path, watched: Any, tmp_path: Path) -> None:
    w = watched()
    page = w.open((site / "flags" / "growth.onboarding.no-data.html").as_uri())
    got = charts(page)
    assert list(got) == ["signup_errors@treatment"]
    c = got["signup_errors@treatment"]
    assert c["empty"] == 1 and c["threshold"] == 1 and c["estimate"] == 0
    assert page.inner_text("#status") == "no data"
    page.screenshot(path=str(tmp_path / "no-data.png"))

    page = w.open((site / "flags" / "ads.bidding.first-look.html").as_uri())
    got = charts(page)
    c = got["error_rate@treatment"]
    assert c["points"] == 1 and c["events"] == ["hold"] and c["threshold"] == 1 and c["breaches"] == 1
    assert page.locator("svg.chart circle.last").count() == 1
    assert page.inner_text("#status") == "held"
    page.screenshot(path=str(tmp_path / "first-look.png"))
    w.check_clean()


def test_hostile_names_are_text(site: Path, watched: Any) -> None:
    w = watched()
    page = w.open((site / "flags" / "web.ui.escape-test.html").as_uri())
    assert page.locator("img").count() == 0
    assert page.title() == "web.ui.escape-test: guardrail report"
    assert EVIL_VARIANT in page.inner_text("section.guardrail h2")
    assert list(charts(page)) == [f"error_rate@{EVIL_VARIANT}"]
    w.check_clean()


def test_no_state_yet(run_cli: Any, tmp_path: Path, watched: Any) -> None:
    out = tmp_path / "site"
    build(run_cli, tmp_path / "nothing", out)
    w = watched()
    page = w.open((out / "index.html").as_uri())
    assert page.locator("#flags tbody tr").count() == 0
    assert "No flags yet" in page.inner_text("#empty")
    assert "never completed a run" in page.inner_text("#stale") and page.is_visible("#stale")
    page.screenshot(path=str(tmp_path / "empty.png"))
    w.check_clean()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_served_by_a_static_web_server(site: Path, watched: Any) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}/"
        w = watched(offline=False, allowed=origin)
        page = w.open(origin)
        page.click("text=checkout.payments.express-pay")
        page.wait_for_selector("svg.chart")
        assert len(charts(page)) == 4
        page.click("text=all flags")
        page.wait_for_selector("#flags")
        w.check_clean()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_two_thousand_flags(tmp_path: Path, run_cli: Any, watched: Any) -> None:
    """2,000 flags through two real check runs: 40 halted, 20 without data; sorted, filterable."""
    rng = random.Random(7)
    definitions: dict[str, Any] = {}
    for i in range(2000):
        definitions[f"team{i % 13:02d}.svc.experiment-{i:04d}"] = {
            "state": "ENABLED",
            "variants": {"control": False, "treatment": True},
            "defaultVariant": "control",
            "metadata": {
                "experiment_type": "ab",
                "started_at": "2026-11-25T08:00:00Z",
                "guardrail.error_rate.comparison": "relative_increase",
                "guardrail.error_rate.threshold": 0.10,
            },
        }
    with FakeAPI(flags=definitions, token=TOKEN) as api:
        for i, key in enumerate(definitions):
            if i % 100 == 7:
                continue  # no series: skip:no_data
            bad = i % 50 == 3  # twice control's errors on 50,000 events: proven at the first look
            api.set_metric(key, "control", "error_rate", 0.01 * (1 + rng.gauss(0, 0.01)), 50_000)
            api.set_metric(key, "treatment", "error_rate", 0.02 if bad else 0.01 * (1 + rng.gauss(0, 0.01)), 50_000)
        env = {"FLAG_API_URL": api.url, "FLAG_API_TOKEN": TOKEN, "METRICS_API_URL": api.url}
        for look in range(2):
            # The installed command, as cron runs it: its own process, so it does not share a GIL with
            # the fake API's server threads.
            when = format_time(START + timedelta(minutes=2 * look))
            result = run_cli(
                "check",
                "--state",
                str(tmp_path / "state.json"),
                "--audit",
                str(tmp_path / "audit.jsonl"),
                "--now",
                when,
                env=env,
                timeout=300,
            )
            # Run 1 halts the 40 harmful flags (1 wins over 3); run 2 watches the rest: 3, no data for 20 flags.
            assert result.returncode == (1 if look == 0 else 3), result.stderr
    out = tmp_path / "site"
    build(run_cli, tmp_path, out, now="2026-11-25T09:03:00Z")
    w = watched()
    page = w.open((out / "index.html").as_uri())
    statuses = page.eval_on_selector_all("#flags tbody tr .badge", "bs => bs.map(b => b.textContent)")
    assert len(statuses) == 2000
    assert statuses[:40] == ["halted"] * 40 and statuses[40:60] == ["no data"] * 20
    assert set(statuses[60:]) == {"ok"}
    keys = page.eval_on_selector_all("#flags tbody tr a", "as => as.map(a => a.textContent)")
    assert keys[:40] == sorted(keys[:40]) and keys[60:] == sorted(keys[60:])
    page.fill("#q", "experiment-1234")
    expect(page.locator("#shown")).to_have_text("1")
    page.fill("#q", "halted")
    expect(page.locator("#shown")).to_have_text("40")
    page.screenshot(path=str(tmp_path / "index-2000.png"))
    w.check_clean()
