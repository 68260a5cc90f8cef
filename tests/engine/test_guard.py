"""The regression guard (``--guard CMD|auto``): tests that passed at the baseline must still
pass when the targets are green; tests already failing then never count; the guard's test
files are protected like the exam."""

from __future__ import annotations

import sys

import pytest
from loophelpers import edit, make_config, of_type, run_loop, user_texts
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core.exam import ExamError

pytestmark = pytest.mark.anyio

CALC = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
PROJECT = {
    "calc.py": CALC,
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    "tests/test_other.py": "from calc import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n"
    "\n\ndef test_broken_already():\n    assert False, 'broken before the session'\n",
}
TARGET = "tests/test_calc.py::test_add"
SUB = "tests.test_other::test_sub"
ALREADY = "tests.test_other::test_broken_already"


@pytest.mark.parametrize("guard", ["auto", f"{sys.executable} -m pytest -q tests/test_other.py"])
async def test_a_fix_that_breaks_another_test_is_red_until_that_test_passes_again(
    make_repo, scripted_openai, guard: str
) -> None:
    repo = make_repo(PROJECT)
    scripted_openai.add(
        # "Fixes" add by making every operator a plus: the exam is green, test_sub breaks.
        Reply(
            tool_calls=[Call("write_file", {"path": "calc.py", "content": CALC.replace("-", "+")})]
        ),
        Reply(text="Done."),
        # Tries to weaken the guard's test, then fixes sub.
        Reply(tool_calls=[edit("tests/test_other.py", "== 2", "== 8")]),
        Reply(
            tool_calls=[
                edit(
                    "calc.py",
                    "def sub(a, b):\n    return a + b",
                    "def sub(a, b):\n    return a - b",
                )
            ]
        ),
        Reply(text="sub subtracts again."),
    )
    config = make_config(repo, scripted_openai.base_url, TARGET, guard=guard)
    result, events = await run_loop(config)
    assert result.status == "passed" and result.iterations == 2
    guards = [
        (g.iteration, g.passed, g.broken, g.failing) for g in of_type(events, ev.GuardFinished)
    ]
    failing_at_start = guards[0][3]
    assert ALREADY in failing_at_start and SUB not in failing_at_start
    assert guards[1:] == [(1, False, (SUB,), ()), (2, True, (), ())]
    assert [f.passed for f in of_type(events, ev.IterationFinished)] == [False, True]
    told = user_texts(scripted_openai.requests[2])
    assert "your change broke tests that passed before" in told and SUB in told
    assert ALREADY not in told.split("broke tests that passed before")[1]
    refused = [r for r in of_type(events, ev.ToolResult) if r.refused]
    assert len(refused) == 1 and "regression guard" in tool_text(scripted_openai.requests[3])


def tool_text(request: dict) -> str:
    return "\n".join(str(m.get("content")) for m in request["messages"] if m["role"] == "tool")


async def test_a_guard_that_gives_no_report_is_refused_before_any_model_call(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(PROJECT)
    config = make_config(repo, scripted_openai.base_url, TARGET, guard="true")
    with pytest.RaisesGroup(ExamError, allow_unwrapped=True, flatten_subgroups=True) as caught:
        await run_loop(config)
    assert "the regression guard (true) gave no test report at the start" in str(
        caught.value.exceptions[0] if isinstance(caught.value, ExceptionGroup) else caught.value
    )
    assert scripted_openai.requests == []


BREAKS = {
    "fails": CALC.replace("-", "+"),
    "skips": "import pytest\n\n\ndef add(a, b):\n    return a + b\n\n\n"
    "def sub(a, b):\n    pytest.skip('later')\n",
    "is gone": "def add(a, b):\n    return a + b\n",  # test_other cannot import sub any more
}


@pytest.mark.parametrize("how", sorted(BREAKS))
async def test_a_guarded_test_that_fails_skips_or_is_gone_is_broken(
    make_repo, scripted_openai, how: str
) -> None:
    repo = make_repo(PROJECT)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": BREAKS[how]})]),
        Reply(text="Done."),
    )
    config = make_config(repo, scripted_openai.base_url, TARGET, guard="auto", max_iterations=1)
    result, events = await run_loop(config)
    assert result.status == "failed"
    assert [f.passed for f in of_type(events, ev.TestFinished)] == [False, True]  # exam green
    last = of_type(events, ev.GuardFinished)[-1]
    assert last.iteration == 1 and not last.passed and SUB in last.broken
    assert ALREADY not in last.broken
