"""A race (``--attempts N``) as a user runs it, and as a user breaks it: Ctrl-C mid-race, the
reader of standard output going away (``| head -1``), every endpoint failing, a flagged best.

Each test starts a real headless codexloop against the scripted server; a test that hurts
the process waits on its events (never a sleep) until the moment it wants, and polls /proc
with a deadline until nothing of the session is left.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_git
from loophelpers import KATA, TARGET, edit, events_of
from loophelpers import run_cli as codexloop
from scripted_openai import Call, HTTPError, Reply

from codexloop.core.sandbox import state_home

UP = "THE RUN IS UP"
SLOW_TEST = (
    "from calc import add\n\n\n"
    "def test_add(capsys):\n"
    "    with capsys.disabled():\n"
    f"        print({UP!r}, flush=True)\n"
    "    assert add(2, 3) == 5\n"
)
SLOW_FILES = {"calc.py": "def add(a, b):\n    return a - b\n", "tests/test_calc.py": SLOW_TEST}
# a1's change: right, but it takes five minutes (the run is under way when Ctrl-C comes).
SLEEPY = "import time\n\n\ndef add(a, b):\n    time.sleep(300)\n    return a + b\n"
DEADLINE_S = 30.0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def session_processes() -> dict[int, str]:
    """Every live process (but this one) whose environment or command line names this test's
    codexloop state folder (worktrees, scratch, runs)."""
    needle = os.fsencode(str(state_home()))
    found: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        if b") Z" in _read(f"/proc/{name}/stat"):
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


class Race:
    """``codexloop --headless --attempts 2 --model m1,m2`` as a real process."""

    def __init__(self, repo: Path, base_url: str, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
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
                "m1,m2",
                "--attempts",
                "2",
                *extra,
            ],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.events: list[dict[str, Any]] = []
        self._buffer = b""

    def until(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + 90
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
                raise AssertionError(f"no {what} in {[e['type'] for e in self.events]}")
            self._buffer += chunk

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Read to the end: the exit status and standard error."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        rest, err = self.proc.communicate(timeout=timeout)
        for line in (self._buffer + rest).splitlines():
            self.events.append(json.loads(line))
        self._buffer = b""
        return self.proc.returncode, err.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


@pytest.fixture
def races() -> Iterator[Callable[..., Race]]:
    made: list[Race] = []

    def start(*args: Any) -> Race:
        made.append(Race(*args))
        return made[-1]

    yield start
    for one in made:
        one.close()
    for pid in session_processes():  # whatever a failed test left: not the next test's problem
        os.kill(pid, signal.SIGKILL)


def branches(repo: Path) -> list[str]:
    listed = run_git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/codexloop")
    return listed.split()


def assert_one_session_end(events: list[dict[str, Any]]) -> dict[str, Any]:
    types = [e["type"] for e in events]
    assert types.count("loop_finished") == 1 and types[-1] == "loop_finished", types[-6:]
    assert types.count("winner") <= 1
    ended = [e["attempt"] for e in events if e["type"] == "attempt_finished"]
    assert len(ended) == len(set(ended))
    return events[-1]


@pytest.mark.parametrize("isolated", [True, False], ids=["bwrap", "no-bwrap"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_mid_race_stops_every_attempt_and_leaves_nothing_running(
    make_repo, scripted_openai, races, request, sig: signal.Signals, isolated: bool
) -> None:
    """a1's test run is under way (its change sleeps), a2 waits on its model: Ctrl-C (or
    SIGTERM) stops both at once, exit 130, nothing of the session left running, and every
    branch stays — a1's with its change."""
    if not isolated:
        request.getfixturevalue("no_bwrap")
    repo = make_repo(SLOW_FILES)
    hold = threading.Event()
    scripted_openai.add_for(
        "m1", Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": SLEEPY})])
    )
    scripted_openai.add_for("m1", Reply(text="Fixed."))
    scripted_openai.add_for("m2", Reply(text="Thinking…", hold=hold))
    race = races(repo, scripted_openai.base_url)
    try:
        race.until(
            lambda e: e["type"] == "test_started" and e["attempt"] == 1 and e["iteration"] == 1,
            "a1's first test run",
        )
        race.until(
            lambda e: e["type"] == "test_output" and e["attempt"] == 1 and UP in e["text"],
            "a1's run under way",
        )
        assert scripted_openai.wait_for_requests(3, timeout=30)  # a2 is in its model turn
        race.proc.send_signal(sig)
        code, err = race.finish()
    finally:
        hold.set()
    assert code == 130, err
    assert "Traceback" not in err
    last = assert_one_session_end(race.events)
    assert last["status"] == "stopped" and last["attempt"] == 0
    assert "winner" not in [e["type"] for e in race.events]
    finished = {e["attempt"]: e for e in race.events if e["type"] == "attempt_finished"}
    assert {f["status"] for f in finished.values()} == {"stopped"}
    wait_until(lambda: not session_processes(), "the session's processes to go")
    kept = branches(repo)
    assert finished[1]["branch"] in kept and finished[2]["branch"] in kept
    assert run_git(repo, "show", f"{finished[1]['branch']}:calc.py") == SLEEPY
    assert (repo / "calc.py").read_text() == SLOW_FILES["calc.py"]


