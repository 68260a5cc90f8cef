"""The app, driven by Pilot against the scripted OpenAI server; snapshots at 120x40."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shlex
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from app_probe import ProbedApp
from loophelpers import KATA, edit, make_config, user_texts
from rich.text import Text
from scripted_openai import Call, Reply
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.worker import WorkerFailed

from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.loop import Loop
from codexloop.tui.app import run_app
from codexloop.tui.dialogs import PromptScreen, QuitScreen
from codexloop.tui.diff_pane import diff_stats, highlight_diff
from codexloop.tui.hunks import HunkView, MarkedLines
from codexloop.tui.linebuffer import LineBuffer
from codexloop.tui.review import ReviewScreen
from codexloop.tui.screens import DiffScreen, HelpScreen, IterationScreen
from codexloop.tui.terminal_pane import TerminalPane, short_command

SESSION = "test_add"


class StableLoop(Loop):
    """A loop whose events carry nothing that changes between runs (for snapshots)."""

    async def emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.Notice) and (
            "isolation" in event.message or "process-count" in event.message
        ):
            return  # machine-dependent: bubblewrap or a process limit may be unavailable
        if isinstance(event, ev.LoopStarted):
            event = dataclasses.replace(
                event,
                isolation="full",
                isolation_reason="bubblewrap",
                max_processes=1024,
                process_limit="at most 1024 processes per command",
                bwrap="system bwrap 0.8.0 (/usr/bin/bwrap)",
            )
        elif isinstance(event, ev.TestStarted):
            event = dataclasses.replace(event, command=f"python -m pytest -q {SESSION}")
        elif isinstance(event, ev.TestOutput):
            text = re.sub(r" in \d+\.\d+s", " in 0.01s", event.text)
            # pytest's progress column counts the engine's hidden canary tests too (their
            # number is the engine's business): the one test of these runs is all of it.
            event = ev.TestOutput(re.sub(r"\[\s*\d+%\]", "[100%]", text))
        elif isinstance(event, ev.TestFinished | ev.IterationFinished):
            event = dataclasses.replace(event, duration_s=0.5)
        await super().emit(event)


# Snapshots: no third-party pytest plugins in the sandboxed run (their warnings vary by machine).
STABLE_TEST_CMD = (
    f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {shlex.quote(sys.executable)} -m pytest -q --color=yes "
    "-p no:cacheprovider -p no:warnings --rootdir=. tests/test_calc.py::test_add"
)


def stable_config(repo: Path, base_url: str, **overrides: Any) -> Config:
    return make_config(repo, base_url, test_cmd=STABLE_TEST_CMD, **overrides)


def make_app(config: Config, *, stable: bool = False) -> ProbedApp:
    kind = StableLoop if stable else Loop

    def factory(cfg: Config) -> Loop:
        return kind(cfg, name=SESSION, backoff=(0.0,))

    return ProbedApp(config, loop_factory=factory, clock=lambda: 0.0)


def red_then_green() -> list[Reply]:
    return [
        Reply(
            text="The test wants 5; maybe it multiplies.",
            tool_calls=[edit("calc.py", "a - b", "a * b")],
        ),
        Reply(text="Now add multiplies."),
        Reply(text="6 is not 5: it must add.", tool_calls=[edit("calc.py", "a * b", "a + b")]),
        Reply(text="Now add adds."),
    ]


async def finish(app: ProbedApp, pilot: Pilot[Any]) -> ev.LoopFinished:
    finished = await app.wait_for_event(ev.LoopFinished)
    await app.settle()
    await pilot.pause()
    return finished


async def stop(app: ProbedApp, pilot: Pilot[Any]) -> None:
    """Leave a test with the loop stopped cleanly (a held reply is abandoned)."""
    if app.session.loop_running:
        app.exit_policy.stop_then_exit("test over")
        await app.wait_for_event(ev.LoopFinished)
        await pilot.pause()


pytestmark = pytest.mark.anyio


# -- the loop in the app ----------------------------------------------------------------------


async def test_runs_to_green_with_all_panes_filled(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        finished = await finish(app, pilot)
        assert finished.status == "passed" and finished.iterations == 2
        assert "assert add(2, 3) == 5" in app.main.exam.pane.text
        model = app.main.model_pane.text
        assert "The test wants 5; maybe it multiplies." in model
        assert "edit_file" in model and "iteration 2 of 10" in model
        terminal = app.main.terminal_pane.text
        assert "assert -1 == 5" in terminal and "assert 6 == 5" in terminal
        assert "1 passed" in terminal
        assert "generated xml file" not in terminal
        assert "+    return a + b" in app.main.diff_pane.text
        assert "-    return a - b" in app.main.diff_pane.text
        assert app.main.diff_pane.border_subtitle == "1 file · +1 −1"
        assert [r.passed for r in app.main.timeline.records.values()] == [False, False, True]
        status = app.main.status_line.render_info().plain
        assert "GREEN" in status and "iteration 2/10" in status
        assert "tokens 400 in · 80 out" in status
        await pilot.press("q")  # finished: quits at once
        await pilot.pause()
    assert app.exit_status == 0 and app.return_code == 0
    assert "green after 2 iterations;" in app.summary()


async def test_test_output_is_formatted_for_the_terminal_panes_width(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text="Looking."), Reply(text="Still looking."))
    config = make_config(
        repo, scripted_openai.base_url, test_cmd='echo "cols=$COLUMNS"; exit 1', max_iterations=2
    )
    app = make_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await finish(app, pilot)
        wide = app.main.terminal_pane.columns
        assert 20 < wide < 120
        assert f"cols={wide}" in app.main.terminal_pane.text
    assert app.session.loop is not None and app.session.loop.columns == wide


async def test_budget_spent_ends_red_and_exits_1(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="Multiplies."),
        Reply(tool_calls=[edit("calc.py", "a * b", "a ** b")]),
        Reply(text="Raises."),
    )
    app = make_app(make_config(repo, scripted_openai.base_url, max_iterations=2))
    async with app.run_test(size=(120, 40)) as pilot:
        finished = await finish(app, pilot)
        assert finished.status == "failed"
        assert "RED" in app.main.status_line.render_info().plain
        assert "+    return a ** b" in app.main.diff_pane.text
        await pilot.press("q")
        await pilot.pause()
    assert app.exit_status == 1


async def test_pause_shows_pausing_then_paused_then_resumes(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(
        Reply(
            text="Reading first.", tool_calls=[Call("read_file", {"path": "calc.py"})], hold=hold
        ),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
    )
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        await pilot.press("space")
        assert app.main.status_line.info.transition == "pausing…"
        assert "PAUSING…" in app.main.status_line.render_info().plain  # shown at once
        hold.set()  # the turn ends; the engine pauses at its next safe point
        await app.wait_for_event(ev.StateChanged, lambda e: e.state == "paused")
        await pilot.pause()
        assert "PAUSED" in app.main.status_line.render_info().plain
        assert len(scripted_openai.requests) == 1  # no model turn while paused
        await pilot.press("space")
        await app.wait_for_event(ev.ModelTurnStarted, lambda e: len(scripted_openai.requests) > 1)
        assert "PAUSED" not in app.main.status_line.render_info().plain
        finished = await finish(app, pilot)
        assert finished.status == "passed"


async def test_a_message_reaches_the_next_model_request(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(
        Reply(text="Looking.", tool_calls=[Call("read_file", {"path": "calc.py"})], hold=hold),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
    )
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        await pilot.press("m")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press(*"use plus")
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, PromptScreen)
        hold.set()
        await app.wait_for_event(ev.UserMessage)
        await finish(app, pilot)
        assert "Message from the developer: use plus" in user_texts(scripted_openai.requests[1])
        assert "Message from the developer" not in user_texts(scripted_openai.requests[0])
        assert "you" in app.main.model_pane.text and "use plus" in app.main.model_pane.text


async def test_escape_cancels_a_message(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(Reply(text="Thinking.", hold=hold))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        await pilot.press("m", "x", "escape")
        await pilot.pause()
        assert not isinstance(app.screen, PromptScreen)
        await stop(app, pilot)
    assert not any("Message from the developer" in user_texts(r) for r in scripted_openai.requests)


async def test_quit_while_running_asks_and_names_the_branch(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(Reply(text="Thinking hard.", hold=hold))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        started = await app.wait_for_event(ev.LoopStarted)
        await app.wait_for_event(ev.ModelTurnStarted)
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, QuitScreen)
        shown = str(app.screen.query_one("#quit-where").render())
        assert f"codexloop/{SESSION}" in shown and started.branch in shown
        assert started.worktree in shown
        await pilot.press("n")  # keep going
        await pilot.pause()
        assert not isinstance(app.screen, QuitScreen) and app.session.loop_running
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("y")
        finished = await app.wait_for_event(ev.LoopFinished)
        await pilot.pause()
        assert finished.status == "stopped"
    assert app.exit_status == 1 and app.return_code == 1


async def test_ctrl_c_stops_the_loop_and_exits_130(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(Reply(text="Thinking hard.", hold=hold))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        await pilot.press("ctrl+c")
        finished = await app.wait_for_event(ev.LoopFinished)
        await pilot.pause()
        assert finished.status == "stopped" and finished.reason == "interrupted"
    assert app.exit_status == 130 and app.return_code == 130


async def test_help_screen_opens_and_closes(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await finish(app, pilot)


async def workers_named(app: ProbedApp, pilot: Pilot[Any], *names: str) -> None:
    """Wait for the named workers (the loop's own keep running while it awaits review)."""
    running = [w for w in app.workers if w.name in names]
    if running:  # (finished workers leave the manager; an empty list would mean all of them)
        await app.workers.wait_for_complete(running)
    await pilot.pause()


def review_app(config: Config) -> ProbedApp:
    return ProbedApp(
        config,
        loop_factory=lambda cfg: Loop(cfg, name=SESSION, backoff=(0.0,), review=True),
        clock=lambda: 0.0,
    )


async def test_a_huge_file_from_the_model_is_clipped_in_the_diff_and_the_review(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call("run_command", {"command": "seq 300000 > big.txt"}),
                edit("calc.py", "a - b", "a + b"),
            ]
        ),
        Reply(text="Fixed, and wrote a big file."),
    )
    app = review_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ReviewReady)
        # The counts are the whole diff's (300,000 lines of big.txt and the fix).
        await app.wait_until(lambda: "+300001 −1" in str(app.main.diff_pane.border_subtitle))
        assert "more lines of this file's diff not shown" in app.main.diff_pane.text
        assert app.main.diff_pane.line_count < 1_000
        await pilot.press("v")
        await pilot.pause()
        review = app.screen
        assert isinstance(review, ReviewScreen)
        await workers_named(app, pilot, "load")
        big = next(i for i in review.items if i.change.path == "big.txt")
        assert "more lines not shown" in big.text() and big.text().count("\n") < 500
        await stop(app, pilot)


