"""Each flag's history as the report draws it, folded from audit records one at a time.

Pure: audit records (dicts, as `check` writes them to the audit log) in, a JSON-able history out. The same
fold serves the full build (`guardrail report` streams the whole audit log through it) and the refresh
after each run (`check --report` loads the flag's saved history and folds in only this run's records).

Why the history keeps ready-made SVG path strings: at 2,000 flags every run adds a point to ~6,000 charts,
and formatting every point of every chart again each run would cost more than the 10 % of a run the
report may take. So each point is formatted once, in *data* coordinates (x = minutes since the flag's
first record, y = minus the harm, since SVG's y grows downwards), and appended to the path strings; the
chart maps data to pixels with a viewBox (guardrail/site/chart.py). Only when a series outgrows
`MAX_POINTS` are its paths rebuilt from the raw points, keeping every other point (a 700-pixel-wide chart
shows no more), so the work per run stays constant however long the experiment runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from guardrail.config import parse_time

HISTORY_VERSION = 1
MAX_POINTS = 200  # per series; thinned to half when exceeded (the plot is 680 pixels wide)
MAX_EVENTS = 200  # per flag; the oldest are dropped (the audit log keeps them all)
BREACH = "b"
VERDICT_CODES = {"breach": BREACH, "pass": "p", "skip:min_count": "m", "skip:warmup": "w", "skip:no_data": "n"}

History = dict[str, Any]
Series = dict[str, Any]

_times: dict[str, float] = {}


def epoch(text: Any) -> float | None:
    """Seconds since the epoch of an RFC 3339 time; None when it is not one. Memoised: every record of a
    run carries the same time."""
    if not isinstance(text, str):
        return None
    cached = _times.get(text)
    if cached is None:
        try:
            cached = parse_time(text).timestamp()
        except (ValueError, OverflowError):
            return None
        if len(_times) > 4096:
            _times.clear()
        _times[text] = cached
    return cached


def number(value: Any) -> float | None:
    """A finite float, else None: the audit log writes an infinite delta (control at 0) as text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def new_history(key: str) -> History:
    return {
        "v": HISTORY_VERSION,
        "key": key,
        "t0": None,
        "series": {},
        "events": [],
        "last_run": None,
        "last_run_id": None,
        "srm": None,
        "ramp": None,
        "halts": 0,
    }


def _new_series(rec: Mapping[str, Any]) -> Series:
    return {
        "metric": str(rec.get("metric", "")),
        "variant": str(rec.get("treatment_variant", "")),
        "control_variant": str(rec.get("control_variant", "")),
        "n": 0,
        # The points kept, as text ("x,e,b,c;" each; e or b empty when missing): JSON reads and writes one
        # string ~10x faster than a list of lists, and only thinning needs them as numbers.
        "raw": "",
        "npts": 0,
        "x0": None,
        "x1": None,
        "last_e": None,
        "last_b": None,
        "drawable": False,
        "pe": "",
        "pb": "",
        "band": "",
        "dots": "",
        "pen_e": False,
        "pen_b": False,
        "lo": None,
        "hi": None,
        "last": None,
    }


def _fmt_y(value: float) -> str:
    return f"{-value:.6g}"


def _draw(s: Series, x: float, e: float | None, b: float | None, code: str) -> None:
    """Append one point to the series' path strings (data coordinates)."""
    xs = f"{x:.2f}".rstrip("0").rstrip(".")
    if e is not None:
        ye = _fmt_y(e)
        s["pe"] += f"{'L' if s['pen_e'] else 'M'}{xs},{ye}"
        if code == BREACH:
            s["dots"] += f"M{xs},{ye}h0"
    if b is not None:
        s["pb"] += f"{'L' if s['pen_b'] else 'M'}{xs},{_fmt_y(b)}"
        if e is not None:
            s["band"] += f"M{xs},{_fmt_y(b)}V{ye}"
    s["pen_e"], s["pen_b"] = e is not None, b is not None
    for v in (e, b):
        if v is not None:
            s["lo"] = v if s["lo"] is None else min(s["lo"], v)
            s["hi"] = v if s["hi"] is None else max(s["hi"], v)


def points(s: Series) -> list[tuple[float, float | None, float | None, str]]:
    """The series' kept points as numbers: (x, estimate, bound, verdict code)."""
    out = []
    for item in s["raw"].split(";")[:-1]:
        x, e, b, code = item.split(",")
        out.append((float(x), float(e) if e else None, float(b) if b else None, code))
    return out


def _keep(s: Series, x: float, e: float | None, b: float | None, code: str) -> None:
    s["raw"] += f"{x:g},{'' if e is None else repr(e)},{'' if b is None else repr(b)},{code};"
    s["npts"] += 1
    s["x0"] = x if s["x0"] is None else s["x0"]
    s["x1"], s["last_e"], s["last_b"] = x, e, b
    s["drawable"] = s["drawable"] or e is not None or b is not None


