"""One `guardrail check` run: the shell around the pure engine.

load flags -> finish halts earlier runs left pending -> fetch aggregates (concurrently, one pinned
`end`) -> engine.decide -> persist the write-ahead state -> halt/hold through the backend -> alert ->
persist -> audit. Everything that talks to the outside world is an adapter chosen from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from guardrail import alert, engine
from guardrail.config import format_time, parse_flags
from guardrail.flags.base import FlagBackend, HaltOutcome
from guardrail.http import RetryPolicy, check_token_transport, make_client
from guardrail.model import (
    Evaluation,
    ExitCode,
    Flag,
    FlagProblem,
    FlagState,
    GuardrailError,
    HaltAction,
    HaltRecord,
    State,
    Verdict,
)
from guardrail.redact import Redactor
from guardrail.settings import Settings, require
from guardrail.sources import fetch_all
from guardrail.sources.base import MetricSource
from guardrail.state import AuditLog, StateStore


@dataclass(frozen=True)
class HaltResult:
    flag: str
    action: str
    status: str  # done | failed | would_halt | already
    reason: str
    detail: str = ""
    alert: str = "not sent"
    resumed: bool = False  # finished a halt an earlier run had decided


@dataclass(frozen=True)
class RunResult:
    now: datetime
    dry_run: bool
    run_id: str
    evaluations: tuple[Evaluation, ...] = ()
    halts: tuple[HaltResult, ...] = ()
    problems: tuple[FlagProblem, ...] = ()
    skipped_flags: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    records: tuple[Mapping[str, Any], ...] = ()  # the audit lines this run wrote (redacted), for the report

    @property
    def exit_code(self) -> ExitCode:
        if any(h.status == "failed" for h in self.halts):
            return ExitCode.HALT_FAILED
        if any(h.status in ("done", "would_halt") for h in self.halts):
            return ExitCode.HALTED
        if any(p.severity == "error" for p in self.problems):
            return ExitCode.CONFIG
        if any(e.verdict is Verdict.SKIP_NO_DATA for e in self.evaluations):
            return ExitCode.UNEVALUATED
        return ExitCode.OK


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`I/N` -> (I, N) with 0 <= I < N."""
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise GuardrailError("must look like I/N, e.g. 0/4", field="--shard") from None
    if count < 1 or not 0 <= index < count:
        raise GuardrailError(f"needs 0 <= I < N, got {text}", field="--shard")
    return index, count


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """A stable hash (not Python's salted hash()) so every run puts a flag in the same shard."""
    if shard is None:
        return True
    import hashlib

    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard[1] == shard[0]


def make_source(settings: Settings, client: httpx.AsyncClient, policy: RetryPolicy) -> MetricSource:
    if settings.metrics_source == "prometheus":
        import os

        from guardrail.sources.prometheus import PrometheusSource, auth_headers_from_env, parse_prometheus_config

        source = settings.config_path or "<config>"
        config = parse_prometheus_config(settings.metrics_section, source=source)
        return PrometheusSource(config, client, headers=auth_headers_from_env(os.environ), policy=policy)
    from guardrail.sources.http_api import HttpMetricSource

    assert settings.metrics_url is not None
    return HttpMetricSource(settings.metrics_url, client, policy=policy)


def make_backend(settings: Settings, client: httpx.AsyncClient, policy: RetryPolicy) -> FlagBackend:
    if settings.backend_kind() == "file":
        from guardrail.flags.flagd_file import FlagdFileBackend

        return FlagdFileBackend(Path(str(settings.flags)))
    from guardrail.flags.http_api import HttpFlagBackend

    url = settings.flag_api_url or str(settings.flags).split("/v1/flags")[0]
    if settings.flag_api_token:
        check_token_transport(url, allow_insecure_http=settings.allow_insecure_http)
    return HttpFlagBackend(url, client, token=settings.flag_api_token, policy=policy)


async def load_flags(settings: Settings, backend: FlagBackend, client: httpx.AsyncClient) -> Any:
    """Flags come from the backend, except a file read for a run that halts through the API."""
    if settings.backend_kind() == "api" and settings.flags and not settings.flags_are_url:
        from guardrail.flags.flagd_file import FlagdFileBackend

        return await FlagdFileBackend(Path(settings.flags)).load()
    return await backend.load()


def audit_record(run_id: str, now: datetime, e: Evaluation, action: str, dry_run: bool) -> dict[str, Any]:
    def arm(a: Any) -> dict[str, Any] | None:
        return None if a is None else {"value": a.value, "count": a.count, "error": a.error}

    return {
        "time": format_time(now),
        "run_id": run_id,
        "dry_run": dry_run,
        "type": "decision",
        "flag": e.flag,
        "metric": e.metric,
        "treatment_variant": e.treatment_variant,
        "control_variant": e.control_variant,
        "control": arm(e.control),
        "treatment": arm(e.treatment),
        "delta": _finite(e.delta),
        "relative_delta": _finite(e.relative_delta),
        "threshold": e.threshold,
        "comparison": e.comparison.value,
        "method": e.method.value,
        "verdict": e.verdict.value,
        "streak": e.streak,
        "confirmations": e.confirmations,
        "bound": e.bound,
        "p_value": e.p_value,
        "action": action,
        "reason": e.reason,
    }