async def test_a_spent_budget_offers_more_iterations_on_c(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = review_app(make_config(repo, scripted_openai.base_url, max_iterations=1))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.BudgetSpent)
        await pilot.pause()
        assert app.session.loop_running and app.session.state.awaiting_developer
        assert (
            "c for 1 more · v to review · q to finish" in app.main.status_line.render_info().plain
        )
        assert "not green after 1 iteration: c gives it 1 more" in app.main.model_pane.text
        await pilot.press("c")
        await app.wait_for_event(ev.ReviewReady)  # iteration 2 went green
        assert app.session.state.budget_spent is None
        # Issue 16 item 6: the denominator follows the budget given ("2/1" before).
        assert "iteration 2/2" in app.main.status_line.render_info().plain
        assert "── iteration 2 of 2 ──" in app.main.model_pane.text
        await pilot.press("escape", "q")  # out of the review, then finish
        finished = await app.wait_for_event(ev.LoopFinished)
        assert finished.status == "passed" and finished.iterations == 2


async def test_q_at_a_spent_budget_finishes_red(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = review_app(make_config(repo, scripted_openai.base_url, max_iterations=1))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.BudgetSpent)
        await pilot.press("q")  # no question: the loop is only waiting
        finished = await app.wait_for_event(ev.LoopFinished)
        assert finished.status == "failed"
        await pilot.pause()
    assert app.return_code == 1


