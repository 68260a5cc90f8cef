"""The exam in the app: edited in place (e), in $EDITOR (E), watched, and its targets changed."""

from __future__ import annotations

import os
import shlex
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from app_probe import ProbedApp
from apphelpers import finish, make_app, stop
from loophelpers import KATA, TARGET, TEST_CALC, edit, make_config
from scripted_openai import Call, Reply
from textual.widgets import Input

from codexloop.core import events as ev
from codexloop.core.loop import Loop
from codexloop.tui.dialogs import ChoiceScreen, PromptScreen
from codexloop.tui.exam_editor import editor_command, editor_language, write_atomic

pytestmark = pytest.mark.anyio

MORE = "from calc import add\n\n\ndef test_zero():\n    assert add(0, 0) == 0\n"
MORE_TARGET = "tests/test_more.py::test_zero"


def read_then_fix(hold: threading.Event) -> list[Reply]:
    """A first turn held mid-stream (so the test can act), then the fix: add adds."""
    return [
        Reply(
            text="Reading first.", tool_calls=[Call("read_file", {"path": "calc.py"})], hold=hold
        ),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
    ]


def footer_keys(app: ProbedApp) -> dict[str, str]:
    return {
        key: active.binding.description
        for key, active in app.screen.active_bindings.items()
        if active.binding.show
    }


def status(app: ProbedApp) -> str:
    return app.main.status_line.render_info().plain


async def editor_open(app: ProbedApp, pilot: Any) -> Any:
    await app.wait_until(lambda: app.main.exam.editor is not None)
    await pilot.pause()
    editor = app.main.exam.editor
    assert editor is not None and editor.has_focus
    return editor


# -- e: the exam pane becomes an editor ----------------------------------------------------------


