"""One `guardrail check` run: the shell around the pure engine.

load flags -> finish halts earlier runs left unfinished -> fetch the plan's aggregates (one pinned `end`)
-> engine.decide -> write the pending halts ahead -> halt/hold through the backend -> alert -> persist ->
audit. The adapters come from the settings (guardrail/adapters.py); the halt's life is guardrail/halts.py;
this module only wires them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import httpx

from guardrail import alert, audit, engine, halts, ramp_run, rollout, world
from guardrail.adapters import Runtime
from guardrail.alert import AlertOutcome
from guardrail.cadence import cadence
from guardrail.config import parse_flags
from guardrail.flags.base import FlagBackend
from guardrail.http import RetryPolicy, make_client, run_budget
from guardrail.model import (
    Cadence,
    Decision,
    Flag,
    FlagProblem,
    FlagState,
    GuardrailError,
    HaltAction,
    HaltOutcome,
    HaltRecord,
    HaltResult,
    HaltResultStatus,
    RunResult,
    State,
)
from guardrail.preflight import preflight
from guardrail.redact import Redactor
from guardrail.settings import Settings, require
from guardrail.sources import fetch_plan
from guardrail.state import AuditLog, StateStore

__all__ = ["HaltResult", "Run", "RunResult", "in_shard", "parse_shard", "run_check", "run_returning"]
T = TypeVar("T")


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
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard[1] == shard[0]


def runtime_for(settings: Settings, client: httpx.AsyncClient, *, read_only: bool = False) -> Runtime:
    return Runtime(
        client=client,
        policy=RetryPolicy(attempts=settings.retries),
        timeout=settings.timeout,
        concurrency=settings.concurrency,
        allow_insecure_http=settings.allow_insecure_http,
        read_only=read_only,
    )


class Run:
    """The I/O of one run. Kept as an object so each step is a short method."""

    def __init__(
        self,
        settings: Settings,
        *,
        now: datetime,
        dry_run: bool,
        only: list[str] | None,
        transport: httpx.AsyncBaseTransport | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
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
        self.halts: list[HaltResult] = []
        self.audit_lines: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.after_effects: list[FlagProblem] = []  # what failed after a side effect (state/audit writes)

    async def execute(self) -> RunResult:
        require(self.settings)  # before the lock: a run that cannot work leaves nothing behind
        self.warnings.extend(preflight(self.settings, dry_run=self.dry_run))
        # The budget bounds the whole run's reads (guardrail/http.py); the lock is released however it ends.
        with run_budget(self.settings.budget), self._lock():
            state = self.store.load()
            if self.store.warning:
                self.warnings.append(self.store.warning)
            client = make_client(
                timeout=self.settings.timeout,
                concurrency=self.settings.concurrency,
                ca_bundle=self.settings.ca_bundle,
                transport=self.transport,
            )
            async with client:
                return await self._run(state, runtime_for(self.settings, client))

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if self.dry_run:
            yield  # a dry run writes nothing, so it need not wait for a cron run to finish
            return
        with self.store.locked():
            yield

    def _mine(self, key: str | None) -> bool:
        return (not self.only or key in self.only) and (key is None or in_shard(key, self.shard))

    async def _run(self, state: State, runtime: Runtime) -> RunResult:
        backend = self.settings.backend.create(runtime)
        loaded = await backend.load()
        self.warnings.extend(getattr(backend, "warnings", ()))  # e.g. flags in git read as of the last fetch
        parsed = parse_flags(
            loaded.definitions,
            source=loaded.source,
            lines=loaded.lines,
            defaults=self.settings.defaults,
            rules=self.settings.guardrail_rules,
        )
        flags = [f for f in parsed.flags if self._mine(f.key)]
        problems = [p for p in (*loaded.problems, *parsed.problems) if self._mine(p.flag)]
        # A halted key that came back (a new experiment, or turned on by a person): see world.py.
        seen = world.reconcile(flags, state, now=self.now, run_id=self.run_id)
        state = seen.state
        problems += seen.problems
        self.audit_lines += [] if self.dry_run else list(seen.audit)
        if self.only and not flags and not problems:
            raise GuardrailError(f"no flag {sorted(self.only)} in the flag definitions", source=loaded.source)
        by_key = {f.key: f for f in flags}

        state = await self._finish_earlier_halts(state, backend, by_key, runtime)

        looks = self._cadence(state)
        if looks is not None and not looks.due:
            # Not due (metrics.every): nothing asked, nothing decided, no flag's state touched; the run
            # itself still counts (last_run_at), so the monitor is not stale.
            decision = Decision(evaluations=(), halts=(), state=state)
        else:
            source = self.settings.metrics.create(runtime)
            try:
                aggregates = await fetch_plan(source, engine.plan_queries(flags, state, self.now))
            finally:
                await source.aclose()
            decision = engine.decide(flags, aggregates, state, self.now)
            # The engine's state knows flags only; the look is this shell's to keep (a run of `--only` some
            # flags, which looks whenever asked, leaves the fleet's last look as it was).
            looked = self.now if looks is not None else state.metrics_looked_at
            if looked is not None:
                decision = replace(decision, state=replace(decision.state, metrics_looked_at=looked))
        halting = {h.flag for h in decision.halts}
        # A dry run writes no audit log, so it builds no records: ~8 MB of dicts at 2,000 flags.
        for e in () if self.dry_run else decision.evaluations:
            action = "halt" if e.flag in halting and e.streak >= e.confirmations else "none"
            self.audit_lines.append(audit.decision_line(self.run_id, self.now, e, action, self.dry_run))

        if self.dry_run:
            for h in decision.halts:
                self.halts.append(
                    HaltResult(
                        h.flag,
                        h.action.value,
                        HaltResultStatus.WOULD_HALT,
                        h.reason,
                        detail=(
                            "dry run: would set the treatment's share to 0 and revert to control; "
                            if h.action is HaltAction.REVERT and rollout.ramped(by_key[h.flag])
                            else "dry run: "
                        )
                        + "nothing changed, no alert sent",
                    )
                )
        else:
            state = decision.state
            for h in decision.halts:
                pending = state.flags[h.flag].halt
                assert pending is not None
                ctx = alert.context(
                    flag=h.flag,
                    action=h.action,
                    evaluation=h.evaluation,
                    reason=h.reason,
                    link=backend.link(h.flag),
                    report=self._report_link(h.flag),
                    rollback=h.action is HaltAction.REVERT and rollout.ramped(by_key[h.flag]),
                )
                state = _with_halt(state, h.flag, halts.prepared(pending, run_id=self.run_id, alert_context=ctx))
            self.store.save(self._stamp(state))  # write-ahead: the pending halts are on disk first
            for h in decision.halts:
                record = state.flags[h.flag].halt
                assert record is not None
                state = await self._apply(state, backend, by_key[h.flag], record, runtime, resumed=False)
        # Ramps: write the steps' splits (after the halts: a rollback never waits on an advance elsewhere).
        state, ramps = await ramp_run.apply(self, state, decision, backend, by_key, runtime, loaded.source)
        if (srm_note := ramp_run.srm_warning(decision.srm, {f.srm.metric for f in flags})) is not None:
            self.warnings.append(srm_note)
        if not self.dry_run:
            self._write_audit()
        return RunResult(
            now=self.now,
            dry_run=self.dry_run,
            run_id=self.run_id,
            evaluations=decision.evaluations,
            halts=tuple(self.halts),
            problems=tuple(problems) + tuple(self.after_effects),
            skipped_flags=decision.skipped_flags,
            warnings=tuple(self.warnings),
            ramps=tuple(ramps),
            srm=decision.srm,
            records=tuple(self.audit_lines),
            cadence=looks,
        )

    def _cadence(self, state: State) -> Cadence | None:
        """None: look now. A person asking for `--only` some flags gets them looked at, due or not."""
        if self.settings.metrics_every is None or self.only:
            return None
        return cadence(self.settings.metrics_every, state.metrics_looked_at, self.now)

    def _report_link(self, key: str) -> str | None:
        if not self.settings.report_base_url:
            return None
        from guardrail.site.build import page_link

        return page_link(self.settings.report_base_url, key)

    def _write_audit(self) -> None:
        """After side effects nothing may crash the report: an audit log that cannot be written is named
        with its path (an error: exit 2, or 1/4 when a halt happened, which outranks it)."""
        # Kept redacted on the result too: `check --report` folds exactly these lines into the site.
        self.audit_lines = [json.loads(self.redact(json.dumps(r))) for r in self.audit_lines]
        try:
            self.audit.append(list(self.audit_lines))
        except GuardrailError as exc:
            self._after_effect(exc, f"{len(self.audit_lines)} audit line(s) NOT written")

    def _after_effect(self, exc: GuardrailError, what: str) -> None:
        self.warnings.append(f"{what}: {self.redact(str(exc))}")
        self.after_effects.append(FlagProblem(None, f"{what}: {self.redact(exc.message)}", source=exc.source or ""))

    def _stamp(self, state: State) -> State:
        return replace(state, last_run_at=self.now)

    def _save(self, state: State) -> None:
        """Saves after a side effect: a failure is reported with the path, never a crash that would hide
        the halt that already happened."""
        if not self.dry_run:
            try:
                self.store.save(self._stamp(state))
            except GuardrailError as exc:
                self._after_effect(exc, "state NOT saved after a halt (the next run re-reads the flag)")

    async def _change(self, backend: FlagBackend, flag: Flag, record: HaltRecord) -> HaltOutcome:
        if record.action is HaltAction.REVERT and rollout.ramped(flag):
            # A ramp's rollback: the treatment's share to 0 as well as the revert (guardrail/ramp_run.py).
            return await ramp_run.rollback(backend, flag, record.reason)
        change = backend.hold if record.action is HaltAction.HOLD else backend.halt
        return await ramp_run.guarded(backend, change, flag, record.reason)

    async def _apply(
        self, state: State, backend: FlagBackend, flag: Flag, record: HaltRecord, runtime: Runtime, *, resumed: bool
    ) -> State:
        outcome = await self._change(backend, flag, record)
        detail = self.redact(outcome.detail)
        record = halts.attempted(record, outcome, now=self.now, detail=detail)
        state = _with_halt(state, flag.key, record)
        self._save(state)

        to_send = halts.alert_to_send(record)
        if to_send is None:
            alert_status, delivered = halts.NOT_RESENT, False
        else:
            alert_status, delivered = await self._alert(runtime, record, to_send, detail)
        record = halts.alerted(record, outcome=to_send, delivered=delivered)
        state = _with_halt(state, flag.key, record)
        self._save(state)
        result = HaltResult(
            flag.key,
            record.action.value,
            HaltResultStatus.DONE if outcome.ok else HaltResultStatus.FAILED,
            record.reason,
            detail,
            alert_status,
            resumed,
            kind=outcome.kind,
            parts=outcome.parts,
        )
        self.halts.append(result)
        self.audit_lines.append(audit.halt_line(self.run_id, self.now, result, record))
        return state

    async def _alert(
        self, runtime: Runtime, record: HaltRecord, outcome: AlertOutcome, detail: str
    ) -> tuple[str, bool]:
        ctx = record.alert or {}
        if not ctx:
            return "nothing to send", True
        if not self.settings.webhook_url:
            return "not configured (ALERT_WEBHOOK_URL)", True
        if "legacy_payload" in ctx:  # kept by an older version, already rendered
            payload = dict(ctx["legacy_payload"])
        else:
            payload = alert.render(ctx, outcome, "" if outcome is AlertOutcome.DONE else detail)
        payload = json.loads(self.redact(json.dumps(payload)))
        try:
            error = await alert.post(runtime.client, self.settings.webhook_url, payload, policy=runtime.policy)
        except Exception as exc:  # the halt already happened; the report must survive
            error = f"alert webhook: {type(exc).__name__}"
        if error is None:
            return "sent", True
        return f"FAILED, will retry next run: {self.redact(error)}", False

    async def _finish_earlier_halts(
        self, state: State, backend: FlagBackend, flags: Mapping[str, Flag], runtime: Runtime
    ) -> State:
        """A halt decided by an earlier run that died, or that the backend refused, is finished first; an
        alert that could not be delivered is sent again."""
        if self.dry_run:
            return state
        for key, fs in sorted(state.flags.items()):
            record = fs.halt
            if record is None or not self._mine(key):
                continue
            flag = flags.get(key)
            if halts.unfinished(record) and flag is not None:
                state = await self._apply(state, backend, flag, record, runtime, resumed=True)
            elif halts.unfinished(record):
                self.warnings.append(f"flag {key!r}: halt pending but the flag is gone from the definitions")
            elif halts.alert_owed(record):
                status, delivered = await self._alert(runtime, record, AlertOutcome.DONE, "")
                state = _with_halt(state, key, halts.alerted(record, outcome=AlertOutcome.DONE, delivered=delivered))
                self._save(state)
                self.warnings.append(f"flag {key!r}: earlier alert re-sent: {status}")
        return state


def _with_halt(state: State, key: str, record: HaltRecord) -> State:
    flags = dict(state.flags)
    flags[key] = replace(flags.get(key, FlagState()), halt=record)
    return replace(state, flags=flags)


def run_check(
    settings: Settings,
    *,
    now: datetime,
    dry_run: bool = False,
    only: list[str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    shard: tuple[int, int] | None = None,
) -> RunResult:
    run = Run(settings, now=now, dry_run=dry_run, only=only, transport=transport, shard=shard)
    return run_returning(run.execute())


def run_returning(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, with the result handed back outside the main task. On Python 3.11 asyncio.run builds
    the repr of its main task, result included, when it restores the SIGINT handler
    (https://github.com/python/cpython/issues/112559): for a 10,000-flag RunResult that repr took ~60 MB
    and 0.6 s of CPU at the end of every run (docs/performance.md)."""
    box: list[T] = []

    async def main() -> None:
        box.append(await work)

    asyncio.run(main())
    return box[0]
