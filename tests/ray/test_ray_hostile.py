"""``--ray`` attacked, as a model and as a user would: nothing outlives a session on the node,
a reused actor carries nothing of the last session, the key is not on the node for the model's
commands to find, the repository's odd cases, an unreachable cluster."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import run_git
from loophelpers import (
    KATA,
    TARGET,
    Send,
    drive,
    edit,
    event_channel_run,
    make_config,
    of_type,
    run_cli,
)
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core import process
from codexloop.core.errors import CodexloopError
from codexloop.core.executor import new_session
from codexloop.core.loop import event_channel

pytestmark = [pytest.mark.anyio, pytest.mark.ray, pytest.mark.xdist_group("ray")]

FIX = edit("calc.py", "a - b", "a + b")
WRONG = edit("calc.py", "a - b", "a * b")


def on_ray(repo: Path, url: str, **overrides: Any) -> Any:
    config = make_config(repo, url, ray="auto", **overrides)
    return new_session(config, backoff=(0.0,))


def node_home(events: list[ev.Event]) -> Path:
    """The session's folder on the node (its worktree lives under it)."""
    [started] = of_type(events, ev.LoopStarted)
    return node_home_of(started.worktree)


def node_home_of(worktree: str) -> Path:
    path = Path(worktree)
    while not path.name.startswith("codexloop-node-"):
        assert path != path.parent, worktree
        path = path.parent
    return path


def gone_within(path: Path, seconds: float) -> bool:
    """Whether ``path`` and every process naming it are gone within ``seconds`` (what an actor
    killed by Ray leaves is gone when it is gone, not at a time we know)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not path.exists() and not process.session_processes([path]):
            return True
        time.sleep(0.2)
    return False


# -- nothing outlives the session on the node ----------------------------------------------------


@pytest.mark.parametrize("ending", ["passed", "failed", "stopped"])
async def test_the_node_folder_goes_in_every_clean_ending(
    ray_cluster, make_repo, scripted_openai, ending: str
) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    if ending == "passed":
        scripted_openai.add(Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    elif ending == "failed":
        scripted_openai.add(Reply(tool_calls=[WRONG]), Reply(text="Done."))
    else:
        scripted_openai.add(Reply(tool_calls=[WRONG]), Reply(text="Hmm…", hold=hold))
    remote = on_ray(repo, scripted_openai.base_url, max_iterations=1)

    async def react(event: ev.Event, send: Send) -> None:
        if ending == "stopped" and isinstance(event, ev.ToolResult):
            await send(ev.Stop("the developer stopped it"))

    try:
        with anyio.fail_after(120):
            result, events = await drive(remote, react)
    finally:
        hold.set()
    assert result.status == ending
    assert not node_home(events).exists()


async def test_a_cancelled_session_leaves_nothing_on_the_node(
    ray_cluster, make_repo, scripted_openai
) -> None:
    """A second Ctrl-C cancels the session: the actor's folder and its sandbox's processes
    go too, not only the actor (a killed actor runs no clean-up of its own)."""
    repo = make_repo(KATA)
    hold = threading.Event()
    # A command that would outlive a careless session: a process in its own session.
    sleeper = Call("run_command", {"command": "setsid sleep 3600 >/dev/null 2>&1 & echo started"})
    scripted_openai.add(Reply(tool_calls=[sleeper]), Reply(text="thinking…", hold=hold))
    remote = on_ray(repo, scripted_openai.base_url)
    seen: list[ev.Event] = []
    try:
        with anyio.fail_after(120):
            send, receive = event_channel()
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    async with receive:
                        async for event in receive:
                            seen.append(event)
                            if (
                                isinstance(event, ev.ModelTurnStarted)
                                and len(of_type(seen, ev.ModelTurnStarted)) == 2
                            ):
                                tg.cancel_scope.cancel()

                tg.start_soon(consume)
                async with send:
                    await remote.run(send, None)
    finally:
        hold.set()
    home = node_home(seen)
    assert await anyio.to_thread.run_sync(gone_within, home, 30.0), sorted(
        p.name for p in home.iterdir()
    )


async def test_a_crash_of_the_engine_on_the_node_leaves_no_folder(
    ray_cluster, make_repo, scripted_openai, monkeypatch
) -> None:
    """The engine on the node fails (here: the snapshot that reaches it is not a bundle):
    one error on the developer's side, and the node's folder goes."""
    from codexloop.core import ray_executor

    monkeypatch.setattr(ray_executor, "bundle", lambda repo, snapshot: b"not a bundle")
    remote = on_ray(make_repo(KATA), scripted_openai.base_url)
    with anyio.fail_after(120), pytest.raises(CodexloopError, match="on Ray node") as caught:
        await remote.run(None, None)
    [named] = set(re.findall(r"/tmp/codexloop-node-[^/ ]+", str(caught.value)))
    assert not Path(named).exists()


def _node_folders() -> set[str]:
    return {p.name for p in Path("/tmp").glob("codexloop-node-*")}


def _headless_ray(repo: Path, url: str, address: str, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["RAY_ADDRESS"] = address
    argv = [sys.executable, "-m", "codexloop", "--headless", "--ray", TARGET, "--model"]
    return subprocess.Popen(
        [*argv, "scripted-model", "--base-url", url, *extra],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], wanted: str) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    seen: list[dict[str, Any]] = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1]["type"] == wanted:
            return seen
    raise AssertionError(f"no {wanted}: {seen}")


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_of_a_headless_ray_run_leaves_nothing_on_the_node(
    ray_cluster, make_repo, scripted_openai, signals: int
) -> None:
    """SIGTERM (once: stop cleanly; twice: give up at once): exit 130, and the node's folder,
    the actor and the sandbox's processes all go."""
    repo = make_repo(KATA)
    hold = threading.Event()
    sleeper = Call("run_command", {"command": "setsid sleep 3600 >/dev/null 2>&1 & echo started"})
    scripted_openai.add(Reply(tool_calls=[sleeper]), Reply(text="thinking…", hold=hold))
    address = ray_cluster.get_runtime_context().gcs_address
    proc = _headless_ray(repo, scripted_openai.base_url, address)
    try:
        seen = _read_until(proc, "tool_result")
        [started] = [e for e in seen if e["type"] == "loop_started"]
        home = node_home_of(started["worktree"])
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
        if signals == 1:
            hold.set()  # the turn ends, the stop is seen at the safe point
        out, err = proc.communicate(timeout=120)
    finally:
        hold.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert gone_within(home, 30.0), sorted(p.name for p in home.iterdir())


