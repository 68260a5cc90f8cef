"""The review and the timeline in the app: green, feedback, more iterations, looking back."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from app_probe import ProbedApp
from apphelpers import (
    SESSION,
    finish,
    make_app,
    red_then_green,
    review_app,
    stop,
    workers_named,
)
from loophelpers import KATA, edit, make_config, user_texts
from scripted_openai import Call, HTTPError, Reply

from codexloop.core import events as ev
from codexloop.core.loop import Loop
from codexloop.tui.dialogs import PromptScreen
from codexloop.tui.linebuffer import LineBuffer
from codexloop.tui.review import ReviewScreen
from codexloop.tui.screens import DiffScreen, IterationScreen

pytestmark = pytest.mark.anyio


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


async def test_a_spent_token_budget_waits_and_c_gives_as_much_again(
    make_repo, scripted_openai
) -> None:
    """Issue 19: in the app a spend budget waits like the iteration budget (it ended the
    session before)."""
    repo = make_repo(KATA)
    look = Reply(tool_calls=[Call("read_file", {"path": "calc.py"})])
    fix = Reply(tool_calls=[edit("calc.py", "a - b", "a + b")])
    scripted_openai.add(look, look, look, fix, Reply(text="Now add adds."))
    app = review_app(make_config(repo, scripted_openai.base_url, max_tokens=350))
    async with app.run_test(size=(120, 40)) as pilot:
        spent = await app.wait_for_event(ev.BudgetSpent)
        await pilot.pause()
        assert spent.reason == "the token budget of 350 is spent (360 tokens used)"
        assert app.session.loop_running and app.session.state.awaiting_developer
        status = app.main.status_line.render_info().plain
        assert "PAUSED" in status and "c for as much again · v to review · q to finish" in status
        assert "the token budget of 350 is spent (360 tokens used): c gives as much again" in (
            app.main.model_pane.text
        )
        await pilot.press("c")
        await app.wait_for_event(ev.ReviewReady)  # the same iteration went on to green
        assert "iteration 1/10" in app.main.status_line.render_info().plain
        assert "as much budget again" in app.main.model_pane.text
        await pilot.press("escape", "q")
        finished = await app.wait_for_event(ev.LoopFinished)
        assert finished.status == "passed" and finished.iterations == 1


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


async def test_a_review_after_the_loop_ended_still_applies_and_says_so(
    make_repo, scripted_openai
) -> None:
    """Once the loop is over (here: the model's endpoint failed), nobody answers an ``Apply``:
    the app runs the engine's own function, and its ``applied`` answer shows as the loop's."""
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="Hm."),
        HTTPError(400, "no more"),
    )
    app = review_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        finished = await app.wait_for_event(ev.LoopFinished)
        assert finished.status == "failed"
        await app.wait_until(lambda: not app.session.loop_running)
        await pilot.press("v")
        await workers_named(app, pilot, "load")
        assert isinstance(app.screen, ReviewScreen)
        await pilot.press("A", "enter")
        await workers_named(app, pilot, "apply_now")
        await pilot.pause()
        assert not isinstance(app.screen, ReviewScreen)
        assert "applied to your working tree: 1 written, 0 deleted" in app.main.model_pane.text
        await pilot.press("q")
    assert "return a * b" in (repo / "calc.py").read_text()


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
        from codexloop.core import diff

        monkeypatch.setattr(diff, "apply_selected", refused)
        await pilot.press("v")
        await workers_named(app, pilot, "load")
        review = app.screen
        assert isinstance(review, ReviewScreen) and review.items
        await pilot.press("A", "enter")
        await workers_named(app, pilot, "apply_now")
        status = str(review.query_one("#review-status").render())
        assert "nothing applied: git diff failed" in status
        assert app.screen is review and app.is_running
        # The loop answered (it applies the hunks), and says so in the model pane.
        assert "nothing applied to your working tree: git diff failed" in app.main.model_pane.text
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
        # Issue 15: the engine applied them, so the session's trace says so, as headless's does.
        assert "applied to your working tree: 1 written, 0 deleted" in app.main.model_pane.text
        await pilot.press("q")
        await pilot.pause()
    assert app.exit_status == 0
    trace = app.session.result.trace if app.session.result else None
    assert trace is not None
    [applied] = [
        e for e in map(json.loads, trace.read_text().splitlines()) if e["type"] == "applied"
    ]
    assert applied["written"] == ["calc.py"] and applied["conflicts"] == []
    assert "green after 1 iteration; 1 file changed in your working tree;" in app.summary()


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
