"""``codexloop resume``: a session stopped (SIGTERM), killed (SIGKILL) or out of budget goes on
where it was — same branch and worktree, the model shown its earlier turns, the budgets'
remaining parts — as real processes against the scripted server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import run_git
from loophelpers import events_of, run_cli, user_texts
from scripted_openai import Call, Reply

from codexloop.core import resume
from codexloop.core.conversation import LEFT_OUT, Conversation

pytestmark = pytest.mark.usefixtures("no_bwrap")

FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}
TARGET = "tests/test_calc.py::test_add"
WRONG = "def add(a, b):\n    return a * b  # first try\n"
RIGHT = "def add(a, b):\n    return a + b\n"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}


def _start(repo: Path, base_url: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "codexloop", TARGET, "--headless", "--base-url", base_url]
    return subprocess.Popen(
        [*command, "--model", "m", *extra],
        cwd=repo,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _first_session(scripted, repo: Path, hold: threading.Event, *extra: str):
    """A session whose first try is wrong and whose second turn hangs (in flight) after
    writing a note: the process is running its second iteration when this returns."""
    scripted.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})]),
        Reply(text="I changed add."),
        Reply(tool_calls=[Call("write_file", {"path": "notes.txt", "content": "in flight\n"})]),
        Reply(text="thinking...", hold=hold),
    )
    proc = _start(repo, scripted.base_url, *extra)
    assert scripted.wait_for_requests(4, timeout=60), proc.stderr.read() if proc.stderr else ""
    return proc


def _resumed_requests(scripted, since: int) -> list[dict[str, Any]]:
    return scripted.requests[since:]


def _fix_turns(scripted) -> None:
    scripted.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": RIGHT})]),
        Reply(text="add adds now."),
    )


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_or_stopped_session_resumes_to_green_with_its_conversation(
    make_repo, scripted_openai, how
) -> None:
    repo = make_repo(FILES)
    hold = threading.Event()
    proc = _first_session(scripted_openai, repo, hold)
    proc.send_signal(getattr(signal, how))
    out, err = proc.communicate(timeout=60)
    hold.set()
    first = events_of(out.decode())
    branch = next(e["branch"] for e in first if e["type"] == "loop_started")
    if how == "SIGTERM":  # stopped cleanly: said so, the record says so
        assert proc.returncode == 130, err
        assert first[-1]["type"] == "loop_finished" and first[-1]["status"] == "stopped"
    else:  # killed: no last word, the record still says running
        assert proc.returncode == -signal.SIGKILL
        assert not any(e["type"] == "loop_finished" for e in first)

    listing = run_cli("branches", cwd=repo)
    assert f"{branch}" in listing.stdout and "[resumable: " in listing.stdout, listing.stdout
    ended = "crashed" if how == "SIGKILL" else "stopped"
    assert f"[resumable: {ended} after 1 iteration]" in listing.stdout

    asked = len(scripted_openai.requests)
    _fix_turns(scripted_openai)
    result = run_cli(
        "resume", "--headless", "--base-url", scripted_openai.base_url, cwd=repo, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"resuming {branch}" in result.stderr
    events = events_of(result.stdout)
    started = next(e for e in events if e["type"] == "loop_started")
    assert started["branch"] == branch
    assert started["resumed"] is True and started["iterations_done"] == 1
    assert started["model"] == "m"  # the session's own model: not given again
    assert [e["iteration"] for e in events if e["type"] == "iteration_started"] == [2]
    assert events[-1]["type"] == "loop_finished" and events[-1]["status"] == "passed"

    # The model was shown its earlier turns, then the resumed note with the tests as they are.
    request = _resumed_requests(scripted_openai, asked)[0]
    calls = [
        json.loads(c["function"]["arguments"])
        for m in request["messages"]
        if m["role"] == "assistant"
        for c in m.get("tool_calls") or ()
    ]
    assert {"path": "calc.py", "content": WRONG} in calls
    assert any(m.get("content") == "I changed add." for m in request["messages"])
    texts = user_texts(request)
    assert "has been resumed" in texts and "assert 6 == 5" in texts
    # What the turn in flight wrote stays in the work.
    assert run_git(repo, "show", f"{branch}:notes.txt") == "in flight\n"
    assert run_git(repo, "show", f"{branch}:calc.py") == RIGHT


def test_a_session_out_of_iterations_resumes_with_as_much_again(make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})]),
        Reply(text="done"),
    )
    first = run_cli(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m",
        "--max-iterations", "1", cwd=repo, timeout=120,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    branch = events_of(first.stdout)[-1]["branch"]
    _fix_turns(scripted_openai)
    result = run_cli(
        "resume", branch, "--headless", "--base-url", scripted_openai.base_url,
        cwd=repo, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    assert next(e for e in events if e["type"] == "loop_started")["max_iterations"] == 1
    notices = [e["message"] for e in events if e["type"] == "notice"]
    assert "resumed after 1 iteration: 1 more iteration" in notices
    assert events[-1]["status"] == "passed" and events[-1]["iterations"] == 2


def test_a_spent_token_budget_is_given_again_and_the_spend_so_far_counts(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(FILES)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})]),
        Reply(text="done", usage=(5_000, 100)),
    )
    first = run_cli(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m",
        "--max-tokens", "4000", cwd=repo, timeout=120,
    )  # fmt: skip
    assert first.returncode == 1 and "token budget" in events_of(first.stdout)[-1]["reason"]
    _fix_turns(scripted_openai)
    result = run_cli(
        "resume", "--last", "--headless", "--base-url", scripted_openai.base_url,
        cwd=repo, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    assert any(
        e["type"] == "notice" and "the spent budgets as much again" in e["message"] for e in events
    )
    usage = [e for e in events if e["type"] == "usage"]
    assert usage and usage[-1]["input_total"] > 5_000  # the first part's tokens count on


def test_resume_says_clearly_when_there_is_nothing_to_resume(make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    nothing = run_cli("resume", cwd=repo)
    assert nothing.returncode == 2
    assert "no session of" in nothing.stderr and "Traceback" not in nothing.stderr
    unknown = run_cli("resume", "codexloop/nope", cwd=repo)
    assert unknown.returncode == 2 and "no session named codexloop/nope" in unknown.stderr
    both = run_cli("resume", "x", "--last", cwd=repo)
    assert both.returncode == 2 and "not allowed with" in both.stderr

    # A green session is not resumed: it is reviewed, or built on.
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": RIGHT})]),
        Reply(text="done"),
    )
    green = run_cli(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m",
        cwd=repo, timeout=120,
    )  # fmt: skip
    assert green.returncode == 0, green.stderr
    branch = events_of(green.stdout)[-1]["branch"]
    again = run_cli("resume", branch, cwd=repo)
    assert again.returncode == 2 and "it went green" in again.stderr
    assert "[resumable" not in run_cli("branches", cwd=repo).stdout


def test_a_cleaned_session_is_forgotten(make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    scripted_openai.add(Reply(text="no idea"))
    first = run_cli(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m",
        "--max-iterations", "1", cwd=repo, timeout=120,
    )  # fmt: skip
    branch = events_of(first.stdout)[-1]["branch"]
    name = branch.removeprefix("codexloop/")
    assert resume.record_path(name).is_file()
    assert run_cli("clean", cwd=repo).returncode == 0
    assert not resume.record_path(name).exists()
    assert run_cli("resume", cwd=repo).returncode == 2


def test_a_removed_worktree_is_checked_out_again(make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})]),
        Reply(text="done"),
    )
    first = run_cli(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m",
        "--max-iterations", "1", cwd=repo, timeout=120,
    )  # fmt: skip
    finished = events_of(first.stdout)[-1]
    run_git(repo, "worktree", "remove", "--force", finished["worktree"])
    _fix_turns(scripted_openai)
    result = run_cli(
        "resume", "--headless", "--base-url", scripted_openai.base_url, cwd=repo, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert run_git(repo, "show", f"{finished['branch']}:calc.py") == RIGHT


def test_the_conversation_survives_its_round_trip() -> None:
    conversation = Conversation("first message")
    conversation.start_iteration()
    conversation.messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        }
    )
    conversation.tool_result("c1", "result")
    conversation.say("red")
    conversation.start_iteration()
    conversation.say("red again")
    conversation.fit(conversation.size - 3)  # leaves iteration 1 out: a note stands for it
    data = json.loads(json.dumps(conversation.to_data()))
    again = Conversation.restored(data)
    assert again.messages == [
        {**m, LEFT_OUT: again.messages[i][LEFT_OUT]} if m.get(LEFT_OUT) else m
        for i, m in enumerate(conversation.messages)
    ]
    assert again.iteration == 2
    note = next(m for m in again.messages if m.get(LEFT_OUT))
    assert note[LEFT_OUT].text() == note["content"]
    with pytest.raises(ValueError):
        Conversation.restored({"sections": [], "messages": [{"role": "system"}]})
