"""Flag files in git, with real git: a bare repository on disk plays the remote, two clones play guardrail's
checkout and a colleague's. Pushes race for real; the only seam is a wrapper around our own push step that
lets the colleague push first, so the race happens at the worst moment every time."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardrail.check import run_check
from guardrail.config import parse_flags
from guardrail.fakeapi import FakeAPI
from guardrail.flags.flagd_file import FlagdFileBackend
from guardrail.flags.git import GitFlagBackend, commit_message
from guardrail.flags.gitrepo import GitConfig, discover, parse_git_config, redact_url
from guardrail.model import ExitCode, FailureKind, Flag, GuardrailError
from guardrail.settings import load_settings
from tests.conftest import NOW

PAY = "checkout.payments.express-pay"
SEARCH = "search.ranking.new-model"
REASON = "error_rate: treatment 3.40% vs control 1.00% (+240%), threshold 10%"
FLAGS = f"""\
# Experiments of the checkout and search teams; flagd syncs this file from origin/main.
flags:
  {PAY}:
    state: ENABLED
    variants: {{treatment: true, control: false}}
    defaultVariant: control
    targeting:
      fractional:
        - {{var: targetingKey}}
        - [treatment, 50]
        - [control, 50]
    metadata:
      owner: payments-team
      experiment_type: ab
      started_at: "2026-11-20T09:00:00Z"
      guardrail.error_rate.comparison: relative_increase
      guardrail.error_rate.threshold: 0.1
      guardrail.error_rate.confirmations: 1

  {SEARCH}:
    state: ENABLED
    variants: {{treatment: true, control: false}}
    defaultVariant: control
    targeting:
      fractional:
        - {{var: targetingKey}}
        - [treatment, 50]
        - [control, 50]
    metadata:
      owner: search-team
      experiment_type: rollout
      guardrail.error_rate.comparison: relative_increase
      guardrail.error_rate.threshold: 0.1
