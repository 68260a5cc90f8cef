"""``codexloop batch FILE``: a backlog of tasks run as independent sessions, a few at a time.

Each test runs a real codexloop (a process, or ``main()`` for bad input that never gets to a
session) against the scripted server; each task names its own model, so its turns come from
its own script whatever the order the sessions ask in. A test that needs two sessions running
at once holds their first model turns until the server has seen both (never a sleep).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from batch_tasks import ADD, FILES, FIXED, MUL, SUB, ends, fix, most_at_once, write_tasks, wrong
from conftest import run_git
from loophelpers import events_of, run_cli
from scripted_openai import Reply

from codexloop.cli.args import ray_flag
from codexloop.cli.batch import batch_parser
from codexloop.cli.batch_file import read_tasks, task_config
from codexloop.main import main

ALLOWED = "targets, task, test_cmd, attempts, model, max_iterations, hints, pick"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def start(repo: Path, tasks: Path, base_url: str, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.Popen(
        [sys.executable, "-m", "codexloop", "batch", str(tasks), "--base-url", base_url, *extra],
        cwd=repo,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def preview_branches(repo: Path) -> list[str]:
    listed = run_git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/codexloop")
    return listed.split()


def summary_line(text: str, task: int) -> str:
    """Task ``task``'s line of the summary that ends a batch's output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("codexloop batch: "))
    found = [line for line in lines[start:] if line.startswith(f"task {task} ")]
    assert len(found) == 1, text
    return found[0]


def test_three_tasks_two_at_a_time_one_stays_red(make_repo, scripted_openai) -> None:
    """Lines 1, 3 and 5 (a comment and a blank line between): tasks 1 and 3 run first, task 5
    only once one of them is over; task 3 stays red, so the batch exits 1."""
    repo = make_repo(FILES)
    both = threading.Event()
    scripted_openai.add_for("t1", *fix("calc.py", hold=both))
    scripted_openai.add_for("t3", *wrong("mul.py", hold=both))
    scripted_openai.add_for("t5", *fix("sub.py"))
    tasks = write_tasks(
        repo,
        {"targets": [ADD], "model": "t1"},
        "# this one never goes green",
        {"targets": [MUL], "model": "t3", "max_iterations": 1},
        "",
        {"targets": [SUB], "model": "t5", "task": "make sub subtract"},
    )
    proc = start(repo, tasks, scripted_openai.base_url, "--headless", "--concurrency", "2")
    try:
        assert scripted_openai.wait_for_requests(2, timeout=60), "two sessions at once"
        assert sorted(r["model"] for r in scripted_openai.requests) == ["t1", "t3"]
    finally:
        both.set()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    events = events_of(out)
    assert {e["task"] for e in events} == {1, 3, 5}
    assert most_at_once(events) == 2
    finished = ends(events)
    assert {task: e["status"] for task, e in finished.items()} == {
        1: "passed",
        3: "failed",
        5: "passed",
    }
    first_of_5 = next(i for i, e in enumerate(events) if e["task"] == 5)
    assert any(e["type"] == "loop_finished" for e in events[:first_of_5])
    assert "Traceback" not in err
    assert "codexloop batch: 2 of 3 tasks green" in err
    for task, state in ((1, "green"), (3, "red"), (5, "green")):
        line = summary_line(err, task)
        assert line.split()[2] == state, line
        assert finished[task]["branch"] in line and "1 iteration" in line, line
    assert "not green after 1 iteration" in summary_line(err, 3)
    assert (repo / "calc.py").read_text() == FILES["calc.py"]  # the checkout is untouched


