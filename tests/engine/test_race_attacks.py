"""Attacks on a race (``--attempts N``): bad luck, hostile models, a user in the way.

Each test scripts what goes wrong — every endpoint failing, one attempt reaching for another's
worktree, a flagged green that is smaller than an honest one, the developer's working tree
changing under the winner, a stop before the race is decided — and checks what a race must
keep: one ``loop_finished`` for the session (its last event), a winner decided once, only
the winner applied, branches with work kept, nothing of another attempt touched.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import run_git
from loophelpers import KATA, edit, event_channel_run, make_config, of_type
from scripted_openai import Call, HTTPError, Reply

from codexloop.core import events as ev
from codexloop.core.loop import LoopResult, event_channel
from codexloop.core.race import Race
from codexloop.core.sandbox import repo_key, state_home
from codexloop.core.trace import traces_dir

pytestmark = pytest.mark.anyio

FIX = edit("calc.py", "a - b", "a + b")
WRONG = edit("calc.py", "a - b", "a * b")
# A one-line green that touches test machinery (an import hook): smaller than NOISY, flagged.
SNEAKY = edit("calc.py", "a - b", 'a + b + 0 * len(__import__("sys").meta_path)')
# An honest green with three comment lines: a bigger diff, no flags.
NOISY = edit(
    "calc.py",
    "def add(a, b):\n    return a - b",
    "def add(a, b):\n    # The sum of a and b.\n    # (It used to subtract.)\n    # Fixed.\n"
    "    return a + b",
)
WAIT_S = 90


def race(repo: Path, url: str, models: str, **overrides: Any) -> Race:
    name = overrides.pop("name", None)
    accept = {k: overrides.pop(k) for k in ("accept_all", "accept_flagged") if k in overrides}
    config = make_config(repo, url, model=models, **overrides)
    return Race(config, backoff=(0.0,), name=name, **accept)


def assert_one_session_end(events: list[ev.Event]) -> ev.LoopFinished:
    """A race ends with exactly one ``loop_finished`` (the session's), and it is the last event;
    ``winner`` at most once, before it; one ``attempt_finished`` per attempt."""
    last = events[-1]
    assert isinstance(last, ev.LoopFinished), [e.type for e in events[-5:]]
    assert of_type(events, ev.LoopFinished) == [last]
    winners = of_type(events, ev.Winner)
    assert len(winners) <= 1
    if winners:
        assert events.index(winners[0]) < len(events) - 1
    finished = [e.attempt for e in of_type(events, ev.AttemptFinished)]
    assert len(finished) == len(set(finished))
    return last


def branches(repo: Path) -> str:
    return run_git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/codexloop")


# -- bad luck: endpoints ---------------------------------------------------------------------


async def test_every_attempt_fails_on_its_endpoint_the_race_ends_red(
    make_repo, scripted_openai
) -> None:
    """a1's endpoint refuses every request (400), a2's is down (500): a red end that says why,
    per attempt; no crash, no winner."""
    repo = make_repo(KATA)
    scripted_openai.add_for("m1", *[HTTPError(400, "context too long") for _ in range(8)])
    scripted_openai.add_for("m2", *[HTTPError(500, "overloaded") for _ in range(8)])
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2)
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert result.status == "failed"
    last = assert_one_session_end(events)
    assert last.status == "failed" and last.attempt == 0 and of_type(events, ev.Winner) == []
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert set(finished) == {1, 2}
    for one in finished.values():
        assert one.status == "failed" and "model error" in one.reason
    assert "context too long" in finished[1].reason and "overloaded" in finished[2].reason
    assert "a1: model error" in last.reason and "a2: model error" in last.reason


async def test_one_endpoint_error_while_the_other_goes_green(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("m1", *[HTTPError(500, "overloaded") for _ in range(8)])
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2)
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert result.status == "passed" and result.branch.endswith("/a2")
    last = assert_one_session_end(events)
    assert last.status == "passed" and last.attempt == 2
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert finished[1].status in ("failed", "stopped")
    assert finished[2].status == "passed"


# -- --pick best and flags -------------------------------------------------------------------


async def test_best_prefers_an_unflagged_green_to_a_smaller_flagged_one(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("m1", Reply(tool_calls=[SNEAKY]), Reply(text="Fixed."))
    scripted_openai.add_for("m2", Reply(tool_calls=[NOISY]), Reply(text="Fixed, commented."))
    contest = race(
        repo, scripted_openai.base_url, "m1,m2", attempts=2, pick="best", accept_all=True
    )
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a2")
    # The flagged attempt's flags were found (its own loop scanned them) but it lost.
    assert {e.attempt for e in of_type(events, ev.Flagged)} == {1}
    [winner] = of_type(events, ev.Winner)
    assert winner.attempt == 2 and "without flags" in winner.why
    assert result.flagged == () and contest.flagged == []
    # Only the winner is applied: the honest, commented fix.
    [applied] = of_type(events, ev.Applied)
    assert applied.attempt == 2 and applied.written == ("calc.py",)
    text = (repo / "calc.py").read_text()
    assert "# The sum of a and b." in text and "meta_path" not in text


async def test_best_with_only_a_flagged_green_keeps_it_from_the_working_tree(
    make_repo, scripted_openai
) -> None:
    """``--accept all`` without ``flagged``: the only green is flagged, so nothing is applied
    (the winner's flags are the session's); ``--accept flagged`` is the way to take it."""
    repo = make_repo(KATA)
    scripted_openai.add_for("m1", Reply(tool_calls=[SNEAKY]), Reply(text="Fixed."))
    scripted_openai.add_for("m2", Reply(tool_calls=[WRONG]), Reply(text="Done."))
    contest = race(
        repo,
        scripted_openai.base_url,
        "m1,m2",
        attempts=2,
        pick="best",
        max_iterations=1,
        accept_all=True,
    )
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a1")
    assert result.flagged and all(f.attempt == 1 for f in result.flagged)
    assert result.applied is None and of_type(events, ev.Applied) == []  # nothing tried
    notices = [e for e in of_type(events, ev.Notice) if "nothing applied" in e.message]
    assert [n.attempt for n in notices] == [1]
    assert (repo / "calc.py").read_text() == KATA["calc.py"]


async def test_accept_all_meets_a_conflict_in_the_working_tree_nothing_written(
    make_repo, scripted_openai
) -> None:
    """The developer edits calc.py while the race runs: the winner's change conflicts, nothing
    is written, the session says so (and the losers' changes never come near the tree)."""
    repo = make_repo(KATA)
    mine = "def add(a, b):\n    return b - a  # the developer's\n"

    def developer_edits(body: dict[str, Any]) -> Reply:
        (repo / "calc.py").write_text(mine)
        return Reply(tool_calls=[FIX])

    scripted_openai.add_for("m1", Reply(tool_calls=[WRONG]), Reply(text="Done."))
    scripted_openai.add_for("m2", developer_edits, Reply(text="Fixed."))  # type: ignore[arg-type]
    contest = race(
        repo,
        scripted_openai.base_url,
        "m1,m2",
        attempts=2,
        max_iterations=1,
        accept_all=True,
    )
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a2")
    [applied] = of_type(events, ev.Applied)
    assert [c.split(":")[0] for c in applied.conflicts] == ["calc.py"]
    assert applied.written == ()
    assert result.applied is not None and not result.applied.ok
    assert (repo / "calc.py").read_text() == mine


# -- a hostile model -------------------------------------------------------------------------


async def test_an_attempt_cannot_reach_another_attempts_worktree(
    make_repo, scripted_openai
) -> None:
    """a1's model goes for a2's worktree: by relative path, by absolute path, through a symlink
    and from a shell command. The tools refuse; the sandbox's file system is read-only there
    (with bubblewrap); a2's work and branch are untouched."""
    repo = make_repo(KATA)
    name = "hostile-race"
    other = state_home() / "worktrees" / repo_key(repo) / name / "a2"
    pwned = "def add(a, b):\n    return 5  # pwned\n"
    attack = [
        Call("write_file", {"path": "../a2/calc.py", "content": pwned}),
        Call("write_file", {"path": str(other / "calc.py"), "content": pwned}),
        Call("read_file", {"path": "../a2/calc.py"}),
        Call(
            "run_command",
            {
                "command": f"ln -s {other} twin; echo pwned >> {other}/calc.py; echo pwned >> ../a2/x"
            },
        ),
        Call("write_file", {"path": "twin/calc.py", "content": pwned}),
        Call("edit_file", {"path": "twin/calc.py", "old_text": "a - b", "new_text": "5"}),
    ]
    a2_may_go = threading.Event()

    def attack_done(body: dict[str, Any]) -> Reply:
        a2_may_go.set()  # a1's tools have all answered: a2 may finish its work now
        return Reply(text="Done.")

    scripted_openai.add_for("m1", Reply(tool_calls=attack), attack_done)  # type: ignore[arg-type]
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX], hold=a2_may_go), Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, max_iterations=1, name=name)
    try:
        with anyio.fail_after(WAIT_S):
            result, events = await event_channel_run(contest)
    finally:
        a2_may_go.set()
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a2")
    results = [e for e in of_type(events, ev.ToolResult) if e.attempt == 1]
    by_name = [(r.name, r.ok, r.refused) for r in results]
    assert by_name[0] == ("write_file", False, True)  # ../a2/calc.py
    assert by_name[1] == ("write_file", False, True)  # the absolute path
    assert by_name[2] == ("read_file", False, True)
    assert by_name[4][1:] == (False, True) and by_name[5][1:] == (False, True)  # the symlink
    [started] = [e for e in of_type(events, ev.LoopStarted) if e.attempt == 1]
    shown = run_git(repo, "show", f"{result.branch}:calc.py")
    assert shown == "def add(a, b):\n    return a + b\n"
    assert "pwned" not in run_git(repo, "log", "-p", result.branch)
    if started.isolation != "none":  # bubblewrap: a2's worktree is hidden or read-only
        assert "pwned" not in (other / "calc.py").read_text()
        assert not (other / "x").exists()
        shell = "".join(e.text for e in of_type(events, ev.CommandOutput) if e.attempt == 1)
        assert "Read-only file system" in shell or "No such file or directory" in shell


