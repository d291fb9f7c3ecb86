"""Write the report site: `guardrail report` (a full build from the state file and the whole audit log)
and `check --report` (a refresh from one run's audit records).

Layout of DIR:
    index.html              every watched flag, halts first, filterable
    flags/<slug>.html       one page per flag
    data/flags/<slug>.json  the flag's folded history (guardrail/site/history.py): what a refresh extends
    data/index.json         per-flag summaries, so a refresh rebuilds the index without reading histories

A refresh touches only the flags in this run's records (their history, their page) and the index. A
site without data/index.json, or written by another HISTORY_VERSION, is built in full first. Files are
written to a temporary name and renamed, so a web server never serves half a page; they are not fsynced
(the site is a view: `guardrail report` rebuilds it from the state and audit log at any time).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from guardrail.model import GuardrailError
from guardrail.site import history as hist
from guardrail.site import pages

SAFE = re.compile(r"[^A-Za-z0-9._-]")
DEFAULT_STALE_AFTER = 10.0
# A healthy flag's page (every guardrail passing, now and at the last look) is redrawn at most this often;
# anything else is redrawn by the run that sees it. Its looks wait in data/pending/ (one small append).
REDRAW_MINUTES = 10.0


def slug(key: str) -> str:
    """A file name for a flag key: the key itself when it is plain, else a cleaned key plus a hash (so two
    keys never share a page, and no key can climb out of flags/ with `..` or `/`)."""
    cleaned = SAFE.sub("_", key)[:80]
    if cleaned == key and not key.startswith(".") and key:
        return key
    return f"{cleaned.lstrip('.')}-{hashlib.blake2b(key.encode('utf-8'), digest_size=5).hexdigest()}"


def page_link(base_url: str, key: str) -> str:
    """The URL of a flag's page under `report.base_url` (for alerts)."""
    from urllib.parse import quote

    return f"{base_url.rstrip('/')}/flags/{quote(slug(key))}.html"


