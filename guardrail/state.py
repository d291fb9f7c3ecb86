"""The local state file and the audit log.

State is one JSON document, versioned, written atomically (temp file in the same directory, fsync,
rename, fsync the directory) under an exclusive `flock` on a sibling lock file, so two overlapping cron
runs never both act: the second waits briefly, then either runs after the first or gives up with exit
code 5. A corrupt state file is renamed aside and reported, never silently replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from guardrail.codec import format_time, parse_time, seq_from_dict, seq_to_dict
from guardrail.files import atomic_write
from guardrail.model import (
    ExitCode,
    FlagState,
    GuardrailError,
    HaltAction,
    HaltRecord,
    HaltStatus,
    RampState,
    State,
    Streak,
)

STATE_VERSION = 2
FILE_MODE = 0o600


def _t(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def _dt(value: Any) -> datetime | None:
    """An RFC 3339 time from the state file; a naive one (hand-edited) is taken as UTC, as in flag files.
    Anything but a string is a wrong type: the file is set aside like a corrupt one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a time string, got {type(value).__name__}")
    return parse_time(value)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be an object, got {type(value).__name__}")
    return value


def halt_to_dict(h: HaltRecord) -> dict[str, Any]:
    return {
        "status": HaltStatus(h.status).value,
        "action": h.action.value,
        "reason": h.reason,
        "decided_at": _t(h.decided_at),
        "metric": h.metric,
        "treatment_variant": h.treatment_variant,
        "control_variant": h.control_variant,
        "completed_at": _t(h.completed_at),
        "attempts": h.attempts,
        "last_error": h.last_error,
        "alert_delivered": h.alert_delivered,
        "alert": h.alert,
        "run_id": h.run_id,
    }


def halt_from_dict(d: Any) -> HaltRecord:
    d = _mapping(d, "halt")
    decided = _dt(d["decided_at"])
    if decided is None:
        raise TypeError("halt.decided_at is missing")
    for name in ("alert", "alert_payload"):
        if d.get(name) is not None and not isinstance(d[name], dict):
            raise TypeError(f"halt.{name} must be an object")
    if not isinstance(d.get("alert_delivered", False), bool):
        raise TypeError("halt.alert_delivered must be true or false")
    for name in ("reason", "metric", "treatment_variant", "control_variant", "last_error", "run_id"):
        if d.get(name) is not None and not isinstance(d[name], str):
            raise TypeError(f"halt.{name} must be a string")
    return HaltRecord(
        status=HaltStatus(d["status"]),
        action=HaltAction(d["action"]),
        reason=str(d["reason"]),
        decided_at=decided,
        metric=str(d.get("metric", "")),
        treatment_variant=str(d.get("treatment_variant", "")),
        control_variant=str(d.get("control_variant", "control")),
        completed_at=_dt(d.get("completed_at")),
        attempts=_count(d.get("attempts", 0), "halt.attempts"),
        last_error=d.get("last_error"),
        alert_delivered=bool(d.get("alert_delivered", False)),
        # Files written before the alert was rendered at send time kept the rendered body instead.
        alert=d.get("alert") or ({"legacy_payload": d["alert_payload"]} if d.get("alert_payload") else None),
        run_id=d.get("run_id"),
    )


def to_dict(state: State) -> dict[str, Any]:
    # `metrics_looked_at` only with `metrics.every` (guardrail/cadence.py): files without it load as before.
    looked = {} if state.metrics_looked_at is None else {"metrics_looked_at": _t(state.metrics_looked_at)}
    return {
        "version": STATE_VERSION,
        "last_run_at": _t(state.last_run_at),
        **looked,
        "flags": {
            key: {
                "first_seen_enabled": _t(fs.first_seen_enabled),
                "streaks": {
                    gid: {"count": s.count, "last_breach_at": _t(s.last_breach_at)} for gid, s in fs.streaks.items()
                },
                "halt": None if fs.halt is None else halt_to_dict(fs.halt),
                "tuning_n": dict(fs.tuning_n),
                "last_evaluations": dict(fs.last_evaluations),
                "sequential": {gid: seq_to_dict(q) for gid, q in fs.sequential.items()},
                "last_look_at": _t(fs.last_look_at),
                **_ramp_to_dict(fs),
            }
            for key, fs in sorted(state.flags.items())
        },
    }