def test_every_task_green_each_on_its_own_branch(make_repo, scripted_openai) -> None:
    """Not a terminal: a line as each task starts and ends, then the summary; exit 0, and each
    task's fix on its own preview branch (and only its own)."""
    repo = make_repo(FILES)
    scripted_openai.add_for("t1", *fix("calc.py"))
    scripted_openai.add_for("t2", *fix("sub.py"))
    tasks = write_tasks(repo, {"targets": [ADD], "model": "t1"}, {"targets": [SUB], "model": "t2"})
    done = run_cli(
        "batch", str(tasks), "--base-url", scripted_openai.base_url, cwd=repo, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "task 1 started: test_calc.py::test_add" in lines
    assert "task 2 started: test_sub.py::test_sub" in lines
    assert "codexloop batch: 2 of 2 tasks green" in lines
    branches = {}
    for task in (1, 2):
        ended = [line for line in lines if line.startswith(f"task {task} green: ")]
        assert len(ended) == 1, done.stdout
        branches[task] = ended[0].split(": ", 1)[1].split(",")[0]
        assert branches[task] in summary_line(done.stdout, task)
    assert sorted(branches.values()) == sorted(preview_branches(repo))
    assert run_git(repo, "show", f"{branches[1]}:calc.py") == FIXED["calc.py"]
    assert run_git(repo, "show", f"{branches[1]}:sub.py") == FILES["sub.py"]
    assert run_git(repo, "show", f"{branches[2]}:sub.py") == FIXED["sub.py"]
    assert run_git(repo, "show", f"{branches[2]}:calc.py") == FILES["calc.py"]
    assert (repo / "calc.py").read_text() == FILES["calc.py"]
    assert (repo / "sub.py").read_text() == FILES["sub.py"]


STREAMED = {"test_output", "model_text", "command_output", "model_reasoning"}


def test_headless_lines_are_the_main_commands_events_with_task(make_repo, scripted_openai) -> None:
    """The same session, run alone and as task 2 of a batch: the same events, the same
    fields, plus ``task``."""
    alone_repo = make_repo(FILES, name="alone")
    scripted_openai.add_for("solo", *fix("calc.py"))
    alone = run_cli(
        ADD,
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "solo",
        cwd=alone_repo,
        timeout=120,
    )
    assert alone.returncode == 0, alone.stderr
    repo = make_repo(FILES)
    scripted_openai.add_for("t2", *fix("calc.py"))
    tasks = write_tasks(repo, "# the backlog", {"targets": [ADD]})
    done = run_cli(
        "batch",
        str(tasks),
        "--headless",
        "--model",
        "t2",
        "--base-url",
        scripted_openai.base_url,
        cwd=repo,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "codexloop batch: 1 of 1 task green" in done.stderr
    batch = events_of(done.stdout)
    assert all(list(e)[:2] == ["type", "task"] and e["task"] == 2 for e in batch)
    single = events_of(alone.stdout)
    assert [e["type"] for e in batch if e["type"] not in STREAMED] == [
        e["type"] for e in single if e["type"] not in STREAMED
    ]
    keys = {e["type"]: set(e) for e in single}
    for event in batch:
        assert set(event) - {"task"} == keys[event["type"]], event


def test_a_task_with_two_attempts_races_them(make_repo, scripted_openai) -> None:
    """``attempts`` in a task: its events carry both attempts, and a winner."""
    repo = make_repo(FILES)
    scripted_openai.add_for("m1", *fix("calc.py"))
    scripted_openai.add_for("m2", Reply(text="Thinking."), Reply(text="Still thinking."))
    tasks = write_tasks(repo, {"targets": [ADD], "model": "m1,m2", "attempts": 2})
    done = run_cli(
        "batch",
        str(tasks),
        "--headless",
        "--pick",
        "first",
        "--base-url",
        scripted_openai.base_url,
        cwd=repo,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert {e["attempt"] for e in events if e["type"] == "loop_started"} == {1, 2}
    assert sorted(e["attempt"] for e in events if e["type"] == "attempt_finished") == [1, 2]
    winner = [e for e in events if e["type"] == "winner"]
    assert len(winner) == 1 and winner[0]["attempt"] == 1 and winner[0]["task"] == 1
    assert winner[0]["branch"] in summary_line(done.stderr, 1)


class Terminal:
    """``codexloop batch`` on a pseudo-terminal of 120 by 30; what it shows, escape codes
    dropped."""

    def __init__(self, repo: Path, tasks: Path, base_url: str) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "COLUMNS")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codexloop", "batch", str(tasks), "--base-url", base_url],
            cwd=repo,
            env={k: v for k, v in env.items() if k != "LINES"},
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
        )
        os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace")).replace("\r", "")

    def until(self, pattern: str | None) -> None:
        """Read until ``pattern`` shows (None: to the end)."""
        deadline = time.monotonic() + 90
        while pattern is None or not re.search(pattern, self.text):
            ready, _, _ = select.select([self.master], [], [], max(deadline - time.monotonic(), 0))
            try:
                chunk = os.read(self.master, 1 << 16) if ready else b""
            except OSError:  # EIO: the process is gone
                chunk = b""
            if not chunk:
                assert pattern is None, f"never showed {pattern!r}: {self.text[-2000:]}"
                return
            self.raw += chunk

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def test_the_live_table_shows_a_tasks_attempts(make_repo, scripted_openai) -> None:
    """On a terminal: a table redrawn in place, with a lane per attempt of a racing task;
    at the end the table gives way to one line per task."""
    repo = make_repo(FILES)
    hold = threading.Event()
    scripted_openai.add_for("m1", *fix("calc.py", hold=hold))
    scripted_openai.add_for("m2", Reply(text="Thinking.", hold=hold), Reply(text="Hmm."))
    tasks = write_tasks(repo, {"targets": [ADD], "model": "m1,m2", "attempts": 2})
    terminal = Terminal(repo, tasks, scripted_openai.base_url)
    try:
        try:  # both attempts wait on their model: a frame shows both lanes so
            terminal.until(r"racing .*\n +a1 +thinking .*\n +a2 +thinking ")
        finally:
            hold.set()
        terminal.until(None)
        assert terminal.proc.wait(timeout=60) == 0, terminal.text[-2000:]
    finally:
        terminal.close()
    shown = terminal.text
    assert re.search(r"#  targets +state +iter +tokens +time", shown)
    assert re.search(r"\n +1  test_calc\.py::test_add +racing +\d+/10 ", shown)
    assert "codexloop batch: 1 of 1 task green" in shown
    assert re.search(r"task 1 +green +test_calc\.py::test_add +codexloop/\S+/a1, ", shown)
    assert shown.rstrip().endswith(" s")  # the summary is last: the table gave way to it


def test_an_exam_green_at_once_leaves_no_branch(make_repo, scripted_openai) -> None:
    repo = make_repo({**FILES, "calc.py": FIXED["calc.py"]})
    tasks = write_tasks(repo, {"targets": [ADD]})
    done = run_cli(
        "batch", str(tasks), "--base-url", scripted_openai.base_url, "--model", "m", cwd=repo
    )
    assert done.returncode == 0, done.stderr
    assert "green at once: nothing to keep" in summary_line(done.stdout, 1)
    assert preview_branches(repo) == []
    assert scripted_openai.requests == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_the_running_tasks_and_starts_no_other(
    make_repo, scripted_openai, sig: signal.Signals
) -> None:
    repo = make_repo(FILES)
    hold = threading.Event()
    scripted_openai.add_for("t1", *fix("calc.py", hold=hold))
    scripted_openai.add_for("t2", *fix("sub.py", hold=hold))
    scripted_openai.add_for("t3", *fix("mul.py"))
    tasks = write_tasks(
        repo,
        {"targets": [ADD], "model": "t1"},
        {"targets": [SUB], "model": "t2"},
        {"targets": [MUL], "model": "t3"},
    )
    proc = start(repo, tasks, scripted_openai.base_url, "--headless")
    try:
        assert scripted_openai.wait_for_requests(2, timeout=60)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        hold.set()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    events = events_of(out)
    assert {task: e["status"] for task, e in ends(events).items()} == {1: "stopped", 2: "stopped"}
    assert 3 not in {e["task"] for e in events}
    assert "interrupted" in err.splitlines()[0]
    assert summary_line(err, 3).split()[2:4] == ["not", "run"]
    assert sorted(r["model"] for r in scripted_openai.requests) == ["t1", "t2"]
    assert len(preview_branches(repo)) == 2  # a stopped session keeps its branch


BAD: list[tuple[str, str | None, str]] = [
    ("missing file", None, "tasks.jsonl: no such file"),
    ("empty", "", "tasks.jsonl: no tasks in it"),
    ("only comments", "# later\n\n", "tasks.jsonl: no tasks in it"),
    ("not JSON", f'{{"targets": ["{ADD}"]}}\n\n{{"targets": [', "tasks.jsonl:3: not JSON: "),
    ("not an object", f'["{ADD}"]', "tasks.jsonl:1: not a JSON object"),
    ("no targets", '{"task": "fix it"}', 'tasks.jsonl:1: no "targets"'),
    (
        "unknown key",
        f'{{"targets": ["{ADD}"], "prompt": "x"}}',
        f'tasks.jsonl:1: unknown key "prompt" (allowed: {ALLOWED})',
    ),
    ("targets a string", f'{{"targets": "{ADD}"}}', "tasks.jsonl:1: targets must be a non-empty"),
    ("targets empty", '{"targets": []}', "tasks.jsonl:1: targets must be a non-empty list"),
    (
        "attempts a string",
        f'{{"targets": ["{ADD}"], "attempts": "2"}}',
        'tasks.jsonl:1: attempts must be a whole number of at least 1, not "2"',
    ),
    ("attempts a bool", f'{{"targets": ["{ADD}"], "attempts": true}}', "attempts must be"),
    ("no iterations", f'{{"targets": ["{ADD}"], "max_iterations": 0}}', "max_iterations must"),
    ("bad pick", f'{{"targets": ["{ADD}"], "pick": "worst"}}', 'pick must be "first" or "best"'),
    ("hints a string", f'{{"targets": ["{ADD}"], "hints": "x"}}', "hints must be a list"),
    ("task a number", f'{{"targets": ["{ADD}"], "task": 3}}', "task must be a string, not 3"),
    (
        "no such target",
        f'{{"targets": ["{ADD}"]}}\n{{"targets": ["tests/test_nope.py"]}}',
        "tasks.jsonl:2: ",
    ),
]


@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_and_exit_2_before_any_task_runs(
    make_repo, scripted_openai, monkeypatch, capsys, content: str | None, expected: str
) -> None:
    repo = make_repo(FILES)
    monkeypatch.chdir(repo)
    if content is not None:
        (repo / "tasks.jsonl").write_text(content)
    argv = ["batch", "tasks.jsonl", "--base-url", scripted_openai.base_url, "--model", "m"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("codexloop: error: ") and expected in err, err
    assert preview_branches(repo) == [] and scripted_openai.requests == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--accept", "all"], "--accept: a batch keeps each task's work on its preview branch"),
        (["--concurrency", "0"], "--concurrency"),
        ([], "the following arguments are required: FILE"),
    ],
    ids=["accept", "concurrency 0", "no file"],
)
def test_bad_options_are_one_line_and_exit_2(
    make_repo, monkeypatch, capsys, options: list[str], expected: str
) -> None:
    repo = make_repo(FILES)
    monkeypatch.chdir(repo)
    (repo / "tasks.jsonl").write_text(json.dumps({"targets": [ADD]}) + "\n")
    file = ["tasks.jsonl"] if options else []
    assert main(["batch", *file, *options, "--base-url", "http://127.0.0.1:9/v1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize(
    ("argv", "ray"),
    [
        (["--ray", "tasks.jsonl"], "auto"),
        (["tasks.jsonl", "--ray"], "auto"),
        (["--ray", "ray://head:10001", "tasks.jsonl"], "ray://head:10001"),
        (["tasks.jsonl"], None),
    ],
)
def test_ray_reaches_every_tasks_configuration(
    make_repo, monkeypatch, argv: list[str], ray: str | None
) -> None:
    """``--ray [ADDRESS]`` is taken as the main command takes it (no address before FILE),
    and each task's configuration carries it to the executor; a task's keys override the
    command line's options, the others stay."""
    repo = make_repo(FILES)
    monkeypatch.chdir(repo)
    (repo / "tasks.jsonl").write_text(
        json.dumps({"targets": [ADD], "attempts": 2, "hints": ["small", "big"]})
        + "\n"
        + json.dumps({"targets": [SUB, MUL], "model": "other", "max_iterations": 3})
        + "\n"
    )
    common = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--max-iterations", "5"]
    args = batch_parser().parse_args(ray_flag([*argv, *common]))
    assert args.file == Path("tasks.jsonl") and args.concurrency == 2
    first, second = (task_config(args, fields, "x") for _, fields in read_tasks(args.file))
    assert first.ray == second.ray == ray
    assert (first.attempts, first.hints, first.model, first.max_iterations) == (
        2,
        ("small", "big"),
        "m",
        5,
    )
    assert (second.attempts, second.model, second.max_iterations) == (1, "other", 3)
    assert second.targets == (SUB, MUL)
