"""Attempts racing (issue 17): N loops from one snapshot, the exam picks the winner.

Each attempt names its own model (``--model a1,a2``), so the scripted server answers each
attempt from its own script, whatever order their requests arrive in.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import anyio
import pytest
from conftest import run_git
from loophelpers import KATA, edit, event_channel_run, make_config, of_type
from scripted_openai import Reply

from codexloop.core import events as ev
from codexloop.core import gitops
from codexloop.core.loop import event_channel
from codexloop.core.race import Race
from codexloop.core.trace import traces_dir

pytestmark = pytest.mark.anyio

FIX = edit("calc.py", "a - b", "a + b")
WRONG = edit("calc.py", "a - b", "a * b")


def race(repo: Any, url: str, models: str, **overrides: Any) -> Race:
    return Race(make_config(repo, url, model=models, **overrides), backoff=(0.0,))


async def test_the_first_green_wins_and_the_others_stop(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()  # attempt 1 thinks until it is stopped
    scripted_openai.add_for("m1", Reply(text="Let me think…", hold=hold))
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2)
    try:
        with anyio.fail_after(60):
            result, events = await event_channel_run(contest)
    finally:
        hold.set()
    assert result.status == "passed" and result.branch.endswith("/a2")
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert finished[2].status == "passed" and finished[1].status == "stopped"
    assert "attempt 2 went green first" in finished[1].reason
    [winner] = of_type(events, ev.Winner)
    assert (winner.attempt, winner.branch) == (2, result.branch)
    last = events[-1]
    assert isinstance(last, ev.LoopFinished) and last.branch == result.branch
    assert [e for e in events if isinstance(e, ev.LoopFinished)] == [last]  # one, the session's
    # Every event names its attempt; each attempt started with its own model and branch.
    started = {e.attempt: e for e in of_type(events, ev.LoopStarted)}
    assert (started[1].model, started[2].model) == ("m1", "m2")
    assert started[1].branch.endswith("/a1") and started[1].base == started[2].base
    assert {e.attempt for e in events if isinstance(e, ev.ModelText)} <= {1, 2}
    # One baseline run for both (same snapshot, same exam); each attempt shows it as its own.
    baselines = [e for e in of_type(events, ev.TestFinished) if e.iteration == 0]
    assert sorted(e.attempt for e in baselines) == [1, 2]
    assert [e.duration_s > 0 for e in baselines].count(True) == 1
    # The spend: per attempt, and the session's running total (attempt 0) after each.
    usage = of_type(events, ev.Usage)
    per_attempt = {u.attempt: u.input_total for u in usage if u.attempt}
    totals = [u for u in usage if u.attempt == 0]
    assert totals and totals[-1].input_total == sum(per_attempt.values())
    # The winner's branch holds the fix; the stopped attempt recorded nothing and is gone.
    assert "a + b" in run_git(repo, "show", f"{result.branch}:calc.py")
    branches = run_git(repo, "branch", "--list", "codexloop/*")
    assert result.branch in branches and started[1].branch not in branches


async def test_all_red_ends_red_and_keeps_every_branch(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    for model in ("m1", "m2"):
        scripted_openai.add_for(model, Reply(tool_calls=[WRONG]), Reply(text="Done."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, max_iterations=1)
    with anyio.fail_after(60):
        result, events = await event_channel_run(contest)
    assert result.status == "failed" and of_type(events, ev.Winner) == []
    finished = of_type(events, ev.AttemptFinished)
    assert sorted(e.attempt for e in finished) == [1, 2]
    assert all(e.status == "failed" for e in finished)
    last = events[-1]
    assert isinstance(last, ev.LoopFinished) and last.status == "failed" and last.attempt == 0
    assert "no attempt went green" in last.reason
    branches = run_git(repo, "branch", "--list", "codexloop/*")
    assert all(e.branch in branches for e in finished)


async def test_best_picks_the_smaller_diff(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    noisy = edit(
        "calc.py", "def add(a, b):\n    return a - b", "def add(a, b):\n    # sum\n    return a + b"
    )
    scripted_openai.add_for("m1", Reply(tool_calls=[noisy]), Reply(text="Fixed, with a comment."))
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, pick="best")
    with anyio.fail_after(60):
        result, events = await event_channel_run(contest)
    assert result.status == "passed" and result.branch.endswith("/a2")
    finished = of_type(events, ev.AttemptFinished)
    assert sorted((e.attempt, e.status) for e in finished) == [(1, "passed"), (2, "passed")]
    [winner] = of_type(events, ev.Winner)
    assert winner.attempt == 2 and "smallest change" in winner.why
    # Both greens keep their branches; the index names the winner.
    index = json.loads((traces_dir() / contest.name / "index.json").read_text())
    assert index["winner"] == 2 and [a["status"] for a in index["attempts"]] == ["passed"] * 2


async def test_a_crashing_attempt_does_not_end_the_race(
    make_repo, scripted_openai, monkeypatch
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2)
    broken = contest.loops[0]

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(broken, "_iterate", crash)
    with anyio.fail_after(60):
        result, events = await event_channel_run(contest)
    assert result.status == "passed" and result.branch.endswith("/a2")
    [failed] = [e for e in of_type(events, ev.AttemptFinished) if e.attempt == 1]
    assert failed.status == "failed" and "a bug of ours" in failed.reason


async def test_steering_reaches_every_attempt_or_one(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    holds = {m: threading.Event() for m in ("m1", "m2")}
    for model in ("m1", "m2"):
        scripted_openai.add_for(
            model,
            Reply(text="Reading…", hold=holds[model]),
            Reply(tool_calls=[WRONG]),
            Reply(text="Done."),
        )
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, max_iterations=2)
    send, receive = event_channel()
    commands, inbox = event_channel()
    seen: list[ev.Event] = []

    async def watch() -> None:
        async with receive:
            async for event in receive:
                seen.append(event)
                turns = [e for e in seen if isinstance(e, ev.ModelTurnStarted)]
                if isinstance(event, ev.ModelTurnStarted) and len(turns) == 2:
                    await commands.send(ev.Steer("to everyone"))
                    await commands.send(ev.Steer("to the second only", attempt=2))
                    for hold in holds.values():
                        hold.set()

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                async with send:
                    await contest.run(send, inbox)
    finally:
        for hold in holds.values():
            hold.set()
    steered = {(e.attempt, e.text) for e in of_type(seen, ev.UserMessage)}
    assert steered == {(1, "to everyone"), (2, "to everyone"), (2, "to the second only")}


async def test_an_exam_that_can_never_pass_ends_the_race_before_any_model_call(
    make_repo, scripted_openai
) -> None:
    from codexloop.core.exam import ExamError

    repo = make_repo(KATA)
    config = make_config(
        repo, scripted_openai.base_url, "tests/test_calc.py::test_ad", model="m1,m2", attempts=2
    )
    contest = Race(config, backoff=(0.0,))
    with (
        anyio.fail_after(60),
        pytest.RaisesGroup(ExamError, allow_unwrapped=True, flatten_subgroups=True) as caught,
    ):
        await event_channel_run(contest)
    assert "collects no test" in str(caught.value.exceptions[0])
    assert scripted_openai.requests == []


async def test_the_sessions_cost_total_sums_every_attempts(make_repo, scripted_openai) -> None:
    """With prices set, each attempt's usage carries its own cost; the session's usage
    (attempt 0) carries every attempt's together."""
    prices = "[tool.codexloop]\nprice_in = 1.0\nprice_out = 2.0\n"
    repo = make_repo({**KATA, "pyproject.toml": prices})
    for model in ("m1", "m2"):
        scripted_openai.add_for(model, Reply(tool_calls=[WRONG]), Reply(text="Done."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, max_iterations=1)
    with anyio.fail_after(60):
        _, events = await event_channel_run(contest)
    usage = of_type(events, ev.Usage)
    last_cost = {u.attempt: u.cost_total for u in usage}
    assert last_cost[1] is not None and last_cost[2] is not None
    assert last_cost[0] == pytest.approx(last_cost[1] + last_cost[2])


async def test_a_big_untracked_file_left_out_is_said_once_for_the_race(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    with (repo / "dump.bin").open("wb") as handle:  # sparse: no real 50 MB written
        handle.truncate(gitops.MAX_UNTRACKED_BYTES + 1)
    for model in ("m1", "m2"):
        scripted_openai.add_for(model, Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, pick="best")
    with anyio.fail_after(60):
        result, events = await event_channel_run(contest)
    assert result.status == "passed"
    [note] = [n for n in of_type(events, ev.Notice) if "left out of the sandbox" in n.message]
    assert note.attempt == 0 and "dump.bin" in note.message