def _ramp_to_dict(fs: FlagState) -> dict[str, Any]:
    """Ramp and SRM fields, written only when set (older documents simply lack them)."""
    out: dict[str, Any] = {}
    if fs.ramp is not None:
        out["ramp"] = {
            "step": fs.ramp.step,
            "step_started_at": _t(fs.ramp.step_started_at),
            "shipped_at": _t(fs.ramp.shipped_at),
            "last": dict(fs.ramp.last),
        }
        if fs.ramp.steps:
            out["ramp"]["steps"] = list(fs.ramp.steps)
        if fs.ramp.restarted:
            out["ramp"]["restarted"] = True
    if fs.srm_min_p < 1.0 or fs.srm_warned:
        out["srm_min_p"] = fs.srm_min_p
        out["srm_warned"] = fs.srm_warned
    return out


def _ramp_from_dict(d: Any) -> RampState | None:
    if not isinstance(d, Mapping):
        return None
    started = _dt(d["step_started_at"])
    assert started is not None
    return RampState(
        step=int(d["step"]),
        step_started_at=started,
        shipped_at=_dt(d.get("shipped_at")),
        last=dict(d.get("last") or {}),
        steps=tuple(_count(x, "ramp step") for x in d.get("steps") or ()),
        restarted=d.get("restarted") is True,
    )


def _upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """Bring an older document to STATE_VERSION, one step per version.

    1 → 2: the sequential test became window-stratified and keeps per-guardrail state (`sequential`) and the
    previous look's time (`last_look_at`). A version-1 flag has neither: its tests start at the next look,
    which sees everything since start as one window (a valid stratum), so nothing is lost but the frozen N*
    of the old test (`tuning_n` is kept: a ramp step's confidence sequence still reads it)."""
    version = doc.get("version")
    if version == 1:
        doc = {**doc, "version": 2}
        for fs in (doc.get("flags") or {}).values():
            if isinstance(fs, dict):
                fs.setdefault("sequential", {})
                fs.setdefault("last_look_at", None)
        version = 2
    if version == STATE_VERSION:
        return doc
    if isinstance(version, int) and version > STATE_VERSION:
        raise ValueError(f"state version {version} is newer than this guardrail understands ({STATE_VERSION})")
    raise ValueError(f"unknown state version {version!r}")


