"""One guardrail's chart as inline SVG: estimated harm over time against the threshold line.

Pure and dependency-free. Inline SVG rather than a charting library: a flag page holds a handful of line
charts with a fixed legend and no interaction beyond hover titles, which ~150 lines of Python draw;
embedding a library (Chart.js ~200 KB, Plotly ~3.5 MB, minified) into each of 2,000 pages, or sharing it
as a file that must then sit beside the pages, would make every page larger and need JavaScript to show
anything. Here a page renders with scripts off, prints, and is diffable text.

Drawing: the series' paths arrive ready in data coordinates (guardrail/site/history.py) and are placed in
a nested <svg> whose viewBox maps data to the plot area (`preserveAspectRatio="none"`, strokes kept at
their pixel width by `vector-effect: non-scaling-stroke`; breach dots are zero-length round-capped
subpaths, which stay round under any scale: SVG 1.1 §11.4 'stroke-linecap'). The few elements placed in
pixels (threshold, zero line, events, axes) are computed here each time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

W, H = 760, 250
LEFT, RIGHT, TOP, BOTTOM = 66, 14, 26, 34
PW, PH = W - LEFT - RIGHT, H - TOP - BOTTOM
EVENT_COLOURS = {"halt": "#c62828", "hold": "#ef6c00", "failed": "#6a1b9a", "resume": "#2e7d32",
                 "ramp": "#1565c0", "srm": "#795548"}


def fmt_value(value: float | None, relative: bool) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:+.2%}" if relative else f"{value:+.4g}"


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def _domain_y(lo: float | None, hi: float | None, threshold: float | None,
              last: Sequence[float | None] = ()) -> tuple[float, float, bool]:
    """A y range that always shows 0, the threshold and the newest look; wild early values (a relative
    delta of +900 % on a few events) are clipped so they do not flatten the rest of the run."""
    thr = threshold or 0.0
    scale = abs(thr) or max(abs(lo or 0.0), abs(hi or 0.0), 1e-12)
    cap_hi, cap_lo = max(thr, 0.0) + 4 * scale, min(thr, 0.0) - 4 * scale
    top = min(max(hi if hi is not None else thr, thr, 0.0), cap_hi)
    bottom = max(min(lo if lo is not None else 0.0, thr, 0.0), cap_lo)
    for v in last:
        if v is not None:
            top, bottom = max(top, v), min(bottom, v)
    clipped = (hi is not None and hi > top) or (lo is not None and lo < bottom)
    if top - bottom <= 0:
        top, bottom = top + scale, bottom - scale
    pad = (top - bottom) * 0.08
    return bottom - pad, top + pad, clipped


def render(
    gid: str,
    series: Mapping[str, Any] | None,
    *,
    t0: float | None,
    events: Sequence[Mapping[str, Any]],
    threshold: float | None,
    relative: bool,
    sequential: bool,
) -> str:
    """The <svg> of one guardrail and treatment arm. Every text from outside is escaped."""
    raw: list[list[Any]] = list((series or {}).get("raw") or [])
    xs = [p[0] for p in raw]
    evx = [(ev["t"] - t0) / 60.0 for ev in events if t0 is not None]
    allx = xs + evx
    if allx:
        xmin, xmax = min(allx), max(allx)
    else:
        xmin, xmax = 0.0, 10.0
    if xmax - xmin < 10.0:  # one look (or a halt with no look): a ten-minute window around it
        mid = (xmin + xmax) / 2
        xmin, xmax = mid - 5.0, mid + 5.0
    newest = raw[-1][1:3] if raw else ()
    ylo, yhi, clipped = _domain_y((series or {}).get("lo"), (series or {}).get("hi"), threshold, newest)

    def px(x: float) -> float:
        return float(LEFT + (x - xmin) / (xmax - xmin) * PW)

    def py(v: float) -> float:
        return TOP + (yhi - v) / (yhi - ylo) * PH

    label = escape(gid)
    out = [f'<svg class="chart" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'data-guardrail="{label}" data-points="{len(raw)}"><title>{label}: estimated harm over time '
           f'against the threshold</title>']
    out.append(f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PW}" height="{PH}"/>')
    # y axis: bottom, 0, threshold, top (close labels merged)
    ticks: list[tuple[float, str]] = []
    for v, cls in ((ylo, "tick"), (0.0, "zero"), (threshold, "thr"), (yhi, "tick")):
        if v is None or any(abs(py(v) - py(t)) < 14 for t, _ in ticks):
            continue
        ticks.append((v, cls))
        out.append(f'<text class="ylabel" x="{LEFT - 6}" y="{py(v) + 4:.1f}">{escape(fmt_value(v, relative))}</text>')
    out.append(f'<path class="zero" d="M{LEFT},{py(0.0):.1f}H{LEFT + PW}"/>')
    # x axis: five times, UTC
    if t0 is not None:
        for i in range(5):
            x = xmin + (xmax - xmin) * i / 4
            when = _utc(t0 + x * 60).strftime("%m-%d %H:%M")
            anchor = ("start", "middle", "middle", "middle", "end")[i]
            out.append(f'<text class="xlabel" x="{px(x):.1f}" y="{H - 12}" text-anchor="{anchor}">{when}</text>')
    if any(p[1] is not None or p[2] is not None for p in raw):
        view = f"{xmin:.4f} {-yhi:.6g} {xmax - xmin:.4f} {yhi - ylo:.6g}"
        s = series or {}
        out.append(f'<svg class="data" x="{LEFT}" y="{TOP}" width="{PW}" height="{PH}" viewBox="{view}" '
                   'preserveAspectRatio="none">')
        if sequential and s.get("band"):
            # One stroke per look from bound to estimate, as wide as a look's share of the plot: together a band.
            width = max(2.0, min(12.0, PW / max(len(raw), 1) * (xmax - xmin) / max(xs[-1] - xs[0], 1e-9)))
            out.append(f'<g class="band"><path d="{s["band"]}" style="stroke-width:{width:.1f}px"/></g>')
        if s.get("pb"):
            out.append(f'<path class="bound" d="{s["pb"]}"/>')
        if s.get("pe"):
            out.append(f'<path class="estimate" d="{s["pe"]}"/>')
        if s.get("dots"):
            out.append(f'<path class="breach" d="{s["dots"]}"/>')
        out.append("</svg>")
        x, e = raw[-1][0], raw[-1][1]
        if e is not None and ylo <= e <= yhi:
            out.append(f'<circle class="last" cx="{px(x):.1f}" cy="{py(e):.1f}" r="3.5"><title>last estimate '
                       f'{escape(fmt_value(e, relative))}</title></circle>')
    else:
        looks = f" in {len(raw)} look{'s' if len(raw) != 1 else ''}" if raw else " yet"
        out.append(f'<text class="empty" x="{LEFT + PW / 2}" y="{TOP + PH / 2}">no data{looks}</text>')
    if threshold is not None:
        out.append(f'<path class="threshold" d="M{LEFT},{py(threshold):.1f}H{LEFT + PW}">'
                   f'<title>threshold {escape(fmt_value(threshold, relative))}</title></path>')
    for ev, x in zip(events, evx, strict=False):
        colour = EVENT_COLOURS.get(str(ev["kind"]), "#444")
        kind = escape(str(ev["kind"]))
        when = _utc(float(ev["t"])).strftime("%Y-%m-%d %H:%M UTC")
        at = px(x)
        side = f'x="{at - 3:.1f}" text-anchor="end"' if at > LEFT + PW * 0.8 else f'x="{at + 3:.1f}"'
        out.append(f'<g class="event event-{kind}" data-kind="{kind}"><path d="M{at:.1f},{TOP}V{TOP + PH}" '
                   f'stroke="{colour}"/><text {side} y="{TOP - 8}" fill="{colour}">'
                   f'{escape(str(ev["label"]))}</text><title>{escape(str(ev["label"]))} at {when}: '
                   f'{escape(str(ev.get("detail") or ""))}</title></g>')
    if clipped:
        out.append(f'<text class="note" x="{LEFT + PW}" y="{TOP + 12}">some values beyond the range are cut off'
                   "</text>")
    out.append("</svg>")
    return "".join(out)
