"""Flag files kept in git: a halt, hold or ramp step becomes one commit pushed to the branch's upstream.

Teams on GitOps keep flagd files in a repository that flagd syncs from (a git-sync sidecar, a ConfigMap
built by Argo CD or Flux). Rewriting guardrail's own checkout changes nothing there: the change counts only
once it is on the upstream branch. So with `flags.git: true`:

- Flags are read from the upstream branch as of a fresh `git fetch` (the file at the remote-tracking ref),
  not from the work tree, so decisions are made on what flagd serves.
- A change is built with plumbing (hash-object, a throw-away index, commit-tree) on top of the upstream
  head and pushed as `COMMIT:refs/heads/BRANCH`. The push succeeds only if the branch is still at that
  head (a fast-forward), so it is a compare-and-swap: nobody's commit can be overwritten, and no local
  commit, staged file or uncommitted edit of the checkout is ever pushed along with it.
- A rejected push (someone pushed meanwhile) fetches again and re-applies the same round-trip edit
  (guardrail.flags.flagd_file.plan_edit) to the file at the new head: no textual rebase, no conflict
  markers, no repository left mid-rebase. Up to `attempts` times within `deadline` seconds.
- The flag's definition at the new head must equal the definition the decision was made on. If someone
  changed or removed that flag meanwhile, the edit is not re-applied blindly: the halt fails (exit 4, the
  alert says act by hand) and the edit is kept as a commit on a local branch `guardrail/...`.
- After the push the checkout is fast-forwarded when git can do that safely; a dirty flag file or a
  diverged branch is left as it is (the detail says so). Uncommitted edits are never touched.

Every git call has a deadline (the process group is killed), runs with no stdin and GIT_TERMINAL_PROMPT=0
(a credential that would need typing fails instead of hanging cron), and every message from git passes
through `redact_url` so a token in a remote URL never reaches output, state, audit or alerts.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from guardrail import files
from guardrail.flags.base import HaltOutcome, LoadedFlags
from guardrail.flags.flagd_file import FlagdFileBackend, plan_edit
from guardrail.flags.flagd_text import Action
from guardrail.flags.gitrepo import (
    DEFAULT_AUTHOR,
    IDENT,
    Git,
    GitConfig,
    GitError,
    Upstream,
    discover,
    last_lines,
    redact_url,
)
from guardrail.model import ExitCode, FailureKind, Flag, GuardrailError

Edit = Callable[[str], "str | HaltOutcome"]


@dataclass(frozen=True)
class _Change:
    flag: Flag
    action: str  # revert | hold | split
    edit: Edit
    ident: tuple[str, str]  # author and committer (name, email)
    message: str


# ---- the backend ---------------------------------------------------------------------------------------


def _ident(config: GitConfig, git: Git) -> tuple[str, str]:
    """Author and committer: the configured one, else git's user.name/user.email, else DEFAULT_AUTHOR."""
    if config.author:
        text = config.author
    else:
        name = git.run("config", "user.name", check=False).out.strip()
        email = git.run("config", "user.email", check=False).out.strip()
        text = f"{name} <{email}>" if name and email else DEFAULT_AUTHOR
    match = IDENT.match(text) or IDENT.match(DEFAULT_AUTHOR)  # git's own config may hold anything
    assert match is not None
    return match.group(1), match.group(2)


def commit_message(flag: str, action: str, reason: str) -> str:
    verb = {"revert": "halt", "hold": "hold", "split": "ramp"}.get(action, action)
    reason = " ".join(reason.split())
    return f"guardrail: {verb} {flag}\n\n{reason}\n\nGuardrail-Flag: {flag}\nGuardrail-Action: {action}\n"