# -- a baseline already green, a folder target, --continue -------------------------------------


@pytest.mark.parametrize("pick", ["first", "best"])
async def test_a_baseline_already_green_ends_every_attempt_at_once(
    make_repo, scripted_openai, pick: str
) -> None:
    """Nothing to do: no model call, one winner, and nothing worth a branch is left but the
    winner's (which headless removes: it made nothing)."""
    repo = make_repo({**KATA, "calc.py": "def add(a, b):\n    return a + b\n"})
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, pick=pick)
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    last = assert_one_session_end(events)
    assert result.status == "passed" and last.status == "passed"
    assert scripted_openai.requests == []
    finished = of_type(events, ev.AttemptFinished)
    assert sorted((e.attempt, e.status) for e in finished) == [(1, "passed"), (2, "passed")]
    [winner] = of_type(events, ev.Winner)
    assert branches(repo).split() == [winner.branch]
    # One baseline run for both.
    runs = [e for e in of_type(events, ev.TestFinished) if e.duration_s > 0]
    assert len(runs) == 1


async def test_a_folder_target_races_like_a_file(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("m1", Reply(tool_calls=[WRONG]), Reply(text="Done."))
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    config = make_config(
        repo, scripted_openai.base_url, "tests", model="m1,m2", attempts=2, max_iterations=1
    )
    contest = Race(config, backoff=(0.0,))
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a2")
    # The exam (the folder's test file) stayed protected in both attempts.
    assert (
        run_git(repo, "show", f"{result.branch}:tests/test_calc.py") == KATA["tests/test_calc.py"]
    )


async def test_continue_a_branch_with_two_attempts(make_repo, scripted_openai) -> None:
    """``--continue BRANCH --attempts 2``: both attempts start from that branch's work, each
    on its own new branch; the continued branch is left as it was."""
    from codexloop.core.loop import Loop

    repo = make_repo(KATA)
    scripted_openai.add_for(
        "m0", Reply(tool_calls=[Call("write_file", {"path": "notes.txt", "content": "x\n"})])
    )
    scripted_openai.add_for("m0", Reply(text="Not yet."))
    first = Loop(make_config(repo, scripted_openai.base_url, model="m0", max_iterations=1))
    with anyio.fail_after(WAIT_S):
        earlier, _ = await event_channel_run(first)
    assert earlier.status == "failed"
    before = run_git(repo, "rev-parse", earlier.branch)

    scripted_openai.add_for("m1", Reply(tool_calls=[WRONG]), Reply(text="Done."))
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = race(
        repo,
        scripted_openai.base_url,
        "m1,m2",
        attempts=2,
        max_iterations=1,
        continue_from=earlier.branch,
    )
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a2")
    started = {e.attempt: e for e in of_type(events, ev.LoopStarted)}
    assert {s.continued_from for s in started.values()} == {earlier.branch}
    assert started[1].base == started[2].base  # the continued session's snapshot
    # Both started from the earlier work.
    for attempt in (1, 2):
        branch = started[attempt].branch
        if branch in branches(repo):
            assert run_git(repo, "show", f"{branch}:notes.txt") == "x\n"
    assert run_git(repo, "rev-parse", earlier.branch) == before


# -- stops -----------------------------------------------------------------------------------


async def run_with_commands(contest: Race, on_event: Any) -> tuple[LoopResult, list[ev.Event]]:
    """Run a race; ``on_event(event, seen, send_command)`` may send commands as events come."""
    send, receive = event_channel()
    commands, inbox = event_channel()
    seen: list[ev.Event] = []

    async def watch() -> None:
        async with receive:
            async for event in receive:
                seen.append(event)
                await on_event(event, seen, commands.send)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        async with send:
            result = await contest.run(send, inbox)
    return result, seen


async def test_a_stop_for_everyone_ends_every_attempt_and_keeps_the_work(
    make_repo, scripted_openai
) -> None:
    """The developer stops the race (SIGINT in headless) while a1 has made a change and waits
    on its model, and a2 is still thinking: every attempt stops, the session is stopped, and
    a1's branch keeps its work; no attempt is dropped whose branch holds work."""
    repo = make_repo(KATA)
    holds = [threading.Event(), threading.Event()]
    scripted_openai.add_for(
        "m1",
        Reply(tool_calls=[Call("write_file", {"path": "notes.txt", "content": "idea\n"})]),
        Reply(text="Hmm…", hold=holds[0]),
    )
    scripted_openai.add_for("m2", Reply(text="Thinking…", hold=holds[1]))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2)

    sent: list[bool] = []

    async def stop_when_both_wait(event: ev.Event, seen: list[ev.Event], send: Any) -> None:
        turns = {(e.attempt, e.iteration) for e in of_type(seen, ev.ModelTurnStarted)}
        wrote = any(isinstance(e, ev.ToolResult) and e.attempt == 1 for e in seen)
        if isinstance(event, ev.ModelTurnStarted) and wrote and len(turns) >= 2 and not sent:
            sent.append(True)
            await send(ev.Stop("interrupted"))

    try:
        with anyio.fail_after(WAIT_S):
            result, events = await run_with_commands(contest, stop_when_both_wait)
    finally:
        for hold in holds:
            hold.set()
    last = assert_one_session_end(events)
    assert result.status == "stopped" and last.status == "stopped"
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert {f.status for f in finished.values()} == {"stopped"}
    assert run_git(repo, "show", f"{finished[1].branch}:notes.txt") == "idea\n"
    # The session is stopped, not failed: where --continue starts again. README: when no
    # attempt goes green, every branch stays.
    listed = branches(repo)
    assert finished[1].branch in listed and finished[2].branch in listed


