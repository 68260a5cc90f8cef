"""No process outlives the session, in any mode: killed engine, closed terminal, SIGTERM.

Without bubblewrap (no pid namespace, no --die-with-parent) the warm pytest server and
its run are ordinary processes: they must still go with the engine. Each test starts a
real headless codexloop against the scripted server, waits (on its output, never a sleep)
until a warm run is under way, hurts the engine or the server, and polls /proc with a
deadline until nothing of the session is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from loophelpers import run_cli
from scripted_openai import Reply

from codexloop.core.sandbox import state_home
from codexloop.core.words import counted

pytestmark = pytest.mark.usefixtures("no_bwrap")

UP = "THE RUN IS UP"
HANGING_TEST = (
    "import time\n\n\ndef test_hangs(capsys):\n"
    "    with capsys.disabled():\n"
    f"        print({UP!r}, flush=True)\n"
    "    time.sleep(300)\n"
)
FILES = {"calc.py": "X = 1\n", "tests/test_hang.py": HANGING_TEST}
TARGET = "tests/test_hang.py::test_hangs"
WARM_SCRIPT = "codexloop_warm_server.py"
DEADLINE_S = 20.0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def session_processes() -> dict[int, str]:
    """Every live process (but this one) whose environment or command line names this test's
    codexloop state folder: the session's scratch folder, worktree, warm server, runs."""
    needle = os.fsencode(str(state_home()))
    found: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        status = _read(f"/proc/{name}/stat")
        if b") Z" in status:  # a zombie is dead already
            continue
        cmdline = _read(f"/proc/{name}/cmdline")
        if needle in cmdline or needle in _read(f"/proc/{name}/environ"):
            found[int(name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        time.sleep(0.05)


def nothing_left() -> None:
    wait_until(lambda: not session_processes(), "the session's processes to go")


class Engine:
    """``codexloop --headless`` as a real process, its events read with a deadline."""

    def __init__(self, repo: Path, base_url: str, *, new_session: bool = False) -> None:
        self.repo = repo
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY",)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "codexloop",
                TARGET,
                "--headless",
                "--base-url",
                base_url,
                "--model",
                "m",
                "--test-timeout",
                "600",
            ],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=new_session,
        )
        self.events: list[dict[str, Any]] = []
        self._buffer = b""

    def until(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + 60
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                event = json.loads(line)
                self.events.append(event)
                if predicate(event):
                    return event
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            chunk = os.read(fd, 1 << 16) if ready else b""
            if not chunk:
                stderr = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
                raise AssertionError(f"no {what} in {self.events} {stderr}")
            self._buffer += chunk

    def until_run_is_up(self) -> None:
        self.until(lambda e: e["type"] == "test_output" and UP in e["text"], "run output")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def warm_servers() -> list[int]:
    return [pid for pid, cmd in session_processes().items() if WARM_SCRIPT in cmd]


@pytest.fixture
def engine(make_repo, scripted_openai):
    made: list[Engine] = []

    def start(**kwargs: Any) -> Engine:
        repo = make_repo(FILES)
        scripted_openai.add(Reply(text="nothing to do"))
        made.append(Engine(repo, scripted_openai.base_url, **kwargs))
        return made[-1]

    yield start
    for one in made:
        one.close()
    for pid in session_processes():  # whatever a failed test left: not the next test's problem
        os.kill(pid, signal.SIGKILL)


def test_the_warm_server_and_its_run_die_with_a_killed_engine(engine) -> None:
    session = engine()
    session.until_run_is_up()
    assert warm_servers(), session_processes()  # the run is warm: the server is up
    session.proc.kill()  # SIGKILL: no clean-up code of the engine runs
    session.proc.wait()
    nothing_left()


def test_the_warm_server_obeys_sigterm_and_takes_its_run_along(engine) -> None:
    session = engine()
    session.until_run_is_up()
    servers = warm_servers()
    assert servers
    # The server is the oldest process carrying the script name (its runs are its forks).
    server = min(servers, key=lambda pid: int(_read(f"/proc/{pid}/stat").split()[21]))
    os.kill(server, signal.SIGTERM)
    wait_until(lambda: not warm_servers(), "the warm server and its run to go")
    # The engine goes on without it (a cold run of the same iteration), and stops cleanly.
    session.until(
        lambda e: e["type"] == "notice" and "warm test runs are off" in e["message"], "notice"
    )
    session.until_run_is_up()
    session.proc.send_signal(signal.SIGTERM)
    finished = session.until(lambda e: e["type"] == "loop_finished", "loop_finished")
    assert finished["status"] == "stopped"
    assert session.proc.wait(timeout=30) == 130
    nothing_left()


def test_a_hangup_stops_the_headless_engine_cleanly(engine) -> None:
    session = engine()
    started = session.until(lambda e: e["type"] == "loop_started", "loop_started")
    session.until_run_is_up()
    session.proc.send_signal(signal.SIGHUP)  # the terminal (tmux pane) was closed
    finished = session.until(lambda e: e["type"] == "loop_finished", "loop_finished")
    assert finished["status"] == "stopped"
    assert session.proc.wait(timeout=30) == 130
    nothing_left()
    scratch = state_home() / "tmp" / started["branch"].removeprefix("codexloop/")
    assert not scratch.exists()


def test_clean_kills_what_a_crashed_session_left_running(engine) -> None:
    session = engine()
    started = session.until(lambda e: e["type"] == "loop_started", "loop_started")
    session.until_run_is_up()
    # A crash that takes neither the server nor the run along (the lifeline pipe cannot
    # help here: SIGSTOP keeps the server from reading it) is what `clean` is for.
    servers = warm_servers()
    for pid in servers:
        os.kill(pid, signal.SIGSTOP)
    session.proc.kill()
    session.proc.wait()
    left = session_processes()
    assert left
    done = run_cli("clean", cwd=session.repo)
    assert done.returncode == 0, done.stderr
    assert (
        f"killed {counted(len(left), 'process', 'processes')} left running by {started['branch']}"
        in done.stdout
    )
    nothing_left()


def test_closing_the_apps_terminal_leaves_nothing_running(
    make_repo, scripted_openai, tmp_path: Path
) -> None:
    """The full-screen app in a real terminal (a pty): the terminal goes away (its master
    side is closed, as when a tmux pane or an ssh session ends: SIGHUP), and nothing of the
    session is left — warm server, run, scratch folder."""
    import pty

    repo = make_repo(FILES)
    scripted_openai.add(Reply(text="nothing to do"))
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update({"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
    argv = [sys.executable, "-m", "codexloop", TARGET]
    argv += ["--base-url", scripted_openai.base_url, "--model", "m", "--test-timeout", "600"]
    pid, master = pty.fork()
    if pid == 0:  # the child: the app, with the pty as its terminal
        os.chdir(repo)
        os.execve(sys.executable, argv, env)
    try:
        wait_until(lambda: bool(warm_servers()), "the app's warm run to start")
        seen = b""
        deadline = time.monotonic() + DEADLINE_S
        while UP.encode() not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 1 << 16)
                except OSError:
                    break
        os.close(master)  # the terminal is gone: the kernel hangs up the app's session
        master = -1
        wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] != 0, "the app to exit")
        nothing_left()
        assert not list((state_home() / "tmp").glob("*")), "the scratch folder was left"
    finally:
        if master >= 0:
            os.close(master)
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