async def test_leaving_the_review_before_it_loaded_is_harmless(
    make_repo, scripted_openai, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Escape while the hunks load (a big change, a slow disk): the late result is dropped."""
    import threading

    from codexloop.tui import review as review_module

    release, loaded = threading.Event(), threading.Event()
    real_changes = review_module.changes

    def slow_changes(*args: Any) -> Any:
        release.wait(10)
        try:
            return real_changes(*args)
        finally:
            loaded.set()

    monkeypatch.setattr(review_module, "changes", slow_changes)
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = review_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ReviewReady)
        await app.wait_until(lambda: isinstance(app.screen, ReviewScreen))
        review = app.screen
        assert isinstance(review, ReviewScreen)
        await pilot.press("escape")
        await app.wait_until(lambda: not isinstance(app.screen, ReviewScreen))
        release.set()
        await app.wait_until(loaded.is_set)
        await pilot.pause(0.2)  # the worker's result arrives at the dismissed screen
        assert review.items == []  # dropped, not shown
        assert app.is_running and app.session.loop_running  # no crash; still waiting for the review
        await pilot.press("q")
        finished = await app.wait_for_event(ev.LoopFinished)
        assert finished.status == "passed"


async def test_a_git_error_in_the_review_is_shown_not_a_crash(
    make_repo, scripted_openai, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the change or applying it fails (git refuses): said on the review screen; the
    app, the loop and the developer's working tree carry on."""
    from codexloop.core.gitops import GitError
    from codexloop.tui import review as review_module

    def refused(*args: Any) -> Any:
        raise GitError("git diff failed: fatal: bad object")

    monkeypatch.setattr(review_module, "changes", refused)
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = review_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ReviewReady)
        await app.wait_until(lambda: isinstance(app.screen, ReviewScreen))
        shown = app.screen
        assert isinstance(shown, ReviewScreen)
        await app.wait_until(lambda: shown.failure is not None)
        title = str(shown.query_one("#review-title").render())
        assert "the change cannot be read: GitError: git diff failed" in title
        await pilot.press("enter")  # nothing to apply: the session is not finished by it
        await pilot.pause()
        assert app.screen is shown and app.session.loop_running
        await pilot.press("escape")
        await pilot.pause()

        monkeypatch.undo()
        monkeypatch.setattr(review_module, "apply_selected", refused)
        await pilot.press("v")
        await workers_named(app, pilot, "load")
        review = app.screen
        assert isinstance(review, ReviewScreen) and review.items
        await pilot.press("A", "enter")
        await workers_named(app, pilot, "apply_now")
        status = str(review.query_one("#review-status").render())
        assert "nothing applied: GitError: git diff failed" in status
        assert app.screen is review and app.is_running
        await pilot.press("escape", "q")
        finished = await app.wait_for_event(ev.LoopFinished)
        assert finished.status == "passed"
    assert app.return_code == 0
    assert (repo / "calc.py").read_text() == KATA["calc.py"]