class GitFlagBackend:
    """FlagBackend for a flagd file in a git work tree: reads upstream, commits and pushes each change."""

    name = "file"

    def __init__(self, inner: FlagdFileBackend, config: GitConfig) -> None:
        self.inner = inner
        self.config = config
        self.warnings: list[str] = []
        self._upstream: Upstream | None = None
        self._loaded_head: str | None = None  # the upstream commit the flags were last read (and judged) at
        self._lock = threading.Lock()  # two halts of one file are two commits, one after the other

    @property
    def source(self) -> str:
        return self.inner.source

    def upstream(self) -> Upstream:
        if self._upstream is None:
            self._upstream = discover(self.inner.path, timeout=self.config.timeout)
        return self._upstream

    def _git(self, deadline_at: float | None = None) -> Git:
        return Git(self.upstream().root, timeout=self.config.timeout, deadline_at=deadline_at)

    def _fetch(self, git: Git, up: Upstream) -> str:
        """Fetch the upstream branch; its head commit."""
        git.run("fetch", "--no-tags", "--quiet", up.remote, f"+{up.merge}:{up.tracking}")
        return git.run("rev-parse", "--verify", f"{up.tracking}^{{commit}}").out.strip()

    def _text_at(self, git: Git, commit: str, path: str) -> str | None:
        found = git.run("cat-file", "-e", f"{commit}:{path}", check=False)
        if found.code != 0:
            return None
        data = git.run("cat-file", "blob", f"{commit}:{path}").out
        if len(data.encode("utf-8")) > self.inner.max_bytes:
            raise GitError(f"{path} at {commit[:12]} is larger than {self.inner.max_bytes} bytes")
        return data

    # -- reading --

    def _read_upstream(self) -> tuple[str, str]:
        """(head commit, file text) of the upstream branch, fetched now; the last fetched head when the
        remote cannot be reached (with a warning)."""
        up = self.upstream()
        git = self._git(time.monotonic() + self.config.deadline)
        try:
            head = self._fetch(git, up)
        except GitError as exc:
            last = git.run("rev-parse", "--verify", "-q", f"{up.tracking}^{{commit}}", check=False).out.strip()
            if not last:
                raise GuardrailError(
                    f"cannot fetch {up.name} from {up.url}: {exc}", source=self.source, exit_code=ExitCode.UNEVALUATED
                ) from None
            self.warnings.append(
                f"{self.source}: git fetch from {up.url} failed ({exc}); "
                f"read the flags as of the last fetch ({last[:12]})"
            )
            head = last
        text = self._text_at(git, head, up.path)
        if text is None:
            raise GuardrailError(f"{up.path} does not exist on {up.name} ({head[:12]})", source=self.source)
        return head, text

    async def load(self) -> LoadedFlags:
        return await asyncio.to_thread(self._load)

    def _load(self) -> LoadedFlags:
        try:
            self._loaded_head, text = self._read_upstream()
        except GitError as exc:
            raise GuardrailError(str(exc), source=self.source, exit_code=ExitCode.UNEVALUATED) from None
        doc = files.parse_text(text, source=self.source, json_only=self.inner.json_format)
        flags = doc.get("flags") if isinstance(doc, Mapping) else None
        if not isinstance(flags, Mapping):
            raise GuardrailError(
                "not a flagd flag file: no top-level `flags` mapping", source=self.source, field="flags"
            )
        return LoadedFlags(source=self.source, definitions=flags, lines=files.LazyLines(text))

    async def get(self, key: str) -> Mapping[str, Any] | None:
        loaded = await self.load()
        found = loaded.definitions.get(key)
        return found if isinstance(found, Mapping) else None

    def link(self, key: str) -> str:
        up = self._upstream
        return f"{up.url} {up.name}:{up.path}#{key}" if up else f"{self.source}#{key}"

    async def aclose(self) -> None:
        return None

    # -- changing --

    async def halt(self, flag: Flag, reason: str) -> HaltOutcome:
        return await self.change(flag, "revert", reason, self._halt_edit(flag, "revert", reason))

    async def hold(self, flag: Flag, reason: str) -> HaltOutcome:
        return await self.change(flag, "hold", reason, self._halt_edit(flag, "hold", reason))

    def _halt_edit(self, flag: Flag, action: Action, reason: str) -> Edit:
        def edit(text: str) -> str | HaltOutcome:
            return plan_edit(text, flag, action, reason, json_format=self.inner.json_format, source=self.source)

        return edit

    async def set_split(self, flag: Flag, shares: Mapping[str, int], reason: str) -> HaltOutcome:
        """A ramp step: the file backend's own set_split, applied to the file at the upstream head."""
        return await self.change(flag, "split", reason, self.file_edit("set_split", flag, shares, reason))

    def file_edit(self, method: str, flag: Flag, *args: Any) -> Edit:
        """Any change the file backend can make (`halt`, `hold`, `set_split`, ...) as a text edit: the text is
        written to a private temp file, the file backend's method changes that file with all its own checks,
        and the result is read back. So a new kind of file change is covered here without a line of git code."""
        suffix = self.inner.path.suffix or ".yaml"  # the suffix decides JSON or YAML

        def edit(text: str) -> str | HaltOutcome:
            with tempfile.TemporaryDirectory(prefix="guardrail-edit-") as tmp:
                path = Path(tmp) / f"flags{suffix}"
                path.write_text(text, encoding="utf-8")
                backend = FlagdFileBackend(path, max_bytes=self.inner.max_bytes)
                call = getattr(backend, method, None)
                if call is None:
                    return HaltOutcome(
                        ok=False, kind=FailureKind.REFUSED, detail=f"{self.source}: the file backend cannot {method}"
                    )
                outcome: HaltOutcome = asyncio.run(call(flag, *args))
                if not outcome.ok or outcome.already:
                    return replace(outcome, detail=outcome.detail.replace(str(path), self.source))
                return path.read_text(encoding="utf-8")

        return edit

    async def change(self, flag: Flag, action: str, reason: str, edit: Edit) -> HaltOutcome:
        """Apply any text edit of the flag file (halt, hold, a ramp step) as a pushed commit."""
        return await asyncio.to_thread(self._change, flag, action, reason, edit)

    def _change(self, flag: Flag, action: str, reason: str, edit: Edit) -> HaltOutcome:
        with self._lock:
            try:
                return self._change_locked(flag, action, reason, edit)
            except GuardrailError as exc:
                return HaltOutcome(ok=False, detail=redact_url(str(exc)), kind=FailureKind.REFUSED)
            except GitError as exc:
                kind = FailureKind.TIMEOUT if exc.timeout else FailureKind.UNREACHABLE
                return HaltOutcome(ok=False, detail=f"{self.source}: {exc}; will retry next run", kind=kind)
            except Exception as exc:  # a backend never raises: a bug here must become a failed halt
                detail = redact_url(f"{self.source}: git change failed: {type(exc).__name__}: {exc}")
                return HaltOutcome(ok=False, detail=detail, kind=FailureKind.INTERNAL)

    def _change_locked(self, flag: Flag, action: str, reason: str, edit: Edit) -> HaltOutcome:
        up = self.upstream()
        git = self._git(time.monotonic() + self.config.deadline)
        change = _Change(flag, action, edit, _ident(self.config, git), commit_message(flag.key, action, reason))
        where = f"{up.url} {up.name}:{up.path}"
        last_commit: str | None = None
        for attempt in range(1, self.config.attempts + 1):
            head = self._fetch(git, up)
            text = self._text_at(git, head, up.path)
            if text is None:
                return self._failed(
                    git, up, change, kind=FailureKind.NOT_FOUND, why=f"{up.path} is gone from {up.name} ({head[:12]})"
                )
            new = edit(text)
            if isinstance(new, HaltOutcome):
                if new.already:
                    note = self._fast_forward(git, up, head)
                    return HaltOutcome(ok=True, already=True, detail=f"{where}: {new.detail} at {head[:12]}{note}")
                return self._failed(
                    git,
                    up,
                    change,
                    kind=new.kind or FailureKind.REFUSED,
                    why=f"{new.detail} (at {up.name} {head[:12]})",
                )
            current = self._definition(text, flag.key)
            if flag.definition and current != flag.definition:
                return self._failed(
                    git,
                    up,
                    change,
                    kind=FailureKind.CONFLICT,
                    why=f"flag {flag.key!r} was changed on {up.name} ({head[:12]}) since it was "
                    "evaluated; the change was not re-applied blindly",
                )
            last_commit = self._commit(git, head, up.path, new, change)
            pushed, why = self._push(git, up, last_commit)
            if pushed:
                note = self._fast_forward(git, up, last_commit)
                again = f" (pushed on attempt {attempt}, after concurrent pushes)" if attempt > 1 else ""
                return HaltOutcome(ok=True, detail=f"{where}: committed {last_commit[:12]} and pushed{again}{note}")
            if why is not None:  # refused for good (a hook, protected branch): keep the commit, stop
                kept = self._keep(git, flag, action, last_commit)
                return HaltOutcome(
                    ok=False,
                    kind=FailureKind.REFUSED,
                    detail=f"{where}: the remote refused the push: {why}; {kept}; act by hand",
                )
        kept = self._keep(git, flag, action, last_commit) if last_commit else "nothing committed"
        return HaltOutcome(
            ok=False,
            kind=FailureKind.CONFLICT,
            detail=f"{where}: the branch kept moving; gave up after "
            f"{self.config.attempts} pushes ({kept}); will retry next run",
        )

    def _definition(self, text: str, key: str) -> Any:
        doc = files.parse_text(text, source=self.source, json_only=self.inner.json_format)
        flags = doc.get("flags") if isinstance(doc, Mapping) else None
        return flags.get(key) if isinstance(flags, Mapping) else None

    def _commit(self, git: Git, parent: str, path: str, text: str, change: _Change) -> str:
        """A commit of `parent`'s tree with `path` replaced by `text`; the work tree and index are untouched."""
        blob = git.run("hash-object", "-w", "--stdin", stdin=text.encode("utf-8")).out.strip()
        listed = git.run("ls-tree", parent, "--", path).out.split()
        mode = listed[0] if listed and listed[0] in ("100644", "100755") else "100644"
        name, email = change.ident
        people = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }
        with tempfile.TemporaryDirectory(prefix="guardrail-git-") as tmp:
            index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            git.run("read-tree", parent, env=index)
            git.run("update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=index)
            tree = git.run("write-tree", env=index).out.strip()
        return git.run(
            "commit-tree", tree, "-p", parent, "-F", "-", stdin=change.message.encode("utf-8"), env=people
        ).out.strip()

    def _push(self, git: Git, up: Upstream, commit: str) -> tuple[bool, str | None]:
        """(pushed, why refused for good). (False, None): someone pushed first, fetch and try again."""
        result = git.run("push", "--porcelain", up.remote, f"{commit}:{up.merge}", check=False)
        if result.code == 0:
            return True, None
        status = [line for line in result.out.splitlines() if line.startswith("!")]
        summary = status[0].split("\t")[-1] if status else ""
        if summary.startswith("[rejected]"):  # fetch first / non-fast-forward: the branch moved
            return False, None
        if summary.startswith("[remote rejected]"):  # a hook or branch protection said no
            remote_said = [
                line[len("remote:") :].strip()
                for line in result.err.splitlines()
                if line.startswith("remote:") and line[len("remote:") :].strip()
            ]
            said = redact_url(" | ".join(remote_said[-5:]))
            return False, redact_url(summary) + (f"; remote said: {said}" if said else "")
        raise GitError(f"git push to {up.url} failed: {last_lines(result.err) or f'exit {result.code}'}")

    def _fast_forward(self, git: Git, up: Upstream, commit: str) -> str:
        """Bring the checkout to the pushed commit when git can do it safely; a note otherwise."""
        try:
            branch = git.run("symbolic-ref", "-q", "--short", "HEAD", check=False).out.strip()
            if branch != up.branch:
                return f"; checkout not updated (on {branch or 'a detached HEAD'}, not {up.branch})"
            if git.run("merge-base", "--is-ancestor", "HEAD", commit, check=False).code != 0:
                return f"; checkout not updated: {up.branch} has local commits (git pull --rebase there)"
            merged = git.run("merge", "--ff-only", "--quiet", commit, check=False)
            if merged.code != 0:
                return f"; checkout not updated: {last_lines(merged.err, 1) or 'git merge --ff-only failed'}"
        except GitError as exc:
            return f"; checkout not updated: {exc}"
        return ""

    def _keep(self, git: Git, flag: Flag, action: str, commit: str) -> str:
        """Keep a commit on a local branch so the edit is never lost; the sentence that says where."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", flag.key).strip(".-") or "flag"
        branch = f"guardrail/{action}-{safe}-{commit[:12]}"
        try:
            git.run("update-ref", f"refs/heads/{branch}", commit)
        except GitError as exc:
            return f"the edit is commit {commit[:12]} (no branch: {exc})"
        return f"the edit is kept on local branch {branch} in {git.cwd} (git show {branch})"

    def _failed(self, git: Git, up: Upstream, change: _Change, *, kind: FailureKind, why: str) -> HaltOutcome:
        """The edit could not be applied upstream: keep it, made on the commit whose definition was
        evaluated (the upstream head at load, else the local HEAD), as a commit on a local branch."""
        kept = "the edit could not be kept: the file it was evaluated on does not take it either"
        head = self._loaded_head or git.run("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False).out.strip()
        text = self._text_at(git, head, up.path) if head else None
        if head and text is not None:
            try:
                new = change.edit(text)
            except GuardrailError:
                new = HaltOutcome(ok=False, detail="", kind=FailureKind.INTERNAL)
            if isinstance(new, str):
                kept = self._keep(git, change.flag, change.action, self._commit(git, head, up.path, new, change))
        return HaltOutcome(ok=False, kind=kind, detail=f"{self.source}: {why}; {kept}; act by hand")
