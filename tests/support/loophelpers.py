"""Helpers for engine tests: a small kata repository and a loop run that collects events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream
from scripted_openai import Call

from codexloop.core import events as ev
from codexloop.core.config import Config, Settings, load_config
from codexloop.core.loop import Loop, LoopResult, event_channel
from codexloop.core.race import Race

CALC = "def add(a, b):\n    return a - b\n"
TEST_CALC = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
KATA = {"calc.py": CALC, "tests/test_calc.py": TEST_CALC}
TARGET = "tests/test_calc.py::test_add"


def make_config(repo: Path, base_url: str, *targets: str, **overrides: Any) -> Config:
    overrides.setdefault("model", "scripted-model")
    settings = Settings(targets=targets or (TARGET,), repo=repo, base_url=base_url, **overrides)
    return load_config(settings, env={}, cwd=repo)


async def run_loop(config: Config, **kwargs: Any) -> tuple[LoopResult, list[ev.Event]]:
    """Build a loop (no backoff between retries) and run it to the end, collecting its events."""
    kwargs.setdefault("backoff", (0.0,))
    return await event_channel_run(Loop(config, **kwargs))


async def warm_session_stays_red(repo: Path, base_url: str) -> list[ev.Event]:
    """Two iterations with warm runs on (the model's turns already scripted): the warm server
    stays on, and the baseline and both iterations are red (an attack planted nothing that
    made wrong code pass). The events."""
    config = make_config(repo, base_url, max_iterations=2, warm=True)
    result, events = await run_loop(config)
    notices = [n.message for n in of_type(events, ev.Notice)]
    assert not [n for n in notices if "warm test runs are off" in n], notices
    assert [f.passed for f in of_type(events, ev.TestFinished)] == [False, False, False]
    assert result.status == "failed"
    return events


async def drive_review(
    loop: Loop,
    on_review: Callable[[ev.ReviewReady, list[ev.Event]], ev.Command],
    on_budget: Callable[[ev.BudgetSpent, list[ev.Event]], ev.Command] | None = None,
) -> tuple[LoopResult, list[ev.Event]]:
    """Run a reviewing loop to the end; every ``review_ready`` is answered by ``on_review``,
    every ``budget_spent`` by ``on_budget`` (default: finish)."""
    send, receive = event_channel()
    commands_send, commands_receive = event_channel()
    seen: list[ev.Event] = []

    async def consume() -> None:
        async with receive:
            async for event in receive:
                seen.append(event)
                if isinstance(event, ev.ReviewReady):
                    await commands_send.send(on_review(event, seen))
                elif isinstance(event, ev.BudgetSpent):
                    answer = on_budget(event, seen) if on_budget is not None else ev.Finish()
                    await commands_send.send(answer)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        async with send:
            result = await loop.run(send, commands_receive)
    return result, seen


async def event_channel_run(
    loop: Loop | Race, commands: ObjectReceiveStream[ev.Command] | None = None
) -> tuple[LoopResult, list[ev.Event]]:
    """Run a loop to the end, collecting every event it emits."""
    send, receive = event_channel()
    collected: list[ev.Event] = []

    async def collect() -> None:
        async with receive:
            async for event in receive:
                collected.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        async with send:
            result = await loop.run(send, commands)
    return result, collected


Send = Callable[[ev.Command], Awaitable[None]]


async def drive(
    session: Loop | Race, react: Callable[[ev.Event, Send], Awaitable[None]]
) -> tuple[LoopResult, list[ev.Event]]:
    """Run ``session`` to the end; ``react`` sees every event as it comes and may send
    commands."""
    send, receive = event_channel()
    commands, inbox = event_channel()
    seen: list[ev.Event] = []

    async def consume() -> None:
        async with receive:
            async for event in receive:
                seen.append(event)
                await react(event, commands.send)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        async with send:
            result = await session.run(send, inbox)
    return result, seen


def edit(path: str, old: str, new: str) -> Call:
    """The model's ``edit_file`` call."""
    return Call("edit_file", {"path": path, "old_text": old, "new_text": new})


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with no model configured, and ``env``."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEXLOOP_MODEL")
    }
    full_env.update(env or {})
    return full_env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``codexloop ARGS`` as a user runs it: a real process, no model configured unless given."""
    return subprocess.run(
        [sys.executable, "-m", "codexloop", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def start_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """``codexloop ARGS`` started (as :func:`run_cli` runs it), its output on pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", "codexloop", *args],
        cwd=cwd,
        env=cli_env(env),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def events_of(stdout: str) -> list[dict[str, Any]]:
    """The JSON events of a headless run's standard output."""
    return [json.loads(line) for line in stdout.splitlines()]


def of_type(events: list[ev.Event], kind: type[ev.Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def user_texts(request: dict[str, Any]) -> str:
    return "\n".join(
        m["content"]
        for m in request["messages"]
        if m["role"] == "user" and isinstance(m.get("content"), str)
    )


def tool_results(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def kill_engine_and_await_worker(engine: subprocess.Popen[str]) -> None:
    """Read the model worker's pid from ``engine``'s first line, kill the engine and wait (30 s
    at most) for the worker to end with it."""
    import select

    assert engine.stdout is not None
    worker = int(engine.stdout.readline())
    watch = os.pidfd_open(worker)
    try:
        engine.kill()
        engine.wait()
        ended, _, _ = select.select([watch], [], [], 30)
        assert ended, "the worker outlived the engine"
    finally:
        os.close(watch)
