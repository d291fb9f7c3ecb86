"""A halt's life, as pure transitions of its HaltRecord (kept in the state file between runs).

    decided ──write-ahead──> PENDING ──backend ok──> DONE ──alert delivered──> (finished)
                                │                      └──alert failed──> re-sent by later runs
                                └──backend failed──> FAILED ──next run──> tried again (PENDING's path)

- The record is PENDING on disk before any backend call, so a run that dies mid-halt is finished by the
  next run, and a flag is never halted twice.
- A failed halt pages once ("act by hand"), on its first failure, and is reported (exit 4) by every run
  until it succeeds or a person resumes the flag; when it finally succeeds, the success is paged.
- The alert context stays in the record until the success alert is delivered.

No I/O here: check.py performs the calls these functions ask for.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from guardrail.alert import AlertOutcome
from guardrail.model import HaltOutcome, HaltRecord, HaltStatus

NOT_RESENT = "not re-sent: paged when the halt first failed"


def prepared(record: HaltRecord, *, run_id: str, alert_context: dict[str, Any]) -> HaltRecord:
    """The engine's PENDING record, with what the alert will need, ready to be written ahead."""
    return replace(record, run_id=run_id, alert=alert_context)


def unfinished(record: HaltRecord) -> bool:
    """The backend has not (verifiably) applied it yet: the next run tries again."""
    return record.status in (HaltStatus.PENDING, HaltStatus.FAILED)


def alert_owed(record: HaltRecord) -> bool:
    """Done, but the success alert was never delivered: later runs send it again."""
    return record.status == HaltStatus.DONE and not record.alert_delivered and bool(record.alert)


def attempted(record: HaltRecord, outcome: HaltOutcome, *, now: datetime, detail: str) -> HaltRecord:
    return replace(
        record,
        status=HaltStatus.DONE if outcome.ok else HaltStatus.FAILED,
        attempts=record.attempts + 1,
        completed_at=now if outcome.ok else None,
        last_error=None if outcome.ok else detail,
    )


def alert_to_send(record: HaltRecord) -> AlertOutcome | None:
    """Which alert the record's latest attempt calls for, if any."""
    if record.status == HaltStatus.DONE:
        return AlertOutcome.DONE if not record.alert_delivered else None
    if record.status == HaltStatus.FAILED and record.attempts <= 1:
        return AlertOutcome.FAILED
    return None


def alerted(record: HaltRecord, *, outcome: AlertOutcome | None, delivered: bool) -> HaltRecord:
    """After an alert was sent (or not): the context is dropped once the success alert is delivered."""
    finished = outcome is AlertOutcome.DONE and delivered
    return replace(record, alert_delivered=finished or record.alert_delivered, alert=None if finished else record.alert)
