"""Attempts as Ray actors (issue 18): a real local cluster (``ray_cluster``, one per test
process), the scripted model server on 127.0.0.1 reached from the actors, real repositories."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import run_git
from loophelpers import (
    KATA,
    Send,
    drive,
    edit,
    event_channel_run,
    make_config,
    of_type,
    run_cli,
    user_texts,
)
from scripted_openai import Reply

from codexloop.core import events as ev
from codexloop.core import ray_executor
from codexloop.core.executor import new_session
from codexloop.core.loop import Loop
from codexloop.core.race import Race
from codexloop.core.trace import traces_dir

pytestmark = [pytest.mark.anyio, pytest.mark.ray, pytest.mark.xdist_group("ray")]

FIX = edit("calc.py", "a - b", "a + b")
WRONG = edit("calc.py", "a - b", "a * b")
# What differs between two runs of one script for reasons of timing, not of order.
UNTIMED = (ev.TestOutput, ev.Notice)


def kept_bundles(repo: Path) -> list[Any]:
    """The snapshot bundles this process keeps in the object store for ``repo``."""
    return [
        ref
        for (kept_repo, _snapshot), ref in ray_executor._bundles.items()
        if kept_repo == str(repo)
    ]


def on_ray(repo: Any, url: str, models: str = "scripted-model", **overrides: Any) -> Any:
    config = make_config(repo, url, model=models, ray="auto", **overrides)
    return new_session(config, backoff=(0.0,))


async def test_two_attempts_race_on_ray_and_the_winner_comes_home(
    ray_cluster, make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("m1", Reply(tool_calls=[WRONG]), Reply(text="Done."))
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = on_ray(repo, scripted_openai.base_url, "m1,m2", attempts=2, pick="best")
    contest.config = dataclasses.replace(contest.config, max_iterations=1)
    for loop in contest.loops:
        loop.config = dataclasses.replace(loop.config, max_iterations=1)
    with anyio.fail_after(120):
        result, events = await event_channel_run(contest)
    assert result.status == "passed" and result.branch.endswith("/a2")
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert (finished[1].status, finished[2].status) == ("failed", "passed")
    [winner] = of_type(events, ev.Winner)
    assert winner.attempt == 2 and winner.branch == result.branch
    # The winner's branch is in the developer's repository, with the fix, on top of the
    # snapshot; a local worktree holds it (what the review and --accept read).
    assert "a + b" in run_git(repo, "show", f"{result.branch}:calc.py")
    started = {e.attempt: e for e in of_type(events, ev.LoopStarted)}
    assert run_git(repo, "merge-base", "--is-ancestor", started[2].base, result.branch) == ""
    assert (result.worktree / "calc.py").read_text().count("a + b") == 1
    # The loser's branch came home too (it recorded its wrong try): kept for reference.
    assert "a * b" in run_git(repo, "show", f"{finished[1].branch}:calc.py")
    # Each attempt's trace came back; the index lists both.
    index = json.loads((traces_dir() / contest.name / "index.json").read_text())
    assert [a["status"] for a in index["attempts"]] == ["failed", "passed"]
    traces = [Path(a["trace"]) for a in index["attempts"]]
    assert all("loop_started" in trace.read_text() for trace in traces)
    # Both attempts are over: the snapshot's bundle is no longer kept in the object store.
    assert kept_bundles(repo) == []


async def test_events_come_back_in_the_order_a_local_loop_emits_them(
    ray_cluster, make_repo, scripted_openai
) -> None:
    def script() -> None:
        scripted_openai.add(Reply(text="Reading."), Reply(tool_calls=[FIX]), Reply(text="Ok."))

    def story(events: list[ev.Event]) -> list[tuple[str, Any]]:
        return [
            (e.type, getattr(e, "iteration", getattr(e, "state", None)))
            for e in events
            if not isinstance(e, UNTIMED)
        ]

    repo = make_repo(KATA)
    script()
    local = Loop(make_config(repo, scripted_openai.base_url), backoff=(0.0,))
    with anyio.fail_after(60):
        here, local_events = await event_channel_run(local)
    script()
    remote = on_ray(repo, scripted_openai.base_url)
    with anyio.fail_after(120):
        there, remote_events = await event_channel_run(remote)
    assert (here.status, there.status) == ("passed", "passed"), (here.reason, there.reason)
    assert story(remote_events) == story(local_events)
    assert len(of_type(remote_events, ev.ModelText)) == len(of_type(local_events, ev.ModelText))
    finished: ev.LoopFinished
    [finished] = of_type(remote_events, ev.LoopFinished)
    assert finished is remote_events[-1] and finished.worktree == str(there.worktree)


async def test_pause_steer_and_resume_reach_the_actor(
    ray_cluster, make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(
        Reply(text="Reading the code…", hold=hold), Reply(tool_calls=[FIX]), Reply(text="Fixed.")
    )
    remote = on_ray(repo, scripted_openai.base_url)
    paused_seen = anyio.Event()

    async def react(event: ev.Event, send: Send) -> None:
        if isinstance(event, ev.ModelTurnStarted) and not hold.is_set():
            await send(ev.Pause())
            await send(ev.Steer("STEER-42: the plus sign"))
            hold.set()
        elif isinstance(event, ev.StateChanged) and event.state == "paused":
            paused_seen.set()
            await send(ev.Resume())

    try:
        with anyio.fail_after(120):
            result, events = await drive(remote, react)
    finally:
        hold.set()
    assert paused_seen.is_set() and result.status == "passed"
    steered = [r for r in scripted_openai.requests if "STEER-42" in user_texts(r)]
    assert steered and steered[0] is not scripted_openai.requests[0]
    assert any(isinstance(e, ev.UserMessage) and "STEER-42" in e.text for e in events)


async def test_stop_reaches_the_actor_and_the_branch_still_comes_home(
    ray_cluster, make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(Reply(tool_calls=[WRONG]), Reply(text="Hmm…", hold=hold))
    remote = on_ray(repo, scripted_openai.base_url)

    async def react(event: ev.Event, send: Send) -> None:
        if isinstance(event, ev.ToolResult):
            await send(ev.Stop("the developer stopped it"))

    try:
        with anyio.fail_after(120):
            result, events = await drive(remote, react)
    finally:
        hold.set()
    assert result.status == "stopped" and "the developer stopped it" in result.reason
    assert "a * b" in run_git(repo, "show", f"{result.branch}:calc.py")
    last = events[-1]
    assert isinstance(last, ev.LoopFinished) and last.status == "stopped"


async def test_a_killed_actor_ends_its_attempt_as_lost_and_the_other_finishes(
    ray_cluster, make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()  # attempt 1 thinks until its actor is killed
    scripted_openai.add_for("m1", Reply(text="Let me think…", hold=hold))
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = on_ray(repo, scripted_openai.base_url, "m1,m2", attempts=2, pick="best")

    async def react(event: ev.Event, send: Send) -> None:
        if isinstance(event, ev.ModelTurnStarted) and event.attempt == 1:
            ray_cluster.kill(contest.loops[0].actor)

    try:
        with anyio.fail_after(120):
            result, events = await drive(contest, react)
    finally:
        hold.set()
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert finished[1].status == "lost" and "died" in finished[1].reason
    assert finished[2].status == "passed"
    assert result.status == "passed" and result.branch.endswith("/a2")
    assert kept_bundles(repo) == []  # a lost attempt gives its use of the bundle back too


async def test_the_key_reaches_the_actor_and_nothing_else(
    ray_cluster, make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    secret = "sk-test-SECRET-9f3e1"
    scripted_openai.add(Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    config = make_config(repo, scripted_openai.base_url, ray="auto")
    remote = new_session(dataclasses.replace(config, api_key=secret), backoff=(0.0,))
    with anyio.fail_after(120):
        result, events = await event_channel_run(remote)
    assert result.status == "passed"
    assert scripted_openai.authorizations and all(
        a == f"Bearer {secret}" for a in scripted_openai.authorizations
    )
    assert secret not in repr(events)
    assert result.trace is not None and secret not in result.trace.read_text()


def test_headless_ray_accepts_the_green_change_into_the_checkout(
    ray_cluster, make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    address = ray_cluster.get_runtime_context().gcs_address
    done = run_cli(
        "--headless",
        "--ray",
        "tests/test_calc.py::test_add",
        "--accept",
        "all",
        "--model",
        "scripted-model",
        "--base-url",
        scripted_openai.base_url,
        cwd=repo,
        env={"RAY_ADDRESS": address},
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "a + b" in (repo / "calc.py").read_text()
    types = [json.loads(line)["type"] for line in done.stdout.splitlines()]
    # (A notice may come first: the attempt waits for a free CPU of the shared test cluster.)
    said = [t for t in types if t != "notice"]
    assert said[0] == "loop_started" and "applied" in said and said[-1] == "loop_finished"


async def test_prepare_starts_an_actor_for_each_attempt_ahead(
    ray_cluster, actors_kept, make_repo, scripted_openai
) -> None:
    from codexloop.core import ray_executor
    from codexloop.core.executor import prepare

    repo = make_repo(KATA)
    scripted_openai.add_for("m1", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    config = make_config(repo, scripted_openai.base_url, model="m1,m2", ray="auto", attempts=2)
    await anyio.to_thread.run_sync(prepare, config)
    ahead = list(ray_executor._idle)
    assert len(ahead) == 2
    await asyncio.gather(*(a.ready.remote() for a in ahead))  # started and imported
    contest = new_session(config, backoff=(0.0,))
    assert isinstance(contest, Race)
    with anyio.fail_after(120):
        result, _events = await event_channel_run(contest)
    assert result.status == "passed"
    used = [getattr(loop, "actor", None) for loop in contest.loops]
    assert sorted(map(id, used)) == sorted(map(id, ahead))  # the ones started ahead
    assert all("ray to first event (reused actor)" in loop.timings for loop in contest.loops)
