"""Running git for guardrail: bounded calls, no prompts, redacted messages; the repository around a file.

Every call has a deadline (on expiry the whole process group, git and its ssh or credential helper, is
killed), no stdin and GIT_TERMINAL_PROMPT=0, so a credential that would need typing fails instead of
hanging cron. Credentials are git's own (ssh agent, credential helper); guardrail never sees them. Every
message taken from git goes through `redact_url`, so a token in a remote URL (`https://user:TOKEN@host`)
never reaches output, state, audit or alerts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrail.model import ExitCode, GuardrailError

DEFAULT_AUTHOR = "guardrail <guardrail@localhost>"
IDENT = re.compile(r"^\s*([^<>]+?)\s*<([^<>\s]+)>\s*$")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_url(text: str) -> str:
    """Drop the userinfo of every URL (`https://user:token@host/` -> `https://***@host/`)."""
    return _USERINFO.sub(r"\1***@", text)


# ---- configuration -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GitConfig:
    author: str | None = None  # "Name <email>"; default: git's user.name/user.email, else DEFAULT_AUTHOR
    timeout: float = 30.0  # seconds for one git call (fetch and push talk to the remote)
    deadline: float = 120.0  # seconds for one whole change, every attempt included
    attempts: int = 5  # pushes (each after a fresh fetch) before the change fails for this run


def parse_git_config(value: Any, *, source: str, field: str = "flags.git") -> GitConfig | None:
    """`flags.git: true`, or a mapping of options; None when off."""
    if value is None or value is False:
        return None
    if value is True:
        return GitConfig()
    if not isinstance(value, Mapping):
        raise GuardrailError(
            "must be true, false or a mapping (author, timeout, deadline, attempts)", source=source, field=field
        )
    unknown = sorted(set(map(str, value)) - {"author", "timeout", "deadline", "attempts"})
    if unknown:
        raise GuardrailError(
            f"unknown option(s) {unknown}; known: attempts, author, deadline, timeout",
            source=source,
            field=f"{field}.{unknown[0]}",
        )
    author = value.get("author")
    if author is not None and not (isinstance(author, str) and IDENT.match(author)):
        raise GuardrailError(f"must look like `Name <email>`, got {author!r}", source=source, field=f"{field}.author")
    numbers: dict[str, Any] = {}
    for key, integer in (("timeout", False), ("deadline", False), ("attempts", True)):
        number = value.get(key)
        if number is None:
            continue
        ok = isinstance(number, int) if integer else isinstance(number, (int, float))
        if isinstance(number, bool) or not ok or number <= 0:
            kind = "a positive whole number" if integer else "a positive number of seconds"
            raise GuardrailError(f"must be {kind}, got {number!r}", source=source, field=f"{field}.{key}")
        numbers[key] = number
    return GitConfig(author=author, **numbers)


# ---- running git ---------------------------------------------------------------------------------------


class GitError(Exception):
    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(redact_url(message))
        self.timeout = timeout


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_INDEX_FILE", "GIT_DIR", "GIT_WORK_TREE")}
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",  # fail instead of asking for a username or password
            "GCM_INTERACTIVE": "never",  # Git Credential Manager: no dialog either
            "GIT_OPTIONAL_LOCKS": "0",
            "LC_ALL": "C",  # messages we parse (push --porcelain, rejection reasons) in one language
        }
    )
    env.update(extra or {})
    return env


class Git:
    """git in one directory, every call bounded by its own timeout and by the change's deadline."""

    def __init__(self, cwd: Path, *, timeout: float, deadline_at: float | None = None) -> None:
        self.cwd = cwd
        self.timeout = timeout
        self.deadline_at = deadline_at

    def run(
        self, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None, check: bool = True
    ) -> Result:
        limit = self.timeout
        if self.deadline_at is not None:
            limit = min(limit, self.deadline_at - time.monotonic())
        what = f"git {args[0]}"
        if limit <= 0:
            raise GitError(f"{what}: deadline reached before it could start", timeout=True)
        # A session of its own: on timeout the whole group (git and its ssh or credential helper) is killed,
        # and no child can read a terminal.
        try:
            proc = subprocess.Popen(
                ["git", *args],
                cwd=self.cwd,
                env=_env(env),
                start_new_session=True,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:  # no git on PATH, or the directory vanished
            raise GitError(f"cannot run git: {exc.strerror or exc}") from None
        try:
            out, err = proc.communicate(stdin, timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise GitError(f"{what} did not finish within {limit:.0f} s", timeout=True) from None
        result = Result(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        if check and result.code != 0:
            raise GitError(f"{what} failed: {last_lines(result.err) or f'exit {result.code}'}")
        return result


def last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return redact_url(" | ".join(lines[-count:]))


# ---- the repository around a flag file -----------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    root: Path
    path: str  # the flag file inside the repository (posix, relative to root)
    branch: str  # the local branch checked out
    remote: str
    merge: str  # the branch on the remote, refs/heads/NAME
    tracking: str  # its remote-tracking ref, refs/remotes/REMOTE/NAME
    url: str  # the remote's URL, redacted, for messages

    @property
    def name(self) -> str:
        return f"{self.remote}/{self.merge.removeprefix('refs/heads/')}"


def discover(file: Path, *, timeout: float) -> Upstream:
    """The work tree, branch and upstream of a flag file; GuardrailError (exit 2) naming what is missing."""
    real = Path(os.path.realpath(file))  # a symlinked flag file is changed at its target, as on disk

    def refuse(message: str) -> GuardrailError:
        return GuardrailError(message, source=str(file), field="flags.git", exit_code=ExitCode.CONFIG)

    if not real.parent.is_dir():
        raise refuse(f"directory {real.parent} does not exist")
    git = Git(real.parent, timeout=timeout)
    try:
        top = git.run("rev-parse", "--show-toplevel", check=False)
        if top.code != 0:
            raise refuse("not inside a git work tree (flags.git needs a clone of the repository flagd syncs from)")
        root = Path(top.out.strip())
        git = Git(root, timeout=timeout)
        branch = git.run("symbolic-ref", "-q", "--short", "HEAD", check=False).out.strip()
        if not branch:
            raise refuse(f"{root}: HEAD is detached; check out the branch flagd syncs from")
        remote = git.run("config", f"branch.{branch}.remote", check=False).out.strip()
        merge = git.run("config", f"branch.{branch}.merge", check=False).out.strip()
        if not remote or not merge or remote == ".":
            raise refuse(
                f"{root}: branch {branch!r} has no upstream on a remote; set one with "
                f"`git branch --set-upstream-to=origin/{branch}`"
            )
        tracking = git.run("rev-parse", "--symbolic-full-name", "@{upstream}", check=False).out.strip()
        if not tracking.startswith("refs/remotes/"):
            # No fetch refspec maps the branch: use a ref of our own for what we fetch.
            tracking = f"refs/guardrail/upstream/{branch}"
        url = redact_url(git.run("remote", "get-url", remote, check=False).out.strip() or remote)
    except GitError as exc:
        raise refuse(str(exc)) from None
    try:
        path = real.relative_to(Path(os.path.realpath(root))).as_posix()
    except ValueError:
        raise refuse(f"the file is outside the work tree {root}") from None
    return Upstream(root=root, path=path, branch=branch, remote=remote, merge=merge, tracking=tracking, url=url)
