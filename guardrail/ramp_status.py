"""What `guardrail status` says about a ramped rollout: its step, time on it and left (as of `now`, which
`--now` sets), each guardrail's bounds against its threshold, and what the ramp waits for (docs/rollouts.md).

Pure: the flag and its state in, a JSON-ready entry and its text lines out.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from guardrail.codec import format_time
from guardrail.model import Flag, FlagState


def _t(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def entry(flag: Flag | None, fs: FlagState, now: datetime) -> dict[str, Any] | None:
    """Step, time on it, each guardrail's bounds against its threshold, and what the ramp waits for."""
    if fs.ramp is None or flag is None or flag.ramp is None:
        return None
    r = fs.ramp
    last = dict(r.last)
    share = flag.ramp.steps[min(r.step, len(flag.ramp.steps) - 1)]
    # A shipped or halted ramp's clock stopped when guardrail stopped watching it.
    until = r.shipped_at or (fs.halt.decided_at if fs.halt is not None else now)
    on_step = max(0.0, (until - r.step_started_at).total_seconds() / 60)
    watched = r.shipped_at is None and fs.halt is None and r.step < len(flag.ramp.step_minutes)
    left = max(0.0, flag.ramp.step_minutes[r.step] - on_step) if watched else None
    return {
        "step": r.step + 1,
        "steps": list(flag.ramp.steps),
        "share": share,
        "step_started_at": _t(r.step_started_at),
        "minutes_on_step": round(on_step, 1),
        # The step's minimum time still to run as of `now` (None once shipped or halted: no clock runs).
        "minutes_left_on_step": None if left is None else round(left, 1),
        "advance": flag.ramp.advance.value,
        "shipped_at": _t(r.shipped_at),
        "last_action": last.get("action"),
        "waits_for": list(last.get("waits_for") or []),
        "guardrails": list(last.get("guardrails") or []),
    }


def lines(ramp: dict[str, Any]) -> list[str]:
    def bound(g: dict[str, Any], name: str) -> str:
        x = g.get(name)
        return "n/a" if x is None else (f"{x:+.1%}" if g.get("relative") else f"{x:+.4g}")

    steps = ", ".join(f"{s}%" for s in ramp["steps"])
    left = "" if ramp["minutes_left_on_step"] is None else f" ({math.ceil(ramp['minutes_left_on_step'])} min left)"
    state = f"shipped at {ramp['shipped_at']}" if ramp["shipped_at"] else f"last decision: {ramp['last_action']}"
    lines = [
        f"    ramp: step {ramp['step']} of {len(ramp['steps'])} ({ramp['share']} %; {steps}), "
        f"{ramp['minutes_on_step']:.0f} min on it{left}, advance {ramp['advance']}; {state}"
    ]
    for g in ramp["guardrails"]:
        limit = f"{g['threshold']:.0%}" if g.get("relative") else f"{g['threshold']:g}"
        lines.append(
            f"      {g['metric']}@{g['variant']}: {g['verdict']}, harm between {bound(g, 'lower_bound')} and "
            f"{bound(g, 'upper_bound')} vs threshold {limit}"
        )
    if ramp["waits_for"]:
        lines.append(f"      waits for: {'; '.join(ramp['waits_for'])}")
    return lines
