"""Carrying out ramp decisions in a `check` run: write the step's split, keep the state, audit, alert.

The engine decides (guardrail/rollout.py); this is the shell around it. A step counts as taken only when
the backend's re-read shows the new weights (FlagBackend.set_split); until then the ramp stays on its
step and the next run decides again. A run that dies after the write but before saving the state is
repaired by the next run, which finds the flag on the new step and adopts it. Rollbacks and holds are
halts and go through check.py's write-ahead halt path. A dry run writes, saves and sends nothing.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from guardrail import alert, codec, rollout
from guardrail.codec import format_time
from guardrail.flags.base import FlagBackend
from guardrail.model import (
    Decision,
    FailureKind,
    Flag,
    HaltOutcome,
    HaltResultStatus,
    RampAction,
    RampDecision,
    RampResult,
    RampResultStatus,
    SrmResult,
    SrmVerdict,
    State,
)

if TYPE_CHECKING:
    from guardrail.adapters import Runtime
    from guardrail.check import Run

WRITES = (RampAction.START, RampAction.ADVANCE, RampAction.SHIP)


def _pct(shares: Mapping[str, int]) -> str:
    return ", ".join(f"{v} {s}%" for v, s in shares.items())


def ship_payload(flag: str, d: RampDecision, link: str) -> dict[str, Any]:
    text = (
        f":white_check_mark: SHIPPED: `{flag}` reached its last ramp step ({d.steps[-1]} %); "
        "guardrail stops watching it"
    )
    fields = [
        {"title": "Flag key", "value": flag, "short": True},
        {"title": "Steps", "value": ", ".join(f"{s}%" for s in d.steps), "short": True},
        {"title": "Reason", "value": d.reason, "short": False},
        {"title": "Flag definition", "value": link, "short": False},
    ]
    return {"text": text, "attachments": [{"color": "good", "fallback": text, "fields": fields}]}


def srm_payload(flag: str, result: SrmResult, link: str) -> dict[str, Any]:
    """The `warn` alert; hold and rollback alert through the halt path with the same explanation."""
    text = f":warning: SAMPLE RATIO MISMATCH: `{flag}`: the arms' unit counts do not match the configured split"
    fields = [
        {"title": f"Units {v}", "value": f"{c:,} (configured {result.expected.get(v, 0):.2%})", "short": True}
        for v, c in sorted(result.counts.items())
    ]
    fields += [
        {"title": "Anytime-valid p-value", "value": f"{result.p_value:.3g}", "short": True},
        {"title": "Action", "value": "warn (nothing changed)", "short": True},
        {"title": "Flag key", "value": flag, "short": False},
        {"title": "Flag definition", "value": link, "short": False},
        {"title": "Reason", "value": result.reason, "short": False},
    ]
    return {"text": text, "attachments": [{"color": "warning", "fallback": text, "fields": fields}]}


def srm_warning(results: Sequence[SrmResult], metric_names: set[str]) -> str | None:
    """One line per run for every flag whose source has no usable unit counts (no verdict, no action)."""
    missing = [r for r in results if r.verdict is SrmVerdict.NO_DATA]
    if not missing:
        return None
    names = ", ".join(f"`{m}`" for m in sorted(metric_names))
    return (
        f"SRM gate: no usable unit counts ({names}) for {len(missing)} flag(s), e.g. {missing[0].flag}: "
        f"{missing[0].reason}; no SRM verdict for them and nothing halted (docs/rollouts.md)"
    )


def _audit(
    run: Run, d: RampDecision, status: RampResultStatus, detail: str, shares: Mapping[str, int]
) -> dict[str, Any]:
    return {
        "time": format_time(run.now),
        "run_id": run.run_id,
        "dry_run": run.dry_run,
        "type": "ramp",
        "flag": d.flag,
        "action": d.action.value,
        "status": status.value,
        "step": d.step + 1,
        "to_step": None if d.to_step is None else d.to_step + 1,
        "shares": dict(shares),
        "reason": d.reason,
        "waits_for": list(d.waits_for),
        "minutes_on_step": round(d.minutes_on_step, 2),
        "detail": detail,
    }


def srm_audit(run: Run, r: SrmResult) -> dict[str, Any]:
    return {
        "time": format_time(run.now),
        "run_id": run.run_id,
        "dry_run": run.dry_run,
        "type": "srm",
        **codec.srm_dict(r),
    }


async def _post(run: Run, runtime: Runtime, payload: dict[str, Any]) -> str:
    """Send one ramp alert (ship, SRM warn), redacted like every alert. Returns what happened."""
    url = run.settings.webhook_url
    if not url:
        return "not configured (ALERT_WEBHOOK_URL)"
    body = json.loads(run.redact(json.dumps(payload)))
    error = await alert.post(runtime.client, url, body, policy=runtime.policy)
    return "sent" if error is None else f"FAILED: {run.redact(error)}"


async def guarded(backend: FlagBackend, call: Callable[..., Awaitable[HaltOutcome]], *args: Any) -> HaltOutcome:
    """`await call(*args)`: a backend must not raise; a bug in one still fails only this change, loudly."""
    try:
        return await call(*args)
    except Exception as exc:
        return HaltOutcome(
            ok=False, detail=f"{backend.name} backend error: {type(exc).__name__}", kind=FailureKind.INTERNAL
        )


async def rollback(backend: FlagBackend, flag: Flag, reason: str) -> HaltOutcome:
    """A ramp's rollback is two verified writes: the split to control 100 % (every treatment 0 %), and the
    revert a halt makes (DISABLED, control default; Unleash: its `on_halt`). The split goes first: a
    revert that forces the control variant may drop the targeting a later split write would need. Both are
    always tried, each done only when the backend's re-read shows it, and the rollback is done only when
    both are; otherwise it is a failed halt (exit 4, paged, retried next run) whose detail and `parts`
    say which write happened. With the share at 0 a person who re-enables the flag without `guardrail
    resume` still serves control to everyone."""
    zero = rollout.shares_for(flag, 0)
    split = await guarded(backend, backend.set_split, flag, zero, reason)
    if split.ok and not split.already:
        # The revert is judged against the flag as it is now, with the split just written: a backend that
        # refuses to change a flag edited since it was read (git) must not take our own write for another's.
        try:
            fresh = await backend.get(flag.key)
        except Exception:  # a backend must not raise; the revert then works from the flag as loaded
            fresh = None
        if fresh is not None:
            flag = replace(flag, definition=fresh)
    revert = await guarded(backend, backend.halt, flag, reason)
    parts = {"share_zero": "done" if split.ok else "failed", "revert": "done" if revert.ok else "failed"}
    if split.ok and revert.ok:
        return HaltOutcome(
            ok=True,
            already=split.already and revert.already,
            detail=f"treatment share 0: {split.detail}; reverted: {revert.detail}",
            parts=parts,
        )
    if split.ok or revert.ok:
        done, failed = ("treatment share 0", split) if split.ok else ("reverted to control", revert)
        missing, why = ("revert to control", revert) if split.ok else ("treatment share to 0", split)
        return HaltOutcome(
            ok=False,
            kind=why.kind,
            detail=f"rollback PARTIAL: {done} ({failed.detail}); {missing} FAILED: {why.detail}",
            parts=parts,
        )
    return HaltOutcome(
        ok=False,
        kind=revert.kind or split.kind,
        detail=f"rollback FAILED: treatment share to 0: {split.detail}; revert to control: {revert.detail}",
        parts=parts,
    )


async def apply(
    run: Run,
    state: State,
    decision: Decision,
    backend: FlagBackend,
    flags: Mapping[str, Flag],
    runtime: Runtime,
    source: str,
) -> tuple[State, list[RampResult]]:
    """Carry out every ramp decision and SRM warning of this run; returns the state to keep."""
    results: list[RampResult] = []
    for r in decision.srm:
        if r.verdict is not SrmVerdict.NO_DATA:
            run.audit_lines.append(srm_audit(run, r))
        if r.alert and not run.dry_run:
            status = await _post(run, runtime, srm_payload(r.flag, r, backend.link(r.flag)))
            run.warnings.append(f"flag {r.flag!r}: sample ratio mismatch (action warn); alert {status}")
    for d in decision.ramps:
        flag = flags[d.flag]
        assert flag.ramp is not None
        if d.action not in WRITES or not d.shares:
            state, result = await _decided(run, state, d, flag, backend, runtime)
            results.append(result)
            continue
        assert d.to_step is not None
        if run.dry_run:
            run.audit_lines.append(_audit(run, d, RampResultStatus.WOULD, "dry run: nothing written", d.shares))
            results.append(
                RampResult(
                    d.flag,
                    d.action,
                    RampResultStatus.WOULD,
                    d.step + 1,
                    flag.ramp.steps[d.step],
                    d.reason,
                    detail=f"dry run: would set {_pct(d.shares)}",
                    minutes_on_step=d.minutes_on_step,
                )
            )
            continue
        outcome = await guarded(backend, backend.set_split, flag, d.shares, d.reason)
        detail = run.redact(outcome.detail)
        status = RampResultStatus.DONE if outcome.ok else RampResultStatus.FAILED
        run.audit_lines.append(_audit(run, d, status, detail, d.shares))
        alert_status = "not sent"
        step = d.step
        if outcome.ok:
            step = d.to_step
            fs = state.flags[d.flag]
            shipped = run.now if d.action is RampAction.SHIP else None
            new = rollout.enter_step(fs, d.to_step, run.now, steps=flag.ramp.steps, shipped_at=shipped)
            last = dict(fs.ramp.last) if fs.ramp is not None else {}
            state = _with(state, d.flag, replace(new, ramp=replace(new.ramp, last=last) if new.ramp else None))
            run._save(state)
            if d.action is RampAction.SHIP:
                alert_status = await _post(run, runtime, ship_payload(d.flag, d, backend.link(d.flag)))
        results.append(
            RampResult(
                d.flag,
                d.action,
                status,
                step + 1,
                flag.ramp.steps[step],
                d.reason,
                d.waits_for,
                detail,
                alert_status,
                d.minutes_on_step,
            )
        )
    return state, results


async def _decided(
    run: Run, state: State, d: RampDecision, flag: Flag, backend: FlagBackend, runtime: Runtime
) -> tuple[State, RampResult]:
    """Decisions that write no split: hold (waiting, or on_breach hold), rollback (a halt), adopt, and a
    ship found already in place (alerted once: the state stops watching the flag from now on)."""
    assert flag.ramp is not None
    step = d.to_step if d.to_step is not None else d.step
    alert_status = "not sent"
    if d.action is RampAction.SHIP and not run.dry_run:
        alert_status = await _post(run, runtime, ship_payload(d.flag, d, backend.link(d.flag)))
    status = RampResultStatus.WOULD if run.dry_run and d.action is not RampAction.HOLD else RampResultStatus.DECIDED
    detail, written = "", {}
    halt = next((h for h in run.halts if h.flag == d.flag), None)
    if d.action is RampAction.ROLLBACK and halt is not None and not run.dry_run:
        # Carried out by the halt path this run (share 0, then revert): report what its re-reads showed.
        status = RampResultStatus.DONE if halt.status is HaltResultStatus.DONE else RampResultStatus.FAILED
        detail, written = halt.detail, rollout.shares_for(flag, 0)
    audit_status = RampResultStatus.WOULD if run.dry_run else status
    run.audit_lines.append(_audit(run, d, audit_status, detail, written))
    return state, RampResult(
        d.flag,
        d.action,
        status,
        step + 1,
        flag.ramp.steps[step],
        d.reason,
        d.waits_for,
        detail,
        alert_status,
        d.minutes_on_step,
    )


def _with(state: State, key: str, fs: Any) -> State:
    flags = dict(state.flags)
    flags[key] = fs
    return replace(state, flags=flags)