async def test_a_stop_before_a_best_race_is_decided_applies_nothing(
    make_repo, scripted_openai
) -> None:
    """``--pick best --accept all``: a1 is green, a2 still works, the developer stops the race.
    Nothing is written to the working tree after a stop; a1's green branch stays."""
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add_for("m1", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    scripted_openai.add_for("m2", Reply(text="Thinking…", hold=hold))
    contest = race(
        repo, scripted_openai.base_url, "m1,m2", attempts=2, pick="best", accept_all=True
    )

    async def stop_after_a1_green(event: ev.Event, seen: list[ev.Event], send: Any) -> None:
        if isinstance(event, ev.AttemptFinished) and event.attempt == 1:
            await send(ev.Stop("interrupted"))

    try:
        with anyio.fail_after(WAIT_S):
            result, events = await run_with_commands(contest, stop_after_a1_green)
    finally:
        hold.set()
    last = assert_one_session_end(events)
    assert of_type(events, ev.Applied) == []
    assert (repo / "calc.py").read_text() == KATA["calc.py"]
    assert result.status == "stopped" and last.status == "stopped"
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert finished[1].status == "passed" and finished[2].status == "stopped"
    assert finished[1].branch in branches(repo)


async def test_a_stop_for_one_attempt_leaves_the_others_racing(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add_for("m1", Reply(text="Thinking…", hold=hold))
    scripted_openai.add_for("m2", Reply(text="Reading…", hold=hold), Reply(tool_calls=[FIX]))
    scripted_openai.add_for("m2", Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2)
    sent: list[bool] = []

    async def stop_a1(event: ev.Event, seen: list[ev.Event], send: Any) -> None:
        turns = {e.attempt for e in of_type(seen, ev.ModelTurnStarted)}
        if turns == {1, 2} and not sent:
            sent.append(True)
            await send(ev.Stop("not this one", attempt=1))
        if isinstance(event, ev.AttemptFinished) and event.attempt == 1:
            hold.set()

    try:
        with anyio.fail_after(WAIT_S):
            result, events = await run_with_commands(contest, stop_a1)
    finally:
        hold.set()
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a2")
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert finished[1].status == "stopped" and finished[1].reason == "not this one"


# -- set-up failures -------------------------------------------------------------------------


async def test_no_attempt_can_set_up_its_sandbox_the_session_could_not_start(
    make_repo, scripted_openai
) -> None:
    """No attempt's branch can be made (a branch named like the session's folder of branches
    is in the way: git cannot have both ``codexloop/taken`` and ``codexloop/taken/a1``): the
    sandbox cannot be set up, and the race says so the way one loop does (the error, for exit
    2), not as a red race of crashed attempts. (A name merely taken gets the next free one.)"""
    from codexloop.core.errors import setup_failure

    repo = make_repo(KATA)
    name = "taken"
    run_git(repo, "branch", f"codexloop/{name}")
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, name=name)
    with anyio.fail_after(WAIT_S), pytest.raises(Exception) as caught:
        await event_channel_run(contest)
    error: BaseException = caught.value
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    failure = setup_failure(error, sandbox_exists=False)
    assert failure is not None and failure.exit_code == 2
    assert scripted_openai.requests == []


async def test_one_attempt_that_cannot_set_up_does_not_end_the_race(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    name = "half-taken"
    run_git(repo, "branch", f"codexloop/{name}/a1")
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, name=name)
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a2")
    [failed] = [e for e in of_type(events, ev.AttemptFinished) if e.attempt == 1]
    assert failed.status == "failed"
    # The taken branch is the developer's: left exactly as it was.
    assert f"codexloop/{name}/a1" in branches(repo)


# -- the session index -----------------------------------------------------------------------


async def test_the_index_names_what_is_kept_and_every_trace(
    make_repo, scripted_openai, monkeypatch
) -> None:
    """a1 crashes (a bug of ours) after its sandbox exists, a2 wins, a3 is stopped having
    recorded nothing (its branch goes). The index says which branches are kept and where
    every attempt's trace is — the crashed one's too."""
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    scripted_openai.add_for("m3", Reply(text="Thinking…", hold=hold))
    contest = race(repo, scripted_openai.base_url, "m1,m2,m3", attempts=3)

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(contest.loops[0], "_iterate", crash)
    try:
        with anyio.fail_after(WAIT_S):
            result, events = await event_channel_run(contest)
    finally:
        hold.set()
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a2")
    index = json.loads((traces_dir() / contest.name / "index.json").read_text())
    assert index["winner"] == 2
    rows = {row["attempt"]: row for row in index["attempts"]}
    assert [rows[n]["model"] for n in (1, 2, 3)] == ["m1", "m2", "m3"]
    for number, row in rows.items():
        assert row["trace"] and Path(row["trace"]).is_file(), (number, row)
        assert row["kept"] == (row["branch"] in branches(repo)), (number, row)
    assert rows[2]["kept"] and not rows[3]["kept"]
    assert rows[1]["status"] == "failed"


# -- what is applied is what was tested ------------------------------------------------------


@pytest.mark.parametrize("isolated", [True, False], ids=["bwrap", "no-bwrap"])
async def test_the_winner_applied_is_the_commit_that_went_green(
    make_repo, scripted_openai, request, isolated: bool
) -> None:
    """The code under test writes into its attempt's worktree while the green run runs (it
    can without bubblewrap): what ``--accept all`` brings into the working tree is the commit
    that was tested and scanned for flags, never the worktree's later state."""
    if not isolated:
        request.getfixturevalue("no_bwrap")
    repo = make_repo(KATA)
    name = "sly"
    mine = state_home() / "worktrees" / repo_key(repo) / name / "a1"
    sly = (
        "import pathlib\n\n"
        "try:\n"
        f"    pathlib.Path({str(mine / 'extra.py')!r}).write_text('EVIL = 1\\n')\n"
        "except OSError:\n"
        "    pass\n\n\n"
        "def add(a, b):\n"
        "    return a + b\n"
    )
    scripted_openai.add_for(
        "m1", Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": sly})])
    )
    scripted_openai.add_for("m1", Reply(text="Fixed."))
    scripted_openai.add_for("m2", Reply(tool_calls=[WRONG]), Reply(text="Done."))
    contest = race(
        repo,
        scripted_openai.base_url,
        "m1,m2",
        attempts=2,
        max_iterations=1,
        accept_all=True,
        accept_flagged=True,  # the path it writes names codexloop's folders: flagged
        name=name,
    )
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a1")
    [green] = [e for e in of_type(events, ev.IterationFinished) if e.attempt == 1 and e.passed]
    assert not (repo / "extra.py").exists()
    assert result.applied is not None and list(result.applied.written) == ["calc.py"]
    assert green.commit is not None
    assert run_git(repo, "show", f"{green.commit}:calc.py") == (repo / "calc.py").read_text()


async def test_a_stop_for_an_attempt_that_is_over_changes_nothing(
    make_repo, scripted_openai
) -> None:
    """a1 ends (its endpoint fails); the front end then stops a1 — and steers it: nothing
    breaks, no second end is said for a1, a2 still wins."""
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add_for("m1", *[HTTPError(500, "overloaded") for _ in range(8)])
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX], hold=hold), Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2)

    async def after_a1(event: ev.Event, seen: list[ev.Event], send: Any) -> None:
        if isinstance(event, ev.AttemptFinished) and event.attempt == 1:
            await send(ev.Stop("too late", attempt=1))
            await send(ev.Steer("anyone there?", attempt=1))
            await send(ev.Pause(attempt=1))
            hold.set()

    try:
        with anyio.fail_after(WAIT_S):
            result, events = await run_with_commands(contest, after_a1)
    finally:
        hold.set()
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a2")
    [a1] = [e for e in of_type(events, ev.AttemptFinished) if e.attempt == 1]
    assert a1.status == "failed" and "overloaded" in a1.reason
    assert [e for e in of_type(events, ev.UserMessage) if e.attempt == 1] == []


