"""The grep tool's one line for people: a counted noun ("1 match", "2 matches"), and the notes
it adds to what the model reads ("[stopped at ...]") are not counted as matches."""

from __future__ import annotations

import json

import pytest
from loophelpers import KATA

from codexloop.core.exam import Exam
from codexloop.core.process import RunResult
from codexloop.core.tools import MAX_GREP, Tools

pytestmark = pytest.mark.anyio


@pytest.fixture
def tools(make_repo) -> Tools:
    many = "".join(f"needle {n}\n" for n in range(MAX_GREP + 5))
    repo = make_repo({**KATA, "pair.py": "x = 1\nx = 2\n", "hay.txt": many})

    async def run_command(command: str) -> RunResult:
        raise AssertionError(command)

    return Tools(repo, Exam(repo, "HEAD", ("tests/test_calc.py",)), run_command)


async def _grep(tools: Tools, pattern: str):
    return await tools.execute("grep", json.dumps({"pattern": pattern}))


async def test_one_match_is_singular(tools: Tools) -> None:
    outcome = await _grep(tools, r"return a - b")
    assert outcome.ok and outcome.content == "calc.py:2:     return a - b"
    assert outcome.summary == "1 match for /return a - b/"


async def test_two_matches_are_plural(tools: Tools) -> None:
    outcome = await _grep(tools, r"^x = ")
    assert outcome.summary == "2 matches for /^x = /"


async def test_no_match(tools: Tools) -> None:
    outcome = await _grep(tools, r"nowhere to be found")
    assert outcome.content == "no matches"
    assert outcome.summary == "0 matches for /nowhere to be found/"


async def test_the_stop_note_is_not_a_match(tools: Tools) -> None:
    outcome = await _grep(tools, r"^needle")
    assert outcome.content.endswith(f"[stopped at {MAX_GREP} matches]")
    assert outcome.summary == f"{MAX_GREP} matches for /^needle/"
