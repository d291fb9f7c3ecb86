"""`check --log-format json`: one JSON object per line on stderr, for log pipelines (Loki, ELK, Cloud Logging).

stdout keeps the human report (or `--json`); stderr gets the events: one per evaluation, halt, flag
problem, unwatched flag and warning, then a `run` summary. Every line carries `time`, `level`, `event`,
`run_id` and `dry_run`; evaluation lines carry the same fields as `check --json` (codec.evaluation_dict),
so a query written against one works on the other. Lines are redacted before they leave the process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, TextIO

from guardrail import codec
from guardrail.codec import format_time
from guardrail.model import ExitCode, GuardrailError, HaltResultStatus, RunResult, Verdict
from guardrail.redact import Redactor, process_redactor

# A breach or a source failure deserves a look; a skip for warmup or low traffic is the normal course.
_VERDICT_LEVEL = {
    Verdict.BREACH: "warning",
    Verdict.SKIP_NO_DATA: "warning",
    Verdict.PASS: "info",
    Verdict.SKIP_MIN_COUNT: "info",
    Verdict.SKIP_WARMUP: "info",
}
_HALT_LEVEL = {
    HaltResultStatus.DONE: "warning",
    HaltResultStatus.WOULD_HALT: "warning",
    HaltResultStatus.FAILED: "error",
}
_EXIT_LEVEL = {ExitCode.OK: "info", ExitCode.HALTED: "warning", ExitCode.UNEVALUATED: "warning"}


def env_redactor() -> Redactor:
    """Every secret the process knows (the CLI's error boundary masks the same)."""
    return process_redactor()


def run_log_records(result: RunResult) -> Iterator[dict[str, Any]]:
    base = {"time": format_time(result.now), "run_id": result.run_id, "dry_run": result.dry_run}
    for e in result.evaluations:
        yield {**base, "level": _VERDICT_LEVEL[e.verdict], "event": "evaluation", **codec.evaluation_dict(e)}
    for h in result.halts:
        yield {**base, "level": _HALT_LEVEL.get(h.status, "warning"), "event": "halt", **codec.halt_dict(h)}
    for p in result.problems:
        yield {
            **base,
            "level": p.severity,
            "event": "flag_problem",
            "flag": p.flag,
            "source": p.source,
            "field": p.field,
            "line": p.line,
            "message": p.message,
        }
    for key, why in sorted(result.skipped_flags.items()):
        if why not in ("disabled", "no guardrails"):  # halted or held: worth a line; the rest is noise
            yield {**base, "level": "info", "event": "flag_not_evaluated", "flag": key, "reason": why}
    for w in result.warnings:
        yield {**base, "level": "warning", "event": "warning", "message": w}
    verdicts = Counter(e.verdict.value for e in result.evaluations)
    code = result.exit_code
    yield {
        **base,
        "level": _EXIT_LEVEL.get(code, "error"),
        "event": "run",
        "exit_code": int(code),
        "exit": code.name.lower(),
        "evaluations": len(result.evaluations),
        "verdicts": {v.value: verdicts.get(v.value, 0) for v in Verdict},
        "halts": len(result.halts),
        "problems": len(result.problems),
        "warnings": len(result.warnings),
    }


def _line(record: dict[str, Any], redact: Redactor) -> str:
    return redact(codec.dumps(record)) + "\n"


def emit_run_logs(result: RunResult, stream: TextIO, *, redact: Redactor | None = None) -> None:
    redact = redact or env_redactor()
    stream.write("".join(_line(r, redact) for r in run_log_records(result)))
    stream.flush()


def emit_error_log(
    error: GuardrailError, stream: TextIO, *, redact: Redactor | None = None, now: datetime | None = None
) -> None:
    """A run that stopped before deciding still leaves a JSON line, so the pipeline sees why."""
    redact = redact or env_redactor()
    record = {
        "time": format_time(now or datetime.now(timezone.utc)),
        "level": "error",
        "event": "error",
        "exit_code": int(error.exit_code),
        "message": error.message,
        "source": error.source,
        "flag": error.flag,
        "field": error.field,
    }
    stream.write(_line(record, redact))
    stream.flush()