async def test_the_attempt_running_the_shared_baseline_is_stopped_the_other_runs_its_own(
    make_repo, scripted_openai
) -> None:
    """One baseline run serves every attempt; when the attempt running it is stopped during
    it, the attempt waiting for it is not left with nothing: it runs the baseline itself."""
    repo = make_repo(KATA)
    for model in ("m1", "m2"):
        scripted_openai.add_for(model, Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2)
    stopped: list[int] = []

    async def stop_the_baseline(event: ev.Event, seen: list[ev.Event], send: Any) -> None:
        if isinstance(event, ev.TestStarted) and event.iteration == 0 and not stopped:
            stopped.append(event.attempt)
            await send(ev.Stop("not you", attempt=event.attempt))

    with anyio.fail_after(WAIT_S):
        result, events = await run_with_commands(contest, stop_the_baseline)
    assert_one_session_end(events)
    [first] = stopped
    other = 3 - first
    assert result.status == "passed" and result.branch.endswith(f"/a{other}")
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert finished[first].status == "stopped" and finished[other].status == "passed"
    baselines = [e for e in of_type(events, ev.TestFinished) if e.iteration == 0]
    assert [(e.attempt, e.passed) for e in baselines] == [(other, False)]
    assert baselines[0].duration_s > 0  # run by the other attempt itself


