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
from loophelpers import events_of, run_cli, tool_results, user_texts
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


def _red_session(scripted, repo: Path, *extra: str) -> dict[str, Any]:
    """A session that spends its one iteration on a wrong try: its last event."""
    scripted.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})]),
        Reply(text="done"),
    )
    first = run_cli(
        TARGET, "--headless", "--base-url", scripted.base_url, "--model", "m",
        "--max-iterations", "1", *extra, cwd=repo, timeout=120,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    return events_of(first.stdout)[-1]


def _resume(scripted, repo: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "resume", *extra, "--headless", "--base-url", scripted.base_url, cwd=repo, timeout=120
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
    branch = _red_session(scripted_openai, repo)["branch"]
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
    race = run_cli("resume", "--attempts", "3", "--hint", "h", cwd=repo)
    assert race.returncode == 2 and "--attempts, --hint: a resume goes on" in race.stderr

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
    finished = _red_session(scripted_openai, repo)
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


# -- a second pair of eyes: resuming again, broken records, a hostile worktree, races ---------


def test_a_resumed_session_resumes_again(make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    branch = _red_session(scripted_openai, repo)["branch"]
    name = branch.removeprefix("codexloop/")
    scripted_openai.add(
        Reply(
            tool_calls=[Call("write_file", {"path": "calc.py", "content": "# second\n" + WRONG})]
        ),
        Reply(text="second try"),
    )
    second = _resume(scripted_openai, repo)
    assert second.returncode == 1, second.stderr
    events = events_of(second.stdout)
    assert [e["iteration"] for e in events if e["type"] == "iteration_started"] == [2]
    asked = len(scripted_openai.requests)
    _fix_turns(scripted_openai)
    third = _resume(scripted_openai, repo, branch)
    assert third.returncode == 0, third.stderr
    events = events_of(third.stdout)
    started = next(e for e in events if e["type"] == "loop_started")
    assert started["iterations_done"] == 2
    assert [e["iteration"] for e in events if e["type"] == "iteration_started"] == [3]
    assert events[-1]["iterations"] == 3
    traces = resume.traces_dir()
    assert (traces / f"{name}.jsonl").is_file()
    assert (traces / f"{name}.resumed-2.jsonl").is_file()
    assert (traces / f"{name}.resumed-3.jsonl").is_file()
    # Both earlier parts' turns, each resume said once, in order.
    request = scripted_openai.requests[asked]
    texts = [m.get("content") for m in request["messages"]]
    assert texts.index("done") < texts.index("second try")
    assert user_texts(request).count("has been resumed") == 2


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "not-an-object", "wrong-types", "no-settings", "empty"],
)
def test_a_damaged_record_is_said_plainly(make_repo, scripted_openai, damage) -> None:
    repo = make_repo(FILES)
    branch = _red_session(scripted_openai, repo)["branch"]
    path = resume.record_path(branch.removeprefix("codexloop/"))
    text = path.read_text()
    data = json.loads(text)
    damaged = {
        "truncated": text[: len(text) // 2],
        "garbage": "\x00\xff not json",
        "not-an-object": "[1, 2, 3]",
        "wrong-types": json.dumps(
            {**data, "iterations": "three", "settings": ["x"], "targets": 5, "conversation": 7}
        ),
        "no-settings": json.dumps({k: v for k, v in data.items() if k != "settings"}),
        "empty": "",
    }[damage]
    path.write_text(damaged, errors="surrogateescape")
    for how in ([branch], ["--last"], []):
        result = _resume(scripted_openai, repo, *how)
        assert result.returncode == 2, (how, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        assert result.stderr.startswith("codexloop: error: "), result.stderr
    named = _resume(scripted_openai, repo, branch)
    assert str(path) in named.stderr, named.stderr  # which file, not "made by an older codexloop"
    listing = run_cli("branches", cwd=repo)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr


def test_a_record_of_a_deleted_branch_or_another_repository(make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    other = make_repo(FILES, name="other")
    branch = _red_session(scripted_openai, repo)["branch"]
    elsewhere = run_cli("resume", branch, cwd=other)
    assert elsewhere.returncode == 2, elsewhere.stderr
    assert f"{branch} is a session of {repo}, not of {other}" in elsewhere.stderr
    assert run_cli("resume", cwd=other).returncode == 2
    worktree = next(
        line.removeprefix("worktree ")
        for line in run_git(repo, "worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ") and "codexloop" in line
    )
    run_git(repo, "worktree", "remove", "--force", worktree)
    run_git(repo, "branch", "-D", branch)
    gone = run_cli("resume", branch, cwd=repo)
    assert gone.returncode == 2 and "is gone" in gone.stderr, gone.stderr
    assert "Traceback" not in gone.stderr
    last = run_cli("resume", "--last", cwd=repo)
    assert last.returncode == 2 and "no session of" in last.stderr


def test_resume_in_the_app_without_a_terminal_is_refused(make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    _red_session(scripted_openai, repo)
    asked = len(scripted_openai.requests)
    result = run_cli("resume", "--base-url", scripted_openai.base_url, cwd=repo)
    assert result.returncode == 2, result.stderr
    assert "not a terminal: use --headless" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(scripted_openai.requests) == asked
    assert "[resumable: failed after 1 iteration]" in run_cli("branches", cwd=repo).stdout


def test_last_takes_the_latest_session_of_this_repository(make_repo, scripted_openai) -> None:
    here = make_repo(FILES)
    there = make_repo(FILES, name="there")
    mine = _red_session(scripted_openai, here)["branch"]
    theirs = _red_session(scripted_openai, there)["branch"]  # the newest of all
    (here / "tests" / "deep").mkdir()
    _fix_turns(scripted_openai)
    result = run_cli(
        "resume", "--last", "--headless", "--base-url", scripted_openai.base_url,
        cwd=here / "tests" / "deep", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"resuming {mine}" in result.stderr
    assert run_git(here, "show", f"{mine}:calc.py") == RIGHT
    assert "[resumable: failed after 1 iteration]" in run_cli("branches", cwd=there).stdout
    assert theirs not in run_git(here, "branch", "--list")


def _race_turn(body: dict[str, Any]) -> Reply:
    """Each attempt's model: a wrong try, then done (whichever attempt asks first)."""
    if body["messages"][-1]["role"] == "tool":
        return Reply(text="done")
    return Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})])


def test_one_attempt_of_a_race_resumes_alone(make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    scripted_openai.add(*([_race_turn] * 4))
    race = run_cli(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m",
        "--attempts", "2", "--max-iterations", "1", cwd=repo, timeout=180,
    )  # fmt: skip
    assert race.returncode == 1, race.stderr
    attempts = sorted(
        line.strip(" *+") for line in run_git(repo, "branch", "--list", "codexloop/*").splitlines()
    )
    assert [a.rpartition("/")[2] for a in attempts] == ["a1", "a2"], attempts
    first, second = attempts
    before = run_git(repo, "rev-parse", first)
    listing = run_cli("branches", cwd=repo).stdout
    assert listing.count("[resumable: failed after 1 iteration]") == 2, listing
    _fix_turns(scripted_openai)
    result = _resume(scripted_openai, repo, second)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    started = next(e for e in events if e["type"] == "loop_started")
    assert started["branch"] == second and started["iterations_done"] == 1
    assert all(e.get("attempt", 1) == 1 for e in events)
    assert events[-1]["type"] == "loop_finished" and events[-1]["branch"] == second
    assert run_git(repo, "show", f"{second}:calc.py") == RIGHT
    assert run_git(repo, "rev-parse", first) == before  # the other attempt is left as it was
    name = second.removeprefix("codexloop/")
    assert (resume.traces_dir() / f"{name}.resumed-2.jsonl").is_file()


def _worktree_gitdir(worktree: Path) -> Path:
    return Path((worktree / ".git").read_text().removeprefix("gitdir:").strip())


def test_a_worktree_linked_to_a_git_dir_of_the_models_is_refused(
    make_repo, scripted_openai, tmp_path
) -> None:
    """What a model running commands without bubblewrap could leave for the resume: the
    worktree's .git pointing at a copy of the repository's git dir whose configuration runs a
    program of its own (commit.gpgSign with gpg.program), with every link the git-link check
    looks at in place."""
    repo = make_repo(FILES)
    finished = _red_session(scripted_openai, repo)
    worktree = Path(finished["worktree"])
    real = _worktree_gitdir(worktree)
    marker = tmp_path / "ran-on-the-host"
    program = tmp_path / "evil.sh"
    program.write_text(f"#!/bin/sh\ntouch {marker}\ncat >/dev/null\nexit 1\n")
    program.chmod(0o755)
    evil = tmp_path / "evil"
    subprocess.run(["cp", "-a", str(repo / ".git"), str(evil)], check=True)
    with (evil / "config").open("a") as config:
        config.write(f"[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = {program}\n")
        config.write(f"[core]\n\tpager = {program}\n")
    (worktree / ".git").write_text(f"gitdir: {evil / 'worktrees' / real.name}\n")
    _fix_turns(scripted_openai)
    result = _resume(scripted_openai, repo)
    assert not marker.exists(), "a program of the model's git config ran on the host"
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"is not a linked git worktree of {repo}" in result.stderr, result.stderr
    assert len(scripted_openai.requests) == 2  # the model was never asked


@pytest.mark.parametrize("how", ["directory", "symlink", "missing", "elsewhere"])
def test_a_tampered_git_link_is_refused(make_repo, scripted_openai, tmp_path, how) -> None:
    repo = make_repo(FILES)
    finished = _red_session(scripted_openai, repo)
    worktree = Path(finished["worktree"])
    dotgit = worktree / ".git"
    real = _worktree_gitdir(worktree)
    dotgit.unlink()
    if how == "directory":  # a repository of the model's own
        subprocess.run(["git", "init", "-q", str(worktree)], check=True)
    elif how == "symlink":
        dotgit.symlink_to(real)
    elif how == "elsewhere":  # another session's git dir
        dotgit.write_text(f"gitdir: {repo / '.git'}\n")
    result = _resume(scripted_openai, repo)
    assert result.returncode == 2, result.stderr
    said = "is in the way" if how == "missing" else "is not a linked git worktree"
    assert said in result.stderr and "its .git file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(scripted_openai.requests) == 2


def test_what_the_model_left_in_the_worktree_does_not_trip_the_resume(
    make_repo, scripted_openai, tmp_path
) -> None:
    """Links out of the worktree and in a loop, a named pipe, a huge sparse file: left by
    the first session's model, met by the resumed session's scan and test run."""
    repo = make_repo(FILES)
    finished = _red_session(scripted_openai, repo)
    worktree = Path(finished["worktree"])
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    (worktree / "notes").symlink_to(secret)
    (worktree / "outside").symlink_to(tmp_path)
    (worktree / "loop").symlink_to(worktree / "loop")
    os.mkfifo(worktree / "pipe")
    with (worktree / "huge.bin").open("wb") as huge:
        huge.truncate(3 * 2**30)
    _fix_turns(scripted_openai)
    result = _resume(scripted_openai, repo)
    assert result.returncode == 0, result.stderr
    branch = finished["branch"]
    assert run_git(repo, "show", f"{branch}:calc.py") == RIGHT
    listed = run_git(repo, "ls-tree", "-r", "--name-only", branch).split()
    assert "huge.bin" not in listed and "pipe" not in listed
    assert "host secret" not in run_git(repo, "log", "-p", branch)


GUARDED = {
    **FILES,
    "tests/test_other.py": "from calc import add\n\n\ndef test_zero():\n    assert add(0, 0) == 0\n",
    "tests/test_more.py": "def test_more():\n    assert True\n",
}
WEAKENED = "def test_zero():\n    pass\n"


def test_a_resumed_session_keeps_the_guards_tests_protected(make_repo, scripted_openai) -> None:
    repo = make_repo(GUARDED)
    guard = f"{sys.executable} -m pytest -q tests/test_other.py"
    branch = _red_session(scripted_openai, repo, "--guard", guard)["branch"]
    asked = len(scripted_openai.requests)
    scripted_openai.add(
        Reply(
            tool_calls=[Call("write_file", {"path": "tests/test_other.py", "content": WEAKENED})]
        ),
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": RIGHT})]),
        Reply(text="done"),
    )
    result = _resume(scripted_openai, repo)
    assert result.returncode == 0, result.stderr
    refused = tool_results(scripted_openai.requests[asked + 1])[-1]
    assert "regression guard" in refused, refused
    assert run_git(repo, "show", f"{branch}:tests/test_other.py") == GUARDED["tests/test_other.py"]


def test_a_guard_given_again_is_taken_afresh(make_repo, scripted_openai) -> None:
    """The record's guard verdict is of the session's own guard: resumed with another one,
    the tests that passed under the first are not asked of the second."""
    repo = make_repo(GUARDED)
    _red_session(
        scripted_openai, repo, "--guard", f"{sys.executable} -m pytest -q tests/test_other.py"
    )
    _fix_turns(scripted_openai)
    result = _resume(
        scripted_openai, repo, "--guard", f"{sys.executable} -m pytest -q tests/test_more.py"
    )
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    guards = [e for e in events if e["type"] == "guard_finished"]
    assert guards and guards[-1]["passed"] is True, guards
    assert any(
        e["type"] == "notice" and "the guard's starting run was on the code" in e["message"]
        for e in events
    )


def test_a_session_being_resumed_is_not_resumed_twice(make_repo, scripted_openai, tmp_path) -> None:
    """Two ``codexloop resume`` at once (a second terminal, before the first has written its
    record): the second is refused, and what the first runs is left alone."""
    slow, started = tmp_path / "slow", tmp_path / "slow.started"
    conftest = (
        "import os, time\n"
        f"if os.path.exists({str(slow)!r}):\n"
        f"    open({str(started)!r}, 'w').close()\n"
        "    deadline = time.time() + 30\n"
        f"    while os.path.exists({str(slow)!r}) and time.time() < deadline:\n"
        "        time.sleep(0.05)\n"
    )
    repo = make_repo({**FILES, "tests/conftest.py": conftest})
    branch = _red_session(scripted_openai, repo)["branch"]
    slow.touch()
    _fix_turns(scripted_openai)
    first = subprocess.Popen(
        [sys.executable, "-m", "codexloop", "resume", "--headless"],
        cwd=repo, env=_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(600):
            if started.exists() or first.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert started.exists(), first.communicate(timeout=30)
        second = run_cli("resume", branch, "--headless", cwd=repo)
        assert second.returncode == 2, second.stderr
        assert "is being resumed" in second.stderr, second.stderr
    finally:
        slow.unlink()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert events_of(out.decode())[-1]["status"] == "passed"
    assert run_git(repo, "show", f"{branch}:calc.py") == RIGHT


def test_a_responses_api_session_with_reasoning_resumes(make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    scripted_openai.add(
        Reply(
            tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})],
            reasoning="multiply, perhaps",
        ),
        Reply(text="done", reasoning="that should do"),
    )
    first = run_cli(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m",
        "--api", "responses", "--max-iterations", "1", cwd=repo, timeout=120,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    asked = len(scripted_openai.requests)
    _fix_turns(scripted_openai)
    result = _resume(scripted_openai, repo)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    notices = [e["message"] for e in events if e["type"] == "notice"]
    assert not [n for n in notices if "could not be read" in n or "not written" in n], notices
    request = scripted_openai.requests[asked]
    assert "input" in request and "has been resumed" in json.dumps(request["input"])
    kinds = [item.get("type") or item.get("role") for item in request["input"]]
    assert kinds[:3] == ["user", "function_call", "function_call_output"], kinds


def test_a_record_written_before_a_field_was_added_still_loads(tmp_path) -> None:
    """A session recorded before ``guard_classes`` existed is resumable (the race attempts of
    an earlier version were left out of ``branches``)."""
    record = resume.SessionRecord(
        name="old", repo=str(tmp_path), branch="codexloop/old", base="0" * 40,
        targets=["tests/test_x.py"], settings={},
    )  # fmt: skip
    resume.save(record)
    data = json.loads(record.path.read_text())
    del data["guard_classes"]
    record.path.write_text(json.dumps(data))
    loaded = resume.load(record.path)
    assert loaded.name == "old" and loaded.guard_classes is None
    del data["branch"]  # a field every version wrote: its lack is damage
    record.path.write_text(json.dumps(data))
    with pytest.raises(resume.ResumeError, match="it has no branch"):
        resume.load(record.path)
