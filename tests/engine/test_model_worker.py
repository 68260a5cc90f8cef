"""The model worker: the openai client lives in a child process of its own; the engine's
process never imports it, a worker that died is replaced, and the worker goes with the
engine. Real processes, the real client, the scripted server over loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
from loophelpers import (
    KATA,
    TARGET,
    cli_env,
    events_of,
    kill_engine_and_await_worker,
    make_config,
    of_type,
    run_loop,
)
from scripted_openai import Call, Reply, ScriptedOpenAI

from codexloop.core import events as ev
from codexloop.core import model_process
from codexloop.core.model import ChatModel, make_client

pytestmark = pytest.mark.anyio

RIGHT = "def add(a, b):\n    return a + b\n"


def test_the_engine_process_never_imports_the_model_client(
    make_repo, scripted_openai: ScriptedOpenAI
) -> None:
    """A whole headless session, red to green: ``import openai`` (and its pydantic types)
    happens in the worker only, never in the process that runs the loop."""
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": RIGHT})]),
        Reply(text="Fixed."),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "codexloop",
            "--headless",
            "--model",
            "m",
            "--base-url",
            scripted_openai.base_url,
            TARGET,
        ],
        cwd=repo,
        env=cli_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert events_of(done.stdout)[-1]["status"] == "passed"
    imported = {
        row.rsplit("|", 1)[1].strip()
        for row in done.stderr.splitlines()
        if row.startswith("import time:")
    }
    assert "codexloop.core.loop" in imported  # the measurement saw the engine's imports
    assert not {"openai", "pydantic"} & imported


async def test_a_worker_that_dies_mid_answer_is_replaced_and_the_turn_asked_again(
    scripted_openai: ScriptedOpenAI,
) -> None:
    hold = threading.Event()
    scripted_openai.add(Reply(text="never finished", hold=hold), Reply(text="Hello again."))
    model = ChatModel(make_client(scripted_openai.base_url, "sk-x", 30.0), "m", backoff=(0.0,))
    retries: list[str] = []
    texts: list[str] = []

    async def on_text(text: str) -> None:
        texts.append(text)

    async def on_retry(attempt: int, why: str, delay: float) -> None:
        retries.append(why)

    model_process.start()
    first = model_process.worker_pid()
    assert first is not None
    try:
        async with anyio.create_task_group() as tg:
            answers = []

            async def ask() -> None:
                answers.append(
                    await model.turn(
                        [{"role": "user", "content": "hi"}], [], on_text=on_text, on_retry=on_retry
                    )
                )

            tg.start_soon(ask)
            assert await anyio.to_thread.run_sync(scripted_openai.wait_for_requests, 1)
            os.kill(first, signal.SIGKILL)
    finally:
        hold.set()
    assert answers[0].text == "Hello again."
    assert retries == ["the model worker stopped before it answered"]
    assert model_process.worker_pid() not in (None, first)


def test_the_worker_ends_with_the_engine_however_the_engine_ends() -> None:
    """Killed (no clean-up of its own runs), the engine's end of the control socket closes
    and the worker exits: no client process outlives the session holding its key."""
    code = (
        "from codexloop.core import model_process\n"
        "model_process.start()\n"
        "print(model_process.worker_pid(), flush=True)\n"
        "import sys; sys.stdin.read()\n"
    )
    engine = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    kill_engine_and_await_worker(engine)


async def test_the_sandbox_holds_no_way_to_the_worker(
    make_repo, scripted_openai: ScriptedOpenAI, tmp_path: Path
) -> None:
    """A command of the model's, and the exam's own test run, inherit no socket: neither the
    control socket nor a request's (the worker would send anything they wrote to the
    endpoint with the developer's key)."""
    repo = make_repo(
        {
            **KATA,
            "tests/test_fds.py": (
                "import os\n\n\ndef test_fds():\n"
                "    links = [os.readlink(f'/proc/self/fd/{fd}') for fd in os.listdir('/proc/self/fd')\n"
                "             if os.path.exists(f'/proc/self/fd/{fd}')]\n"
                "    assert not [link for link in links if link.startswith('socket:')], links\n"
            ),
        }
    )
    scripted_openai.add(
        Reply(tool_calls=[Call("run_command", {"command": "ls -l /proc/self/fd/ /proc/$$/fd/"})]),
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": RIGHT})]),
        Reply(text="Fixed."),
    )
    config = make_config(repo, scripted_openai.base_url, TARGET, "tests/test_fds.py::test_fds")
    result, events = await run_loop(config)
    listing = next(r for r in of_type(events, ev.ToolResult) if r.name == "run_command")
    assert listing.ok
    seen = "".join(
        m["content"] for m in scripted_openai.requests[1]["messages"] if m["role"] == "tool"
    )
    assert "-> /dev/null" in seen  # the listing is there (its standard input)
    assert "socket:" not in seen
    assert result.status == "passed"  # the exam's run saw no socket either


async def test_a_worker_that_stops_answering_is_replaced(
    scripted_openai: ScriptedOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped (or stuck) without dying: past the request timeout and a margin it is killed
    and the turn asked again of a new one, rather than waited on for ever."""
    from codexloop.core import model_host

    monkeypatch.setattr(
        model_host, "STALL_MARGIN_S", 5.0
    )  # a new worker imports its client meanwhile
    scripted_openai.add(Reply(text="Hello."))
    model_process.start()
    stuck = model_process.worker_pid()
    assert stuck is not None
    retries: list[str] = []

    async def on_text(text: str) -> None:
        pass

    async def on_retry(attempt: int, why: str, delay: float) -> None:
        retries.append(why)

    os.kill(stuck, signal.SIGSTOP)
    try:
        model = ChatModel(make_client(scripted_openai.base_url, "sk-x", 0.5), "m", backoff=(0.0,))
        with anyio.fail_after(30):
            turn = await model.turn(
                [{"role": "user", "content": "hi"}], [], on_text=on_text, on_retry=on_retry
            )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)
    assert turn.text == "Hello."
    assert retries == ["the model worker stopped answering"]
    assert model_process.worker_pid() not in (None, stuck)


async def test_a_client_made_ahead_is_the_one_asked_and_a_bad_one_harms_nothing(
    scripted_openai: ScriptedOpenAI,
) -> None:
    """``prepare`` has the worker make a session's client beside the set-up; one it cannot
    make (no such protocol, nonsense settings) leaves the worker serving the others."""
    scripted_openai.add(Reply(text="Hello."))
    broken = make_client("not a url at all", "sk-x", -1.0)
    broken.prepare("responses")
    client = make_client(scripted_openai.base_url, "sk-x", 30.0)
    client.prepare("chat")
    model = ChatModel(client, "m", backoff=(0.0,))

    async def on_text(text: str) -> None:
        pass

    with anyio.fail_after(30):
        turn = await model.turn([{"role": "user", "content": "hi"}], [], on_text=on_text)
    assert turn.text == "Hello."
