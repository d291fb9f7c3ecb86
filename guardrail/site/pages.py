"""The report's HTML: the index of every watched flag and one page per flag. Pure string building.

Everything that comes from outside (flag keys, variant and metric names, reasons, error details) goes
through `html.escape`, in text and in attributes alike. Pages fetch nothing: the CSS and the two small
scripts (filter the index; show the age of the last run at view time) are inline, fonts are the system's,
links are relative, so a page works from file:// and from any static web server. With scripts off a
page still shows everything, with ages as of the build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

from guardrail.site import chart

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:12px 20px;color:#1b1b1b;background:#fff}
h1{font-size:20px;margin:8px 0;word-break:break-all}h2{font-size:16px;margin:22px 0 4px;word-break:break-all}
table{border-collapse:collapse;width:100%;margin:8px 0}th,td{text-align:left;padding:3px 8px;
border-bottom:1px solid #e3e3e3;vertical-align:top}td{overflow-wrap:anywhere}
th{background:#f4f4f4;position:sticky;top:0;white-space:nowrap}
table.facts,table.halt{width:auto}
td.num{text-align:right;font-variant-numeric:tabular-nums}.key{word-break:break-all}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;background:#e0e0e0}
.st-halt_failed .badge,.badge.st-halt_failed{background:#6a1b9a;color:#fff}
.st-halt_pending .badge,.badge.st-halt_pending{background:#ad1457;color:#fff}
.st-halted .badge,.badge.st-halted{background:#c62828;color:#fff}
.st-held .badge,.badge.st-held{background:#ef6c00;color:#fff}
.st-srm .badge,.badge.st-srm{background:#795548;color:#fff}
.st-breaching .badge,.badge.st-breaching{background:#f9a825}
.st-no_data .badge,.badge.st-no_data{background:#b0bec5}
.st-ok .badge,.badge.st-ok{background:#c8e6c9}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:8px 12px;margin:8px 0;font-weight:600}
.warn[hidden]{display:none}
.why{background:#fdecea;border-left:4px solid #c62828;padding:6px 10px}
.muted{color:#666}.stale{color:#b00020;font-weight:600}td.num,td.t{white-space:nowrap}.scroll{overflow-x:auto}
.last-run td:last-child{min-width:18em}
input[type=search]{font-size:15px;padding:5px 8px;width:22em}
svg.chart{max-width:100%;height:auto;display:block}
svg.chart .plot{fill:#fafafa;stroke:#ccc}svg.chart text{font-size:11px;fill:#444}
svg.chart .ylabel{text-anchor:end}svg.chart .zero{stroke:#999;stroke-width:1}
svg.chart .threshold{stroke:#c62828;stroke-width:2;stroke-dasharray:7 4;fill:none}
svg.chart .data path{fill:none;vector-effect:non-scaling-stroke;stroke-linejoin:round}
svg.chart .estimate{stroke:#1565c0;stroke-width:2}svg.chart .bound{stroke:#1565c0;stroke-width:1.2;
stroke-dasharray:4 3}svg.chart .band{opacity:.18}svg.chart .band path{stroke:#1565c0;stroke-width:5}
svg.chart .breach{stroke:#c62828;stroke-width:7;stroke-linecap:round}svg.chart .last{fill:#1565c0}
svg.chart .event path{stroke-width:2;stroke-dasharray:3 2}svg.chart .event text{font-weight:600}
svg.chart .empty{text-anchor:middle;font-size:14px;fill:#888}svg.chart .note{fill:#888}
.legend span{margin-right:14px;font-size:12px}.sw{display:inline-block;width:18px;height:0;
vertical-align:middle;margin-right:4px;border-top:2px solid #1565c0}
"""

# Ages are computed when the page is viewed, so a page left open (or a site whose cron stopped) says so.
AGE_SCRIPT = """
(function(){var now=Date.now(),stale=%(stale)s*60000,late=false;
document.querySelectorAll('[data-t]').forEach(function(el){var t=Date.parse(el.getAttribute('data-t'));
if(isNaN(t))return;var m=Math.round((now-t)/60000),txt=m<90?m+' min ago':m<2880?Math.round(m/60)+' h ago':
Math.round(m/1440)+' d ago';var a=el.querySelector('.ago');if(a)a.textContent=txt;
if(el.hasAttribute('data-monitor')&&now-t>stale){late=true;el.classList.add('stale');}});
var w=document.getElementById('stale');if(w&&late){w.hidden=false;}})();
"""