async def test_review_after_green_applies_the_accepted_hunks(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = review_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ReviewReady)
        await pilot.pause()
        assert app.session.loop_running  # green, and the loop waits for the review
        assert "v to review · q to finish" in app.main.status_line.render_info().plain
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen, ReviewScreen)
        await workers_named(app, pilot, "load")
        # Issue 16 item 14: counted nouns ("1 files, 1 hunks" and "hunk(s)" before).
        title = str(app.screen.query_one("#review-title").render())
        assert title == "Review · 1 file, 1 hunk against the snapshot"
        await pilot.press("A", "enter")
        await workers_named(app, pilot, "apply_now")
        finished = await app.wait_for_event(ev.LoopFinished)  # applied, no comment: finished
        await pilot.pause()
        assert finished.status == "passed"
        assert not isinstance(app.screen, ReviewScreen)
        assert (repo / "calc.py").read_text().endswith("return a + b\n")
        summary = "review: 1 hunk kept, 0 not; 1 file changed in your working tree"
        assert summary in app.main.model_pane.text
        await pilot.press("q")
        await pilot.pause()
    assert app.exit_status == 0
    assert "green after 1 iteration;" in app.summary()


async def test_once_green_space_and_m_say_the_loop_waits(make_repo, scripted_openai) -> None:
    """Issue 16 item 9: green, waiting for the review: space left PAUSING… on for good and m
    took a message no model turn would read. Both are refused, with a toast."""
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = review_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ReviewReady)
        await app.wait_until(lambda: isinstance(app.screen, ReviewScreen))
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("space")
        await pilot.pause()
        status = app.main.status_line.render_info().plain
        assert "PAUSING" not in status and "GREEN" in status
        await pilot.press("m")
        await pilot.pause()
        assert not isinstance(app.screen, PromptScreen)
        messages = [n.message for n in app._notifications]
        assert any(m.startswith("the loop is green and waits for you: v") for m in messages)
        assert any("no model turn would read a message" in m for m in messages)
        await pilot.press("q")
        finished = await app.wait_for_event(ev.LoopFinished)
        assert finished.status == "passed"


async def test_a_recorded_session_offers_the_review_on_a_key(make_repo, scripted_openai) -> None:
    """Issue 16 item 21: in the scripted demo the review covered the loop the moment it went
    green, and "scripted" was cut from the model pane's title at 80 columns."""
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = ProbedApp(
        make_config(repo, scripted_openai.base_url),
        loop_factory=lambda cfg: Loop(cfg, name=SESSION, backoff=(0.0,), review=True),
        clock=lambda: 0.0,
        banner="scripted demo: not a live model",
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await app.wait_for_event(ev.ReviewReady)
        await pilot.pause(0.3)
        assert app.screen is app.main  # the green run stays in sight
        title = str(app.main.model_pane.border_title)
        assert title.startswith("model · scripted demo: not a live model")
        assert "v to review" in app.main.status_line.render_info().plain
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen, ReviewScreen)
        await pilot.press("escape", "q")
        finished = await app.wait_for_event(ev.LoopFinished)
        assert finished.status == "passed"


