"""The exam stays the developer's: edited mid-loop, it is what the next run uses."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_git
from loophelpers import (
    KATA,
    TEST_CALC,
    edit,
    event_channel_run,
    make_config,
    of_type,
    run_loop,
    user_texts,
)
from scripted_openai import Call, Reply

from codexloop.core import events as ev

pytestmark = pytest.mark.anyio

TIGHTER = TEST_CALC + "    assert add(1, 1) == 2\n"


async def test_an_exam_tightened_during_the_model_stream_is_what_the_next_run_uses(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)

    def cheat_while_the_developer_tightens(request: dict[str, Any]) -> Reply:
        (repo / "tests" / "test_calc.py").write_text(TIGHTER)  # in the developer's own checkout
        return Reply(tool_calls=[edit("calc.py", "return a - b", "return 5")])

    scripted_openai.add(
        cheat_while_the_developer_tightens,
        Reply(text="Returns 5 as the test wants."),
        Reply(tool_calls=[edit("calc.py", "return 5", "return a + b")]),
        Reply(text="Real addition now."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))

    # With the old exam, `return 5` would have been green; the new exam made it red.
    assert [f.passed for f in of_type(events, ev.TestFinished)] == [False, False, True]
    assert result.status == "passed" and result.iterations == 2
    changed = of_type(events, ev.ExamChanged)
    assert len(changed) == 1 and changed[0].paths == ("tests/test_calc.py",)
    assert "+    assert add(1, 1) == 2" in changed[0].diff
    assert of_type(events, ev.ExamRestored) == []  # the developer's edit is no attempt of the model
    # The model heard of it in its next request, with the change itself.
    told = user_texts(scripted_openai.requests[2])
    assert "The developer changed the exam" in told and "add(1, 1) == 2" in told
    # The preview branch records the exam the developer wrote; their edit stays theirs.
    assert run_git(repo, "show", f"{result.branch}:tests/test_calc.py") == TIGHTER
    assert (repo / "tests" / "test_calc.py").read_text() == TIGHTER


async def test_an_untouched_exam_sends_no_change_note(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="try"),
        Reply(tool_calls=[edit("calc.py", "a * b", "a + b")]),
        Reply(text="fixed"),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed"
    assert of_type(events, ev.ExamChanged) == []
    assert all("changed the exam" not in user_texts(r) for r in scripted_openai.requests)


async def test_a_target_added_mid_loop_is_protected_run_and_shown_to_the_model(
    make_repo, scripted_openai
) -> None:
    from codexloop.core.config import resolve_targets
    from codexloop.core.loop import Loop, event_channel

    sub = "from calc import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n"
    repo = make_repo({**KATA, "tests/test_sub.py": sub})
    targets, files = resolve_targets(
        repo, repo, ("tests/test_calc.py::test_add", "tests/test_sub.py::test_sub")
    )
    commands_send, commands_receive = event_channel()

    def add_a_target_while_the_model_works(request: dict[str, Any]) -> Reply:
        commands_send.send_nowait(ev.SetTargets(targets, files))
        return Reply(tool_calls=[edit("calc.py", "a - b", "a + b")])

    scripted_openai.add(
        add_a_target_while_the_model_works,
        Reply(text="add fixed"),
        Reply(
            tool_calls=[
                Call(
                    "write_file", {"path": "tests/test_sub.py", "content": "def test_sub(): pass\n"}
                )
            ]
        ),
        Reply(
            tool_calls=[
                Call(
                    "write_file",
                    {
                        "path": "calc.py",
                        "content": KATA["calc.py"].replace("a - b", "a + b")
                        + "\n\ndef sub(a, b):\n    return a - b\n",
                    },
                )
            ]
        ),
        Reply(text="sub added"),
    )
    loop = Loop(make_config(repo, scripted_openai.base_url), backoff=(0.0,))
    result, events = await event_channel_run(loop, commands_receive)
    assert result.status == "passed" and result.iterations == 2
    changed = of_type(events, ev.TargetsChanged)
    assert (
        changed
        and changed[0].targets == targets
        and "tests/test_sub.py::test_sub" in changed[0].test_command
    )
    # Iteration 1 fixed add but not sub: red, because sub is now part of the exam.
    assert [f.passed for f in of_type(events, ev.TestFinished)] == [False, False, True]
    assert [r.refused for r in of_type(events, ev.ToolResult)] == [False, True, False]
    assert "def test_sub" in user_texts(scripted_openai.requests[2])