def _write_in_place(path: Path, text: str) -> None:
    """Overwrite without truncating to zero or renaming over the old file: on ext4 both make the kernel
    flush the new data at once (the `auto_da_alloc` heuristic, ext4(5)), which cost ~4 ms a file on a busy
    disk: 16 s for 2,000 flags' pages. A page being rewritten can be seen half-new for the microseconds of
    the write; a history file cut short by a crash is detected (it no longer parses) and the site is
    rebuilt from the audit log."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _write(path: Path, text: str) -> None:
    """Write-then-rename, for the few files a reader must never see half written (the index)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, "utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_state_doc(path: Path) -> tuple[dict[str, Any], str | None]:
    """The state document as stored (raw, so entries other features add, like `ramp` or `srm`, show too)."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}, f"no state file at {path}: guardrail check has not run with this state file yet"
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return {}, f"state file {path} is unreadable ({exc}); showing only the audit log"
    if not isinstance(doc, dict) or not isinstance(doc.get("flags", {}), dict):
        return {}, f"state file {path} is not a guardrail state document; showing only the audit log"
    return doc, None


def _summary(h: Mapping[str, Any]) -> dict[str, Any]:
    """What the index needs from a history: kept in data/index.json between refreshes."""
    verdicts = {
        gid: (
            (s.get("last") or {}).get("verdict"),
            (s.get("last") or {}).get("streak"),
            (s.get("last") or {}).get("confirmations"),
        )
        for gid, s in (h.get("series") or {}).items()
    }
    return {
        "last_run": h.get("last_run"),
        "halts": h.get("halts", 0),
        "srm": h.get("srm"),
        "ramp": h.get("ramp"),
        "verdicts": verdicts,
    }


def flag_status(entry: Mapping[str, Any], summary: Mapping[str, Any]) -> tuple[str, str]:
    """(status, detail) for the index and the page header; STATUS_RANK orders the index."""
    halt = entry.get("halt")
    if isinstance(halt, Mapping):
        done = "held" if halt.get("action") == "hold" else "halted"
        status = {"done": done, "pending": "halt_pending", "failed": "halt_failed"}.get(str(halt.get("status")), done)
        return status, f"{halt.get('metric', '')}@{halt.get('treatment_variant', '')} at {halt.get('decided_at', '')}"
    srm = entry.get("srm") if isinstance(entry.get("srm"), Mapping) else summary.get("srm")
    if isinstance(srm, Mapping) and str(srm.get("verdict", "")) in ("mismatch", "srm", "fail"):
        return "srm", pages.srm_text(srm)
    verdicts: Mapping[str, Any] = summary.get("verdicts") or {}
    breaching = [(gid, v) for gid, v in verdicts.items() if v[0] == "breach"]
    if breaching:
        return "breaching", ", ".join(f"{gid} {v[1]}/{v[2]}" for gid, v in sorted(breaching))
    kinds = {v[0] for v in verdicts.values()}
    if "skip:no_data" in kinds or "skip:min_count" in kinds:
        which = sorted(gid for gid, v in verdicts.items() if v[0] in ("skip:no_data", "skip:min_count"))
        return "no_data", ", ".join(which)
    if kinds == {"skip:warmup"}:
        return "warmup", ""
    if "pass" in kinds:
        return "ok", ""
    return "idle", ""


def _gids(entry: Mapping[str, Any], h: Mapping[str, Any]) -> list[str]:
    """Every guardrail and arm the history or the state knows, so a flag with no data still gets charts."""
    found = set(h.get("series") or {})
    for part in ("streaks", "last_evaluations"):
        if isinstance(entry.get(part), Mapping):
            found |= {str(k) for k in entry[part]}
    halt = entry.get("halt")
    if isinstance(halt, Mapping) and halt.get("metric"):
        found.add(f"{halt['metric']}@{halt.get('treatment_variant', '')}")
    return sorted(found)


@dataclass
class Site:
    out: Path
    state_doc: dict[str, Any]
    now: datetime
    stale_after: float | None = DEFAULT_STALE_AFTER
    warnings: list[str] = field(default_factory=list)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def flags(self) -> Mapping[str, Any]:
        return self.state_doc.get("flags") or {}

    def _entry(self, key: str) -> Mapping[str, Any]:
        entry = self.flags.get(key)
        return entry if isinstance(entry, Mapping) else {}

    def row(self, key: str) -> dict[str, Any]:
        entry, summary = self._entry(key), self.summaries.get(key) or {}
        status, detail = flag_status(entry, summary)
        last = summary.get("last_run")
        srm = entry.get("srm") if isinstance(entry.get("srm"), Mapping) else summary.get("srm")
        return {
            "key": key,
            "slug": slug(key),
            "status": status,
            "detail": detail,
            "ramp": pages.ramp_text(entry.get("ramp"), summary.get("ramp")),
            "srm": pages.srm_text(srm),
            "last_run": last,
            "halts": int(summary.get("halts") or 0) or (1 if entry.get("halt") else 0),
            "guardrails": len(summary.get("verdicts") or {}) or len(entry.get("last_evaluations") or {}),
            "monitor_last_run": self.state_doc.get("last_run_at"),
        }

    def write_flag(self, key: str, h: Mapping[str, Any]) -> None:
        self.summaries[key] = {**_summary(h), "rendered_at": self.now.timestamp()}
        name = slug(key)
        _write_in_place(self.out / "data" / "flags" / f"{name}.json", json.dumps(h, separators=(",", ":")))
        entry = self._entry(key)
        _write_in_place(
            self.out / "flags" / f"{name}.html",
            pages.flag_page(
                key, h, entry, self.row(key), now=self.now, gids=_gids(entry, h), stale_after=self.stale_after
            ),
        )

    def write_index(self) -> None:
        keys = set(self.summaries) | set(self.flags)
        rows = sorted((self.row(k) for k in keys), key=lambda r: (pages.STATUS_RANK[r["status"]], r["key"]))
        _write(
            self.out / "data" / "index.json",
            json.dumps({"v": hist.HISTORY_VERSION, "flags": self.summaries}, separators=(",", ":")),
        )
        _write(
            self.out / "index.html",
            pages.index_page(
                rows,
                now=self.now,
                last_run=self.state_doc.get("last_run_at"),
                stale_after=self.stale_after,
                warnings=self.warnings,
            ),
        )


def _prepare(out: Path) -> None:
    try:
        (out / "flags").mkdir(parents=True, exist_ok=True)
        (out / "data" / "flags").mkdir(parents=True, exist_ok=True)
        (out / "data" / "pending").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuardrailError(f"cannot create the report directory: {exc.strerror}", source=str(out)) from None


def _audit_records(path: Path) -> Iterable[dict[str, Any]]:
    """The audit log, streamed: at 2,000 flags it grows by thousands of lines a run."""
    try:
        fh = path.open("r", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise GuardrailError(f"cannot read the audit log: {exc.strerror}", source=str(path)) from None
    with fh:
        for line in fh:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict) and isinstance(rec.get("flag"), str):
                    yield rec


def build_site(
    out: Path, *, state_path: Path, audit_path: Path, now: datetime, stale_after: float = DEFAULT_STALE_AFTER
) -> Site:
    """The whole site from the state file and the audit log."""
    doc, warning = read_state_doc(state_path)
    return build_from_records(
        out, doc, _audit_records(audit_path), now=now, stale_after=stale_after, warnings=[warning] if warning else []
    )


def build_from_records(
    out: Path,
    doc: dict[str, Any],
    records: Iterable[Mapping[str, Any]],
    *,
    now: datetime,
    stale_after: float | None,
    warnings: list[str] | None = None,
) -> Site:
    """The whole site from a state document and audit records (`stale_after=None`: not a live monitor,
    e.g. a backtest, so no stale warnings)."""
    _prepare(out)
    for stale in (out / "data" / "pending").glob("*.jsonl"):  # the audit log holds them all
        stale.unlink()
    site = Site(out, doc, now, stale_after, warnings=warnings or [])
    histories: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = str(rec["flag"])
        h = histories.get(key)
        if h is None:
            h = histories[key] = hist.new_history(key)
        hist.add_record(h, rec)
    for key in sorted(set(histories) | set(site.flags)):
        site.write_flag(key, histories.get(key) or hist.new_history(key))
    site.write_index()
    return site


def _load_index(out: Path) -> dict[str, dict[str, Any]] | None:
    try:
        doc = json.loads((out / "data" / "index.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != hist.HISTORY_VERSION or not isinstance(doc.get("flags"), dict):
        return None
    flags: dict[str, dict[str, Any]] = doc["flags"]
    return flags


class _Unreadable(Exception):
    """A saved history that no longer parses (a crash mid-write): the site is rebuilt in full."""


def _load_history(out: Path, key: str) -> dict[str, Any]:
    path = out / "data" / "flags" / f"{slug(key)}.json"
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return hist.new_history(key)  # a flag this site has not seen yet
    except OSError as exc:
        raise _Unreadable(str(exc)) from None
    try:
        h = json.loads(text)
    except ValueError as exc:
        raise _Unreadable(str(exc)) from None
    if not isinstance(h, dict) or h.get("v") != hist.HISTORY_VERSION or h.get("key") != key:
        raise _Unreadable("not a history of this flag")
    return h


def refresh_site(
    out: Path,
    *,
    state_path: Path,
    audit_path: Path,
    records: Iterable[Mapping[str, Any]],
    now: datetime,
    stale_after: float = DEFAULT_STALE_AFTER,
    every_minutes: float = REDRAW_MINUTES,
) -> Site:
    """After a run: fold this run's records into the touched flags' histories; rewrite their pages and
    the index. A site not built yet (or by another version) is built in full from the audit log, which
    already holds this run's records."""
    _prepare(out)
    with _locked(out):
        return _refresh(
            out,
            state_path=state_path,
            audit_path=audit_path,
            records=records,
            now=now,
            stale_after=stale_after,
            every_minutes=every_minutes,
        )


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Two overlapping runs must not both load, extend and write a flag's history (one would lose the
    other's look): the refresh holds an exclusive flock on DIR/.lock (released when the file closes)."""
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _refresh(
    out: Path,
    *,
    state_path: Path,
    audit_path: Path,
    records: Iterable[Mapping[str, Any]],
    now: datetime,
    stale_after: float,
    every_minutes: float,
) -> Site:
    summaries = _load_index(out)
    if summaries is None:
        return build_site(out, state_path=state_path, audit_path=audit_path, now=now, stale_after=stale_after)
    doc, warning = read_state_doc(state_path)
    site = Site(out, doc, now, stale_after, warnings=[warning] if warning else [], summaries=summaries)
    by_flag: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        key = rec.get("flag")
        if isinstance(key, str):
            by_flag.setdefault(key, []).append(rec)
    later = {
        key: recs for key, recs in by_flag.items() if not due(key, summaries.get(key) or {}, recs, now, every_minutes)
    }
    by_flag = {key: recs for key, recs in by_flag.items() if key not in later}
    try:
        loaded = {key: _load_history(out, key) for key in by_flag}
    except _Unreadable:
        return build_site(out, state_path=state_path, audit_path=audit_path, now=now, stale_after=stale_after)
    for key, recs in by_flag.items():
        h = loaded[key]
        for rec in _pending(out, key):
            hist.add_record(h, rec)
        for rec in recs:
            hist.add_record(h, rec)
        site.write_flag(key, h)
        with contextlib.suppress(FileNotFoundError):
            (out / "data" / "pending" / f"{slug(key)}.jsonl").unlink()
    for key, recs in later.items():
        with (out / "data" / "pending" / f"{slug(key)}.jsonl").open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs))
        site.summaries[key] = _summary_after(site.summaries.get(key) or {}, recs)
    site.write_index()
    return site