async def test_a_rejected_hunk_with_a_comment_sends_the_loop_on(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
        Reply(tool_calls=[edit("calc.py", "a - b", "b + a")]),
        Reply(text="Operands swapped, as asked."),
    )
    app = review_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ReviewReady)
        await pilot.press("v")
        await pilot.pause()
        await workers_named(app, pilot, "load")
        await pilot.press("c")
        await pilot.pause()
        await pilot.press(*"write b + a", "enter")
        await pilot.pause()
        await pilot.press("enter")  # apply: nothing accepted, one comment for the model
        await workers_named(app, pilot, "apply_now")
        await app.wait_for_event(ev.HunksReverted)
        await app.wait_for_event(ev.ReviewReady, lambda e: e.iteration == 2)
        assert "The reviewer rejected this change of calc.py: write b + a" in user_texts(
            scripted_openai.requests[2]
        )
        assert "rejected hunks reverted in calc.py" in app.main.model_pane.text
        assert "── iteration 2 of 11 ──" in app.main.model_pane.text  # a fresh budget of 10
        # Issue 16 item 2: the feedback (several lines, a fenced diff) is shown line by line;
        # a newline inside one line reached the terminal and drew over the other panes.
        pane = app.main.model_pane
        assert pane.text.count("\n") + 1 == pane.line_count
        assert " you  The reviewer rejected this change of calc.py: write b + a" in pane.text
        assert "      -    return a - b" in pane.text.splitlines()
        await pilot.press("q")  # green again: q finishes the session, no question asked
        finished = await app.wait_for_event(ev.LoopFinished)
        await pilot.pause()
        assert finished.status == "passed"
    assert app.exit_status == 0
    assert (repo / "calc.py").read_text() == KATA["calc.py"]  # nothing accepted, nothing applied


async def test_review_before_anything_is_recorded_shows_the_live_diff(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fi", hold=hold)
    )
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.SandboxChanged)
        await app.settle()
        assert "+    return a + b" in app.main.diff_pane.text
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen, DiffScreen)
        assert "+    return a + b" in app.screen.query_one("#diff-full", LineBuffer).text
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, DiffScreen)
        await stop(app, pilot)


async def test_timeline_selection_shows_that_iterations_output_and_diff(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    probe = Call("run_command", {"command": "echo probing-the-sandbox"})
    first, *rest = red_then_green()
    scripted_openai.add(Reply(text=first.text, tool_calls=[*first.tool_calls, probe]), *rest)
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await finish(app, pilot)
        assert "probing-the-sandbox" not in "".join(app.main.timeline.records[2].command_output)
        app.main.timeline.focus()
        app.main.timeline.highlighted = 1  # iteration 1 (0 is the baseline)
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, IterationScreen) and screen.record.iteration == 1
        await workers_named(app, pilot, "iteration-diff")  # (the exam watcher runs on)
        output = screen.query_one("#iteration-output", LineBuffer).text
        assert "assert 6 == 5" in output
        # The model's own command of that iteration, before its test run.
        assert output.index("probing-the-sandbox") < output.index("── test run ──")
        diff = screen.query_one("#iteration-diff", LineBuffer).text
        assert "+    return a * b" in diff and "a + b" not in diff
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, IterationScreen)


async def test_the_baseline_row_opens_its_run_and_no_diff(make_repo, scripted_openai) -> None:
    """Issue 16 item 1: enter on the base row crashed the app (nothing recorded there yet,
    and the screen was given its diff before it was mounted)."""
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await finish(app, pilot)
        app.main.timeline.focus()
        app.main.timeline.highlighted = 0
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, IterationScreen) and screen.record.iteration == 0
        assert "assert -1 == 5" in screen.query_one("#iteration-output", LineBuffer).text
        diff = screen.query_one("#iteration-diff", LineBuffer).text
        assert diff == "no changes against the base at this iteration"
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running and not isinstance(app.screen, IterationScreen)