def test_standard_output_closed_mid_race_stops_it(make_repo, scripted_openai, races) -> None:
    """``codexloop --attempts 2 ... | head -1``: the reader goes after one line; the race stops
    (every attempt), says so on standard error once, exit 1, no traceback, nothing left."""
    repo = make_repo(KATA)
    for model in ("m1", "m2"):
        scripted_openai.add_for(model, Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]))
        scripted_openai.add_for(model, *[Reply(text="Still thinking.") for _ in range(6)])
    race = races(repo, scripted_openai.base_url, "--max-iterations", "5")
    race.until(lambda e: e["type"] == "loop_started", "the first line")
    assert race.proc.stdout is not None
    race.proc.stdout.close()  # | head -1
    assert race.proc.stderr is not None
    try:
        race.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError("the race went on after its reader went away") from None
    err = race.proc.stderr.read().decode()
    assert race.proc.returncode == 1, err
    assert "Traceback" not in err
    assert err.count("standard output was closed") == 1, err
    wait_until(lambda: not session_processes(), "the session's processes to go")


def test_every_endpoint_failing_is_a_red_end_without_a_traceback(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("m1", *[HTTPError(400, "bad request: no such tool") for _ in range(8)])
    scripted_openai.add_for("m2", *[HTTPError(500, "overloaded") for _ in range(8)])
    done = codexloop(
        TARGET,
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m1,m2",
        "--attempts",
        "2",
        cwd=repo,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    events = events_of(done.stdout)
    last = assert_one_session_end(events)
    assert last["status"] == "failed" and "model error" in last["reason"]
    errors = [e for e in events if e["type"] == "notice" and e["level"] == "error"]
    assert {e["attempt"] for e in errors} == {1, 2}


def test_best_with_only_a_flagged_green_is_held_back(make_repo, scripted_openai) -> None:
    """``--pick best --accept all``: the only green touches test machinery: nothing applied,
    exit 1, the flags on standard error (as one loop does)."""
    repo = make_repo(KATA)
    sneaky = edit("calc.py", "a - b", 'a + b + 0 * len(__import__("sys").meta_path)')
    scripted_openai.add_for("m1", Reply(tool_calls=[sneaky]), Reply(text="Fixed."))
    scripted_openai.add_for("m2", Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]))
    scripted_openai.add_for("m2", Reply(text="Done."))
    done = codexloop(
        TARGET,
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m1,m2",
        "--attempts",
        "2",
        "--pick",
        "best",
        "--max-iterations",
        "1",
        "--accept",
        "all",
        cwd=repo,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "green, but not applied" in done.stderr and "calc.py:2" in done.stderr
    assert (repo / "calc.py").read_text() == KATA["calc.py"]
    events = events_of(done.stdout)
    assert_one_session_end(events)
    [winner] = [e for e in events if e["type"] == "winner"]
    assert winner["attempt"] == 1
    assert winner["branch"] in done.stderr


def test_one_attempt_is_exactly_one_loop(make_repo, scripted_openai) -> None:
    """``--attempts 1``: the session as before — no race events, the branch without /aK,
    attempt 1 on every line."""
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="ok"))
    done = codexloop(
        TARGET,
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m",
        "--attempts",
        "1",
        "--accept",
        "all",
        cwd=repo,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    types = [e["type"] for e in events]
    assert "attempt_finished" not in types and "winner" not in types
    assert {e["attempt"] for e in events} == {1}
    last = assert_one_session_end(events)
    assert last["status"] == "passed" and not last["branch"].endswith("/a1")
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize("quiet", [False, True], ids=["exit-and-processes", "no-traceback"])
def test_a_second_interrupt_gives_up_at_once_and_still_leaves_nothing_running(
    make_repo, scripted_openai, races, no_bwrap, quiet: bool
) -> None:
    """Ctrl-C twice: no clean stop waited for (exit 130 at once), yet no test run, no
    process of either attempt, outlives the engine (no bubblewrap: the harder case); and
    (``quiet``) standard error holds no traceback."""
    repo = make_repo(SLOW_FILES)
    for model in ("m1", "m2"):
        scripted_openai.add_for(
            model, Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": SLEEPY})])
        )
        scripted_openai.add_for(model, Reply(text="Fixed."))
    race = races(repo, scripted_openai.base_url)

    def both_runs_up(event: dict[str, Any]) -> bool:
        up = set()
        for n in (1, 2):
            seen = [e for e in race.events if e["attempt"] == n]
            started = [i for i, e in enumerate(seen) if e["type"] == "test_started"]
            if len(started) >= 2 and any(
                e["type"] == "test_output" and UP in e["text"] for e in seen[started[1] :]
            ):
                up.add(n)
        return up == {1, 2}

    race.until(both_runs_up, "both attempts' runs under way")
    race.proc.send_signal(signal.SIGINT)
    race.proc.send_signal(signal.SIGINT)
    try:
        code = race.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("a second interrupt did not end the race") from None
    assert race.proc.stderr is not None
    err = race.proc.stderr.read().decode()
    assert code == 130, err
    wait_until(lambda: not session_processes(), "the session's processes to go")
    if quiet:
        assert "Traceback" not in err, err


def test_a_baseline_already_green_leaves_nothing_behind(make_repo, scripted_openai) -> None:
    repo = make_repo({**KATA, "calc.py": "def add(a, b):\n    return a + b\n"})
    done = codexloop(
        TARGET,
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m1,m2",
        "--attempts",
        "2",
        "--accept",
        "all",
        cwd=repo,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    last = assert_one_session_end(events)
    assert last["status"] == "passed"
    assert scripted_openai.requests == []
    assert branches(repo) == []
    assert "nothing to keep" in done.stderr
    assert run_git(repo, "status", "--porcelain") == ""


def test_a_race_replays_every_attempt_and_the_same_winner(make_repo, scripted_openai) -> None:
    """Issue 17: traces, one per attempt, plus the session's index; ``replay`` plays all."""
    repo = make_repo(KATA)
    scripted_openai.add_for(
        "a",
        Reply(text="a guesses.", tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="a is done."),
    )
    scripted_openai.add_for(
        "b",
        Reply(text="b fixes it.", tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="b is done."),
    )
    recorded = codexloop(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "a,b",
        "--attempts", "2", "--pick", "best", "--max-iterations", "1", cwd=repo, timeout=120,
    )  # fmt: skip
    assert recorded.returncode == 0, recorded.stderr
    first = events_of(recorded.stdout)
    session = next(e for e in first if e["type"] == "winner")["branch"].rpartition("/")[0]
    folder = Path(os.environ["XDG_STATE_HOME"]) / "codexloop" / "traces"
    races = folder / session.removeprefix("codexloop/")
    assert (races / "index.json").is_file()
    for given in (races, races / "index.json"):
        played = codexloop("replay", str(given), "--headless", "--speed", "max", cwd=repo)
        assert played.returncode == 0, played.stderr
        assert "diverged" not in played.stderr
        events = events_of(played.stdout)
        ends = {e["attempt"]: e["status"] for e in events if e["type"] == "attempt_finished"}
        assert ends == {1: "failed", 2: "passed"}
        said = {
            n: "".join(e["text"] for e in events if e["type"] == "model_text" and e["attempt"] == n)
            for n in (1, 2)
        }
        assert said == {1: "a guesses.a is done.", 2: "b fixes it.b is done."}
        assert next(e for e in events if e["type"] == "winner")["attempt"] == 2
    # The replays' copies are gone; the recorded race's branches stay.
    listed = codexloop("branches", cwd=repo).stdout
    assert listed.count(session + "/") == 1 and "  a1  " in listed and "  a2  " in listed

    (races / "index.json").write_text("{not json")
    broken = codexloop("replay", str(races), "--headless", cwd=repo)
    assert broken.returncode == 2 and "not a race's index of traces" in broken.stderr
    assert "Traceback" not in broken.stderr