async def test_e_pauses_then_ctrl_s_saves_the_exam_the_next_run_uses(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    exam = repo / "tests" / "test_calc.py"
    exam.chmod(0o640)
    hold = threading.Event()
    scripted_openai.add(*read_then_fix(hold))
    app = make_app(make_config(repo, scripted_openai.base_url, max_iterations=1))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        await pilot.press("e")
        assert "PAUSING…" in status(app)
        editor = await editor_open(app, pilot)
        assert editor.text == TEST_CALC
        assert editor.language == "python" and not editor.soft_wrap and editor.show_line_numbers
        assert not app.main.exam.pane.display
        keys = footer_keys(app)
        assert keys["ctrl+s"] == "Save" and keys["escape"] == "Cancel"
        assert not {"space", "q", "m", "v", "e"} & keys.keys()

        hold.set()  # the turn ends; the loop pauses at its next safe point
        await app.wait_for_event(ev.StateChanged, lambda e: e.state == "paused")
        assert len(scripted_openai.requests) == 1
        await pilot.press(*["down"] * 5)  # the empty line after the last one
        editor.insert("    assert add(1, 1) == 3")
        await pilot.press(*" #qmv eE", "enter")
        await pilot.pause()
        # Typed, every one of them: no quit dialog, no message, no review, still paused.
        assert app.screen is app.screen_stack[0] and app.session.state.state == "paused"
        assert exam.read_text() == TEST_CALC  # nothing written before ctrl+s

        await pilot.press("ctrl+s")
        await app.wait_until(lambda: app.main.exam.editor is None)
        edited = TEST_CALC + "    assert add(1, 1) == 3 #qmv eE\n"
        assert exam.read_text() == edited
        assert stat.S_IMODE(exam.stat().st_mode) == 0o640
        assert [p.name for p in exam.parent.iterdir() if p.name.startswith(".")] == []
        assert app.main.exam.pane.display
        await app.wait_until(lambda: app.session.state.state != "paused")  # resumed
        await app.wait_until(lambda: "assert add(1, 1) == 3" in app.main.exam.pane.text)

        changed = await app.wait_for_event(ev.ExamChanged)
        assert changed.paths == ("tests/test_calc.py",)
        assert "+    assert add(1, 1) == 3 #qmv eE" in changed.diff
        run = await app.wait_for_event(ev.TestFinished, lambda e: e.iteration == 1)
        assert not run.passed  # a + b passes the old exam, not the tightened one
        finished = await finish(app, pilot)
        assert finished.status == "failed"
        # One note in the model pane, the engine's, at a safe point (the watcher's is a toast).
        assert app.main.model_pane.text.count("you changed the exam: tests/test_calc.py") == 1
        assert "exam changed in your checkout" not in app.main.model_pane.text


async def test_escape_cancels_the_edit_writes_nothing_and_resumes(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    exam = repo / "tests" / "test_calc.py"
    hold = threading.Event()
    scripted_openai.add(*read_then_fix(hold))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        await pilot.press("e")
        await editor_open(app, pilot)
        hold.set()
        await app.wait_for_event(ev.StateChanged, lambda e: e.state == "paused")
        await pilot.press(*"oops", "escape")
        await app.wait_until(lambda: app.main.exam.editor is None)
        assert exam.read_text() == TEST_CALC
        await app.wait_until(lambda: app.session.state.state != "paused")
        finished = await finish(app, pilot)
        assert finished.status == "passed"  # the exam as it was
    assert not any(isinstance(e, ev.ExamChanged) for e in app.events)


async def test_e_after_the_loop_finished_still_edits_the_exam(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await finish(app, pilot)
        await pilot.press("e")
        editor = await editor_open(app, pilot)
        editor.insert("# the developer was here\n", (0, 0))
        await pilot.press("ctrl+s")
        await app.wait_until(lambda: app.main.exam.editor is None)
        assert (repo / "tests" / "test_calc.py").read_text().startswith("# the developer")
        assert app.main.status_line.info.transition == ""  # nothing paused, nothing resumed


async def test_with_two_exam_files_e_asks_which(make_repo, scripted_openai) -> None:
    repo = make_repo({**KATA, "tests/test_more.py": MORE})
    app = ProbedApp(
        make_config(repo, scripted_openai.base_url, TARGET, MORE_TARGET), autostart=False
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, ChoiceScreen)
        await pilot.press("down", "enter")
        editor = await editor_open(app, pilot)
        assert editor.rel == "tests/test_more.py" and editor.text == MORE
        await pilot.press("escape")
        await app.wait_until(lambda: app.main.exam.editor is None)


async def test_a_recorded_session_keeps_the_exam_while_it_plays(
    make_repo, scripted_openai, tmp_path, monkeypatch
) -> None:
    """Issue 16 item 10: editing the exam during the demo ended it with 'HTTP 400: the
    recording has no model turn left'. While a recorded session plays, e and E say why not."""
    repo = make_repo(KATA)
    monkeypatch.setenv("EDITOR", fake_editor(tmp_path, "    assert add(1, 1) == 2\n"))
    hold = threading.Event()
    scripted_openai.add(*read_then_fix(hold))
    config = make_config(repo, scripted_openai.base_url)
    app = ProbedApp(
        config,
        loop_factory=lambda cfg: Loop(cfg, name="test_add", backoff=(0.0,)),
        clock=lambda: 0.0,
        banner="scripted demo: not a live model",
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        await pilot.press("e", "E")
        await pilot.pause()
        assert app.main.exam.editor is None and app.screen is app.main
        assert (repo / "tests" / "test_calc.py").read_text() == TEST_CALC
        warnings = [n.message for n in app._notifications if n.severity == "warning"]
        assert len(warnings) == 2 and "a recording cannot follow an edit of the exam" in warnings[0]
        assert "PAUSING" not in status(app)
        hold.set()
        finished = await finish(app, pilot)
        assert finished.status == "passed"
        await pilot.press("e")  # the recording is over: the exam is yours again
        await editor_open(app, pilot)
        await pilot.press("escape")


async def test_the_editor_cursor_does_not_blink_away(make_repo, scripted_openai) -> None:
    """Issue 16 item 10: in tmux the editor's cursor was not to be seen (it blinked, and a
    capture or a terminal with odd focus reports caught it off)."""
    repo = make_repo(KATA)
    app = ProbedApp(make_config(repo, scripted_openai.base_url), autostart=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("e")
        editor = await editor_open(app, pilot)
        seen = []
        for _ in range(3):
            seen.append(editor._draw_cursor)
            await pilot.pause(0.35)
        assert seen == [True, True, True]
        await pilot.press("escape")


# -- E: $EDITOR, the app suspended --------------------------------------------------------------


def fake_editor(tmp_path: Path, line: str) -> str:
    """An $EDITOR that appends a line to the file it is given (with a flag to split off)."""
    script = tmp_path / "fake_editor.py"
    script.write_text(f"import sys\nwith open(sys.argv[-1], 'a') as f:\n    f.write({line!r})\n")
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} --wait"


async def test_E_opens_editor_on_the_exam_and_the_loop_goes_on(
    make_repo, scripted_openai, tmp_path, monkeypatch
) -> None:
    repo = make_repo(KATA)
    monkeypatch.setenv("EDITOR", fake_editor(tmp_path, "    assert add(1, 1) == 2\n"))
    hold = threading.Event()
    scripted_openai.add(*read_then_fix(hold))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        await pilot.press("E")
        assert (repo / "tests" / "test_calc.py").read_text().endswith("assert add(1, 1) == 2\n")
        await app.wait_until(lambda: "assert add(1, 1) == 2" in app.main.exam.pane.text)
        hold.set()  # paused while the editor ran, resumed after: the loop goes on
        changed = await app.wait_for_event(ev.ExamChanged)
        assert "+    assert add(1, 1) == 2" in changed.diff
        finished = await finish(app, pilot)
        assert finished.status == "passed"


async def test_E_with_a_missing_editor_says_so(make_repo, scripted_openai, monkeypatch) -> None:
    repo = make_repo(KATA)
    monkeypatch.setenv("EDITOR", "no-such-editor-anywhere")
    app = ProbedApp(make_config(repo, scripted_openai.base_url), autostart=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("E")
        await pilot.pause()
        messages = [n.message for n in app._notifications]
        assert any("cannot run the editor 'no-such-editor-anywhere'" in m for m in messages)


def test_editor_command_prefers_editor_then_visual_then_vi() -> None:
    assert editor_command({"EDITOR": "code --wait", "VISUAL": "nano"}) == ["code", "--wait"]
    assert editor_command({"EDITOR": " ", "VISUAL": "'my editor' -f"}) == ["my editor", "-f"]
    assert editor_command({}) == ["vi"]


def test_editor_language_is_python_for_python_files() -> None:
    assert editor_language("tests/test_x.py") == "python"
    assert editor_language("tests/data.txt") is None


def test_write_atomic_keeps_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "test_x.py"
    path.write_text("old\n")
    path.chmod(0o755)
    write_atomic(path, "new\r\nline\n")
    assert path.read_bytes() == b"new\r\nline\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert os.listdir(tmp_path) == ["test_x.py"]


# -- the watcher: an edit made outside the app shows at once ------------------------------------


async def test_an_edit_in_the_checkout_shows_in_the_exam_pane(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    app = ProbedApp(make_config(repo, scripted_openai.base_url), autostart=False)
    async with app.run_test(size=(120, 40)):
        await app.wait_until(lambda: app.main.exam.watching)
        await app.wait_until(lambda: "assert add(2, 3) == 5" in app.main.exam.pane.text)
        (repo / "tests" / "test_calc.py").write_text(TEST_CALC + "    assert add(1, 1) == 2\n")
        await app.wait_until(lambda: "assert add(1, 1) == 2" in app.main.exam.pane.text)
        await app.wait_until(lambda: "exam changed in your checkout" in app.main.model_pane.text)
        assert "tests/test_calc.py" in app.main.model_pane.text
        (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")  # not the exam
        leaving = time.monotonic()
    # The watcher's thread stops with the app, not at its next timeout (5 s).
    assert time.monotonic() - leaving < 2.0
    assert app.main.model_pane.text.count("exam changed in your checkout") == 1


# -- targets from the command palette ------------------------------------------------------------


async def test_a_target_added_from_the_palette_joins_the_exam(make_repo, scripted_openai) -> None:
    repo = make_repo({**KATA, "tests/test_more.py": MORE})
    hold = threading.Event()
    scripted_openai.add(*read_then_fix(hold))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Add a target…" in titles and "Remove a target…" in titles
        app.main.exam.add_target()
        await pilot.pause()
        assert isinstance(app.screen, PromptScreen)
        app.screen.query_one(Input).value = MORE_TARGET
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, PromptScreen)
        assert "targets from the next test run on" in app.main.model_pane.text
        hold.set()
        changed = await app.wait_for_event(ev.TargetsChanged)
        assert changed.targets == (TARGET, MORE_TARGET)
        assert MORE_TARGET in changed.test_command
        await app.wait_until(lambda: "def test_zero" in app.main.exam.pane.text)
        assert "tests/test_more.py" in app.main.exam.pane.text
        assert MORE_TARGET in app.main.exam.pane.border_title
        assert app.session.config.target_files == ("tests/test_calc.py", "tests/test_more.py")
        finished = await finish(app, pilot)
        assert finished.status == "passed"
        assert "2 passed" in app.main.terminal_pane.text


async def test_a_target_removed_from_the_palette_leaves_the_exam(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({**KATA, "tests/test_more.py": MORE})
    hold = threading.Event()
    scripted_openai.add(*read_then_fix(hold))
    app = make_app(make_config(repo, scripted_openai.base_url, TARGET, MORE_TARGET))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        app.main.exam.remove_target()
        await pilot.pause()
        assert isinstance(app.screen, ChoiceScreen)
        await pilot.press("down", "enter")
        await pilot.pause()
        hold.set()
        changed = await app.wait_for_event(ev.TargetsChanged)
        assert changed.targets == (TARGET,)
        await app.wait_until(lambda: "def test_zero" not in app.main.exam.pane.text)
        assert "tests/test_more.py" not in str(app.main.exam.pane.border_title)
        app.main.exam.remove_target()  # the last one stays
        await pilot.pause()
        assert not isinstance(app.screen, ChoiceScreen)
        assert any("at least one target" in n.message for n in app._notifications)
        await finish(app, pilot)


async def test_a_bad_target_is_refused_and_nothing_is_sent(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(Reply(text="Thinking.", hold=hold))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_for_event(ev.ModelTurnStarted)
        sent: list[ev.Command] = []
        send = app.session.send

        def spy(command: ev.Command) -> bool:
            sent.append(command)
            return send(command)

        setattr(app.session, "send", spy)  # noqa: B010 (a spy on the commands sent)
        app.main.exam.add_target()
        await pilot.pause()
        app.screen.query_one(Input).value = "tests/test_nope.py"
        await pilot.press("enter")
        await pilot.pause()
        assert app.main.exam.change_targets(("../elsewhere/test_x.py",)) is False
        await pilot.pause()
        errors = [n.message for n in app._notifications if n.severity == "error"]
        assert any("'tests/test_nope.py' does not exist" in m for m in errors)
        assert len(errors) == 2
        assert not any(isinstance(c, ev.SetTargets) for c in sent)
        assert app.session.config.targets == (TARGET,)
        await stop(app, pilot)


# -- where the exam pane opens -----------------------------------------------------------------


LONG_TEST = (
    "from calc import add\n\n"
    + "".join(f"\ndef test_other_{n}():\n    assert add({n}, 0) == {n}\n\n" for n in range(60))
    + "\nclass TestAdd:\n    @pytest.mark.parametrize('x', [1])\n"
    + "    def test_add(self, x):\n        assert add(2, 3) == 5\n"
)


async def test_the_exam_pane_opens_on_the_targeted_test(make_repo, scripted_openai) -> None:
    """Issue 16 item 15: a long test file shows its targeted test, marked, not line 1."""
    repo = make_repo({**KATA, "tests/test_calc.py": "import pytest\n" + LONG_TEST})
    target = "tests/test_calc.py::TestAdd::test_add[1]"
    app = ProbedApp(make_config(repo, scripted_openai.base_url, target), autostart=False)
    async with app.run_test(size=(120, 40)):
        pane = app.main.exam.pane
        await app.wait_until(lambda: "class TestAdd" in pane.text)
        lines = pane.text.splitlines()
        decorator = next(n for n, line in enumerate(lines) if "@pytest.mark.parametrize" in line)
        assert "▶" in lines[decorator] and sum("▶" in line for line in lines) == 1
        # In sight, with a line above it (or as far down as the pane goes: it ends the file).
        await app.wait_until(
            lambda: (
                pane.max_scroll_y > 200 and pane.scroll_y == min(decorator - 1, pane.max_scroll_y)
            )
        )
        # An edit in the checkout keeps the developer's place.
        pane.scroll_to(y=3, animate=False)
        await app.wait_until(lambda: pane.scroll_y == 3)
        (repo / "tests" / "test_calc.py").write_text("import pytest\n" + LONG_TEST + "\n# more\n")
        await app.wait_until(lambda: "# more" in pane.text)
        assert pane.scroll_y == 3


def test_definition_lines_of_node_ids() -> None:
    from codexloop.tui.exam_pane import definition_line

    source = "import pytest\n\n@pytest.mark.x\ndef test_a():\n    pass\n\nclass TestB:\n    def test_c(self):\n        pass\n"
    assert definition_line(source, ["test_a"]) == 3
    assert definition_line(source, ["TestB", "test_c"]) == 8
    assert definition_line(source, ["TestB"]) == 7
    assert definition_line(source, ["test_c"]) is None  # not at the top level
    assert definition_line(source, ["test_missing"]) is None
    assert definition_line(source + "def broken(:\n", ["TestB", "test_c"]) == 8  # by its name
