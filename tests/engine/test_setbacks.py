"""Setbacks (issue 21, seen with a 1.5B model): a change after which fewer target tests even
run is undone, and the model hears what its change caused and what was put back."""

from __future__ import annotations

import pytest
from conftest import run_git
from loophelpers import KATA, edit, make_config, of_type, run_loop, user_texts
from scripted_openai import Call, Reply

from codexloop.core import events as ev

pytestmark = pytest.mark.anyio

WRECK = Call("write_file", {"path": "calc.py", "content": KATA["tests/test_calc.py"]})


async def test_a_change_that_stops_the_tests_running_is_undone(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[WRECK]),  # the test's text over the module: nothing can import
        Reply(text="Done."),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),  # needs the module back
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "passed" and result.iterations == 2
    [notice] = [n for n in of_type(events, ev.Notice) if "stopped the target tests" in n.message]
    assert "(0 ran, 1 before): calc.py put back as they were at the start" in notice.message
    told = user_texts(scripted_openai.requests[2])
    assert "Your change stopped the target tests from running (0 ran, 1 before it)" in told
    assert "The engine put calc.py back as they were at the start" in told
    assert run_git(repo, "show", f"{result.branch}:calc.py") == KATA["calc.py"].replace(
        "a - b", "a + b"
    )


async def test_a_red_run_that_still_runs_the_tests_is_kept(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]),  # red, but the test ran
        Reply(text="Done."),
        Reply(tool_calls=[edit("calc.py", "a * b", "a + b")]),  # builds on it
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "passed" and result.iterations == 2
    assert not [n for n in of_type(events, ev.Notice) if "stopped the target tests" in n.message]


async def test_a_missing_function_is_no_setback_from_an_import_error(
    make_repo, scripted_openai
) -> None:
    """The baseline itself cannot import what the test needs: nothing runs, so a change
    that still does not run the test is not behind it."""
    repo = make_repo({**KATA, "calc.py": "def sub(a, b):\n    return a - b\n"})
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "def sub", "def subtract")]),
        Reply(text="Done."),
        Reply(text="Still thinking."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "failed"
    assert not [n for n in of_type(events, ev.Notice) if "stopped the target tests" in n.message]
    assert "def subtract" in run_git(repo, "show", f"{result.branch}:calc.py")
