"""The README and docs/ say what is true: every relative link and anchor resolves, the README's first real
run works exactly as written, and the reference tables (exit codes, variables) match the code."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrail.model import ExitCode
from tests.conftest import clean_env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The Markdown without fenced code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2... for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text("utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def relative_links(page: Path) -> Iterator[str]:
    for target in LINK.findall(prose(page.read_text("utf-8"))):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked offline
            yield target


def test_the_pages_exist_and_link_somewhere() -> None:
    assert {"index.md", "guardrails.md", "contracts.md", "operations.md", "development.md"} <= {p.name for p in PAGES}
    assert len(list(relative_links(README))) >= 8


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{page.name}: {broken}"


def test_anchor_slugs_follow_github() -> None:
    page = ROOT / "docs" / "guardrails.md"
    assert "variants-and-abn" in anchors(page)
    assert "guardrail-validate-ci-for-pull-requests-that-change-flag-files" in anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_speak_to_users(page: Path) -> None:
    """No project-log language: no issue numbers, no notes that are not in this repository."""
    text = page.read_text("utf-8")
    for pattern in (r"CONTRACTS\.md", r"(?i)reference\s+notes", r"(?i)\bhow-to\b", r"(?i)\bissue \d+", r"\.\./shared"):
        assert not re.search(pattern, text), f"{page.name} mentions {pattern}"


def test_readme_is_short() -> None:
    # The front door stays short: about 150 lines of prose plus the configs and tables people copy.
    assert len(README.read_text("utf-8").splitlines()) <= 240


def test_readme_ramp_rows_are_rows_of_the_simulated_table() -> None:
    """The README's ramp rows are copied from `simulate --scenario ramps` in docs/rollouts.md, never edited."""
    readme = README.read_text("utf-8")
    section = readme[readme.index("**Guarded rollouts.**") :].split("\n\n**")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "%" in line]
    rollouts = (ROOT / "docs" / "rollouts.md").read_text("utf-8").splitlines()
    assert len(rows) >= 5 and all(row in rollouts for row in rows)


def test_readme_statistics_rows_are_rows_of_the_measured_table() -> None:
    """The README's simulate rows are copied from the command's table in docs/statistics.md, never edited."""
    readme = README.read_text("utf-8")
    section = readme[readme.index("## How well it decides") :]
    rows = [line for line in section.split("\n## ")[0].splitlines() if line.startswith("| ") and "%" in line]
    stats = (ROOT / "docs" / "statistics.md").read_text("utf-8")
    measured = stats[stats.index("## Measured: `guardrail simulate --suite`") :].split("\n## ")[0]
    assert len(rows) >= 10
    assert all(row in measured.splitlines() for row in rows)


def test_readme_copy_paste_configs_load(tmp_path: Path) -> None:
    """Every YAML block of the README's "Sources and backends" loads as a config file, as a user would paste it
    (the SQL files it names copied beside it)."""
    from guardrail.settings import load_settings

    readme = README.read_text("utf-8")
    section = readme[readme.index("## Sources and backends") :].split("\n## ")[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    shutil.copytree(ROOT / "examples" / "sql", tmp_path / "sql")
    repo = tmp_path / "flags-repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "flags.yaml").write_text("flags: {}\n", "utf-8")
    env = {"UNLEASH_API_TOKEN": "t", "GUARDRAIL_SQL_PASSWORD": "p", "FLAG_API_URL": "", "METRICS_API_URL": ""}
    for i, block in enumerate(blocks):
        config = tmp_path / f"config{i}.yaml"
        config.write_text(block.replace("/srv/flags-repo", str(repo)), "utf-8")
        load_settings(config=config, env=env)  # raises GuardrailError naming the field when a block is wrong


def test_readme_exit_codes_match_the_code() -> None:
    rows = re.findall(r"^\| (\d) \| ", README.read_text("utf-8"), re.M)
    assert [int(r) for r in rows] == sorted(int(code) for code in ExitCode)


def test_readme_lists_the_environment_variables() -> None:
    text = README.read_text("utf-8")
    for name in (
        "FLAG_API_URL",
        "FLAG_API_TOKEN",
        "METRICS_API_URL",
        "ALERT_WEBHOOK_URL",
        "GUARDRAIL_STATE",
        "GUARDRAIL_AUDIT",
        "PROMETHEUS_BEARER_TOKEN",
        "GUARDRAIL_DEBUG",
    ):
        assert f"`{name}" in text, name


# ---- the README's first real run, as written ----------------------------------------------------------
def first_run_block() -> list[str]:
    text = README.read_text("utf-8")
    section = text[text.index("## A first real run") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_first_real_run_works_as_written(tmp_path: Path) -> None:
    lines = first_run_block()
    port = str(free_port())
    lines = [line.replace("8181", port) for line in lines]
    server, *rest = lines
    assert server.startswith("python -m guardrail.fakeapi ") and server.endswith("&"), server
    assert rest[-1] == "kill %1"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    # `python` and `guardrail` as a user with the virtualenv activated has them.
    env = clean_env(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    proc = subprocess.Popen(
        shlex.split(server.rstrip("& ")),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"fakeapi listening on http://127.0.0.1:{port}")
        ran: list[tuple[str, int, str]] = []  # (command, exit code, stdout)
        last_check = 0
        for line in rest[:-1]:
            command, _, comment = line.partition("#")
            if command.startswith("export "):
                for assignment in shlex.split(command)[1:]:
                    name, _, value = assignment.partition("=")
                    env[name] = value
                continue
            if command.startswith("curl ") and shutil.which("curl") is None:
                url = shlex.split(command)[-1]
                command = f"python -c \"import urllib.request; print(urllib.request.urlopen('{url}').read().decode())\""
            # `check` takes the clock to the second, and a second run within the same second is the same look
            # (a retried run never counts a breach twice). A person typing is slower than that; so is this test.
            while command.startswith("guardrail check") and int(time.time()) <= last_check:
                time.sleep(0.05)
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
            )
            if command.startswith("guardrail check"):
                last_check = int(time.time())  # the second this run's clock was read in, at the latest
            said = re.search(r"exit (\d)", comment)
            assert result.returncode == (int(said.group(1)) if said else 0), f"{line}\n{result.stdout}\n{result.stderr}"
            ran.append((command, result.returncode, result.stdout))
        # The run documented as exit 1 is the one that halted, and the flag API and webhook show it.
        assert [code for command, code, out in ran if "HALTED: checkout.payments.express-pay" in out] == [1]
        flag = next(json.loads(out) for command, _code, out in ran if "/v1/flags/" in command)
        assert flag["state"] == "DISABLED" and flag["defaultVariant"] == "control"
        alerts = next(json.loads(out) for command, _code, out in ran if "/_control/alerts" in command)
        assert len(alerts) == 1 and "AUTO-HALT" in alerts[0]["text"]
        assert (tmp_path / ".guardrail" / "audit.jsonl").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
