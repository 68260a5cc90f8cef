"""Review feedback: a rejected hunk is reverted in the sandbox, told to the model, and the loop goes on."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_git
from loophelpers import drive_review, edit, make_config, user_texts
from scripted_openai import Reply

from codexloop.core import events as ev
from codexloop.core.diff import changes
from codexloop.core.loop import Loop

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
    scripted_openai.add(Reply(text="I give up."))
    loop = Loop(
        make_config(repo, scripted_openai.base_url, max_iterations=1), backoff=(0.0,), review=True
    )
    result, seen = await drive_review(loop, lambda event, seen: ev.Finish())
    assert result.status == "failed" and result.reason == "not green after 1 iteration"
    assert [type(e) for e in seen if isinstance(e, ev.BudgetSpent)] == [ev.BudgetSpent]