FILTER_SCRIPT = """
(function(){var q=document.getElementById('q'),rows=document.querySelectorAll('#flags tbody tr'),
n=document.getElementById('shown'),timer=null;function run(){var v=q.value.trim().toLowerCase(),c=0;
for(var i=0;i<rows.length;i++){var hit=!v||rows[i].getAttribute('data-k').indexOf(v)>=0;rows[i].hidden=!hit;
if(hit)c++;}n.textContent=c;}q.addEventListener('input',function(){clearTimeout(timer);timer=setTimeout(run,60);});
if(q.value)run();})();
"""

STATUS_TEXT = {
    "halt_failed": "halt FAILED",
    "halt_pending": "halt pending",
    "halted": "halted",
    "held": "held",
    "srm": "SRM mismatch",
    "breaching": "breaching",
    "no_data": "no data",
    "ok": "ok",
    "warmup": "warming up",
    "idle": "not evaluated",
}
STATUS_RANK = {k: i for i, k in enumerate(STATUS_TEXT)}


def _page(title: str, body: str, *, stale_after: float | None) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # Defence in depth: even if something escaped the escaping, the page may load nothing from anywhere.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>{body}"
        f"<script>{AGE_SCRIPT % {'stale': 'Infinity' if stale_after is None else float(stale_after)}}</script>"
        "</body></html>\n"
    )


def _time_cell(iso: str | None, now: datetime, *, monitor: bool = False) -> str:
    if not iso:
        return '<span class="muted">never</span>'
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
        minutes = round((now - then).total_seconds() / 60)
        ago = f"{minutes} min ago" if minutes < 90 else f"{round(minutes / 60)} h ago"
    except ValueError:
        ago = ""
    flag = " data-monitor" if monitor else ""
    return f'<span data-t="{escape(iso)}"{flag}>{escape(iso)} (<span class="ago">{ago}</span>)</span>'


def _stale_banner(last_run: str | None, now: datetime, stale_after: float | None) -> str:
    """Shown at build time when the monitor's last run is already old, and at view time by the script."""
    if stale_after is None:
        return ""
    old = last_run is None
    if last_run:
        try:
            then = datetime.fromisoformat(last_run.replace("Z", "+00:00"))
            old = (now - then).total_seconds() > stale_after * 60
        except ValueError:
            old = True
    text = (
        "guardrail check has never completed a run with this state file: nothing is watched"
        if last_run is None
        else f"the last guardrail check run is more than {stale_after:g} min old: cron may have stopped, and the "
        "flags are NOT being watched"
    )
    return f'<div id="stale" class="warn"{"" if old else " hidden"}>STALE MONITOR: {escape(text)}</div>'


def ramp_text(ramp: Any, last: Any = None) -> str:
    """Where a ramp is: from the flag's state entry (`step`, 0-based; `shipped_at`) and the last ramp record
    of the audit log (`step` 1-based, `shares` per variant). Other shapes show what they can."""
    parts = []
    state = ramp if isinstance(ramp, Mapping) else {}
    record = last if isinstance(last, Mapping) else {}
    step = state.get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        steps = state.get("steps")
        parts.append(f"step {step + 1}/{len(steps)}" if isinstance(steps, list) else f"step {step + 1}")
    elif isinstance(record.get("step"), int):
        parts.append(f"step {record['step']}")
    shares = record.get("shares")
    share = state.get("share", state.get("percent"))
    if isinstance(shares, Mapping) and shares:
        parts.append("(" + ", ".join(f"{k} {v}%" for k, v in shares.items()) + ")")
    elif isinstance(share, (int, float)) and not isinstance(share, bool):
        parts.append(f"{share:g}%")
    if state.get("shipped_at"):
        parts.append("shipped")
    elif state.get("status"):
        parts.append(str(state["status"]))
    return " ".join(parts)


def srm_text(srm: Any) -> str:
    if not isinstance(srm, Mapping) or not srm.get("verdict"):
        return ""
    p = srm.get("p_value")
    return f"{srm['verdict']}" + (f" (p={p:.3g})" if isinstance(p, (int, float)) else "")