def _finite(x: float | None) -> float | str | None:
    if x is None or (x == x and abs(x) != float("inf")):
        return x
    return str(x)


class Run:
    """The I/O of one run. Kept as an object so each step is a short method."""

    def __init__(self, settings: Settings, *, now: datetime, dry_run: bool, only: list[str] | None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 shard: tuple[int, int] | None = None) -> None:
        self.shard = shard
        self.settings = settings
        self.now = now
        self.dry_run = dry_run
        self.only = set(only or [])
        self.transport = transport
        self.run_id = uuid.uuid4().hex[:12]
        self.redact = Redactor(settings.secrets())
        self.store = StateStore(settings.state_path, lock_timeout=settings.lock_timeout)
        self.audit = AuditLog(settings.audit_path)
        self.policy = RetryPolicy(attempts=settings.retries)
        self.halts: list[HaltResult] = []
        self.audit_lines: list[dict[str, Any]] = []
        self.warnings: list[str] = []

    async def execute(self) -> RunResult:
        require(self.settings)
        with self._lock():
            state = self.store.load()
            if self.store.warning:
                self.warnings.append(self.store.warning)
            client = make_client(timeout=self.settings.timeout, concurrency=self.settings.concurrency,
                                 ca_bundle=self.settings.ca_bundle, transport=self.transport)
            async with client:
                return await self._run(state, client)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if self.dry_run:
            yield  # a dry run writes nothing, so it need not wait for a cron run to finish
            return
        with self.store.locked():
            yield

    async def _run(self, state: State, client: httpx.AsyncClient) -> RunResult:
        backend = make_backend(self.settings, client, self.policy)
        loaded = await load_flags(self.settings, backend, client)
        parsed = parse_flags(loaded.definitions, source=loaded.source, lines=loaded.lines,
                             defaults=self.settings.defaults)
        def mine(key: str | None) -> bool:
            return (not self.only or key in self.only) and (key is None or in_shard(key, self.shard))

        flags = [f for f in parsed.flags if mine(f.key)]
        problems = [p for p in parsed.problems if mine(p.flag)]
        if self.only and not flags and not problems:
            raise GuardrailError(f"no flag {sorted(self.only)} in the flag definitions", source=loaded.source)
        by_key = {f.key: f for f in flags}

        state = await self._finish_earlier_halts(state, backend, by_key, client, loaded.source)

        source = make_source(self.settings, client, self.policy)
        planned = engine.plan_queries(flags, state, self.now)
        aggregates = await fetch_all(source, planned, concurrency=self.settings.concurrency)
        decision = engine.decide(flags, aggregates, state, self.now)
        halting = {h.flag for h in decision.halts}
        # A dry run writes no audit log, so it builds no records: ~8 MB of dicts at 2,000 flags.
        for e in () if self.dry_run else decision.evaluations:
            action = "halt" if e.flag in halting and e.streak >= e.confirmations else "none"
            self.audit_lines.append(audit_record(self.run_id, self.now, e, action, self.dry_run))

        if self.dry_run:
            for h in decision.halts:
                self.halts.append(HaltResult(h.flag, h.action.value, "would_halt", h.reason,
                                             detail="dry run: no PATCH, no alert"))
        else:
            state = decision.state
            for h in decision.halts:
                pending = state.flags[h.flag].halt
                assert pending is not None
                payload = self._payload(backend, loaded.source, by_key[h.flag], pending, h.evaluation)
                state = _with_halt(state, h.flag, replace(pending, run_id=self.run_id, alert_payload=payload))
            self.store.save(self._stamp(state))  # write-ahead: the pending halts are on disk first
            for h in decision.halts:
                record = state.flags[h.flag].halt
                assert record is not None
                state = await self._apply(state, backend, by_key[h.flag], record, client, resumed=False)
            self.audit_lines = [json.loads(self.redact(json.dumps(r))) for r in self.audit_lines]
            self.audit.append(list(self.audit_lines))
        return RunResult(
            now=self.now, dry_run=self.dry_run, run_id=self.run_id, evaluations=decision.evaluations,
            halts=tuple(self.halts), problems=tuple(problems), skipped_flags=decision.skipped_flags,
            warnings=tuple(self.warnings), records=tuple(self.audit_lines),
        )

    def _stamp(self, state: State) -> State:
        return replace(state, last_run_at=self.now)

    def _save(self, state: State) -> None:
        if not self.dry_run:
            self.store.save(self._stamp(state))

    def _link(self, backend: FlagBackend, source: str, key: str) -> str:
        link = getattr(backend, "link", None)
        return str(link(key)) if callable(link) else f"{source}#{key}"

    async def _apply(self, state: State, backend: FlagBackend, flag: Flag, record: HaltRecord,
                     client: httpx.AsyncClient, *, resumed: bool) -> State:
        try:
            if record.action is HaltAction.HOLD:
                outcome = await backend.hold(flag, record.reason)
            else:
                outcome = await backend.halt(flag, record.reason)
        except Exception as exc:  # a backend must not raise; a bug in one must still fail loudly here
            outcome = HaltOutcome(ok=False, detail=f"{backend.name} backend error: {type(exc).__name__}")
        detail = self.redact(outcome.detail)
        record = replace(
            record,
            status="done" if outcome.ok else "failed",
            attempts=record.attempts + 1,
            completed_at=self.now if outcome.ok else None,
            last_error=None if outcome.ok else detail,
        )
        state = _with_halt(state, flag.key, record)
        self._save(state)

        # The alert was prepared when the halt was decided (and kept in the write-ahead record), so a
        # halt finished by a later run still pages with the numbers that triggered it.
        prepared = dict(record.alert_payload or {})
        if outcome.ok or record.attempts <= 1:
            payload = alert.mark_outcome(prepared, ok=outcome.ok, detail=detail)
            alert_status, delivered = await self._alert(client, payload)
        else:
            # A halt that keeps failing is reported every run (exit 4) but paged once, not every run.
            alert_status, delivered = "not re-sent: paged when the halt first failed", False
        finished = outcome.ok and delivered
        record = replace(record, alert_delivered=finished, alert_payload=None if finished else prepared)
        state = _with_halt(state, flag.key, record)
        self._save(state)
        status = "done" if outcome.ok else "failed"
        self.halts.append(HaltResult(flag.key, record.action.value, status, record.reason, detail,
                                     alert_status, resumed))
        self.audit_lines.append({
            "time": format_time(self.now), "run_id": self.run_id, "dry_run": False, "type": "halt",
            "flag": flag.key, "action": record.action.value, "status": status, "reason": record.reason,
            "detail": detail, "metric": record.metric, "treatment_variant": record.treatment_variant,
            "attempt": record.attempts, "alert": alert_status, "resumed": resumed,
        })
        return state

    def _payload(self, backend: FlagBackend, source: str, flag: Flag, record: HaltRecord,
                 evaluation: Evaluation) -> dict[str, Any]:
        return alert.build_payload(
            flag=flag.key, action=record.action,
            outcome="held" if record.action is HaltAction.HOLD else "halted",
            evaluation=evaluation, reason=record.reason, link=self._link(backend, source, flag.key),
            report_link=self._report_link(flag.key),
        )

    def _report_link(self, key: str) -> str | None:
        if not self.settings.report_base_url:
            return None
        from guardrail.site.build import page_link

        return page_link(self.settings.report_base_url, key)

    async def _alert(self, client: httpx.AsyncClient, payload: Mapping[str, Any]) -> tuple[str, bool]:
        if not payload:
            return "nothing to send", True
        if not self.settings.webhook_url:
            return "not configured (ALERT_WEBHOOK_URL)", True
        error = await alert.post(client, self.settings.webhook_url, dict(payload), policy=self.policy)
        if error is None:
            return "sent", True
        return f"FAILED, will retry next run: {self.redact(error)}", False

    async def _finish_earlier_halts(self, state: State, backend: FlagBackend, flags: Mapping[str, Flag],
                                    client: httpx.AsyncClient, source: str) -> State:
        """A halt decided by an earlier run that died, or that the API refused, is finished first; an
        alert that could not be delivered is sent again."""
        if self.dry_run:
            return state
        for key, fs in sorted(state.flags.items()):
            record = fs.halt
            if record is None or (self.only and key not in self.only) or not in_shard(key, self.shard):
                continue
            flag = flags.get(key)
            if record.status in ("pending", "failed") and flag is not None:
                state = await self._apply(state, backend, flag, record, client, resumed=True)
            elif record.status in ("pending", "failed"):
                self.warnings.append(f"flag {key!r}: halt pending but the flag is gone from the definitions")
            elif not record.alert_delivered and record.alert_payload:
                payload = alert.mark_outcome(dict(record.alert_payload), ok=True, detail="")
                status, delivered = await self._alert(client, payload)
                state = _with_halt(state, key, replace(
                    record, alert_delivered=delivered, alert_payload=None if delivered else record.alert_payload))
                self._save(state)
                self.warnings.append(f"flag {key!r}: earlier alert re-sent: {status}")
        return state


def _with_halt(state: State, key: str, record: HaltRecord) -> State:
    flags = dict(state.flags)
    flags[key] = replace(flags.get(key, FlagState()), halt=record)
    return replace(state, flags=flags)


def run_check(settings: Settings, *, now: datetime, dry_run: bool = False, only: list[str] | None = None,
              transport: httpx.AsyncBaseTransport | None = None,
              shard: tuple[int, int] | None = None) -> RunResult:
    run = Run(settings, now=now, dry_run=dry_run, only=only, transport=transport, shard=shard)
    return asyncio.run(run.execute())
