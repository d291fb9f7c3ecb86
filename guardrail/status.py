"""`guardrail status`: what the monitor knows, and whether the monitor itself is alive.

Read-only. The state file is read without the lock: check writes it atomically (temp file + rename),
so a reader sees the previous document or the next, never half of one, and `status` never makes a cron
run wait (or exit 5). Flags come from the flag source like `check`; when the source is unreachable the
state file's view is still shown, with a warning. A monitor whose last run is older than --stale-after
(or that never ran) is itself an incident: nothing is being watched, so status says so first and exits 3.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guardrail import codec, engine, judge, ramp_status, seqtest
from guardrail.config import ParsedFlags, format_time, parse_flags
from guardrail.flags.base import LoadedFlags
from guardrail.model import ExitCode, Flag, FlagState, GuardrailError, HaltStatus, Method, State, guardrail_id
from guardrail.redact import Redactor
from guardrail.rules import FROM_FLAG, Merged
from guardrail.settings import Settings, load_settings
from guardrail.state import StateStore, halt_to_dict

JSON_VERSION = 1
BUILT_IN = "built-in default"


# ---- reading --------------------------------------------------------------------------------------------


def read_state(path: Path) -> tuple[State, str | None]:
    """The state document and a warning, without the lock and without side effects.

    StateStore.load() moves a corrupt file aside; a read-only command must not, so this is its own reader.
    """
    if not path.exists():
        return State(), f"no state file at {path}: guardrail check has not run with this --state"
    state, problem = StateStore(path).read()
    if state is None:
        return State(), (
            f"state file {path} is unreadable ({problem}); the next check run keeps it aside and starts fresh"
        )
    return state, None


async def _load(settings: Settings) -> tuple[LoadedFlags, ParsedFlags]:
    from guardrail.check import runtime_for
    from guardrail.http import make_client

    # Reading needs no credential for writing: a read-only runtime holds it back, so it cannot leak from here.
    client = make_client(timeout=settings.timeout, concurrency=settings.concurrency, ca_bundle=settings.ca_bundle)
    async with client:
        backend = settings.backend.create(runtime_for(settings, client, read_only=True))
        loaded: LoadedFlags = await backend.load()
    parsed = parse_flags(
        loaded.definitions,
        source=loaded.source,
        lines=loaded.lines,
        defaults=settings.defaults,
        rules=settings.guardrail_rules,
    )
    return loaded, replace(parsed, problems=(*loaded.problems, *parsed.problems))


def load_source(settings: Settings) -> tuple[LoadedFlags, ParsedFlags]:
    """The flag definitions at the source, as `check` reads them. Raises GuardrailError when unreachable."""
    if not settings.flags:
        raise GuardrailError("no flag source configured (--flags, FLAG_API_URL or `flags:` in --config)")
    return asyncio.run(_load(settings))


# ---- the report -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusReport:
    now: datetime
    stale_after: float  # minutes
    last_run_at: datetime | None
    flag_source: str | None
    flags: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metrics_looked_at: datetime | None = None  # with `metrics.every`: the last run that looked at the metrics

    @property
    def age_seconds(self) -> float | None:
        return None if self.last_run_at is None else (self.now - self.last_run_at).total_seconds()

    @property
    def stale(self) -> bool:
        age = self.age_seconds
        # A last run far in the future (a run whose clock was ahead) proves nothing about now: counting it
        # fresh would hide a dead cron until that date. One minute of skew is tolerated.
        return age is None or age > self.stale_after * 60 or age < -60

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.UNEVALUATED if self.stale else ExitCode.OK

    def stale_message(self) -> str | None:
        if not self.stale:
            return None
        if self.last_run_at is None:
            return "STALE MONITOR: guardrail check has never completed a run with this state file; nothing is watched"
        age = (self.age_seconds or 0) / 60
        if age < 0:
            return (
                f"STALE MONITOR: the last run is recorded {-age:.1f} min in the future "
                f"({format_time(self.last_run_at)}): a clock was ahead; it proves nothing about runs now "
                "(is the clock right? is cron running?)"
            )
        return (
            f"STALE MONITOR: the last run was {age:.1f} min ago ({format_time(self.last_run_at)}), more than "
            f"--stale-after {self.stale_after:g} min: flags are NOT being watched (is cron/the CronJob running?)"
        )


def _t(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


SHOWN_OPTIONS = ("comparison", "threshold", "method", "confirmations", "min_count", "window")


def _guardrails(flag: Flag | None, fs: FlagState, origins: Mapping[str, str]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    floors: dict[str, float] = {}  # each guardrail's configured `dispersion` (1 for those only the state knows)
    if flag is not None:
        for g in flag.guardrails:
            for variant in flag.treatment_variants:
                floors[guardrail_id(g.metric, variant)] = g.dispersion
                rows[guardrail_id(g.metric, variant)] = {
                    "id": guardrail_id(g.metric, variant),
                    "metric": g.metric,
                    "treatment_variant": variant,
                    "comparison": g.comparison.value,
                    "threshold": g.threshold,
                    "method": g.method.value,
                    "confirmations": g.confirmations,
                    "min_count": g.min_count,
                    "window": g.window,
                    "alpha_per_comparison": (
                        judge.comparison_alpha(flag, g) if g.method is Method.SEQUENTIAL else None
                    ),
                    "in_definition": True,
                    # Where each value came from: flag metadata, a config `guardrails:` pattern, config
                    # `defaults:`, or the built-in default.
                    "from": {o: origins.get(f"{g.metric}.{o}", BUILT_IN) for o in SHOWN_OPTIONS},
                }
    # Guardrails only the state remembers (removed from the definition, or the source is unreachable).
    for gid in sorted(set(fs.streaks) | set(fs.last_evaluations)):
        if gid not in rows:
            metric, _, variant = gid.rpartition("@")
            rows[gid] = {
                "id": gid,
                "metric": metric,
                "treatment_variant": variant,
                "comparison": None,
                "threshold": None,
                "method": None,
                "confirmations": None,
                "min_count": None,
                "window": None,
                "alpha_per_comparison": None,
                "in_definition": False,
                "from": {},
            }
    for gid, row in rows.items():
        # The sequential test's learnt dispersion D̂ (≥ the configured floor) and, once it has seen enough
        # windows of clustering the floor misses, the `dispersion` to configure (seqtest.suggested_floor).
        seq = fs.sequential.get(gid)
        floor = floors.get(gid, 1.0)
        row["dispersion"] = seqtest.dispersion(seq, floor) if seq is not None and seq.windows > 0 else None
        row["dispersion_windows"] = 0 if seq is None else seq.windows
        row["suggested_dispersion"] = seqtest.suggested_floor(seq, floor) if seq is not None else None
        streak = fs.streaks.get(gid)
        row["streak"] = 0 if streak is None else streak.count
        row["last_breach_at"] = None if streak is None else _t(streak.last_breach_at)
        last = fs.last_evaluations.get(gid)
        row["last"] = None if last is None else dict(last)
    return list(rows.values())


def _flag_entry(
    key: str, flag: Flag | None, state: State, now: datetime, parsed: ParsedFlags | None, merged: Merged | None
) -> dict[str, Any]:
    fs = state.flags.get(key, FlagState())
    if merged is None and flag is not None:
        merged = _merged(flag, None)
    halt = None
    if fs.halt is not None:
        halt = halt_to_dict(fs.halt)
        halt.pop("alert", None)  # the alert's context: bulky, and not status
    entry: dict[str, Any] = {
        "flag": key,
        "at_source": None if flag is None else ("ENABLED" if flag.enabled else "DISABLED"),
        "held": None if flag is None else flag.held,
        "experiment_type": None if flag is None else flag.experiment_type.value,
        "watched": None,
        "not_watched": None,
        "warmup_remaining_minutes": None,
        "started_at": None if flag is None else _t(flag.started_at),
        "first_seen_enabled": _t(fs.first_seen_enabled),
        "guardrails": _guardrails(flag, fs, merged.origins if merged else {}),
        "config_patterns": list(merged.patterns) if merged else [],  # `guardrails:` patterns that apply
        "halt": halt,
        "ramp": ramp_status.entry(flag, fs, now),
    }
    if flag is not None:
        why = engine.watched(flag, state)
        if why is not None and fs.halt is not None and not why.startswith("halted"):
            why = f"{why}; halted by guardrail ({fs.halt.status})"  # "disabled" alone hides who did it
        entry["watched"], entry["not_watched"] = why is None, why
        if why is None:
            start = engine.experiment_start(flag, fs, now)
            entry["warmup_remaining_minutes"] = round(engine.warming_up(flag, start, now), 2)
    elif fs.halt is not None:
        entry["watched"], entry["not_watched"] = False, f"halted by guardrail ({fs.halt.status})"
    elif parsed is not None and any(p.flag == key and p.severity == "error" for p in parsed.problems):
        entry["watched"], entry["not_watched"] = False, "its definition has errors (see the warnings)"
    elif parsed is not None:
        entry["watched"], entry["not_watched"] = False, "not in the flag definitions any more"
    else:
        entry["not_watched"] = "unknown: the flag source could not be read"
    return entry


def build_report(
    state: State,
    parsed: ParsedFlags | None,
    *,
    now: datetime,
    stale_after: float,
    flag_source: str | None,
    warnings: list[str],
    merged: Mapping[str, Merged] | None = None,
) -> StatusReport:
    """Flags with guardrails that are ENABLED at the source, plus every flag the state file knows."""
    by_key: dict[str, Flag] = {} if parsed is None else {f.key: f for f in parsed.flags}
    keys = {k for k, f in by_key.items() if f.guardrails and f.enabled} | set(state.flags)
    flags = [_flag_entry(k, by_key.get(k), state, now, parsed, (merged or {}).get(k)) for k in sorted(keys)]
    if parsed is not None:
        warnings = warnings + [f"{p.severity}: {p}" for p in parsed.problems]
    return StatusReport(
        now=now,
        stale_after=stale_after,
        last_run_at=state.last_run_at,
        flag_source=flag_source,
        flags=flags,
        warnings=warnings,
        metrics_looked_at=state.metrics_looked_at,
    )


def to_json(report: StatusReport) -> dict[str, Any]:
    """The `status --json` document; its keys are pinned by tests/test_status.py (add, never rename)."""
    return {
        "version": JSON_VERSION,
        "exit_code": int(report.exit_code),
        "now": format_time(report.now),
        "last_run_at": _t(report.last_run_at),
        "last_run_age_seconds": report.age_seconds,
        "stale": report.stale,
        "stale_after_minutes": report.stale_after,
        "stale_message": report.stale_message(),
        "flag_source": report.flag_source,
        "metrics_looked_at": _t(report.metrics_looked_at),
        "flags": report.flags,
        "warnings": report.warnings,
    }


# ---- text -----------------------------------------------------------------------------------------------


def _num(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _threshold(row: Mapping[str, Any]) -> str:
    if row["threshold"] is None:
        return "(not in the definition)"
    relative = str(row["comparison"]).startswith("relative")
    limit = f"{row['threshold']:.2%}" if relative else f"{row['threshold']:g}"
    return f"{row['comparison']} {limit} ({row['method']})"


def _guardrail_line(row: Mapping[str, Any]) -> str:
    confirmations = row["confirmations"] if row["confirmations"] is not None else "?"
    line = f"    {row['id']}: {_threshold(row)}; streak {row['streak']}/{confirmations}"
    if row.get("alpha_per_comparison") is not None:
        line += f"; alpha {row['alpha_per_comparison']:.4g} per comparison"
    if row.get("dispersion") is not None:
        line += f"; dispersion {row['dispersion']:.2f} over {row['dispersion_windows']} window(s)"
        if row.get("suggested_dispersion") is not None:
            line += f" (events cluster: set `dispersion: {row['suggested_dispersion']:g}`)"
    last = row["last"]
    if last:
        line += (
            f"; last {last.get('verdict')} at {last.get('at')}: treatment {_num(last.get('treatment'))} "
            f"(n={_num(last.get('treatment_count'))}) vs control {_num(last.get('control'))} "
            f"(n={_num(last.get('control_count'))})"
        )
        if last.get("verdict") != "pass" and last.get("reason"):
            line += f" - {last['reason']}"
    else:
        line += "; not evaluated yet"
    return line


def _halt_lines(halt: Mapping[str, Any]) -> list[str]:
    verb = {
        HaltStatus.DONE: "HALTED" if halt["action"] == "revert" else "HELD",
        HaltStatus.PENDING: "HALT PENDING",
        HaltStatus.FAILED: "HALT FAILED (do it by hand; retried every run)",
    }.get(HaltStatus(halt["status"]), str(halt["status"]))
    lines = [
        f"    {verb} ({halt['action']}) decided {halt['decided_at']} by run {halt['run_id'] or '-'}"
        + (f", completed {halt['completed_at']}" if halt["completed_at"] else ""),
        f"      why: {halt['reason']}",
        f"      attempts {halt['attempts']}; alert {'delivered' if halt['alert_delivered'] else 'NOT delivered'}"
        + (f"; last error: {halt['last_error']}" if halt["last_error"] else ""),
    ]
    if halt["status"] == HaltStatus.DONE:
        key = halt.get("flag", "KEY")
        lines.append(f"      once reviewed and the flag restored: guardrail resume {key} --reason ...")
    return lines


def to_text(report: StatusReport) -> str:
    out = [f"guardrail status at {format_time(report.now)}"]
    stale = report.stale_message()
    if stale:
        out += ["!" * 100, stale, "!" * 100]
    if report.last_run_at is not None:
        out.append(f"last run: {format_time(report.last_run_at)} ({(report.age_seconds or 0) / 60:.1f} min ago)")
    if report.metrics_looked_at is not None:
        ago = (report.now - report.metrics_looked_at).total_seconds() / 60
        out.append(f"last metrics look: {format_time(report.metrics_looked_at)} ({ago:.1f} min ago; metrics.every)")
    out.append(f"flag source: {report.flag_source or '(none)'}")
    out += [f"warning: {w}" for w in report.warnings]
    if not report.flags:
        out.append("no watched flags")
    for f in report.flags:
        at_source = f["at_source"] or "not at source"
        held = ", held" if f["held"] else ""
        kind = f" ({f['experiment_type']})" if f["experiment_type"] else ""
        watched = "watched" if f["watched"] else f"NOT watched: {f['not_watched']}"
        out.append(f"{f['flag']}{kind}: {at_source}{held}; {watched}")
        if f["warmup_remaining_minutes"]:
            out.append(f"    warmup: {f['warmup_remaining_minutes']:.1f} min left")
        for row in f["guardrails"]:
            out.append(_guardrail_line(row))
            config_set = {o: w for o, w in row["from"].items() if w not in (FROM_FLAG, BUILT_IN)}
            if config_set:  # a value not from the flag's own metadata: say where it came from
                out.append(
                    "      from: "
                    + "; ".join(f"{o} {w}" for o, w in config_set.items())
                    + "; the rest: flag metadata or built-in defaults"
                )
        if f.get("ramp") is not None:
            out += ramp_status.lines(f["ramp"])
        if f["halt"] is not None:
            out += _halt_lines({**f["halt"], "flag": f["flag"]})
    if stale:
        out.append(f"exit code 3: {stale}")
    return "\n".join(out)


def _merged(flag: Flag, settings: Settings | None) -> Merged:
    """The flag's guardrail options with the config's layers, and where each value came from."""
    from guardrail.config import merge_guardrails

    metadata = flag.definition.get("metadata")
    return merge_guardrails(
        flag.key,
        metadata if isinstance(metadata, Mapping) else {},
        rules=settings.guardrail_rules if settings else None,
        defaults=settings.defaults if settings else None,
    )


# ---- the command ----------------------------------------------------------------------------------------


def run_status_command(
    *,
    flags: str | None,
    config: Path | None,
    state: Path | None,
    as_json: bool,
    stale_after: float,
    now: datetime | None = None,
) -> int:
    if not stale_after > 0:
        raise GuardrailError(f"must be a positive number of minutes, got {stale_after:g}", field="--stale-after")
    settings = load_settings(config=config, overrides={"flags": flags, "state_path": state})
    now = now or datetime.now(timezone.utc).replace(microsecond=0)
    current, warning = read_state(settings.state_path)
    warnings = [warning] if warning else []
    parsed: ParsedFlags | None = None
    flag_source: str | None = settings.flags
    try:
        loaded, parsed = load_source(settings)
        flag_source = loaded.source
    except GuardrailError as exc:
        warnings.append(f"flag source unreadable, showing only what the state file knows: {exc}")
    merged = {f.key: _merged(f, settings) for f in parsed.flags} if parsed is not None else {}
    report = build_report(
        current, parsed, now=now, stale_after=stale_after, flag_source=flag_source, warnings=warnings, merged=merged
    )
    text = codec.dumps(to_json(report), indent=2) if as_json else to_text(report)
    # Defence in depth: nothing status prints should hold a secret, but every text leaving goes through this.
    print(Redactor(settings.secrets())(text))
    return int(report.exit_code)