def _tuning(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise TypeError(f"tuning_n must be a positive number, got {value!r}")
    return float(value)


def from_dict(doc: Any) -> State:
    """Strict: a hand-edited file with a wrong type anywhere raises (TypeError/ValueError/KeyError), and
    `load` sets it aside like a corrupt one, rather than every later run crashing on it."""
    if not isinstance(doc, dict):
        raise ValueError("state document is not an object")
    doc = _upgrade(doc)
    flags: dict[str, FlagState] = {}
    for key, fs in _mapping(doc.get("flags"), "flags").items():
        fs = _mapping(fs, f"flags.{key}")
        streaks = {}
        for gid, s in _mapping(fs.get("streaks"), f"flags.{key}.streaks").items():
            s = _mapping(s, f"flags.{key}.streaks.{gid}")
            streaks[str(gid)] = Streak(_count(s.get("count", 0), "streak count"), _dt(s.get("last_breach_at")))
        evaluations = _mapping(fs.get("last_evaluations"), f"flags.{key}.last_evaluations")
        if not all(isinstance(v, Mapping) for v in evaluations.values()):
            raise TypeError(f"flags.{key}.last_evaluations values must be objects")
        flags[str(key)] = FlagState(
            first_seen_enabled=_dt(fs.get("first_seen_enabled")),
            streaks=streaks,
            halt=None if fs.get("halt") is None else halt_from_dict(fs["halt"]),
            tuning_n={str(k): _tuning(v) for k, v in _mapping(fs.get("tuning_n"), "tuning_n").items()},
            last_evaluations=dict(evaluations),
            ramp=_ramp_from_dict(fs.get("ramp")),
            srm_min_p=float(fs.get("srm_min_p", 1.0)),
            srm_warned=bool(fs.get("srm_warned", False)),
            sequential={str(k): seq_from_dict(v) for k, v in (fs.get("sequential") or {}).items()},
            last_look_at=_dt(fs.get("last_look_at")),
        )
    return State(
        flags=flags, last_run_at=_dt(doc.get("last_run_at")), metrics_looked_at=_dt(doc.get("metrics_looked_at"))
    )


def _fix_for(code: int | None, what: str, option: str) -> str:
    """The fix a person can apply, for the errno a write failed with."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the disk (or quota) is full: free space there, or point " + option + " at another disk"
    if code == errno.EROFS:
        return f"the file system is read-only: point {option} at a writable directory"
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied: give this user write access to the {what} and its directory, "
            f"or point {option} elsewhere"
        )
    if code == errno.EISDIR:
        return f"the path is a directory: point {option} at a file"
    if code == errno.ENOTDIR:
        return f"a parent of the path is a file, not a directory: point {option} elsewhere"
    return f"check the {what} path, or point {option} elsewhere"


def write_error(exc: OSError, path: Path, what: str, option: str) -> GuardrailError:
    """An OSError while writing `path`, as a message naming the path and the fix (never 'internal error')."""
    return GuardrailError(
        f"cannot write the {what}: {exc.strerror or exc}; {_fix_for(exc.errno, what, option)}",
        source=str(path),
        exit_code=ExitCode.CONFIG,
    )


@dataclass
class StateStore:
    """The state file at `path`; use `with store.locked(): ...` around load/save of one run."""

    path: Path
    lock_timeout: float = 10.0
    _lock_fd: int | None = None
    warning: str | None = None  # set when a corrupt file was moved aside

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[StateStore]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise write_error(exc, self.lock_path, "state lock file", "--state (or GUARDRAIL_STATE)") from None
        deadline = time.monotonic() + self.lock_timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise GuardrailError(
                            f"another guardrail run holds the state lock (waited {self.lock_timeout:g}s); "
                            "this run did nothing",
                            source=str(self.lock_path),
                            exit_code=ExitCode.LOCKED,
                        ) from None
                    time.sleep(0.05)
            self._lock_fd = fd
            yield self
        finally:
            self._lock_fd = None
            os.close(fd)  # closing the descriptor releases the flock

    def read(self) -> tuple[State | None, str | None]:
        """(state, None), or (None, why) when the file is corrupt; no side effects. A missing file is an
        empty state; a file from a newer guardrail is an error, not corruption."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State(), None
        except OSError as exc:
            raise GuardrailError(f"cannot read state file: {exc.strerror}", source=str(self.path)) from None
        try:
            doc = json.loads(raw.decode("utf-8"))
            version = doc.get("version") if isinstance(doc, dict) else None
            if isinstance(version, int) and version > STATE_VERSION:
                # Written by a newer guardrail: not corrupt, and not ours to move aside or overwrite.
                raise GuardrailError(
                    f"state file has version {version}, newer than this guardrail understands "
                    f"({STATE_VERSION}); upgrade guardrail",
                    source=str(self.path),
                )
            return from_dict(doc), None
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            return None, str(exc)

    def load(self) -> State:
        """read(), moving a corrupt file aside (reported in `warning`) so the run starts fresh."""
        state, problem = self.read()
        if state is not None:
            return state
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            raise write_error(
                exc, self.path, "state file (unreadable, to be set aside)", "--state (or GUARDRAIL_STATE)"
            ) from None
        self.warning = (
            f"state file {self.path} was unreadable ({problem}); kept it as {aside} and started fresh "
            "(streaks and first-seen times restart)"
        )
        return State()

    def save(self, state: State) -> None:
        text = json.dumps(to_dict(state), indent=2, sort_keys=False, allow_nan=False, default=str)
        try:
            atomic_write(self.path, (text + "\n").encode("utf-8"), mode=FILE_MODE)
        except OSError as exc:
            raise write_error(exc, self.path, "state file", "--state (or GUARDRAIL_STATE)") from None


class AuditLog:
    """Append-only JSON Lines: one object per decision, halt and resume. Created 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, records: list[Mapping[str, Any]]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, sort_keys=False, default=str, allow_nan=True) + "\n" for r in records)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                # One write call per run: O_APPEND keeps concurrent writers' lines whole.
                payload = data.encode("utf-8")
                written = os.write(fd, payload)
                if written != len(payload):  # a short write: the disk filled mid-line
                    raise OSError(errno.ENOSPC, "short write (disk full?)")
                try:
                    os.fsync(fd)
                except OSError as exc:  # a character device or pipe (/dev/stdout) cannot fsync: fine
                    if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
                        raise
            finally:
                os.close(fd)
        except OSError as exc:
            raise write_error(exc, self.path, "audit log", "--audit (or GUARDRAIL_AUDIT)") from None

    def read(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out