"""


def git(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {done.stderr}")
    return done.stdout


class Repos:
    """origin.git (bare), `ours` (guardrail's clone) and `theirs` (a colleague's clone)."""

    def __init__(self, root: Path) -> None:
        self.origin, self.ours, self.theirs = root / "origin.git", root / "ours", root / "theirs"
        git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(self.origin))
        git(root, "clone", "--quiet", str(self.origin), str(self.theirs))
        git(self.theirs, "config", "user.name", "Colleague")
        git(self.theirs, "config", "user.email", "colleague@example.com")
        git(self.theirs, "checkout", "--quiet", "-b", "main")
        (self.theirs / "flags.yaml").write_text(FLAGS)
        self.colleague_commit("add the experiments")
        git(root, "clone", "--quiet", str(self.origin), str(self.ours))

    @property
    def flag_file(self) -> Path:
        return self.ours / "flags.yaml"

    def colleague_commit(self, message: str, edit: Any = None) -> None:
        """The colleague edits flags.yaml (edit: text -> text), commits and pushes to origin/main."""
        git(self.theirs, "pull", "--quiet", "--ff-only", "origin", "main", check=False)
        path = self.theirs / "flags.yaml"
        if edit is not None:
            path.write_text(edit(path.read_text()))
        git(self.theirs, "add", "flags.yaml")
        git(self.theirs, "commit", "--quiet", "-m", message)
        git(self.theirs, "push", "--quiet", "origin", "HEAD:main")

    def upstream_text(self) -> str:
        return git(self.origin, "show", "main:flags.yaml")

    def upstream_flags(self) -> dict[str, Any]:
        flags: dict[str, Any] = yaml.safe_load(self.upstream_text())["flags"]
        return flags


@pytest.fixture
def repos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Repos]:
    # No global or system git config of the machine leaks in (e.g. a user.name that would be the author).
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    (tmp_path / "gitconfig").write_text("[init]\n\tdefaultBranch = main\n")
    yield Repos(tmp_path)


def backend(repos: Repos, config: GitConfig | None = None) -> GitFlagBackend:
    return GitFlagBackend(FlagdFileBackend(repos.flag_file), config or GitConfig(timeout=30, deadline=120))


def loaded_flag(b: GitFlagBackend, key: str) -> Flag:
    loaded = asyncio.run(b.load())
    parsed = parse_flags(loaded.definitions, source=loaded.source)
    return next(f for f in parsed.flags if f.key == key)


def race_on_first_push(b: GitFlagBackend, monkeypatch: pytest.MonkeyPatch, colleague: Any) -> list[bool]:
    """Wrap our push step: the first time, the colleague pushes just before we do."""
    pushes: list[bool] = []
    original = GitFlagBackend._push

    def push(self: GitFlagBackend, *args: Any) -> tuple[bool, str | None]:
        if not pushes:
            colleague()
        result = original(self, *args)
        pushes.append(result[0])
        return result

    monkeypatch.setattr(GitFlagBackend, "_push", push)
    return pushes


def owner_to(new_owner: str) -> Any:
    return lambda text: text.replace("owner: search-team", f"owner: {new_owner}")


# ---- the halt lands, whatever happens meanwhile -------------------------------------------------------------


def test_halt_lands_on_upstream_after_a_concurrent_push(repos: Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    b = backend(repos)
    flag = loaded_flag(b, PAY)
    pushes = race_on_first_push(
        b, monkeypatch, lambda: repos.colleague_commit("search: new owner", owner_to("ranking-team"))
    )

    outcome = asyncio.run(b.halt(flag, REASON))

    assert outcome.ok and not outcome.already, outcome.detail
    assert pushes == [False, True]  # rejected once (the colleague was first), then landed
    assert "pushed on attempt 2" in outcome.detail
    upstream = repos.upstream_flags()
    assert upstream[PAY]["state"] == "DISABLED" and upstream[PAY]["defaultVariant"] == "control"
    assert upstream[PAY]["metadata"]["guardrail_reason"] == REASON
    assert upstream[SEARCH]["metadata"]["owner"] == "ranking-team"  # the colleague's change is kept
    # Our commit sits on top of the colleague's, with the default identity and a message naming it all.
    log = git(repos.origin, "log", "--format=%an <%ae>|%cn <%ce>|%s", "-3", "main").splitlines()
    assert log[0] == f"guardrail <guardrail@localhost>|guardrail <guardrail@localhost>|guardrail: halt {PAY}"
    assert log[1].endswith("search: new owner")
    body = git(repos.origin, "log", "--format=%B", "-1", "main")
    assert REASON in body and f"Guardrail-Flag: {PAY}" in body and "Guardrail-Action: revert" in body
    # Only the halted flag's lines changed in our commit; the comment and the other flag are untouched.
    diff = git(repos.origin, "diff", "main~1", "main", "--unified=0").splitlines()
    changed = [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ["-    state: ENABLED", "+    state: DISABLED", f"+      guardrail_reason: '{REASON}'"]
    assert repos.upstream_text().startswith("# Experiments of the checkout and search teams")
    # guardrail's own checkout was fast-forwarded to what it pushed.
    assert repos.flag_file.read_text() == repos.upstream_text()


def test_flagd_evaluator_serves_control_from_the_pushed_file(repos: Repos, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_flagd_evaluator import Evaluator

    b = backend(repos)
    flag = loaded_flag(b, PAY)
    race_on_first_push(b, monkeypatch, lambda: repos.colleague_commit("search owner", owner_to("x-team")))
    assert asyncio.run(b.halt(flag, REASON)).ok
    # The colleague's clone pulls what flagd would sync, and the real flagd evaluator reads it.
    git(repos.theirs, "pull", "--quiet", "--ff-only", "origin", "main")
    evaluator = Evaluator(repos.theirs / "flags.yaml")
    served = [evaluator.details(PAY, False, f"user-{i}") for i in range(500)]
    assert {d.value for d in served} == {False}  # the control value, for everyone
    assert {d.reason for d in served} == {"DISABLED"}
    assert {evaluator.details(SEARCH, False, f"user-{i}").value for i in range(200)} == {True, False}


def test_hold_of_a_rollout_is_committed_and_pushed(repos: Repos) -> None:
    b = backend(repos, GitConfig(author="Flag Bot <flags@example.com>"))
    outcome = asyncio.run(b.hold(loaded_flag(b, SEARCH), "latency up"))
    assert outcome.ok, outcome.detail
    assert repos.upstream_flags()[SEARCH]["metadata"]["guardrail_hold"] is True
    assert repos.upstream_flags()[SEARCH]["state"] == "ENABLED"
    assert git(repos.origin, "log", "--format=%an <%ae>|%s", "-1", "main").strip() == (
        f"Flag Bot <flags@example.com>|guardrail: hold {SEARCH}"
    )


def test_any_file_backend_change_goes_through_git(repos: Repos) -> None:
    """The generic path: the file backend's own method runs on the file at the upstream head."""
    b = backend(repos)
    held = asyncio.run(
        b.change(loaded_flag(b, SEARCH), "hold", "p95 up", b.file_edit("hold", loaded_flag(b, SEARCH), "p95 up"))
    )
    assert held.ok, held.detail
    assert repos.upstream_flags()[SEARCH]["metadata"]["guardrail_hold"] is True

    # A ramp step: the file backend's own set_split, on the file at the upstream head, pushed.
    pay = loaded_flag(b, PAY)
    outcome = asyncio.run(b.set_split(pay, {"treatment": 10, "control": 90}, "ramp back"))
    assert outcome.ok, outcome.detail
    fractional = repos.upstream_flags()[PAY]["targeting"]["fractional"]
    assert sorted(map(tuple, fractional[1:])) == [("control", 90), ("treatment", 10)]
    assert git(repos.origin, "log", "--format=%s", "-1", "main").strip() == f"guardrail: ramp {PAY}"