# -- a reused actor ------------------------------------------------------------------------------


async def test_a_late_command_of_one_session_does_not_reach_the_next(
    ray_cluster, actors_kept, make_repo, scripted_openai
) -> None:
    """A command in flight when a session ends (a stop pressed as it went green) must not
    stop the next session that takes the same idle actor."""
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    first = on_ray(repo, scripted_openai.base_url)
    with anyio.fail_after(120):
        one, _ = await event_channel_run(first)
    assert one.status == "passed"
    actor = first.actor
    await actor.command.remote(first._token, ev.Stop("late stop of the first session"))
    await actor.command.remote(first._token, ev.Steer("LATE-STEER of the first session"))
    run_git(repo, "checkout", "-q", "--", ".")
    second_repo = make_repo(KATA, name="second")
    scripted_openai.add(Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    second = on_ray(second_repo, scripted_openai.base_url)
    with anyio.fail_after(120):
        two, events = await event_channel_run(second)
    assert second.actor == actor  # the idle actor was taken again
    assert two.status == "passed", two.reason
    assert not any("LATE-STEER" in getattr(e, "text", "") for e in events)


async def test_a_reused_actor_shows_nothing_of_the_previous_session(
    ray_cluster, actors_kept, make_repo, scripted_openai
) -> None:
    """The second session on an actor: its own XDG folders, no process of the first."""
    repo = make_repo(KATA)
    sleeper = Call("run_command", {"command": "setsid sleep 3601 >/dev/null 2>&1 & echo ok"})
    scripted_openai.add(Reply(tool_calls=[sleeper, FIX]), Reply(text="Fixed."))
    first = on_ray(repo, scripted_openai.base_url)
    with anyio.fail_after(120):
        one, events_one = await event_channel_run(first)
    assert one.status == "passed"
    home_one = node_home(events_one)
    left = process.session_processes([home_one])
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    look = Call("run_command", {"command": "echo HOME=$XDG_CACHE_HOME; pgrep -fa 'sleep 360[1]'"})
    scripted_openai.add(Reply(tool_calls=[look, FIX]), Reply(text="Fixed."))
    second = on_ray(make_repo(KATA, name="second"), scripted_openai.base_url)
    with anyio.fail_after(120):
        two, events_two = await event_channel_run(second)
    assert second.actor == first.actor and two.status == "passed"
    looked = tool_texts(scripted_openai.requests[-1])
    assert "HOME=" in looked and str(home_one) not in looked and "sleep 3601" not in looked


async def test_an_idle_actor_that_died_while_it_waited_is_replaced_not_lost(
    ray_cluster, actors_kept, make_repo, scripted_openai
) -> None:
    """The next session takes an idle actor that is dead by then (its node went): a new
    actor runs the session; nothing of it had run on the dead one."""
    scripted_openai.add(Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    first = on_ray(make_repo(KATA), scripted_openai.base_url)
    with anyio.fail_after(120):
        one, _ = await event_channel_run(first)
    assert one.status == "passed" and actors_kept == [first.actor]
    ray_cluster.kill(first.actor)
    scripted_openai.add(Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    second = on_ray(make_repo(KATA, name="second"), scripted_openai.base_url)
    with anyio.fail_after(120):
        two, events = await event_channel_run(second)
    assert two.status == "passed", two.reason
    assert second.actor != first.actor
    assert not [n for n in of_type(events, ev.Notice) if "lost" in n.message]


# -- the key -------------------------------------------------------------------------------------

# What a model's command does to find a key on its node: every process's environment, Ray's
# logs and session folders. The key is put together at run time (never in the command line).
HUNT = (
    "K=sk-hostile; K=$K-{tail}; n=0; "
    "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' 2>/dev/null < $f | grep -q -- $K "
    "&& n=$((n+1)); done; echo PROC=$n; "
    "grep -rqs -- $K /tmp/ray && echo RAYLOGS=yes || echo RAYLOGS=no"
)


def tool_texts(request: dict[str, Any]) -> str:
    return "".join(m["content"] for m in request["messages"] if m["role"] == "tool")


async def _hunt(repo: Path, url: str, scripted_openai: Any) -> tuple[str, str]:
    """What the hunt found, and the isolation the node's sandbox had."""
    tail = uuid.uuid4().hex
    hunt = Call("run_command", {"command": HUNT.format(tail=tail)})
    scripted_openai.add(Reply(tool_calls=[hunt, FIX]), Reply(text="Fixed."))
    config = make_config(repo, url, ray="auto")
    remote = new_session(dataclasses.replace(config, api_key=f"sk-hostile-{tail}"), backoff=(0.0,))
    with anyio.fail_after(120):
        result, events = await event_channel_run(remote)
    assert result.status == "passed"
    [started] = of_type(events, ev.LoopStarted)
    return tool_texts(scripted_openai.requests[-1]), started.isolation


async def test_the_models_commands_do_not_find_the_key_on_the_node(
    ray_cluster, make_repo, scripted_openai
) -> None:
    found, isolation = await _hunt(make_repo(KATA), scripted_openai.base_url, scripted_openai)
    assert "PROC=0" in found and "RAYLOGS=no" in found, found
    assert isolation != "none"


async def test_without_bubblewrap_the_key_is_not_on_the_node_either(
    ray_cluster, make_repo, scripted_openai, no_bwrap, monkeypatch
) -> None:
    """No bubblewrap on the node: the model's commands see the node's processes and /tmp.
    The key must be in neither the actor's environment nor Ray's logs there."""
    from codexloop.core import ray_executor

    def without_bwrap() -> Any:  # the node as a machine without bubblewrap
        env = {"PATH": str(no_bwrap), "CODEXLOOP_BWRAP": "system"}
        return ray_executor.SessionActor.options(  # type: ignore[attr-defined]
            runtime_env={"env_vars": env}
        ).remote()

    monkeypatch.setattr(ray_executor, "_idle", [])
    monkeypatch.setattr(ray_executor, "_new_actor", without_bwrap)
    found, isolation = await _hunt(make_repo(KATA), scripted_openai.base_url, scripted_openai)
    assert "PROC=0" in found and "RAYLOGS=no" in found, found
    assert isolation == "none"


# -- the repository's odd cases ------------------------------------------------------------------


async def test_uncommitted_untracked_and_spaces_reach_the_node_a_big_file_does_not(
    ray_cluster, make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA, name="my repo")
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b  # UNCOMMITTED\n")
    (repo / "notes dir").mkdir()
    (repo / "notes dir" / "untracked note.txt").write_text("UNTRACKED-NOTE\n")
    with (repo / "big.bin").open("wb") as big:
        big.truncate(51 << 20)
    look = Call("run_command", {"command": "cat calc.py 'notes dir/untracked note.txt'; ls"})
    scripted_openai.add(Reply(tool_calls=[look, FIX]), Reply(text="Fixed."))
    remote = on_ray(repo, scripted_openai.base_url)
    with anyio.fail_after(120):
        result, events = await event_channel_run(remote)
    assert result.status == "passed", result.reason
    [looked] = [e for e in of_type(events, ev.ToolResult) if e.name == "run_command"]
    seen = "".join(
        m["content"] for m in scripted_openai.requests[1]["messages"] if m["role"] == "tool"
    )
    assert "UNCOMMITTED" in seen and "UNTRACKED-NOTE" in seen and "big.bin" not in seen, looked
    # Said as a local session says it.
    assert any(
        "big.bin" in e.message and "left out" in e.message for e in of_type(events, ev.Notice)
    )
    assert "a + b" in run_git(repo, "show", f"{result.branch}:calc.py")


async def test_a_repository_without_commits(ray_cluster, make_repo, scripted_openai) -> None:
    repo = make_repo(KATA, commit=False)
    scripted_openai.add(Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    remote = on_ray(repo, scripted_openai.base_url)
    with anyio.fail_after(120):
        result, _ = await event_channel_run(remote)
    assert result.status == "passed", result.reason
    assert "a + b" in run_git(repo, "show", f"{result.branch}:calc.py")
    assert not run_git(repo, "for-each-ref", "refs/codexloop-bundle")


def test_continue_with_ray_is_refused_in_one_line(ray_cluster, make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    run_git(repo, "branch", "codexloop/x")  # a preview branch to continue
    done = run_cli(
        "--headless", "--ray", "--continue", "codexloop/x", TARGET,
        "--model", "scripted-model", "--base-url", scripted_openai.base_url,
        cwd=repo,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and "--ray" in done.stderr, done.stderr


def test_an_exam_that_can_never_pass_says_the_same_with_ray(
    ray_cluster, make_repo, scripted_openai
) -> None:
    repo = make_repo({**KATA, "tests/test_calc.py": "def test_add(:\n    pass\n"})
    address = ray_cluster.get_runtime_context().gcs_address
    common = ["--headless", TARGET, "--model", "scripted-model"]
    common += ["--base-url", scripted_openai.base_url]
    here = run_cli(*common, cwd=repo, timeout=120)
    there = run_cli("--ray", *common, cwd=repo, env={"RAY_ADDRESS": address}, timeout=180)
    assert here.returncode == there.returncode != 0
    last = [line for line in there.stderr.splitlines() if line.startswith("codexloop")]
    assert last[-1:] == here.stderr.strip().splitlines()[-1:], (here.stderr, there.stderr)
    assert "Traceback" not in there.stderr
    assert not run_git(repo, "branch", "--list", "codexloop/*")  # nothing worth a branch


# -- an unreachable cluster ----------------------------------------------------------------------


@pytest.mark.parametrize("address", ["ray://127.0.0.1:1", "127.0.0.1:1"])
def test_an_unreachable_cluster_is_one_line_and_quick(make_repo, address: str) -> None:
    repo = make_repo(KATA)
    started = time.monotonic()
    done = run_cli(
        "--headless", "--ray", address, TARGET,
        "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
        cwd=repo, timeout=90,
    )  # fmt: skip
    assert time.monotonic() - started < 60
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Ray cluster" in lines[0] and address in lines[0], lines
