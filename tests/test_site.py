"""The report site without a browser: the history fold, incremental refresh, escaping, tolerant reading of
entries other features add (ramp, SRM), `check --report`, alert links and the GitHub job summary."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from guardrail.check import run_check
from guardrail.fakeapi import FakeAPI
from guardrail.model import GuardrailError
from guardrail.settings import load_settings
from guardrail.site import history as hist
from guardrail.site import pages
from guardrail.site.build import _pending, build_from_records, build_site, due, page_link, refresh_site, slug
from tests.report_scenario import START, TOKEN, _set_looks, flags, settings_for


def decision(
    t: str,
    delta: float | str | None,
    *,
    verdict: str = "pass",
    bound: float | None = None,
    metric: str = "error_rate",
    variant: str = "treatment",
    flag: str = "f.k",
) -> dict[str, Any]:
    return {
        "type": "decision",
        "time": t,
        "run_id": "r",
        "flag": flag,
        "metric": metric,
        "treatment_variant": variant,
        "control_variant": "control",
        "delta": delta,
        "bound": bound,
        "threshold": 0.1,
        "comparison": "relative_increase",
        "method": "sequential",
        "verdict": verdict,
        "streak": 0,
        "confirmations": 2,
        "reason": "r",
        "control": {"value": 0.01, "count": 10},
        "treatment": {"value": 0.011, "count": 10},
    }


def minute(i: int) -> str:
    return f"{(START + timedelta(minutes=2 * i)).isoformat().replace('+00:00', 'Z')}"


def test_incremental_refresh_equals_a_full_build(tmp_path: Path) -> None:
    """`check --report` after every run leaves the same histories as `guardrail report` from the audit log."""
    incremental, deferred = tmp_path / "inc", tmp_path / "deferred"
    waiting = 0
    with FakeAPI(flags=flags(), token=TOKEN) as api:
        settings = settings_for(api, tmp_path)
        import random

        rng = random.Random(3)
        for look in range(18):  # the last look (17) halts treatment-b, worse from look 10
            _set_looks(api, look, rng)
            now = START + timedelta(minutes=2 * look)
            result = run_check(settings, now=now)
            assert result.records, "a run hands its audit records to the report"
            refresh_site(
                incremental,
                state_path=settings.state_path,
                audit_path=settings.audit_path,
                records=result.records,
                now=now,
                every_minutes=0,
            )  # every page, every run
            refresh_site(
                deferred,
                state_path=settings.state_path,
                audit_path=settings.audit_path,
                records=result.records,
                now=now,
            )  # healthy pages every 10 minutes
            waiting += len(list((deferred / "data" / "pending").iterdir()))
    full = tmp_path / "full"
    build_site(full, state_path=settings.state_path, audit_path=settings.audit_path, now=now)
    names = sorted(p.name for p in (full / "data" / "flags").iterdir())
    assert len(names) == 5 and names == sorted(p.name for p in (incremental / "data" / "flags").iterdir())
    for name in names:
        a = json.loads((incremental / "data" / "flags" / name).read_text())
        b = json.loads((full / "data" / "flags" / name).read_text())
        assert a == b, name
    assert (incremental / "index.html").read_text() == (full / "index.html").read_text()
    page = (full / "flags" / "checkout.payments.express-pay.html").read_text()
    assert page == (incremental / "flags" / "checkout.payments.express-pay.html").read_text()
    # Deferred redraws lose nothing: each healthy flag's history plus its waiting looks is the full history.
    for name in names:
        key = json.loads((full / "data" / "flags" / name).read_text())["key"]
        h = json.loads((deferred / "data" / "flags" / name).read_text())
        pending = _pending(deferred, key)
        for rec in pending:
            hist.add_record(h, rec)
        assert h == json.loads((full / "data" / "flags" / name).read_text()), name
    assert waiting > 0, "healthy flags' pages waited for their slot"
    index = (deferred / "index.html").read_text()
    assert index.count('badge">ok<') == 2 and "halted" in index


def test_a_healthy_page_is_redrawn_once_per_period_and_anything_else_at_once() -> None:
    ok = [decision(minute(0), 0.01)]
    summary: dict[str, Any] = {"rendered_at": START.timestamp(), "verdicts": {"error_rate@treatment": ["pass", 0, 2]}}
    slots = [due("f.k", summary, ok, START + timedelta(minutes=m), 10.0) for m in range(0, 10, 2)]
    assert slots.count(True) <= 1, "at most one redraw in a ten-minute period"
    assert any(due("f.k", summary, ok, START + timedelta(minutes=m), 10.0) for m in range(10, 20, 2))
    assert due("f.k", summary, [decision(minute(0), 0.5, verdict="breach")], START, 10.0)
    assert due("f.k", summary, [{"type": "halt", "flag": "f.k"}], START, 10.0)
    was_breaching = {**summary, "verdicts": {"error_rate@treatment": ["breach", 1, 2]}}
    assert due("f.k", was_breaching, ok, START, 10.0), "the look that clears a breach is drawn at once"
    assert due("f.k", {}, ok, START, 10.0) and due("f.k", summary, ok, START, 0.0)


def test_refresh_builds_in_full_when_the_site_is_new_or_foreign(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text("".join(json.dumps(decision(minute(i), 0.01 * i)) + "\n" for i in range(5)))
    out = tmp_path / "site"
    refresh_site(out, state_path=tmp_path / "none.json", audit_path=audit, records=[], now=START)
    h = json.loads((out / "data" / "flags" / "f.k.json").read_text())
    assert h["series"]["error_rate@treatment"]["n"] == 5
    (out / "data" / "index.json").write_text('{"v": 999, "flags": {}}')
    refresh_site(out, state_path=tmp_path / "none.json", audit_path=audit, records=[], now=START)
    assert json.loads((out / "data" / "index.json").read_text())["v"] == hist.HISTORY_VERSION


def test_thinning_keeps_breaches_and_the_newest_and_bounds_the_size() -> None:
    h = hist.new_history("f.k")
    for i in range(1000):
        hist.add_record(
            h, decision(minute(i), 0.001 * (i % 7), verdict="breach" if i in (5, 999) else "pass", bound=-0.05)
        )
    s = h["series"]["error_rate@treatment"]
    assert hist.MAX_POINTS // 2 <= s["npts"] <= hist.MAX_POINTS and s["n"] == 1000
    xs = [p[0] for p in hist.points(s)]
    assert xs == sorted(xs) and xs[-1] == 1998.0
    assert 10.0 in xs, "the breach at look 5 survives thinning"
    # The paths hold exactly the kept points (one M or L per point), so a page stays the same size.
    assert len(re.findall(r"[ML]", s["pe"])) == s["npts"]
    assert s["dots"].count("h0") == 2


def test_infinite_and_missing_values_leave_gaps_not_errors() -> None:
    h = hist.new_history("f.k")
    for i, delta in enumerate([0.01, "inf", None, 0.02]):
        hist.add_record(h, decision(minute(i), delta, verdict="skip:no_data" if delta is None else "pass"))
    s = h["series"]["error_rate@treatment"]
    assert s["pe"].count("M") == 2 and s["pe"].count("L") == 0  # two separate single points
    assert [p[1] for p in hist.points(s)] == [0.01, None, None, 0.02]


def test_every_outside_text_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>\"'&"
    recs = [
        decision(minute(0), 0.5, verdict="breach", flag=f"x.{evil}", metric="error_rate", variant=evil),
        {
            "type": "halt",
            "time": minute(0),
            "flag": f"x.{evil}",
            "action": "revert",
            "status": "done",
            "reason": evil,
            "metric": "error_rate",
            "treatment_variant": evil,
        },
    ]
    recs[0]["reason"] = evil
    doc = {
        "last_run_at": minute(0),
        "flags": {f"x.{evil}": {"halt": {"status": "done", "action": "revert", "reason": evil, "decided_at": evil}}},
    }
    site = build_from_records(tmp_path, doc, recs, now=START, stale_after=10.0, warnings=[evil])
    assert site.summaries
    for page in [tmp_path / "index.html", *(tmp_path / "flags").iterdir()]:
        text = page.read_text()
        assert "<script>alert" not in text and "<script" in text
        assert text.count("<script>") == (2 if page.name == "index.html" else 1)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


@pytest.mark.parametrize("key", ["../../etc/passwd", ".hidden", "a/b", "a_b", "ok.key-1", "ünï.cöde", ""])
def test_slugs_stay_in_flags_dir_and_never_collide(key: str) -> None:
    name = slug(key)
    assert "/" not in name and not name.startswith(".") and name
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
    others = {slug(k) for k in ["../../etc/passwd", ".hidden", "a/b", "a_b", "ok.key-1", "ünï.cöde", ""] if k != key}
    assert name not in others


def test_page_link_under_base_url() -> None:
    assert page_link("https://ops.example/guardrail/", "a.b.c") == "https://ops.example/guardrail/flags/a.b.c.html"
    assert page_link("https://x", "a/b").startswith("https://x/flags/a_b-")


def test_ramp_srm_resume_and_unknown_records_are_read_tolerantly(tmp_path: Path) -> None:
    recs = [
        decision(minute(0), 0.01),
        # As guardrail/ramp_run.py writes them: steps 1-based, shares per variant; a hold is no event.
        {
            "type": "ramp",
            "time": minute(1),
            "flag": "f.k",
            "action": "advance",
            "status": "done",
            "step": 2,
            "to_step": 3,
            "shares": {"treatment": 25, "control": 75},
            "reason": "5 min on step, no harm",
        },
        {
            "type": "ramp",
            "time": minute(2),
            "flag": "f.k",
            "action": "hold",
            "status": "decided",
            "step": 3,
            "to_step": None,
            "shares": {"treatment": 25, "control": 75},
            "reason": "12 min left on step 3",
        },
        {"type": "srm", "time": minute(2), "flag": "f.k", "verdict": "mismatch", "p_value": 1e-6},
        {"type": "resume", "time": minute(3), "flag": "f.k", "by": "ana", "reason": "fixed"},
        {"type": "something_new", "time": minute(3), "flag": "f.k"},
        decision(minute(4), 0.02),
    ]
    doc = {
        "last_run_at": minute(4),
        "flags": {"f.k": {"ramp": {"step": 2, "step_started_at": minute(1)}}, "g.k": {"ramp": "not a mapping"}},
    }
    build_from_records(tmp_path, doc, recs, now=START, stale_after=10.0)
    page = (tmp_path / "flags" / "f.k.html").read_text()
    kinds = re.findall(r'data-kind="(\w+)"', page)
    assert kinds == ["ramp", "srm", "resume"]
    assert "ramp advance step 3" in page and "treatment 25%, control 75%" in page and "by ana: fixed" in page
    index = (tmp_path / "index.html").read_text()
    assert "step 3 (treatment 25%, control 75%)" in index and "mismatch (p=1e-06)" in index
    assert index.index("f.k.html") < index.index("g.k.html")  # SRM mismatch ranks above an idle flag
    assert pages.ramp_text(None) == "" and pages.ramp_text({"percent": 5}) == "5%"
    assert pages.ramp_text({"step": 4, "shipped_at": minute(9)}) == "step 5 shipped"


def test_report_settings_are_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text("report:\n  base_url: https://ops.example/g\n  dir: /srv/g\n")
    s = load_settings(config=cfg, env={})
    assert s.report_base_url == "https://ops.example/g" and s.report_dir == Path("/srv/g")
    for body, field in (
        ("report:\n  base_url: ftp://x\n", "report.base_url"),
        ("report:\n  colour: red\n", "report.colour"),
        ("report: [1]\n", "report"),
    ):
        cfg.write_text(body)
        with pytest.raises(GuardrailError) as err:
            load_settings(config=cfg, env={})
        assert err.value.field == field and err.value.source == str(cfg)


def test_check_report_alert_link_and_job_summary(tmp_path: Path, fake_api: FakeAPI, run_cli: Any) -> None:
    """The installed command: `check --report` writes the site, the alert links to the flag's page, and
    in GitHub Actions the job summary lists the halt first; a dry run writes no site."""
    from tests.conftest import TOKEN as API_TOKEN
    from tests.conftest import flag_definition

    fake_api.set_flags(
        {
            "a.healthy.flag": flag_definition(),
            "z.bad.flag|<b>": flag_definition(extra_metadata={"guardrail.error_rate.confirmations": 1}),
        }
    )
    for key, bad in (("a.healthy.flag", 0.0101), ("z.bad.flag|<b>", 0.03)):
        fake_api.set_metric(key, "control", "error_rate", 0.01, 5000)
        fake_api.set_metric(key, "treatment", "error_rate", bad, 5000)
    cfg = tmp_path / "g.yaml"
    cfg.write_text("report:\n  base_url: https://ops.example/guardrail\n")
    env = {
        "FLAG_API_URL": fake_api.url,
        "FLAG_API_TOKEN": API_TOKEN,
        "METRICS_API_URL": fake_api.url,
        "ALERT_WEBHOOK_URL": f"{fake_api.url}/webhook",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
    }
    dry = run_cli("check", "--config", str(cfg), "--dry-run", "--report", str(tmp_path / "site"), env=env)
    assert dry.returncode == 1 and not (tmp_path / "site").exists()
    result = run_cli("check", "--config", str(cfg), "--report", str(tmp_path / "site"), env=env)
    assert result.returncode == 1, result.stderr
    assert (tmp_path / "site" / "index.html").exists()
    pages_written = sorted(p.name for p in (tmp_path / "site" / "flags").iterdir())
    assert len(pages_written) == 2 and "a.healthy.flag.html" in pages_written
    (alert,) = fake_api.alerts
    fields = {f["title"]: f["value"] for f in alert["attachments"][0]["fields"]}
    assert fields["Guardrail report"] == page_link("https://ops.example/guardrail", "z.bad.flag|<b>")
    assert fields["Guardrail report"].removeprefix("https://ops.example/guardrail/") in (
        f"flags/{name}" for name in pages_written
    )
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("## guardrail check") == 2  # appended: the dry run's, then the real run's
    real = summary.split("## guardrail check")[2]
    assert "<b>" not in real and "&lt;b&gt;" in real and "z\\.bad\\.flag\\|&lt;b&gt;" in real
    decisions = real.split("### Decisions")[1]
    assert decisions.index("z\\.bad") < decisions.index("a\\.healthy")  # halts first
    assert API_TOKEN not in summary and "webhook" not in summary


@pytest.mark.parametrize(
    "evil",
    [
        "a|b",
        "<b>bold</b>",
        "[x](http://evil.example)",
        "*em* _u_ `code`",
        "&lt;b&gt; entity",
        "<img src=x onerror=alert(1)>",
        "line\nbreak | two",
        "\\| escaped pipe",
        "# heading",
    ],
)
def test_job_summary_cells_render_as_plain_text(evil: str) -> None:
    """A CommonMark + tables parser (markdown-it-py, GFM's table rules) as the oracle: one row, four cells,
    no element the text asked for, and the text shown as written."""
    import html as html_mod

    from markdown_it import MarkdownIt

    from guardrail.summary import md

    doc = f"| a | b | c | d |\n|---|---|---|---|\n| x | {md(evil)} | y | z |\n"
    out = MarkdownIt("commonmark").enable("table").render(doc)
    body = out.split("<tbody>")[1]
    assert body.count("<td>") == 4
    cell = body.split("<td>")[2].split("</td>")[0]
    assert not re.search(r"<(?!/?td)", cell), cell  # no tag inside the cell
    assert html_mod.unescape(cell) == " ".join(evil.split())


def test_the_bound_is_drawn_where_the_test_gives_one() -> None:
    """A ramp step's confidence sequence records a lower bound: drawn, with its legend. The default
    window-stratified test records a p-value and no bound: no bound line, and the text says what halts."""
    import tempfile

    pages_of: dict[bool, str] = {}
    for bounded in (True, False):
        recs = [
            decision(minute(i), 0.05 * i, bound=(0.05 * i - 0.2) if bounded else None, verdict="pass") for i in range(6)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            build_from_records(Path(tmp), {"last_run_at": minute(5), "flags": {}}, recs, now=START, stale_after=None)
            pages_of[bounded] = (Path(tmp) / "flags" / "f.k.html").read_text()
    assert 'class="bound"' in pages_of[True] and "always-valid lower bound" in pages_of[True]
    assert 'class="bound"' not in pages_of[False] and "always-valid lower bound" not in pages_of[False]
    assert "always-valid test proves harm" in pages_of[False]