def test_a_ramp_rollback_through_git_is_two_pushed_commits(repos: Repos) -> None:
    """A ramp's rollback (share 0, then the revert) on a flag file in git: each write is a commit pushed."""
    from guardrail import ramp_run

    b = backend(repos)
    outcome = asyncio.run(ramp_run.rollback(b, loaded_flag(b, SEARCH), REASON))
    assert outcome.ok and outcome.parts == {"share_zero": "done", "revert": "done"}, outcome.detail
    upstream = repos.upstream_flags()[SEARCH]
    assert upstream["state"] == "DISABLED" and upstream["targeting"]["fractional"][1:] == [
        ["treatment", 0],
        ["control", 100],
    ]
    subjects = git(repos.origin, "log", "--format=%s", "-2", "main").splitlines()
    assert subjects == [f"guardrail: halt {SEARCH}", f"guardrail: ramp {SEARCH}"]


def test_identity_from_git_config_when_set(repos: Repos) -> None:
    git(repos.ours, "config", "user.name", "Ops Robot")
    git(repos.ours, "config", "user.email", "ops@example.com")
    b = backend(repos)
    assert asyncio.run(b.halt(loaded_flag(b, PAY), REASON)).ok
    assert git(repos.origin, "log", "--format=%an <%ae>", "-1", "main").strip() == "Ops Robot <ops@example.com>"


def test_halt_already_on_upstream_is_already(repos: Repos) -> None:
    b = backend(repos)
    flag = loaded_flag(b, PAY)
    # Another guardrail run (elsewhere) halted it and pushed in the meantime.
    other = backend(repos)
    other.inner = FlagdFileBackend(repos.theirs / "flags.yaml")
    git(repos.theirs, "pull", "--quiet", "--ff-only")
    assert asyncio.run(other.halt(loaded_flag(other, PAY), REASON)).ok
    before = git(repos.origin, "rev-parse", "main")

    outcome = asyncio.run(b.halt(flag, REASON))

    assert outcome.ok and outcome.already, outcome.detail
    assert git(repos.origin, "rev-parse", "main") == before  # nothing new pushed


def test_two_changes_in_one_run_are_two_commits(repos: Repos) -> None:
    b = backend(repos)
    pay, search = loaded_flag(b, PAY), loaded_flag(b, SEARCH)

    async def both() -> list[Any]:
        return list(await asyncio.gather(b.halt(pay, REASON), b.hold(search, "latency up")))

    assert all(o.ok for o in asyncio.run(both()))
    upstream = repos.upstream_flags()
    assert upstream[PAY]["state"] == "DISABLED" and upstream[SEARCH]["metadata"]["guardrail_hold"] is True
    subjects = git(repos.origin, "log", "--format=%s", "-2", "main").splitlines()
    assert sorted(subjects) == sorted([f"guardrail: halt {PAY}", f"guardrail: hold {SEARCH}"])