def index_page(
    rows: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    last_run: str | None,
    stale_after: float | None,
    warnings: Sequence[str],
) -> str:
    """Rows arrive sorted (halts first). One <tr> per flag; the filter matches key and status."""
    head = [
        f"<h1>guardrail report</h1><p>Built {escape(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}. Monitor's last "
        f"run: {_time_cell(last_run, now, monitor=True)}.</p>",
        _stale_banner(last_run, now, stale_after),
    ]
    head += [f'<div class="warn">{escape(w)}</div>' for w in warnings]
    if not rows:
        head.append(
            '<p id="empty">No flags yet: once <code>guardrail check</code> has run with this state file, '
            "every watched flag is listed here.</p>"
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{n} {STATUS_TEXT[s]}" for s, n in sorted(counts.items(), key=lambda i: STATUS_RANK[i[0]]))
    head.append(
        f'<p><input id="q" type="search" placeholder="filter by flag key or status" aria-label="filter"> '
        f'<span id="shown">{len(rows)}</span> of {len(rows)} flags shown. {escape(summary)}</p>'
    )
    body = [
        '<table id="flags"><thead><tr><th>flag</th><th>status</th><th>ramp</th><th>last run</th>'
        "<th>halts</th><th>SRM</th><th>guardrails</th></tr></thead><tbody>"
    ]
    for r in rows:
        key, status = str(r["key"]), str(r["status"])
        find = escape(f"{key} {STATUS_TEXT[status]} {r.get('detail', '')}".lower())
        body.append(
            f'<tr class="st-{status}" data-k="{find}"><td class="key"><a href="flags/{escape(r["slug"])}.html">'
            f'{escape(key)}</a></td><td><span class="badge">{escape(STATUS_TEXT[status])}</span> '
            f'<span class="muted">{escape(str(r.get("detail", "")))}</span></td><td>{escape(str(r.get("ramp", "")))}'
            f'</td><td>{_time_cell(r.get("last_run"), now)}</td><td class="num">{int(r.get("halts", 0))}</td>'
            f'<td>{escape(str(r.get("srm", "")))}</td><td class="num">{int(r.get("guardrails", 0))}</td></tr>'
        )
    body.append(f"</tbody></table><script>{FILTER_SCRIPT}</script>")
    return _page("guardrail report", "".join(head + body), stale_after=stale_after)


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:,}" if isinstance(v, int) else f"{v:.6g}"
    return escape(str(v))


def _arm(a: Any) -> str:
    if not isinstance(a, Mapping):
        return "-"
    if a.get("error"):
        return f'<span class="muted">{escape(str(a["error"]))}</span>'
    return f'{_num(a.get("value"))} <span class="muted">(n={_num(a.get("count"))})</span>'


def _halt_block(halt: Mapping[str, Any] | None, key: str) -> str:
    if not isinstance(halt, Mapping):
        return ""
    rows = [
        ("decided", halt.get("decided_at")),
        ("completed", halt.get("completed_at")),
        ("status", halt.get("status")),
        ("action", halt.get("action")),
        ("reason", halt.get("reason")),
        ("attempts", halt.get("attempts")),
        ("last error", halt.get("last_error")),
        ("alert delivered", halt.get("alert_delivered")),
        ("run", halt.get("run_id")),
    ]
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows if v not in (None, ""))
    hint = ""
    if halt.get("status") == "done":
        hint = (
            f'<p class="muted">Once reviewed and the flag restored at its source: <code>guardrail resume '
            f"{escape(key)} --reason ...</code></p>"
        )
    return f'<h2>Halt</h2><table class="halt">{cells}</table>{hint}'