async def test_accept_flagged_applies_the_flagged_winner_and_nothing_of_the_others(
    make_repo, scripted_openai
) -> None:
    """``--pick first --accept flagged``: a1's flagged green comes first and is applied (with
    its flags said); a2, green a moment later, is a loser: none of its change is written."""
    repo = make_repo(KATA)
    a2_may_go = threading.Event()
    scripted_openai.add_for("m1", Reply(tool_calls=[SNEAKY]), Reply(text="Fixed."))
    scripted_openai.add_for(
        "m2",
        Reply(tool_calls=[NOISY], hold=a2_may_go),
        Reply(tool_calls=[Call("write_file", {"path": "extra.txt", "content": "a2\n"})]),
        Reply(text="Fixed."),
    )
    contest = race(
        repo,
        scripted_openai.base_url,
        "m1,m2",
        attempts=2,
        accept_all=True,
        accept_flagged=True,
    )

    async def release_a2(event: ev.Event, seen: list[ev.Event], send: Any) -> None:
        if isinstance(event, ev.AttemptFinished) and event.attempt == 1:
            a2_may_go.set()

    try:
        with anyio.fail_after(WAIT_S):
            result, events = await run_with_commands(contest, release_a2)
    finally:
        a2_may_go.set()
    assert_one_session_end(events)
    assert result.status == "passed" and result.branch.endswith("/a1")
    assert result.flagged and {f.attempt for f in result.flagged} == {1}
    [applied] = of_type(events, ev.Applied)
    assert applied.attempt == 1 and applied.written == ("calc.py",)
    assert "meta_path" in (repo / "calc.py").read_text()
    assert not (repo / "extra.txt").exists()