def test_dirty_flag_file_is_left_alone_and_the_halt_still_lands(repos: Repos) -> None:
    b = backend(repos)
    flag = loaded_flag(b, PAY)
    dirty = repos.flag_file.read_text().replace("owner: search-team", "owner: someone-editing")
    repos.flag_file.write_text(dirty)

    outcome = asyncio.run(b.halt(flag, REASON))

    assert outcome.ok, outcome.detail
    assert "checkout not updated" in outcome.detail
    assert repos.flag_file.read_text() == dirty  # the uncommitted edit is untouched
    upstream = repos.upstream_flags()
    assert upstream[PAY]["state"] == "DISABLED"
    assert upstream[SEARCH]["metadata"]["owner"] == "search-team"  # and was not pushed along


def test_local_commits_are_never_pushed_along(repos: Repos) -> None:
    b = backend(repos)
    flag = loaded_flag(b, PAY)
    (repos.ours / "notes.txt").write_text("local only\n")
    git(repos.ours, "add", "notes.txt")
    git(repos.ours, "-c", "user.name=x", "-c", "user.email=x@y", "commit", "--quiet", "-m", "local")

    outcome = asyncio.run(b.halt(flag, REASON))

    assert outcome.ok and "local commits" in outcome.detail, outcome.detail
    assert "notes.txt" not in git(repos.origin, "ls-tree", "--name-only", "main")


# ---- failures: never silent, never a lost edit ------------------------------------------------------------


def test_someone_changed_the_same_flag_is_a_failed_halt_and_the_edit_is_kept(
    repos: Repos, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = backend(repos)
    flag = loaded_flag(b, PAY)
    repos.colleague_commit(
        "payments: 90/10",
        lambda t: t.replace("[treatment, 50]", "[treatment, 90]", 1).replace("[control, 50]", "[control, 10]", 1),
    )
    upstream_before = git(repos.origin, "rev-parse", "main")

    outcome = asyncio.run(b.halt(flag, REASON))

    assert not outcome.ok and outcome.kind is FailureKind.CONFLICT
    assert "was changed on origin/main" in outcome.detail and "act by hand" in outcome.detail
    assert git(repos.origin, "rev-parse", "main") == upstream_before  # nothing pushed over their change
    branch = outcome.detail.split("kept on local branch ")[1].split(" ")[0]
    kept = yaml.safe_load(git(repos.ours, "show", f"{branch}:flags.yaml"))["flags"][PAY]
    assert kept["state"] == "DISABLED" and kept["metadata"]["guardrail_reason"] == REASON
    assert kept["targeting"]["fractional"][1] == ["treatment", 50]  # made on the definition evaluated
    # The next run reads the new definition; retrying the failed halt then lands on it.
    again = asyncio.run(b.halt(loaded_flag(b, PAY), REASON))
    assert again.ok, again.detail
    assert repos.upstream_flags()[PAY]["targeting"]["fractional"][1] == ["treatment", 90]
    assert repos.upstream_flags()[PAY]["state"] == "DISABLED"


def test_flag_removed_upstream_is_a_failed_halt(repos: Repos) -> None:
    b = backend(repos)
    flag = loaded_flag(b, PAY)
    repos.colleague_commit("remove payments", lambda t: t.replace(PAY, "checkout.payments.renamed"))
    outcome = asyncio.run(b.halt(flag, REASON))
    assert not outcome.ok and outcome.kind is FailureKind.NOT_FOUND and "is not in the file" in outcome.detail
    assert "kept on local branch guardrail/revert-" in outcome.detail


def test_push_rejected_by_a_hook_fails_with_the_remote_message(repos: Repos) -> None:
    hook = repos.origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'main is protected: open a pull request' >&2\nexit 1\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    b = backend(repos)

    outcome = asyncio.run(b.halt(loaded_flag(b, PAY), REASON))

    assert not outcome.ok and outcome.permanent and outcome.kind is FailureKind.REFUSED
    assert "pre-receive hook declined" in outcome.detail
    assert "main is protected: open a pull request" in outcome.detail
    assert "kept on local branch guardrail/revert-" in outcome.detail
    assert repos.upstream_flags()[PAY]["state"] == "ENABLED"


def test_no_upstream_is_a_clear_error(repos: Repos) -> None:
    git(repos.ours, "checkout", "--quiet", "-b", "local-only")
    with pytest.raises(GuardrailError) as caught:
        asyncio.run(backend(repos).load())
    assert "branch 'local-only' has no upstream" in str(caught.value)
    assert "git branch --set-upstream-to" in str(caught.value)
    assert caught.value.exit_code == ExitCode.CONFIG


def test_check_without_an_upstream_exits_2_before_anything(repos: Repos, run_cli: Any, tmp_path: Path) -> None:
    git(repos.ours, "checkout", "--quiet", "-b", "local-only")
    state = tmp_path / "state.json"
    done = run_cli(
        "check",
        "--flags",
        str(repos.flag_file),
        "--git",
        "--state",
        str(state),
        env={"METRICS_API_URL": "http://127.0.0.1:9"},
    )
    assert done.returncode == 2, done.stderr
    assert "field 'flags.git': " in done.stderr and "branch 'local-only' has no upstream" in done.stderr
    assert "Traceback" not in done.stderr and not state.exists()


def test_not_a_git_work_tree_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "flags.yaml").write_text(FLAGS)
    with pytest.raises(GuardrailError, match="not inside a git work tree"):
        discover(tmp_path / "plain" / "flags.yaml", timeout=30)


