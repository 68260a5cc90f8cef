"""The app, driven by Pilot against the scripted OpenAI server: the loop, its keys, its exits."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
from app_probe import ProbedApp
from apphelpers import (
    SESSION,
    finish,
    make_app,
    red_then_green,
    stop,
    workers_named,
)
from conftest import run_git
from loophelpers import KATA, edit, make_config, user_texts
from scripted_openai import Call, Reply
from textual.worker import WorkerFailed

from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.loop import Loop
from codexloop.tui.app import leave, run_app
from codexloop.tui.dialogs import PromptScreen, QuitScreen
from codexloop.tui.screens import HelpScreen

pytestmark = pytest.mark.anyio


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
    assert isinstance(app.session.loop, Loop) and app.session.loop.columns == wide


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
    # Nothing to continue: its branch goes, as in headless mode (issue 16 item 19).
    assert leave(app, throwaway=False).startswith("codexloop: error: target")
    assert run_git(repo, "branch", "--list", "codexloop/*") == ""


async def test_a_session_green_at_once_leaves_no_branch(make_repo, scripted_openai) -> None:
    """Issue 16 item 19: the exam passed at once; nothing was made, so nothing is kept, and
    the exit line says so instead of naming a branch that holds nothing."""
    repo = make_repo({**KATA, "calc.py": "def add(a, b):\n    return a + b\n"})
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        finished = await finish(app, pilot)
        assert finished.status == "passed" and finished.iterations == 0
        await pilot.press("q")
        await pilot.pause()
    branch = finished.branch
    assert branch in run_git(repo, "branch", "--list", branch)
    line = leave(app, throwaway=False)
    assert line.startswith("codexloop: green after 0 iterations;")
    assert f"nothing to keep: removed {branch} and its worktree" in line
    assert run_git(repo, "branch", "--list", "codexloop/*") == ""
    assert not Path(finished.worktree).exists()


async def test_the_exit_line_of_a_throwaway_session_names_no_branch(
    make_repo, scripted_openai
) -> None:
    """The demo and replay remove their session's branch themselves: the app's exit line does
    not send the developer to it."""
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        finished = await finish(app, pilot)
        await pilot.press("q")
        await pilot.pause()
    line = leave(app, throwaway=True)
    assert line.startswith("codexloop: green after 2 iterations;") and "branch" not in line
    assert finished.branch in run_git(repo, "branch", "--list", finished.branch)


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


async def test_the_status_line_marks_the_gates_of_the_last_run(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = make_app(make_config(repo, scripted_openai.base_url, gates=("true",)))
    async with app.run_test(size=(120, 40)) as pilot:
        finished = await finish(app, pilot)
        assert finished.status == "passed"
        status = app.main.status_line.render_info().plain
        assert "exam ✓ · gates ✓" in status and "guard" not in status
        assert "$ true" in app.main.terminal_pane.text
        await pilot.press("q")
        await pilot.pause()
