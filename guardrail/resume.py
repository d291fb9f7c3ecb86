"""`guardrail resume KEY --reason TEXT`: watch a flag again after a halt was reviewed and the flag restored.

A halted flag is never evaluated again (engine.watched) until a person says so: re-enabling it at the
source is not enough, because a flag that is halted, re-enabled by a well-meaning deploy and halted
again every few minutes would page the same people all night. Resume checks the source first (it must
be ENABLED and not held, or the flag would not be watched anyway, or worse, would be halted instantly
on data from before the fix), then, under the state lock, forgets everything the engine remembered about
the flag (halt, streaks, frozen tuning sizes, first-seen time), so the next run starts afresh with its
warmup. Who and why go to the audit log with the halt that was cleared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guardrail import codec
from guardrail.config import format_time, is_held, parse_flag
from guardrail.model import ExitCode, Flag, FlagState, GuardrailError, HaltRecord, HaltStatus, Method
from guardrail.redact import Redactor
from guardrail.settings import load_settings
from guardrail.state import AuditLog, StateStore, halt_to_dict
from guardrail.status import load_source


def _who(by: str | None) -> str:
    if by and by.strip():
        return by.strip()
    found = os.environ.get("USER") or os.environ.get("LOGNAME")
    if not found:
        import getpass

        try:
            found = getpass.getuser()  # cron and containers often set no USER; the passwd entry still names one
        except (OSError, KeyError):
            found = None
    return found or "unknown"


def refusal(key: str, definition: Any, source: str) -> str | None:
    """Why the flag at its source is not ready to be watched again, or None when it is."""
    if not isinstance(definition, Mapping):
        return f"not in the flag definitions at {source}; there is nothing to watch"
    if definition.get("state") != "ENABLED":
        return (
            f"still {definition.get('state')} at {source}: review the halt, restore the flag "
            "(state: ENABLED) at the source, then resume"
        )
    if is_held(definition):
        return (
            f"still held at {source} (metadata.guardrail_hold is true): clear guardrail_hold at the source "
            "once the rollout may continue, then resume"
        )
    return None


def _notes(flag: Flag | None, halt: HaltRecord) -> list[str]:
    notes = []
    if halt.status != HaltStatus.DONE:
        notes.append(f"the halt had not been carried out (status {halt.status}): resuming cancels it")
    if halt.status == HaltStatus.DONE and not halt.alert_delivered:
        notes.append("the halt's alert was never delivered and will not be sent now")
    if flag is None:
        return notes
    started = flag.started_at
    sequential = any(g.method is Method.SEQUENTIAL for g in flag.guardrails)
    if started is not None and started <= halt.decided_at and sequential:
        notes.append(
            f"metadata.started_at ({format_time(started)}) is before the halt: sequential guardrails read "
            "since-start aggregates, which still include the harmful period; set started_at to the restart time"
        )
    if flag.warmup_minutes and started is None:
        notes.append(f"warmup ({flag.warmup_minutes:g} min) applies again from the next run")
    return notes


def resume_record(key: str, reason: str, by: str, now: datetime, halt: HaltRecord) -> dict[str, Any]:
    previous = halt_to_dict(halt)
    previous.pop("alert", None)  # the alert's context; the halt line in the audit has the facts
    return {
        "type": "resume",
        "flag": key,
        "reason": reason,
        "by": by,
        "time": format_time(now),
        "previous_halt": previous,
    }


def run_resume_command(
    *,
    key: str,
    reason: str,
    by: str | None,
    flags: str | None,
    config: Path | None,
    state: Path | None,
    audit: Path | None,
    now: datetime | None = None,
) -> int:
    reason = reason.strip()
    if not reason:
        raise GuardrailError("must say why the flag may be watched again (it goes to the audit log)", field="--reason")
    settings = load_settings(config=config, overrides={"flags": flags, "state_path": state, "audit_path": audit})
    if not settings.flags:
        raise GuardrailError(
            "resume first checks that the flag was restored at its source: pass --flags PATH|URL, set "
            "FLAG_API_URL, or set `flags:` in --config",
            flag=key,
        )
    try:
        loaded, _parsed = load_source(settings)
    except GuardrailError as exc:
        # Without the source, resume cannot know the flag was restored: refuse, keeping the cause's code.
        raise GuardrailError(
            f"cannot confirm the flag was restored, nothing changed: {exc.message}",
            source=exc.source,
            flag=key,
            exit_code=exc.exit_code,
        ) from None
    definition = loaded.definitions.get(key)
    why_not = refusal(key, definition, loaded.source)
    if why_not is not None:
        raise GuardrailError(f"refusing to resume: {why_not}", flag=key, exit_code=ExitCode.CONFIG)
    flag, problems = parse_flag(
        key, definition, source=loaded.source, defaults=settings.defaults, rules=settings.guardrail_rules
    )

    now = now or datetime.now(timezone.utc)
    who = _who(by)
    store = StateStore(settings.state_path, lock_timeout=settings.lock_timeout)
    with store.locked():  # a cron run must not decide on the old streaks while we clear them
        current = store.load()
        prior = current.flags.get(key)
        if prior is None or prior.halt is None:
            known = "unknown in" if prior is None else "not halted according to"
            moved = f" ({store.warning})" if store.warning else ""
            raise GuardrailError(
                f"refusing to resume: the flag is {known} the state file {settings.state_path}{moved}; there is "
                "nothing to resume (check the key and --state)",
                flag=key,
                exit_code=ExitCode.CONFIG,
            )
        halt = prior.halt
        # A fresh FlagState: no halt, no streak that a single breach could complete, no frozen tuning_n
        # from before the fix, and no first-seen time, so warmup and since-start windows restart.
        store.save(replace(current, flags={**current.flags, key: FlagState()}))
        record = resume_record(key, reason, who, now, halt)
        redact = Redactor(settings.secrets())
        AuditLog(settings.audit_path).append([json.loads(redact(codec.dumps(record)))])

    print(
        f"resumed {key}: cleared its {halt.action.value} halt of {format_time(halt.decided_at)} "
        f"(run {halt.run_id or '-'}) and its streaks; it is watched again from the next run"
    )
    print(f"  halt reason was: {halt.reason}")
    print(f"  recorded in {settings.audit_path}: by {who}: {reason}")
    for note in _notes(flag, halt):
        print(f"  note: {note}")
    for p in problems:
        print(f"  {p.severity}: {p} (it is not watched until this is fixed)")
    return int(ExitCode.OK)
