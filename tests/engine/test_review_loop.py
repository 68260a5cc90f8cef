"""Review feedback: a rejected hunk is reverted in the sandbox, told to the model, and the loop goes on."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from conftest import run_git
from loophelpers import drive_review, edit, make_config, user_texts
from scripted_openai import Reply

from codexloop.core import events as ev
from codexloop.core.diff import changes
from codexloop.core.loop import Loop, event_channel

pytestmark = pytest.mark.anyio

CALC = (
    "def add(a, b):\n    return a - b\n"
    + "".join(f"\n\n# padding {i}\n" for i in range(6))
    + "\n\nVERSION = 1\n"
)
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


async def test_a_rejected_hunk_with_a_comment_goes_back_and_the_loop_continues(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({"calc.py": CALC, "tests/test_calc.py": TEST})
    told: dict[str, str] = {}

    def after_feedback(request: dict[str, Any]) -> Reply:
        told["text"] = user_texts(request)
        return Reply(text="Understood, VERSION stays.")

    scripted_openai.add(
        Reply(
            tool_calls=[
                edit("calc.py", "a - b", "a + b"),
                edit("calc.py", "VERSION = 1", "VERSION = 2"),
            ]
        ),
        Reply(text="Fixed, and bumped the version."),
        after_feedback,
    )
    loop = Loop(make_config(repo, scripted_openai.base_url), backoff=(0.0,), review=True)
    reviews = 0

    def review(event: ev.ReviewReady, seen: list[ev.Event]) -> ev.Command:
        nonlocal reviews
        reviews += 1
        if reviews > 1:
            return ev.Finish()
        assert loop.sandbox is not None
        [change] = changes(repo, loop.sandbox.base, event.commit or "HEAD")
        bump = next(h for h in change.hunks if "+VERSION = 2" in h.lines)
        return ev.Feedback((ev.Rejection("calc.py", bump, "do not touch VERSION"),))

    result, events = await drive_review(loop, review)
    assert result.status == "passed" and reviews == 2
    assert "do not touch VERSION" in told["text"] and "+VERSION = 2" in told["text"]
    assert "It has been reverted in the sandbox." in told["text"]
    final = run_git(repo, "show", f"{result.branch}:calc.py")
    assert "return a + b" in final and "VERSION = 1" in final and "VERSION = 2" not in final
    assert [e.paths for e in events if isinstance(e, ev.HunksReverted)] == [("calc.py",)]
    assert sum(isinstance(e, ev.TestFinished) for e in events) == 3  # baseline, green, green again


async def test_finishing_the_review_ends_the_session_green(make_repo, scripted_openai) -> None:
    repo = make_repo({"calc.py": CALC, "tests/test_calc.py": TEST})
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="fixed"),
    )
    loop = Loop(make_config(repo, scripted_openai.base_url), backoff=(0.0,), review=True)
    result, events = await drive_review(loop, lambda event, seen: ev.Finish())
    assert result.status == "passed" and result.iterations == 1
    assert isinstance(events[-1], ev.LoopFinished) and events[-1].status == "passed"


async def test_a_spent_budget_waits_and_more_iterations_keep_the_conversation(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({"calc.py": CALC, "tests/test_calc.py": TEST})
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="Multiplying."),
        Reply(tool_calls=[edit("calc.py", "a * b", "a + b")]),
        Reply(text="Adding."),
    )
    config = make_config(repo, scripted_openai.base_url, max_iterations=1)
    loop = Loop(config, backoff=(0.0,), review=True)
    budgets: list[ev.BudgetSpent] = []

    def more(event: ev.BudgetSpent, seen: list[ev.Event]) -> ev.Command:
        budgets.append(event)
        return ev.MoreIterations(2)

    result, seen = await drive_review(loop, lambda event, seen: ev.Finish(), more)
    assert result.status == "passed" and result.iterations == 2
    assert [b.iterations for b in budgets] == [1]
    # The same conversation went on: the third request still holds the first turn's edit.
    assert "a * b" in str(scripted_openai.requests[2]["messages"])


async def test_finishing_at_a_spent_budget_ends_red(make_repo, scripted_openai) -> None:
    repo = make_repo({"calc.py": CALC, "tests/test_calc.py": TEST})
    # A first answer that changes nothing is asked once more; the second ends the turn.
    scripted_openai.add(Reply(text="I give up."), Reply(text="I still give up."))
    loop = Loop(
        make_config(repo, scripted_openai.base_url, max_iterations=1), backoff=(0.0,), review=True
    )
    result, seen = await drive_review(loop, lambda event, seen: ev.Finish())
    assert result.status == "failed" and result.reason == "not green after 1 iteration"
    assert [type(e) for e in seen if isinstance(e, ev.BudgetSpent)] == [ev.BudgetSpent]


async def test_the_loop_applies_a_reviews_accepted_hunks_and_records_it(
    make_repo, scripted_openai
) -> None:
    """Issue 15: the front end sends the accepted hunks; the engine applies them (three-way)
    and answers with ``applied``, which the trace records, before the session ends."""
    repo = make_repo({"calc.py": CALC, "tests/test_calc.py": TEST})
    scripted_openai.add(
        Reply(
            tool_calls=[
                edit("calc.py", "a - b", "a + b"),
                edit("calc.py", "VERSION = 1", "VERSION = 2"),
            ]
        ),
        Reply(text="Fixed, and bumped the version."),
    )
    loop = Loop(make_config(repo, scripted_openai.base_url), backoff=(0.0,), review=True)
    send, receive = event_channel()
    commands, commands_receive = event_channel()
    seen: list[ev.Event] = []

    async def developer() -> None:
        async with receive:
            async for event in receive:
                seen.append(event)
                if isinstance(event, ev.ReviewReady):
                    assert loop.sandbox is not None and event.commit is not None
                    [change] = changes(repo, loop.sandbox.base, event.commit)
                    fix = next(h for h in change.hunks if "+    return a + b" in h.lines)
                    await commands.send(ev.Apply(event.commit, (("calc.py", fix.index),)))
                elif isinstance(event, ev.Applied):
                    await commands.send(ev.Finish())

    with anyio.fail_after(120):  # no answer to the Apply would leave the loop waiting
        async with anyio.create_task_group() as tg:
            tg.start_soon(developer)
            async with send:
                result = await loop.run(send, commands_receive)

    assert result.status == "passed"
    text = (repo / "calc.py").read_text()
    assert "return a + b" in text and "VERSION = 1" in text  # the accepted hunk only
    [applied] = [e for e in seen if isinstance(e, ev.Applied)]
    assert applied.ok and applied.written == ("calc.py",)
    assert seen.index(applied) < len(seen) - 1 and isinstance(seen[-1], ev.LoopFinished)
    assert result.trace is not None
    kinds = [json.loads(line)["type"] for line in result.trace.read_text().splitlines()]
    assert "applied" in kinds and kinds.index("applied") < kinds.index("loop_finished")


async def test_an_apply_that_conflicts_writes_nothing_and_says_so(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({"calc.py": CALC, "tests/test_calc.py": TEST})
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    loop = Loop(make_config(repo, scripted_openai.base_url), backoff=(0.0,), review=True)
    send, receive = event_channel()
    commands, commands_receive = event_channel()
    seen: list[ev.Event] = []
    mine = CALC.replace("a - b", "a * b  # mine")

    async def developer() -> None:
        async with receive:
            async for event in receive:
                seen.append(event)
                if isinstance(event, ev.ReviewReady):
                    assert event.commit is not None
                    (repo / "calc.py").write_text(mine)  # the developer's own edit, meanwhile
                    await commands.send(ev.Apply(event.commit, (("calc.py", 0),)))
                elif isinstance(event, ev.Applied):
                    await commands.send(ev.Finish())

    with anyio.fail_after(120):  # no answer to the Apply would leave the loop waiting
        async with anyio.create_task_group() as tg:
            tg.start_soon(developer)
            async with send:
                await loop.run(send, commands_receive)

    [applied] = [e for e in seen if isinstance(e, ev.Applied)]
    assert not applied.ok and applied.conflicts and applied.conflicts[0].startswith("calc.py")
    assert (repo / "calc.py").read_text() == mine