def due(
    key: str, summary: Mapping[str, Any], recs: Sequence[Mapping[str, Any]], now: datetime, every_minutes: float
) -> bool:
    """Must this run redraw the flag's page? At once when anything is not a plain pass (a breach, missing
    data, a halt, a ramp step, an SRM verdict) or was not at the last look; otherwise once every
    `every_minutes`, each flag in its own phase (a hash of its key) so the redraws of a healthy fleet are
    spread evenly over the runs instead of all falling on one."""
    if every_minutes <= 0 or summary.get("rendered_at") is None:
        return True
    if any(r.get("type") != "decision" or r.get("verdict") != "pass" for r in recs):
        return True
    if any(v[0] != "pass" for v in (summary.get("verdicts") or {}).values()):
        return True
    period = every_minutes * 60
    phase = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=4).digest(), "big") % int(period)
    return (now.timestamp() - phase) // period != (float(summary["rendered_at"]) - phase) // period


def _summary_after(summary: Mapping[str, Any], recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The index's view of a flag whose page waits: only plain passes (see `due`), so the newest look."""
    out = dict(summary)
    verdicts = dict(out.get("verdicts") or {})
    for r in recs:
        verdicts[f"{r.get('metric', '')}@{r.get('treatment_variant', '')}"] = (
            r.get("verdict"),
            r.get("streak"),
            r.get("confirmations"),
        )
        out["last_run"] = r.get("time", out.get("last_run"))
    out["verdicts"] = verdicts
    return out


def _pending(out: Path, key: str) -> list[dict[str, Any]]:
    """Records folded into no page yet (runs where the flag's page was not due)."""
    try:
        lines = (out / "data" / "pending" / f"{slug(key)}.jsonl").read_text("utf-8").splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):  # a line cut short by a crash: that look is lost to the chart
            rec = json.loads(line)
            if isinstance(rec, dict):
                found.append(rec)
    return found