def flag_page(
    key: str,
    history: Mapping[str, Any],
    state_entry: Mapping[str, Any],
    row: Mapping[str, Any],
    *,
    now: datetime,
    gids: Sequence[str],
    stale_after: float | None,
) -> str:
    status = str(row["status"])
    series: Mapping[str, Any] = history.get("series") or {}
    events: list[Mapping[str, Any]] = list(history.get("events") or [])
    halt = state_entry.get("halt") if isinstance(state_entry.get("halt"), Mapping) else None
    parts = [
        f'<p><a href="../index.html">&larr; all flags</a></p><h1 class="key">{escape(key)}</h1>',
        _stale_banner(row.get("monitor_last_run"), now, stale_after),
        f'<p><span class="badge st-{status}" id="status">{escape(STATUS_TEXT[status])}</span> '
        f'<span class="muted">{escape(str(row.get("detail", "")))}</span> &middot; last run '
        f'{_time_cell(row.get("last_run"), now)} &middot; <span class="muted" id="drawn">page drawn '
        f"{now.strftime('%Y-%m-%d %H:%M UTC')}</span></p>",
    ]
    if halt is not None:  # what the person paged needs first: why
        parts.append(f'<p class="why"><b>Why:</b> {escape(str(halt.get("reason") or ""))}</p>')
    legend = (
        '<p class="legend"><span><i class="sw"></i>estimated harm</span>{bound}<span><i class="sw" '
        'style="border-top:2px dashed #c62828"></i>threshold</span><span style="color:#c62828">&#9679; '
        "breach</span><span>vertical lines: halts, holds, resumes, ramp steps</span></p>"
    )
    frame = chart.Frame(series.values(), t0=history.get("t0"), events=events)
    for gid in gids:
        s = series.get(gid)
        last = (s or {}).get("last") or {}
        metric, _, variant = gid.rpartition("@")
        comparison = str(last.get("comparison") or "")
        relative = comparison.startswith("relative")
        sequential = last.get("method") == "sequential"
        # A ramp step's confidence sequence gives a lower bound on the harm; the default window-stratified
        # test gives an always-valid p-value (in the reason) and no bound (docs/statistics.md).
        bounded = sequential and last.get("bound") is not None
        threshold = last.get("threshold") if isinstance(last.get("threshold"), (int, float)) else None
        if bounded:
            how = (
                "sequential: since-start estimate and its always-valid lower bound (shaded down to it); it halts "
                "once the bound is above the threshold"
            )
        elif sequential:
            how = (
                "sequential: since-start estimate; it halts when the always-valid test proves harm beyond the "
                "threshold (its p-value is in the reason)"
            )
        else:
            how = "threshold: each run's delta against the threshold"
        control = (s or {}).get("control_variant") or last.get("control_variant") or "control"
        parts.append(
            f'<section class="guardrail" data-guardrail="{escape(gid)}"><h2>{escape(metric)} &middot; '
            f'{escape(variant)} vs {escape(str(control))}</h2><p class="muted">{escape(comparison)} '
            f"{escape(chart.fmt_value(threshold, relative) if threshold is not None else '')} &middot; "
            f"{escape(how)}</p>"
        )
        bound = (
            '<span><i class="sw" style="border-top:2px dotted #1565c0"></i>always-valid lower bound</span>'
            if bounded
            else ""
        )
        parts.append(legend.format(bound=bound))
        parts.append(chart.render(gid, s, frame=frame, threshold=threshold, relative=relative, sequential=sequential))
        parts.append("</section>")
    if not gids:
        parts.append('<p id="nodata">No guardrail of this flag has been evaluated yet.</p>')
    parts.append(_last_run_table(series, gids))
    facts = [
        ("last run", _time_cell(row.get("last_run"), now)),
        ("first seen enabled", escape(str(state_entry.get("first_seen_enabled") or "-"))),
        ("ramp", escape(str(row.get("ramp") or "-"))),
        ("SRM", escape(str(row.get("srm") or "-"))),
        ("halts recorded", str(int(row.get("halts", 0)))),
    ]
    parts.append('<h2>Flag</h2><table class="facts">')
    parts += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts]
    parts.append("</table>")
    parts.append(_halt_block(halt, key))
    if events:
        parts.append(
            '<h2>Events</h2><table class="events"><thead><tr><th>time (UTC)</th><th>what</th>'
            "<th>detail</th></tr></thead><tbody>"
        )
        for ev in reversed(events):
            when = datetime.fromtimestamp(float(ev["t"]), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            parts.append(
                f"<tr><td>{when}</td><td>{escape(str(ev['label']))}</td>"
                f"<td>{escape(str(ev.get('detail') or ''))}</td></tr>"
            )
        parts.append("</tbody></table>")
    return _page(f"{key}: guardrail report", "".join(parts), stale_after=stale_after)


def _number(v: Any, relative: bool) -> str:
    """A harm, bound or threshold as the chart labels it; text from the audit log ("inf") is escaped."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return chart.fmt_value(float(v), relative)
    return "-" if v is None else escape(str(v))


def _last_run_table(series: Mapping[str, Any], gids: Sequence[str]) -> str:
    rows = []
    for gid in gids:
        last = (series.get(gid) or {}).get("last")
        if not last:
            rows.append(f'<tr><td>{escape(gid)}</td><td colspan="9" class="muted">not evaluated yet</td></tr>')
            continue
        rel = str(last.get("comparison") or "").startswith("relative")
        rows.append(
            f"<tr><td>{escape(gid)}</td><td>{escape(str(last.get('verdict')))}</td>"
            f'<td class="t">{_arm(last.get("treatment"))}</td><td class="t">{_arm(last.get("control"))}</td>'
            f'<td class="num">{_number(last.get("delta"), rel)}</td>'
            f'<td class="num">{_number(last.get("bound"), rel)}</td><td class="num">'
            f'{_number(last.get("threshold"), rel)}</td><td class="num">{_num(last.get("streak"))}/'
            f'{_num(last.get("confirmations"))}</td><td class="t">{escape(str(last.get("time") or ""))}</td>'
            f"<td>{escape(str(last.get('reason') or ''))}</td></tr>"
        )
    return (
        '<h2>Last run</h2><div class="scroll"><table class="last-run"><thead><tr><th>guardrail</th>'
        "<th>verdict</th><th>treatment</th>"
        "<th>control</th><th>harm</th><th>bound</th><th>threshold</th><th>streak</th><th>at</th><th>reason</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
