"""Start-up stays cheap: cron starts `guardrail` every two minutes, and `--help` should answer at once.

Not a timing test (timings belong to benchmarks/run.py): it checks which heavy modules get imported, in a
fresh interpreter, so a top-level `import rich` or `import httpx` slipped into cli.py fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Imported only by the commands that use them (cli.py imports inside each command).
HEAVY = ("rich", "jsonschema", "numpy", "scipy", "httpx", "httpcore", "anyio", "yaml", "ruamel")

RUN_CLI = """
import sys
sys.argv = ["guardrail", *ARGV]
from guardrail.cli import main
main()
"""


def modules_after(code: str) -> set[str]:
    """Every module loaded by `code` in a fresh interpreter, however it ends (typer exits)."""
    probe = (
        "import json, sys\n"
        f"try:\n    exec({code!r})\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    modules: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return set(modules)


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_importing_the_cli_imports_nothing_heavy() -> None:
    modules = modules_after("import guardrail.cli")
    assert "guardrail.cli" in modules
    assert heavy(modules) == []


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    modules = modules_after(RUN_CLI.replace("ARGV", repr(argv)))
    assert "guardrail.cli" in modules
    assert heavy(modules) == []
    assert "rich.table" not in modules  # typer may render help with rich; rich_markup_mode=None avoids it


def test_the_probe_sees_a_heavy_import() -> None:
    """The checks above are worth something only if an import a command makes does show up."""
    assert "httpx" in heavy(modules_after("import guardrail.check"))