def test_a_git_call_past_its_deadline_is_killed_and_fails(repos: Repos, tmp_path: Path) -> None:
    # A hook that never returns (it waits on a FIFO nobody writes): the push can only end by our deadline.
    fifo = tmp_path / "never"
    os.mkfifo(fifo)
    hook = repos.origin / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nread line < {fifo}\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    b = backend(repos, GitConfig(timeout=8, deadline=120))

    outcome = asyncio.run(b.halt(loaded_flag(b, PAY), REASON))

    assert not outcome.ok and outcome.kind is FailureKind.TIMEOUT
    assert "git push did not finish within 8 s" in outcome.detail
    assert repos.upstream_flags()[PAY]["state"] == "ENABLED"


def test_credentials_in_the_remote_url_never_reach_messages(repos: Repos) -> None:
    b = backend(repos)
    flag = loaded_flag(b, PAY)
    # Port 1 on loopback: refused at once. The URL carries a token, as people sometimes write them.
    git(repos.ours, "remote", "set-url", "origin", "https://bot:s3cr3t-TOKEN@127.0.0.1:1/flags.git")
    fresh = backend(repos)
    loaded = asyncio.run(fresh.load())  # falls back to the last fetched head, with a warning
    assert PAY in loaded.definitions
    outcome = asyncio.run(fresh.halt(flag, REASON))
    texts = [outcome.detail, *fresh.warnings, fresh.link(PAY)]
    assert not outcome.ok and all("s3cr3t" not in t for t in texts), texts
    assert "https://***@127.0.0.1:1/flags.git" in fresh.warnings[0]


def test_redact_url() -> None:
    assert redact_url("fatal: https://u:p@h.example/x and ssh://git@h/y") == (
        "fatal: https://***@h.example/x and ssh://***@h/y"
    )
    assert redact_url("git@github.com:org/repo.git") == "git@github.com:org/repo.git"  # no secret in scp form


def test_commit_message_carries_flag_action_and_reason() -> None:
    text = commit_message(PAY, "revert", "error_rate up\nby a lot")
    assert text.splitlines()[0] == f"guardrail: halt {PAY}"
    assert "error_rate up by a lot" in text and f"Guardrail-Flag: {PAY}" in text


# ---- configuration and the whole run -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "field", "match"),
    [
        ("yes", "flags.git", "must be true, false or a mapping"),
        ({"author": "no email"}, "flags.git.author", "Name <email>"),
        ({"attempts": 0}, "flags.git.attempts", "positive whole number"),
        ({"timeout": "10"}, "flags.git.timeout", "positive number"),
        ({"push": True}, "flags.git.push", "unknown option"),
    ],
)
def test_git_config_errors_name_the_field(value: Any, field: str, match: str) -> None:
    with pytest.raises(GuardrailError, match=match) as caught:
        parse_git_config(value, source="guardrail.yaml")
    assert caught.value.field == field and caught.value.source == "guardrail.yaml"


