"""After a side effect nothing crashes the report; environment problems name the path and the fix."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from guardrail.fakeapi import FakeAPI
from guardrail.files import atomic_write
from guardrail.model import GuardrailError
from guardrail.state import FILE_MODE, AuditLog, StateStore
from tests.reliability.conftest import BAD, Runner, api_env, breaching, doc


def test_webhook_url_with_an_invalid_port_still_reports_the_halt(api: FakeAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    env = api_env(api, ALERT_WEBHOOK_URL="http://127.0.0.1:99999/webhook/T0SECRET")
    first = runner.check(env=env, now="2026-11-25T12:00:00Z")
    assert api.flag(BAD)["state"] == "DISABLED"
    assert first.returncode == 1, first.stderr
    (halt,) = doc(first)["halts"]
    assert halt["status"] == "done" and halt["alert"].startswith("FAILED")
    assert "SECRET" not in first.stdout + first.stderr
    second = runner.check(env=env, now="2026-11-25T12:02:00Z")
    assert second.returncode in (0, 1), second.stderr  # never "internal error" on every later run
    assert "internal error" not in second.stderr


def test_audit_on_a_full_disk_still_reports_the_halt_and_names_the_path(api: FakeAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    result = runner(
        "check",
        "--state",
        str(runner.workdir / "s.json"),
        "--audit",
        "/dev/full",
        "--json",
        "--now",
        "2026-11-25T12:00:00Z",
        env=api_env(api),
    )
    assert api.flag(BAD)["state"] == "DISABLED"
    assert result.returncode == 1, result.stderr  # the halt happened (1 outranks the audit error's 2)
    report = doc(result)
    assert report["halts"][0]["status"] == "done"
    assert any("/dev/full" in w and "audit" in w for w in report["warnings"]), report["warnings"]
    assert "internal error" not in result.stderr


def test_audit_on_a_full_disk_without_a_halt_is_exit_2_naming_the_path(api: FakeAPI, runner: Runner) -> None:
    breaching(api, confirmations=2)  # one look: nothing halts, the decisions still need the audit log
    result = runner(
        "check",
        "--state",
        str(runner.workdir / "s.json"),
        "--audit",
        "/dev/full",
        "--json",
        "--now",
        "2026-11-25T12:00:00Z",
        env=api_env(api),
    )
    assert result.returncode == 2, result.stderr
    (problem,) = doc(result)["problems"]
    assert problem["source"] == "/dev/full" and "NOT written" in problem["message"]


def test_audit_path_that_is_a_directory_is_named(api: FakeAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    audit_dir = runner.workdir / "audit"
    audit_dir.mkdir()
    result = runner(
        "check",
        "--state",
        str(runner.workdir / "s.json"),
        "--audit",
        str(audit_dir),
        "--json",
        "--now",
        "2026-11-25T12:00:00Z",
        env=api_env(api),
    )
    # Found before any PATCH: the run refuses to start, naming the path and the fix.
    assert result.returncode == 2, result.stderr
    assert str(audit_dir) in result.stderr and "directory" in result.stderr
    assert api.count("PATCH", "/v1/flags") == 0


def test_state_directory_that_is_a_file_is_named(api: FakeAPI, runner: Runner) -> None:
    breaching(api, confirmations=1)
    blocker = runner.workdir / "notadir"
    blocker.write_text("x")
    result = runner(
        "check",
        "--state",
        str(blocker / "state.json"),
        "--audit",
        str(runner.workdir / "a.jsonl"),
        "--now",
        "2026-11-25T12:00:00Z",
        env=api_env(api),
    )
    assert result.returncode == 2, result.stderr
    assert str(blocker) in result.stderr and "internal error" not in result.stderr
    assert api.count("PATCH", "/v1/flags") == 0


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EDQUOT])
def test_state_write_errors_name_the_path_and_a_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    real_open = os.open

    def failing_open(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if str(path).endswith(".tmp"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", failing_open)
    store = StateStore(tmp_path / "state.json")
    with pytest.raises(GuardrailError) as caught:
        store.save(store.load())
    text = str(caught.value)
    assert str(tmp_path / "state.json") in text
    assert any(word in text for word in ("--state", "GUARDRAIL_STATE", "free", "permission", "writable"))


def test_audit_write_errors_are_guardrail_errors_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(GuardrailError) as caught:
        AuditLog(Path("/dev/full")).append([{"a": 1}])
    assert "/dev/full" in str(caught.value) and "space" in str(caught.value).lower()


def test_atomic_write_keeps_a_symlinked_state_file_a_symlink(tmp_path: Path) -> None:
    """The state file is the user's: a symlink (a dotfiles repo, a mounted volume) stays a symlink and the
    target is updated; its mode is kept."""
    real = tmp_path / "volume" / "state.json"
    real.parent.mkdir()
    real.write_text("{}")
    os.chmod(real, 0o640)
    link = tmp_path / "state.json"
    link.symlink_to(real)
    atomic_write(link, b'{"a": 1}', mode=FILE_MODE)
    assert link.is_symlink() and json.loads(real.read_text()) == {"a": 1}
    assert oct(real.stat().st_mode & 0o777) == oct(0o640)
