"""The recipes in examples/ and the project's own CI: they parse, have the right keys, and the shell in them
runs against the real fake API (cron line, deploy step) or a real git repository (pull-request step)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from guardrail.cli import app
from guardrail.fakeapi import FakeAPI
from guardrail.settings import CONFIG_KEYS, load_settings
from tests.conftest import TOKEN, clean_env, flag_definition

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CONTRACT_VARS = {"FLAG_API_URL", "FLAG_API_TOKEN", "METRICS_API_URL", "ALERT_WEBHOOK_URL"}
KEY = "checkout.payments.express-pay"
BIN = str(Path(sys.executable).parent)


def options_of(command: str) -> set[str]:
    group: Any = typer.main.get_command(app)
    return {opt for p in group.commands[command].params for opt in p.opts if opt.startswith("--")}


def assert_known_options(args: list[str], command: str) -> None:
    known = options_of(command)
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"{arg} is not an option of `guardrail {command}`"


def serve(api: FakeAPI, *, harmful: bool) -> None:
    api.set_flags({KEY: flag_definition(extra_metadata={"guardrail.error_rate.confirmations": 1})})
    api.set_metric(KEY, "control", "error_rate", 0.010, 5000)
    api.set_metric(KEY, "treatment", "error_rate", 0.034 if harmful else 0.0101, 5000)


def api_env(api: FakeAPI) -> dict[str, str]:
    return {
        "FLAG_API_URL": api.url,
        "FLAG_API_TOKEN": TOKEN,
        "METRICS_API_URL": api.url,
        "ALERT_WEBHOOK_URL": f"{api.url}/webhook",
    }


# ---- cron ---------------------------------------------------------------------------------------------------


def crontab() -> tuple[dict[str, str], list[str]]:
    variables, jobs = {}, []
    for line in (EXAMPLES / "cron" / "guardrail.crontab").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^[A-Z_]+=", line):
            name, _, value = line.partition("=")
            variables[name] = value
        else:
            jobs.append(line)
    return variables, jobs


def test_crontab_runs_every_two_minutes_without_flock() -> None:
    variables, (job,) = crontab()
    fields = job.split(None, 5)
    assert fields[:5] == ["*/2", "*", "*", "*", "*"]
    command = fields[5]
    assert "%" not in command  # cron turns % into a newline
    assert "flock" not in command  # guardrail locks its own state
    words = shlex.split(command.replace(";", " ; "))
    start = words.index("guardrail")
    assert words[start + 1] == "check"
    args = words[start + 2 : words.index(">/var/lib/guardrail/last-run.txt")]
    assert_known_options(args, "check")
    assert {"--state", "--audit"} <= set(args)
    assert variables["SHELL"] == "/bin/sh" and "PATH" in variables


def test_env_file_has_the_contract_variables_as_placeholders() -> None:
    path = EXAMPLES / "cron" / "guardrail.env"
    pairs = dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    assert set(pairs) == CONTRACT_VARS
    assert all("example.com" in v or "REPLACE" in v for v in pairs.values())
    exported = subprocess.run(
        ["sh", "-c", f"set -a; . {shlex.quote(str(path))}; set +a; env"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert f"FLAG_API_TOKEN={pairs['FLAG_API_TOKEN']}" in exported.splitlines()


@pytest.mark.e2e
def test_crontab_line_runs_and_mails_only_on_trouble(fake_api: FakeAPI, tmp_path: Path) -> None:
    env_file = tmp_path / "guardrail.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in api_env(fake_api).items()))
    (tmp_path / "lib").mkdir()
    _variables, (job,) = crontab()
    command = (
        job.split(None, 5)[5]
        .replace("/etc/guardrail/guardrail.env", str(env_file))
        .replace("/var/lib/guardrail", str(tmp_path / "lib"))
        .replace("/var/lib/prometheus/node-exporter", str(tmp_path / "textfile"))
    )

    def cron() -> subprocess.CompletedProcess[str]:
        # What cron does: sh -c COMMAND with the crontab's variables, none of the contract's in the environment.
        env = {**clean_env(), "PATH": f"{BIN}:/usr/bin:/bin", "SHELL": "/bin/sh"}
        return subprocess.run(
            ["/bin/sh", "-c", command], capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL
        )

    serve(fake_api, harmful=False)
    quiet = cron()
    assert quiet.stdout == "" and quiet.stderr == ""  # nothing to mail
    assert {"state.json", "audit.jsonl", "last-run.txt"} <= {p.name for p in (tmp_path / "lib").iterdir()}
    assert (tmp_path / "textfile" / "guardrail.prom").exists()

    serve(fake_api, harmful=True)
    mailed = cron()
    assert "HALTED" in mailed.stdout and KEY in mailed.stdout
    assert fake_api.flag(KEY)["state"] == "DISABLED"
    assert TOKEN not in mailed.stdout + mailed.stderr


# ---- Kubernetes ---------------------------------------------------------------------------------------------


def manifests() -> Iterator[dict[str, Any]]:
    for path in sorted((EXAMPLES / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= set(doc), path
            yield doc


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [m for m in manifests() if m["kind"] == kind]
    return found


def test_kubernetes_cronjob() -> None:
    cron = by_kind("CronJob")
    assert cron["apiVersion"] == "batch/v1"
    spec = cron["spec"]
    assert spec["schedule"] == "*/2 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "check"
    assert_known_options(args[1:], "check")
    assert {"--state", "--audit", "--metrics-file"} <= set(args)

    # State, audit and metrics all live on the claim's mount.
    (mount,) = container["volumeMounts"]
    for option in ("--state", "--audit", "--metrics-file"):
        assert args[args.index(option) + 1].startswith(mount["mountPath"] + "/")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == by_kind("PersistentVolumeClaim")["metadata"]["name"]

    # Secrets come from the Secret, by keys it has; nothing secret is written in the CronJob.
    env = {e["name"]: e for e in container["env"]}
    assert set(env) == CONTRACT_VARS
    secret = by_kind("Secret")
    for name in ("FLAG_API_TOKEN", "ALERT_WEBHOOK_URL"):
        assert "value" not in env[name]
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_kubernetes_pvc_and_dockerfile() -> None:
    pvc = by_kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] and pvc["spec"]["resources"]["requests"]["storage"]
    dockerfile = (EXAMPLES / "kubernetes" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["guardrail"]' in dockerfile and "pip install" in dockerfile
    for copied in re.findall(r"^COPY (.+) /src/", dockerfile, flags=re.M):
        for name in copied.split():
            assert (ROOT / name).exists(), name
    user = re.search(r"^USER (\d+):(\d+)", dockerfile, flags=re.M)
    assert user is not None
    assert by_kind("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(
        user.group(1)
    )


# ---- GitHub Actions -----------------------------------------------------------------------------------------


def workflow(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on".
    assert "on" in doc or True in doc, path
    assert doc["jobs"], path
    for job in doc["jobs"].values():
        assert job["runs-on"] and job["steps"]
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step
    return doc


def step(doc: dict[str, Any], name_prefix: str) -> tuple[int, dict[str, Any]]:
    (job,) = doc["jobs"].values()
    for i, s in enumerate(job["steps"]):
        if str(s.get("name", "")).startswith(name_prefix):
            return i, s
    raise AssertionError(f"no step named {name_prefix!r}")


def run_step(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # GitHub runs a `run:` block as `bash -e {0}` on Linux runners.
    return subprocess.run(
        ["bash", "-e", "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**clean_env(), "PATH": f"{BIN}:/usr/bin:/bin", **env},
        stdin=subprocess.DEVNULL,
    )


def test_deploy_workflow_shape() -> None:
    doc = workflow(EXAMPLES / "github-actions" / "deploy.yml")
    install, _ = step(doc, "Install guardrail")
    rollout, _ = step(doc, "Roll out")
    check, guard = step(doc, "Guardrail check")
    assert install < rollout < check
    assert "guardrail check" in guard["run"]
    assert guard["env"]["FLAG_API_TOKEN"] == "${{ secrets.FLAG_API_TOKEN }}"
    assert guard["env"]["ALERT_WEBHOOK_URL"] == "${{ secrets.ALERT_WEBHOOK_URL }}"


@pytest.mark.e2e
@pytest.mark.parametrize(("harmful", "code"), [(True, 1), (False, 0)])
def test_deploy_step_fails_the_job_on_a_halt(fake_api: FakeAPI, tmp_path: Path, harmful: bool, code: int) -> None:
    doc = workflow(EXAMPLES / "github-actions" / "deploy.yml")
    _, guard = step(doc, "Guardrail check")
    (job,) = doc["jobs"].values()
    serve(fake_api, harmful=harmful)
    env = {
        **api_env(fake_api),
        "FLAG_KEY": job["env"]["FLAG_KEY"],
        "BAKE_CHECKS": "2",
        "BAKE_INTERVAL": "0",
        "RUNNER_TEMP": str(tmp_path),
    }
    result = run_step(guard["run"], env, tmp_path)
    assert result.returncode == code, result.stdout + result.stderr
    if harmful:
        assert "::error title=guardrail halted" in result.stdout
        assert fake_api.flag(KEY)["state"] == "DISABLED"
    else:
        assert result.stdout.count("no guardrail harmed") == 2
    assert (tmp_path / "guardrail-audit.jsonl").exists()
    assert TOKEN not in result.stdout + result.stderr


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        env={**clean_env(), "GIT_CONFIG_GLOBAL": os.devnull},
    )


@pytest.mark.e2e
def test_pull_request_step_validates_changed_flag_files(tmp_path: Path) -> None:
    doc = workflow(EXAMPLES / "github-actions" / "validate-flags.yml")
    triggers: Any = doc["on"] if "on" in doc else dict(doc.items())[True]  # type: ignore[index]
    assert "pull_request" in triggers
    _, validate = step(doc, "guardrail validate")
    assert "guardrail validate --format github" in validate["run"]

    good = flag_definition(extra_metadata={"expiry": "2099-01-01"})
    bad = flag_definition(extra_metadata={"expiry": "2099-01-01"})
    del bad["metadata"]["guardrail.error_rate.threshold"]
    repo = tmp_path / "repo"
    (repo / "flags").mkdir(parents=True)
    (repo / "flags" / "old.yaml").write_text(yaml.safe_dump({"flags": {"a.b.old": bad}}))  # not in the diff
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")  # what checkout with fetch-depth 0 provides
    git(repo, "checkout", "-q", "-b", "pr")

    def pr(files: dict[str, str]) -> subprocess.CompletedProcess[str]:
        for name, text in files.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(text)
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", "change")
        return run_step(validate["run"], {"BASE_REF": "main"}, repo)

    docs_only = pr({"docs/notes.md": "hello\n"})
    assert docs_only.returncode == 0 and docs_only.stdout == ""  # old.yaml is not validated: not changed

    clean = pr({"flags/new.yaml": yaml.safe_dump({"flags": {KEY: good}})})
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "::error" not in clean.stdout

    broken = pr({"flags/team/broken.yaml": yaml.safe_dump({"flags": {"a.b.broken": bad}})})
    assert broken.returncode != 0
    assert "::error file=flags/team/broken.yaml" in broken.stdout and "old.yaml" not in broken.stdout


def test_project_ci_runs_the_ci_script_ruff_and_mypy() -> None:
    doc = workflow(ROOT / ".github" / "workflows" / "ci.yml")
    runs = [s["run"].strip() for job in doc["jobs"].values() for s in job["steps"] if "run" in s]
    assert "bash .ci/run" in runs
    assert any(re.fullmatch(r"(\.venv/bin/)?ruff check \.", r) for r in runs)
    assert any(re.fullmatch(r"(\.venv/bin/)?mypy", r) for r in runs)
    assert (ROOT / ".ci" / "run").exists()
    # `make setup` (used before ruff and mypy) must be a real target.
    if any(r.startswith("make ") for r in runs):
        makefile = (ROOT / "Makefile").read_text()
        for r in runs:
            if r.startswith("make "):
                assert re.search(rf"^{re.escape(r.split()[1])}:", makefile, flags=re.M), r


# ---- configs/guardrail.yaml ---------------------------------------------------------------------------------


def test_example_config_loads_and_covers_every_key() -> None:
    path = ROOT / "configs" / "guardrail.yaml"
    doc = yaml.safe_load(path.read_text())
    assert set(doc) == CONFIG_KEYS
    settings = load_settings(config=path, env={})
    assert settings.flag_api_url and settings.metrics_url and settings.flag_backend == "api"
    assert settings.lock_timeout == doc["lock_timeout"] and settings.retries == doc["http"]["retries"]
    assert dict(settings.defaults) == doc["defaults"]

    # Every section key settings.py and the configured adapters read is documented (set, or shown commented
    # out) in the example.
    source = "".join(
        (ROOT / "guardrail" / name).read_text() for name in ("settings.py", "flags/http_api.py", "sources/http_api.py")
    )
    read = set(re.findall(r'\b(?:flag_api|alert|http|metrics|section)\.get\("(\w+)"', source))
    read |= set(re.findall(r'"(?:flag_api|alert|http|metrics)\.(\w+)"', source))
    read |= set(re.findall(r'\bhttp\["(\w+)"\]', source))
    read -= {"token", "webhook_url"}  # named only to refuse them: secrets never go in the file
    assert {"url", "token_env", "webhook_url_env", "timeout", "retries", "concurrency", "ca_bundle"} <= read
    documented = set(re.findall(r"^\s*#?\s*(\w+):", path.read_text(), flags=re.M))
    assert read <= documented, read - documented