def _thin(s: Series) -> None:
    """Keep every other point (and every breach, and the newest), then redraw the paths from them."""
    raw = points(s)
    kept = [p for i, p in enumerate(raw) if i % 2 == 1 or p[3] == BREACH or i == len(raw) - 1]
    s.update(
        raw="",
        npts=0,
        x0=None,
        pe="",
        pb="",
        band="",
        dots="",
        pen_e=False,
        pen_b=False,
        lo=None,
        hi=None,
        drawable=False,
    )
    for x, e, b, code in kept:
        _keep(s, x, e, b, code)
        _draw(s, x, e, b, code)


def add_decision(h: History, rec: Mapping[str, Any]) -> None:
    """Fold one `type: decision` audit record into the flag's history."""
    t = epoch(rec.get("time"))
    if t is None:
        return
    if h["t0"] is None:
        h["t0"] = t
    _saw_run(h, rec)
    gid = f"{rec.get('metric', '')}@{rec.get('treatment_variant', '')}"
    s = h["series"].get(gid)
    if s is None:
        s = h["series"][gid] = _new_series(rec)
    s["control_variant"] = str(rec.get("control_variant", s["control_variant"]))
    verdict = str(rec.get("verdict", ""))
    code = VERDICT_CODES.get(verdict, "?")
    e, b = number(rec.get("delta")), number(rec.get("bound"))
    x = round((t - h["t0"]) / 60.0, 2)
    s["n"] += 1
    _keep(s, x, e, b, code)
    _draw(s, x, e, b, code)
    s["last"] = {k: rec.get(k) for k in LAST_KEYS}
    if s["npts"] > MAX_POINTS:
        _thin(s)


LAST_KEYS = (
    "time",
    "verdict",
    "reason",
    "control",
    "treatment",
    "delta",
    "relative_delta",
    "bound",
    "p_value",
    "threshold",
    "comparison",
    "method",
    "streak",
    "confirmations",
    "action",
    "control_variant",
)


def _saw_run(h: History, rec: Mapping[str, Any]) -> None:
    when = rec.get("time")
    if isinstance(when, str) and (h["last_run"] is None or (epoch(when) or 0) >= (epoch(h["last_run"]) or 0)):
        h["last_run"], h["last_run_id"] = when, rec.get("run_id")


def _event(h: History, t: float, kind: str, label: str, detail: str) -> None:
    if h["t0"] is None:
        h["t0"] = t
    h["events"].append({"t": t, "kind": kind, "label": label, "detail": detail})
    if len(h["events"]) > MAX_EVENTS:
        del h["events"][: len(h["events"]) - MAX_EVENTS]


RAMP_MOVES = {"start", "advance", "ship", "rollback", "adopt"}  # a hold (waiting on the step) is no event


def _ramp(h: History, t: float, rec: Mapping[str, Any], reason: str) -> None:
    """A ramp record (guardrail/ramp_run.py: action, status, step and to_step 1-based, shares per variant)."""
    action = str(rec.get("action") or rec.get("decision") or "step")
    step = rec.get("to_step") if rec.get("to_step") is not None else rec.get("step")
    raw_shares = rec.get("shares")
    shares: Mapping[str, Any] = raw_shares if isinstance(raw_shares, Mapping) else {}
    share_text = ", ".join(f"{k} {v}%" for k, v in shares.items())
    if str(rec.get("status", "")) == "failed":
        _event(h, t, "failed", f"ramp {action} failed", f"{reason}; {rec.get('detail') or ''}".strip("; "))
        return
    if str(rec.get("status", "")) == "would":
        return  # a dry run's intention (not written by check, which audits no dry run; tolerated anyway)
    h["ramp"] = {"step": step, "shares": dict(shares), "action": action, "time": rec.get("time")}
    if action in RAMP_MOVES:
        label = f"ramp {action}" + (f" step {step}" if isinstance(step, int) else "")
        _event(h, t, "ramp", label, f"{share_text}; {reason}".strip("; "))


def add_record(h: History, rec: Mapping[str, Any]) -> None:
    """Fold any audit record: decisions become points; halts, holds, resumes, ramp steps and SRM
    verdicts become events. Unknown record types are ignored (a newer guardrail may write more)."""
    kind = str(rec.get("type", ""))
    if kind == "decision":
        add_decision(h, rec)
        return
    t = epoch(rec.get("time"))
    if t is None:
        return
    reason = str(rec.get("reason") or "")
    if kind == "halt":
        hold = rec.get("action") == "hold"
        status = str(rec.get("status", ""))
        if status == "failed":
            _event(
                h,
                t,
                "failed",
                "halt failed" if not hold else "hold failed",
                f"{reason}; {rec.get('detail') or ''}".strip("; "),
            )
        else:
            h["halts"] += 1
            _event(h, t, "hold" if hold else "halt", "held" if hold else "halted", reason)
    elif kind == "resume":
        _event(h, t, "resume", "resumed", f"by {rec.get('by') or '?'}: {reason}")
    elif kind.startswith("ramp"):
        _ramp(h, t, rec, reason)
    elif kind == "srm":
        h["srm"] = {k: rec.get(k) for k in ("verdict", "p_value", "time", "action", "reason")}
        if str(rec.get("verdict", "")) not in ("", "ok", "pass", "none"):
            _event(h, t, "srm", f"SRM {rec.get('verdict')}", reason)
