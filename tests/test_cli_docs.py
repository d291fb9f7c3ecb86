"""Every command and option is documented, the README names every command, and the package installs
the ways the README says: `python -m guardrail`, the console script, a wheel for `pipx install .`."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from guardrail import __version__
from guardrail.cli import app

ROOT = Path(__file__).resolve().parent.parent


def root_command() -> Any:
    # typer >= 0.16 vendors click (typer._click), so the objects are handled by their attributes.
    group: Any = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return group


def commands() -> dict[str, Any]:
    return dict(root_command().commands)


def param_help(param: Any) -> str | None:
    # An option has .help; typer's TyperArgument carries one too (a bare click Argument has none).
    help_text: Any = getattr(param, "help", None)
    return help_text if isinstance(help_text, str) else None


def test_there_are_commands() -> None:
    assert {"check", "validate", "demo", "status", "resume"} <= set(commands())


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_and_option_has_help(name: str) -> None:
    command = commands()[name]
    assert (command.help or "").strip(), f"`guardrail {name}` has no help text"
    for param in command.params:
        if param.name == "help":
            continue
        assert (param_help(param) or "").strip(), f"`guardrail {name}`: {param.opts} has no help text"


def test_root_options_have_help() -> None:
    group = root_command()
    assert (group.help or "").strip()
    for param in group.params:
        assert (param_help(param) or "").strip(), f"{param.opts} has no help text"


@pytest.mark.parametrize("name", sorted(commands()))
def test_help_renders(name: str) -> None:
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_readme_commands_table_lists_every_command() -> None:
    text = (ROOT / "README.md").read_text("utf-8")
    listed = re.findall(r"^\| `guardrail ([a-z-]+)", text, re.M)
    assert sorted(listed) == sorted(commands()), "the README's Commands table and the CLI disagree"


def test_python_dash_m_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "guardrail", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"guardrail {__version__}"


def test_console_script_version() -> None:
    script = Path(sys.executable).parent / "guardrail"
    if not script.exists():
        pytest.skip("guardrail is not installed as a console script in this environment")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"guardrail {__version__}"


def test_pyproject_version_matches_package() -> None:
    # tomllib is 3.11+, and the project supports 3.10: two exact lines are enough here.
    text = (ROOT / "pyproject.toml").read_text()
    assert f'\nversion = "{__version__}"\n' in text
    assert '\nguardrail = "guardrail.cli:main"\n' in text


def test_wheel_builds_with_package_data(tmp_path: Path) -> None:
    """What `pipx install .` does first: build a wheel. Built from a copy so the shared tree gets no build/."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "guardrail", src / "guardrail", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0 and "No matching distribution" in result.stderr:
        pytest.skip("no package index to fetch the build backend from")
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("guardrail-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "guardrail/schemas/guardrail.schema.json" in names
    assert "guardrail/demo/flags.yaml" in names and "guardrail/demo/sql/error_rate.sql" in names
    assert "guardrail/py.typed" in names and "guardrail/__main__.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "guardrail = guardrail.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
