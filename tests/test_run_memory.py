"""What keeps a 10,000-flag run small (docs/performance.md): no repr of the run's result at asyncio.run's end,
flag lines worked out only when a flag has a problem, and the text report written line by line."""

from __future__ import annotations

import asyncio

from guardrail import files
from guardrail.check import run_returning
from guardrail.config import parse_flags


class LoudRepr:
    reprs = 0

    def __repr__(self) -> str:
        LoudRepr.reprs += 1
        return "LoudRepr()"


def test_the_runs_result_is_never_repr_d() -> None:
    async def work() -> LoudRepr:
        await asyncio.sleep(0)
        return LoudRepr()

    LoudRepr.reprs = 0
    assert isinstance(run_returning(work()), LoudRepr)
    assert LoudRepr.reprs == 0  # asyncio.run(work()) itself builds it twice on Python 3.11 (CPython #112559)


def test_flag_lines_are_read_only_for_a_flag_with_a_problem() -> None:
    text = "flags:\n  good:\n    state: ENABLED\n  bad:\n    state: 7\n"
    lines = files.LazyLines(text)
    parsed = parse_flags({"good": {"state": "DISABLED", "variants": {"on": True}, "defaultVariant": "on"}}, lines=lines)
    assert parsed.problems == () and lines._text is not None  # nothing to report: the file was not walked
    bad = parse_flags({"bad": {"state": 7}}, source="flags.yaml", lines=lines)
    assert [p.line for p in bad.problems] == [4] * len(bad.problems) and bad.problems
    assert dict(lines) == {"good": 2, "bad": 4} and len(lines) == 2