def test_settings_read_flags_git(tmp_path: Path) -> None:
    cfg = tmp_path / "guardrail.yaml"
    cfg.write_text("flags:\n  source: flags.yaml\n  git: {author: 'A B <a@b.c>', attempts: 3}\n")
    settings = load_settings(config=cfg, env={"METRICS_API_URL": "http://127.0.0.1:9"})
    assert settings.backend.name == "file"
    assert settings.backend.config.git == GitConfig(author="A B <a@b.c>", attempts=3)
    assert load_settings(env={}, overrides={"flags": "f.yaml", "git": True}).backend.config.git == GitConfig()
    cfg.write_text("flags:\n  source: flags.yaml\n  gitt: true\n")
    with pytest.raises(GuardrailError, match="unknown key"):
        load_settings(config=cfg, env={})


def run_once(repos: Repos, api: FakeAPI, tmp_path: Path) -> Any:
    settings = load_settings(
        env={"METRICS_API_URL": api.url, "ALERT_WEBHOOK_URL": f"{api.url}/webhook"},
        overrides={
            "flags": str(repos.flag_file),
            "git": True,
            "state_path": tmp_path / "state.json",
            "audit_path": tmp_path / "a.jsonl",
        },
    )
    return run_check(settings, now=NOW)


def serve_breach(api: FakeAPI) -> None:
    api.set_metric(PAY, "control", "error_rate", 0.010, 5000)
    api.set_metric(PAY, "treatment", "error_rate", 0.034, 5100)
    api.set_metric(SEARCH, "control", "error_rate", 0.010, 5000)
    api.set_metric(SEARCH, "treatment", "error_rate", 0.0101, 5000)


def test_check_halts_through_git(repos: Repos, fake_api: FakeAPI, tmp_path: Path) -> None:
    serve_breach(fake_api)
    result = run_once(repos, fake_api, tmp_path)
    assert result.exit_code == ExitCode.HALTED
    (halt,) = result.halts
    assert halt.status == "done" and "committed" in halt.detail and "pushed" in halt.detail
    assert repos.upstream_flags()[PAY]["state"] == "DISABLED"
    (alert,) = fake_api.alerts
    assert "HALT FAILED" not in alert["text"]


def test_check_conflict_exits_4_and_the_alert_says_act_by_hand(
    repos: Repos, fake_api: FakeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_breach(fake_api)
    original = GitFlagBackend._load

    def load_then_colleague_edits(self: GitFlagBackend) -> Any:
        loaded = original(self)
        repos.colleague_commit("payments threshold", lambda t: t.replace("threshold: 0.1\n", "threshold: 0.2\n", 1))
        return loaded

    monkeypatch.setattr(GitFlagBackend, "_load", load_then_colleague_edits)
    result = run_once(repos, fake_api, tmp_path)

    assert result.exit_code == ExitCode.HALT_FAILED
    (halt,) = result.halts
    assert halt.status == "failed" and "kept on local branch" in halt.detail
    (alert,) = fake_api.alerts
    assert "HALT FAILED" in alert["text"] and "BY HAND" in alert["text"]
    assert "kept on local branch guardrail/revert-" in alert["text"]
    assert repos.upstream_flags()[PAY]["state"] == "ENABLED"
    audit = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["status"] for x in audit if x["type"] == "halt"] == ["failed"]
    assert git(repos.ours, "branch", "--list", "guardrail/*").strip()


def test_git_with_a_flag_api_is_refused_when_the_settings_are_read(tmp_path: Path) -> None:
    with pytest.raises(GuardrailError, match="need a flag file and the file backend, not 'api'") as caught:
        load_settings(
            env={"FLAG_API_URL": "http://127.0.0.1:9", "METRICS_API_URL": "http://127.0.0.1:9"}, overrides={"git": True}
        )
    assert caught.value.field == "flags.git"


def test_the_docs_config_blocks_read(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "git-flags.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    assert len(blocks) == 2
    for block in blocks:
        (tmp_path / "g.yaml").write_text(block)
        assert load_settings(config=tmp_path / "g.yaml", env={}).backend.config.git is not None
    (tmp_path / "g.yaml").write_text(blocks[1])
    assert load_settings(config=tmp_path / "g.yaml", env={}).backend.config.git == GitConfig(
        author="Guardrail Bot <guardrail@acme.example>", timeout=30, deadline=120, attempts=5
    )
