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
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

W, H = 760, 250
LEFT, RIGHT, TOP, BOTTOM = 66, 14, 26, 34
PW, PH = W - LEFT - RIGHT, H - TOP - BOTTOM
EVENT_COLOURS = {
    "halt": "#c62828",
    "hold": "#ef6c00",
    "failed": "#6a1b9a",
    "resume": "#2e7d32",
    "ramp": "#1565c0",
    "srm": "#795548",
}


def fmt_value(value: float | None, relative: bool) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:+.2%}" if relative else f"{value:+.4g}"


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def _domain_y(
    lo: float | None, hi: float | None, threshold: float | None, last: Sequence[float | None] = ()
) -> tuple[float, float, bool]:
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


class Frame:
    """What every chart of one flag page shares: the time axis and the event markers, drawn once."""

    def __init__(
        self, series: Iterable[Mapping[str, Any]], *, t0: float | None, events: Sequence[Mapping[str, Any]]
    ) -> None:
        evx = [(ev["t"] - t0) / 60.0 for ev in events] if t0 is not None else []
        allx = [x for s in series for x in (s.get("x0"), s.get("x1")) if x is not None] + evx
        xmin, xmax = (min(allx), max(allx)) if allx else (0.0, 10.0)
        if xmax - xmin < 10.0:  # one look (or a halt with no look): a ten-minute window around it
            mid = (xmin + xmax) / 2
            xmin, xmax = mid - 5.0, mid + 5.0
        self.xmin, self.xmax = xmin, xmax
        parts = []
        if t0 is not None:  # x axis: five times, UTC
            for i, anchor in enumerate(("start", "middle", "middle", "middle", "end")):
                x = xmin + (xmax - xmin) * i / 4
                when = _utc(t0 + x * 60).strftime("%m-%d %H:%M")
                parts.append(
                    f'<text class="xlabel" x="{self.px(x):.1f}" y="{H - 12}" text-anchor="{anchor}">{when}</text>'
                )
        self.axis = "".join(parts)
        marks = []
        for ev, x in zip(events, evx, strict=False):
            colour = EVENT_COLOURS.get(str(ev["kind"]), "#444")
            kind = escape(str(ev["kind"]))
            when = _utc(float(ev["t"])).strftime("%Y-%m-%d %H:%M UTC")
            at = self.px(x)
            side = f'x="{at - 3:.1f}" text-anchor="end"' if at > LEFT + PW * 0.8 else f'x="{at + 3:.1f}"'
            label = escape(str(ev["label"]))
            marks.append(
                f'<g class="event event-{kind}" data-kind="{kind}"><path d="M{at:.1f},{TOP}V{TOP + PH}" '
                f'stroke="{colour}"/><text {side} y="{TOP - 8}" fill="{colour}">{label}</text><title>'
                f"{label} at {when}: {escape(str(ev.get('detail') or ''))}</title></g>"
            )
        self.events = "".join(marks)

    def px(self, x: float) -> float:
        return LEFT + (x - self.xmin) / (self.xmax - self.xmin) * PW


def render(
    gid: str,
    series: Mapping[str, Any] | None,
    *,
    frame: Frame,
    threshold: float | None,
    relative: bool,
    sequential: bool,
) -> str:
    """The <svg> of one guardrail and treatment arm. Every text from outside is escaped."""
    s = series or {}
    npts = int(s.get("npts") or 0)
    ylo, yhi, clipped = _domain_y(s.get("lo"), s.get("hi"), threshold, (s.get("last_e"), s.get("last_b")))
    xmin, xmax = frame.xmin, frame.xmax

    def py(v: float) -> float:
        return float(TOP + (yhi - v) / (yhi - ylo) * PH)

    label = escape(gid)
    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'data-guardrail="{label}" data-points="{npts}"><title>{label}: estimated harm over time '
        f'against the threshold</title><rect class="plot" x="{LEFT}" y="{TOP}" width="{PW}" height="{PH}"/>'
    ]
    # y axis: bottom, 0, threshold, top (labels closer than 14 px merged)
    ticks: list[float] = []
    for v in (ylo, 0.0, threshold, yhi):
        if v is None or any(abs(py(v) - py(t)) < 14 for t in ticks):
            continue
        ticks.append(v)
        out.append(f'<text class="ylabel" x="{LEFT - 6}" y="{py(v) + 4:.1f}">{fmt_value(v, relative)}</text>')
    out.append(f'<path class="zero" d="M{LEFT},{py(0.0):.1f}H{LEFT + PW}"/>{frame.axis}')
    if s.get("drawable"):
        view = f"{xmin:.4f} {-yhi:.6g} {xmax - xmin:.4f} {yhi - ylo:.6g}"
        out.append(
            f'<svg class="data" x="{LEFT}" y="{TOP}" width="{PW}" height="{PH}" viewBox="{view}" '
            'preserveAspectRatio="none">'
        )
        if sequential and s.get("band"):
            # One stroke per look from bound to estimate, as wide as a look's share of the plot: together a band.
            span = max(float(s["x1"]) - float(s["x0"]), 1e-9)
            width = max(2.0, min(40.0, PW / max(npts - 1, 1) * span / (xmax - xmin)))
            out.append(f'<g class="band"><path d="{s["band"]}" style="stroke-width:{width:.1f}px"/></g>')
        if s.get("pb"):
            out.append(f'<path class="bound" d="{s["pb"]}"/>')
        if s.get("pe"):
            out.append(f'<path class="estimate" d="{s["pe"]}"/>')
        if s.get("dots"):
            out.append(f'<path class="breach" d="{s["dots"]}"/>')
        out.append("</svg>")
        e = s.get("last_e")
        if e is not None:
            out.append(
                f'<circle class="last" cx="{frame.px(float(s["x1"])):.1f}" cy="{py(e):.1f}" r="3.5"><title>'
                f"last estimate {fmt_value(e, relative)}</title></circle>"
            )
    else:
        looks = f" in {npts} look{'s' if npts != 1 else ''}" if npts else " yet"
        out.append(f'<text class="empty" x="{LEFT + PW / 2}" y="{TOP + PH / 2}">no data{looks}</text>')
    if threshold is not None:
        out.append(
            f'<path class="threshold" d="M{LEFT},{py(threshold):.1f}H{LEFT + PW}">'
            f"<title>threshold {fmt_value(threshold, relative)}</title></path>"
        )
    out.append(frame.events)
    if clipped:
        out.append(f'<text class="note" x="{LEFT}" y="{TOP - 8}">some values beyond the range are cut off</text>')
    out.append("</svg>")
    return "".join(out)
