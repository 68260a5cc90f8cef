"""Budgets beyond iterations (issue 19): tokens, wall time, money; each ends the session at a
safe point with its reason."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from loophelpers import KATA, edit, make_config, of_type, run_loop
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core.config import Config, ConfigError, Settings, duration, load_config

pytestmark = pytest.mark.anyio

LOOK = Call("read_file", {"path": "calc.py"})


async def test_the_token_budget_ends_the_session_at_a_safe_point(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    # Each turn reports 100 in + 20 out; after the third, 360 >= 300.
    scripted_openai.add(*[Reply(tool_calls=[LOOK]) for _ in range(10)])
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_tokens=300))
    assert result.status == "failed"
    assert result.reason == "the token budget of 300 is spent (360 tokens used)"
    assert len(scripted_openai.requests) == 3
    warnings = [n.message for n in of_type(events, ev.Notice) if n.level == "warning"]
    assert any("the token budget of 300 is spent" in w for w in warnings)


async def test_the_time_budget_ends_the_session(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    slow = threading.Event()

    def thinking(_body: object) -> Reply:
        slow.wait(4.0)  # a turn longer than the whole budget
        return Reply(tool_calls=[LOOK])

    scripted_openai.add(thinking, *[Reply(tool_calls=[LOOK]) for _ in range(5)])
    config = make_config(repo, scripted_openai.base_url)
    config = type(config)(**{**config.__dict__, "max_time": 3.0})
    with anyio.fail_after(60):
        result, _events = await run_loop(config)
    assert result.status == "failed" and result.reason == "the time budget of 3 s is spent"
    assert len(scripted_openai.requests) <= 1  # (a slow set-up may spend it before any turn)


async def test_the_cost_budget_and_the_cost_in_usage(make_repo, scripted_openai) -> None:
    repo = make_repo(
        {
            **KATA,
            "pyproject.toml": "[tool.codexloop]\nprice_in = 10.0\nprice_out = 50.0\n",
        }
    )
    scripted_openai.add(*[Reply(tool_calls=[LOOK]) for _ in range(10)])
    # A turn: 100 in, 20 out = $0.001 + $0.001 = $0.002; the budget: $0.005 -> three turns.
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_cost=0.005))
    assert result.status == "failed" and "the cost budget of $0.01 is spent" in result.reason
    costs = [u.cost_total for u in of_type(events, ev.Usage)]
    assert costs == pytest.approx([0.002, 0.004, 0.006])


async def test_no_budget_no_cost(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="ok"))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed"
    assert {u.cost_total for u in of_type(events, ev.Usage)} == {None}


def test_budget_settings_are_checked(make_repo) -> None:
    repo = make_repo(KATA)

    def load(**settings: Any) -> Config:
        return load_config(
            Settings(
                targets=("tests/test_calc.py",),
                repo=repo,
                model="m",
                base_url="http://127.0.0.1:9/v1",
                **settings,
            ),
            env={},
            cwd=repo,
        )

    with pytest.raises(ConfigError, match="--max-cost needs the model's prices"):
        load(max_cost=1.0)
    with pytest.raises(ConfigError, match="give seconds, or a duration like 90s"):
        load(max_time="soon")
    assert load(max_time="1h30m").max_time == 5400
    assert duration("90s") == 90 and duration(15) == 15


async def test_with_a_developer_watching_a_spent_budget_waits_and_more_gives_as_much_again(
    make_repo, scripted_openai
) -> None:
    """The app: the loop waits paused at the safe point; more doubles the token budget and the
    turn goes on; at the second spend, finishing ends the session with the reason."""
    from loophelpers import drive_review

    from codexloop.core.loop import Loop

    repo = make_repo(KATA)
    scripted_openai.add(*[Reply(tool_calls=[LOOK]) for _ in range(10)])
    config = make_config(repo, scripted_openai.base_url, max_tokens=300)
    loop = Loop(config, backoff=(0.0,), review=True)
    spent: list[ev.BudgetSpent] = []

    def on_budget(event: ev.BudgetSpent, seen: list[ev.Event]) -> ev.Command:
        spent.append(event)
        return ev.MoreIterations(10) if len(spent) == 1 else ev.Finish()

    result, events = await drive_review(loop, lambda event, seen: ev.Finish(), on_budget)
    assert [b.reason for b in spent] == [
        "the token budget of 300 is spent (360 tokens used)",
        "the token budget of 600 is spent (600 tokens used)",
    ]
    assert result.status == "failed"
    assert result.reason == "the token budget of 600 is spent (600 tokens used)"
    assert len(scripted_openai.requests) == 5  # three turns, more, two more
    states = [e.state for e in events if isinstance(e, ev.StateChanged)]
    assert states.count("paused") == 2