async def test_best_does_not_take_a_big_binary_file_for_a_small_change(
    make_repo, scripted_openai
) -> None:
    """A binary file has no lines to count: a green that adds one (here 20,000 bytes no one
    can review in a diff) must not rank as a one-line change ahead of an honest readable fix
    of a few lines."""
    repo = make_repo(KATA)
    blob = Call("write_file", {"path": "model.bin", "content": "\x00\x01" * 10_000})
    scripted_openai.add_for("m1", Reply(tool_calls=[FIX, blob]), Reply(text="Fixed."))
    scripted_openai.add_for("m2", Reply(tool_calls=[NOISY]), Reply(text="Fixed, commented."))
    contest = race(repo, scripted_openai.base_url, "m1,m2", attempts=2, pick="best")
    with anyio.fail_after(WAIT_S):
        result, events = await event_channel_run(contest)
    assert_one_session_end(events)
    finished = {e.attempt: e.status for e in of_type(events, ev.AttemptFinished)}
    assert finished == {1: "passed", 2: "passed"}
    assert "model.bin" in run_git(repo, "ls-tree", "--name-only", f"codexloop/{contest.name}/a1")
    assert result.branch.endswith("/a2")
    # It holds through the flags: a binary file cannot be reviewed, so it is flagged.
    [winner] = of_type(events, ev.Winner)
    assert "without flags" in winner.why
    assert [(f.attempt, f.path) for f in of_type(events, ev.Flagged)] == [(1, "model.bin")]