async def test_command_palette_offers_the_actions(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for wanted in (
            "Pause / resume the loop",
            "Message the model",
            "Review the change",
            "Keys",
            "Stop the loop and quit",
            "Zoom the focused pane",
        ):
            assert titles.count(wanted) == 1
        # Issue 16 item 17: one of each (Textual's own Keys, Quit and Maximize were listed too).
        assert not {"Quit", "Maximize", "Minimize"} & set(titles)
        assert len(titles) == len(set(titles))
        await finish(app, pilot)


async def test_small_terminals_hide_the_timeline_and_t_toggles_it(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(80, 24)) as pilot:
        await finish(app, pilot)
        assert not app.main.timeline.display
        for pane in (
            app.main.exam.pane,
            app.main.model_pane,
            app.main.terminal_pane,
            app.main.diff_pane,
        ):
            assert pane.size.width >= 30 and pane.size.height >= 6
        await pilot.press("t")
        assert app.main.timeline.display
        await pilot.resize_terminal(200, 50)
        await pilot.pause()
        assert app.main.timeline.display


async def test_zoom_fills_the_screen_and_back_follows_the_tail(make_repo, scripted_openai) -> None:
    """Issue 16 item 5: a zoomed pane was as wide as its share times the screen (three screens
    for the model pane: no right border, lines cut), the timeline kept its 21 columns, and the
    model pane came back from a zoom scrolled to its top."""
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(80, 24)) as pilot:
        await finish(app, pilot)
        pane = app.main.model_pane
        assert pane.has_focus and pane.is_vertical_scroll_end and pane.scroll_offset.y > 0
        before = pane.region
        await pilot.press("z")
        await pilot.pause()
        assert pane.region.x == 0 and pane.region.width == 80
        assert pane.virtual_size.width <= pane.scrollable_content_region.width  # wrapped
        await pilot.press("z")
        await pilot.pause()
        assert pane.region == before and pane.is_vertical_scroll_end and pane.scroll_offset.y > 0
        timeline = app.main.timeline
        await pilot.press("t")
        timeline.focus()
        await pilot.press("z")
        await pilot.pause()
        assert timeline.region.width == 80


def keys_shown(screen: Any, width: int) -> set[str]:
    """The footer keys drawn whole within ``width`` columns."""
    return {
        key.key
        for key in screen.query("FooterKey")
        if key.region.width and key.region.right <= width
    }


async def test_at_80_columns_every_key_shows_and_help_scrolls(make_repo, scripted_openai) -> None:
    """Issue 16 item 7: at 80x24 the footer lost q, the review's footer lost apply and back,
    the help stopped after ctrl+p and did not scroll, and the review's file list took 35 of
    80 columns (hunks wrapped at 40, continuation lines without their + or -)."""
    repo = make_repo(KATA)
    long_line = "    return a + b  # " + "the sum, as the exam says " * 4
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "    return a - b", long_line)]), Reply(text="Fixed.")
    )
    app = review_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.wait_for_event(ev.ReviewReady)
        await app.wait_until(lambda: isinstance(app.screen, ReviewScreen))
        await workers_named(app, pilot, "load")
        review = app.screen
        assert {"enter", "escape", "a", "x", "c"} <= keys_shown(review, 80)
        assert review.query_one("#review-files").region.width <= 24
        hunk = review.query_one(HunkView)
        assert hunk.region.width >= 50
        console = app.console
        options = console.options.update_width(hunk.content_size.width)
        body = hunk.content
        assert isinstance(body, MarkedLines)
        lines = ["".join(s.text for s in row) for row in console.render_lines(body, options)]
        added = [line for line in lines if line.startswith("+")]
        assert len(added) >= 2 and all(line.strip() for line in lines)  # marked throughout
        await pilot.press("escape")
        await pilot.pause()
        assert {"q", "space", "m", "v", "question_mark"} <= keys_shown(app.screen, 80)
        await pilot.press("question_mark")
        await pilot.pause()
        box = app.screen.query_one("#help-box")
        assert box.max_scroll_y > 0 and box.has_focus
        await pilot.press("end")
        await pilot.pause()
        assert box.scroll_y == box.max_scroll_y  # the rest of the help, down to "escape"
        await pilot.press("escape", "q")
        await app.wait_for_event(ev.LoopFinished)


async def test_a_loop_that_cannot_start_is_reported_not_crashed(tmp_path: Path) -> None:
    config = Config(
        repo=tmp_path,
        targets=("tests/test_x.py",),
        model="m",
        base_url="http://127.0.0.1:9/v1",
        api_key="k",
        target_files=("tests/test_x.py",),
    )
    app = make_app(config)  # tmp_path is not a git checkout: the sandbox cannot be created
    async with app.run_test(size=(120, 40)) as pilot:
        with contextlib.suppress(WorkerFailed):
            await app.workers.wait_for_complete()
        await pilot.pause()
        failure = app.session.state.failure
        assert failure is not None and failure.startswith("cannot set up the sandbox: ")
        assert "RED" in app.main.status_line.render_info().plain
        assert "cannot read" in app.main.exam.pane.text
        await pilot.press("q")
        await pilot.pause()
    # As headless: a session that could not start is a usage or configuration error (exit 2).
    assert app.exit_status == 2 and app.return_code == 2
    assert app.summary().startswith("codexloop: error: cannot set up the sandbox: ")


async def test_an_exam_that_can_never_pass_ends_with_exit_2(make_repo, scripted_openai) -> None:
    """A typo in the test's name: the loop stops before any model call and says why; the app
    exits 2 with the same line as headless mode."""
    repo = make_repo(KATA)
    app = make_app(make_config(repo, scripted_openai.base_url, "tests/test_calc.py::test_ad"))
    async with app.run_test(size=(120, 40)) as pilot:
        finished = await finish(app, pilot)
        assert finished.status == "failed" and "collects no test" in finished.reason
        await app.wait_until(lambda: app.session.state.error is not None)
        assert "the loop failed" not in app.main.model_pane.text
        await pilot.press("q")
        await pilot.pause()
    assert app.exit_status == 2 and app.return_code == 2
    assert app.summary().startswith("codexloop: error: target 'tests/test_calc.py::test_ad'")
    assert scripted_openai.requests == []


async def test_an_exam_changed_by_the_developer_is_shown_again(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    app = ProbedApp(make_config(repo, scripted_openai.base_url), autostart=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await workers_named(app, pilot, "exam")
        assert "assert add(2, 3) == 5" in app.main.exam.pane.text
        (repo / "tests" / "test_calc.py").write_text(
            KATA["tests/test_calc.py"] + "    assert add(1, 1) == 2\n"
        )
        app.main.pump.feed(ev.ExamChanged(("tests/test_calc.py",), "+    assert add(1, 1) == 2\n"))
        await workers_named(app, pilot, "exam")
        assert "assert add(1, 1) == 2" in app.main.exam.pane.text
        assert "you changed the exam: tests/test_calc.py" in app.main.model_pane.text


def test_run_app_refuses_an_unreachable_endpoint(make_repo, capsys) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = make_repo(KATA)
    config = make_config(repo, f"http://127.0.0.1:{port}/v1")
    assert run_app(config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("codexloop: error: cannot reach")


# -- the line buffer and the panes' pieces ----------------------------------------------------------


class BufferApp(App[None]):
    def __init__(self, buffer: LineBuffer) -> None:
        super().__init__()
        self.buffer = buffer

    def compose(self) -> ComposeResult:
        yield self.buffer


async def test_line_buffer_streams_fragments_into_lines() -> None:
    buffer = LineBuffer(max_lines=100)
    async with BufferApp(buffer).run_test(size=(40, 10)) as pilot:
        for piece in ("Hel", "lo wor", "ld\nsecond", " line\n\nthird"):
            buffer.write(piece)
        assert buffer.text == ""  # queued until the frame flush
        assert buffer.flush()
        assert buffer.text == "Hello world\nsecond line\n\nthird"
        buffer.write_line("tool", tag="t1")
        buffer.replace_line("t1", "tool done")
        buffer.replace_line("t9", "other")
        buffer.flush()
        assert buffer.text.splitlines()[-3:] == ["third", "tool done", "other"]
        await pilot.pause()
        assert buffer.is_vertical_scroll_end


async def test_a_line_with_newlines_becomes_several_lines() -> None:
    buffer = LineBuffer(max_lines=100)
    async with BufferApp(buffer).run_test(size=(40, 10)) as pilot:
        buffer.write_line(Text("one\ntwo", style="bold"), tag="t")
        buffer.replace_line("t", "three\nfour")  # the tagged line is the last one: "two"
        buffer.write_line("five")
        buffer.flush()
        await pilot.pause()
        assert buffer.text == "one\nthree\nfour\nfive" and buffer.line_count == 4
        assert buffer.virtual_size.height == 4


async def test_line_buffer_wraps_to_width_and_rewraps_on_resize() -> None:
    buffer = LineBuffer()
    async with BufferApp(buffer).run_test(size=(21, 10)) as pilot:
        buffer.write("word " * 20)
        buffer.flush()
        await pilot.pause()
        width = buffer.scrollable_content_region.width
        rows = buffer.virtual_size.height
        assert rows >= 100 // width
        await pilot.resize_terminal(41, 10)
        await pilot.pause()
        assert buffer.virtual_size.height < rows


def test_the_private_textual_call_the_line_buffer_relies_on_is_there() -> None:
    """LineBuffer grows its virtual size without a screen reflow through ScrollView's
    ``_scroll_update`` (private). Without it the buffer falls back to the public setter,
    correct but slower: an upgrade of Textual that removes it must be noticed here."""
    import inspect

    fast = getattr(LineBuffer, "_scroll_update", None)
    assert callable(fast)
    assert list(inspect.signature(fast).parameters) == ["self", "virtual_size"]


async def test_line_buffer_keeps_bounded_history() -> None:
    buffer = LineBuffer(max_lines=1_000)
    async with BufferApp(buffer).run_test(size=(40, 10)):
        for n in range(5_000):
            buffer.write(f"line {n}\n")
            if n % 100 == 0:
                buffer.flush()
        buffer.flush()
        assert buffer.line_count <= 1_100
        assert buffer.text.splitlines()[-1] == "line 4999"
        assert buffer.virtual_size.height == buffer.line_count


async def test_terminal_pane_keeps_colours_and_handles_carriage_returns() -> None:
    pane = TerminalPane()
    async with BufferApp(pane).run_test(size=(60, 10)):
        pane.write("\x1b[31mFAILED\x1b[0m tests/test_x.py\r")
        pane.write("\nprogress 10%\rprogress 100%\n")
        pane.write("----- generated xml file: /tmp/x/junit-1.xml -----\nafter\n")
        pane.flush()
        assert pane.text == "FAILED tests/test_x.py\nprogress 100%\nafter"
        first = pane._lines[0]
        assert [str(span.style) for span in first.spans] == ["color(1)"]  # ANSI red, kept


def test_diff_highlighting_marks_lines_and_counts_them() -> None:
    diff = (
        "diff --git a/calc.py b/calc.py\nindex 1..2 100644\n--- a/calc.py\n+++ b/calc.py\n"
        "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"
    )
    lines = highlight_diff(diff)
    assert lines[0].plain.startswith("━━ calc.py")
    assert [line.plain for line in lines[-2:]] == ["-    return a - b", "+    return a + b"]
    assert diff_stats(diff) == (1, 1, 1)


def test_short_command_names_the_interpreter() -> None:
    assert short_command("/x/.venv/bin/python -m pytest -q t.py") == "python -m pytest -q t.py"
    assert short_command("make test") == "make test"


# -- snapshots at 120x40 ---------------------------------------------------------------------------


def test_snapshot_running(make_repo, scripted_openai, snap_compare) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(
        Reply(
            text="The test wants add(2, 3) == 5 and gets -1: the operator is wrong.",
            tool_calls=[edit("calc.py", "a - b", "a + b")],
        ),
        Reply(text="Fixed the operator: add returns a + b now.", chunk_size=20, hold=hold),
    )
    app = make_app(stable_config(repo, scripted_openai.base_url), stable=True)

    async def running(pilot: Pilot[Any]) -> None:
        await app.wait_until(lambda: "Fixed the operator: " in app.main.model_pane.text)
        await app.settle()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 40), run_before=running)


def test_snapshot_red(make_repo, scripted_openai, snap_compare) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(text="Perhaps it multiplies.", tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="Now add multiplies."),
        Reply(text="Or a power.", tool_calls=[edit("calc.py", "a * b", "a ** b")]),
        Reply(text="Now add raises a to b."),
    )
    app = make_app(stable_config(repo, scripted_openai.base_url, max_iterations=2), stable=True)

    async def red(pilot: Pilot[Any]) -> None:
        await finish(app, pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=red)


def test_snapshot_green(make_repo, scripted_openai, snap_compare) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = make_app(stable_config(repo, scripted_openai.base_url), stable=True)

    async def green(pilot: Pilot[Any]) -> None:
        await finish(app, pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=green)


async def test_a_tampered_run_is_shown_red_with_why(make_repo, scripted_openai) -> None:
    """A model that makes pytest skip running tests: the canary catches it, the model pane
    says so in red and a toast names it."""
    repo = make_repo(KATA)
    cheat = "import _pytest.python\n_pytest.python.Function.runtest = lambda self: None\n"
    scripted_openai.add(
        Reply(
            tool_calls=[Call("write_file", {"path": "calc.py", "content": cheat + KATA["calc.py"]})]
        ),
        Reply(text="Done."),
    )
    app = make_app(make_config(repo, scripted_openai.base_url, max_iterations=1))
    async with app.run_test(size=(120, 40)) as pilot:
        finished = await finish(app, pilot)
        assert finished.status == "failed"
        assert "⚠ run 1 is red: the canary test that must fail came out passed" in (
            app.main.model_pane.text
        )
        assert any("tampered" in str(n.title) for n in app._notifications)
        await pilot.press("q")
        await pilot.pause()
