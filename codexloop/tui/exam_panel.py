"""The exam panel: the target tests highlighted, edited in place or in ``$EDITOR``, watched.

The exam stays the developer's. The panel shows it (:class:`ExamPane`), re-reads it whenever it
changes in the checkout (a watcher on the target files), turns into an editor of one target file
on ``e`` (the loop pauses meanwhile; ``ctrl+s`` saves, ``escape`` cancels), hands the terminal
to ``$EDITOR`` on ``E``, and adds or removes targets (the palette). The engine picks every
change up at its next safe point.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult, SuspendNotSupported
from textual.containers import Vertical
from watchfiles import awatch

from codexloop.core.config import ConfigError
from codexloop.tui import narration
from codexloop.tui.dialogs import ChoiceScreen, PromptScreen
from codexloop.tui.exam_editor import ExamEditor, editor_command, read_exam_file, write_atomic
from codexloop.tui.exam_pane import ExamPane, load_exam
from codexloop.tui.narration import Line
from codexloop.tui.session import Session
from codexloop.tui.workers import describe, spawn


@dataclass
class _Edit:
    """An edit of one exam file in the panel."""

    rel: str
    path: Path
    paused: bool
    """Whether this edit paused the loop (then saving or cancelling resumes it)."""
    editor: ExamEditor | None = None
    saving: bool = False


class ExamPanel(Vertical):
    """The exam: shown, edited, watched."""

    def __init__(self, session: Session, note: Callable[[Line], None], *, id: str | None = None):
        super().__init__(id=id)
        self.session = session
        self.note = note
        """Writes a line in the model pane."""
        self.pane = ExamPane(id="exam")
        self.watching = False
        """The watcher of the exam files is in place (changes from now on are seen)."""
        self._edit: _Edit | None = None
        self._watch_stop: asyncio.Event | None = None

    def compose(self) -> ComposeResult:
        yield self.pane

    def on_mount(self) -> None:
        self.show_targets()

    def on_unmount(self) -> None:
        self._stop_watching()

    @property
    def editor(self) -> ExamEditor | None:
        """The editor in the panel, while the developer edits the exam."""
        return self._edit.editor if self._edit is not None else None

    @property
    def editing(self) -> bool:
        return self._edit is not None

    def show_targets(self) -> None:
        """The exam's targets (again, after they changed): title, files, watcher."""
        self.pane.border_title = "exam · " + " ".join(self.session.config.targets)
        self.load(to_target=True)
        self.watch_files()

    def load(self, *, to_target: bool = False) -> None:
        """(Re)read the exam from the developer's checkout, off the event loop; with
        ``to_target``, show its first targeted test (else keep the developer's place)."""
        config = self.session.config
        spawn(
            self,
            partial(load_exam, config.repo, config.target_files, config.targets),
            name="exam",
            done=partial(self.pane.show, to_target=to_target),
            failed=lambda error: self.pane.set_lines(
                [Text(f"cannot show the exam: {describe(error)}", style="red")]
            ),
        )

    # -- the watcher ------------------------------------------------------------------------

    def watch_files(self) -> None:
        """Watch the exam's files in the checkout (again, after the targets changed)."""
        self._stop_watching()
        self.watching = False
        stop = self._watch_stop = asyncio.Event()
        config = self.session.config
        spawn(
            self,
            self._watch(config.repo, config.target_files, stop),
            name="watch",
            exclusive=True,
            failed=lambda error: self.note(narration.watch_failed(describe(error))),
        )

    def _stop_watching(self) -> None:
        """Stop the watcher's thread now: it checks this event every 50 ms.

        (Its own timeout is 5 s; awatch sets the event itself when its task is cancelled,
        but only if the cancellation reaches it, so the panel does not rely on that.)
        """
        if self._watch_stop is not None:
            self._watch_stop.set()
            self._watch_stop = None

    async def _watch(self, repo: Path, files: tuple[str, ...], stop: asyncio.Event) -> None:
        wanted: dict[str, str] = {}
        for rel in files:
            path = repo / rel
            wanted[os.path.join(os.path.realpath(path.parent), path.name)] = rel
        folders = sorted(
            {folder for folder in map(os.path.dirname, wanted) if os.path.isdir(folder)}
        )
        if not folders or stop.is_set():
            return
        # From here to awatch's first wait nothing yields: whoever sees the flag runs after
        # the watches are in place.
        self.watching = True
        async for changes in awatch(
            *folders,
            watch_filter=lambda _change, path: path in wanted,
            stop_event=stop,
            recursive=False,
        ):
            self._changed_on_disk(sorted({wanted[path] for _change, path in changes}))

    def _changed_on_disk(self, rels: list[str]) -> None:
        self.load()
        line = narration.exam_changed_on_disk(rels)
        if self.session.loop_running:
            # The engine notes it in the model pane at its next safe point (exam_changed);
            # a note from here could land mid-sentence of a streaming answer.
            self.notify(line.text[2:] + "; the next test run uses it", title="exam")
        else:
            self.note(line)
        edit = self._edit
        if edit is not None and not edit.saving and edit.rel in rels:
            self.notify(
                f"{edit.rel} changed on disk while you edit it: ctrl+s overwrites that change, "
                "escape keeps it",
                severity="warning",
                timeout=10,
            )

    # -- editing ----------------------------------------------------------------------------

    def choose_file(self, title: str, then: Callable[[str], None]) -> None:
        """The exam's only file, or the one the developer picks."""
        files = self.session.config.target_files
        if not files:
            self.notify("no test files among the targets: nothing to edit", severity="warning")
        elif len(files) == 1:
            then(files[0])
        else:

            def chosen(rel: str | None) -> None:
                if rel is not None:
                    then(rel)

            self.app.push_screen(ChoiceScreen(title, files), chosen)

    def edit(self) -> None:
        """The panel becomes an editor of a target file; the loop pauses meanwhile."""
        if self._edit is not None:
            if self._edit.editor is not None:
                self._edit.editor.focus()
            return
        self.choose_file("Edit which file of the exam?", self._edit_in_app)

    def _edit_in_app(self, rel: str) -> None:
        if self._edit is not None:
            return
        path = self.session.config.repo / rel
        edit = self._edit = _Edit(rel, path, self.session.pause_for_edit())
        self.screen.refresh_bindings()
        spawn(
            self,
            partial(read_exam_file, path),
            name="exam-read",
            done=lambda text: self._open_editor(edit, text),
            failed=self._read_failed,
        )

    def _read_failed(self, error: Exception) -> None:
        self.notify(str(error), severity="error", timeout=8)
        self._end_edit()

    def _open_editor(self, edit: _Edit, text: str) -> None:
        if self._edit is not edit:
            return
        editor = edit.editor = ExamEditor(edit.rel, text, id="exam-editor")
        editor.border_title = f"editing {edit.rel}"
        editor.border_subtitle = "ctrl+s save · escape cancel"
        self.pane.display = False
        self.mount(editor)
        editor.focus()
        self.screen.refresh_bindings()

    def on_exam_editor_closed(self, message: ExamEditor.Closed) -> None:
        edit = self._edit
        editor = edit.editor if edit is not None else None
        if edit is None or editor is None or editor is not message.editor or edit.saving:
            return
        if not message.save:
            self._end_edit()
            self.notify("edit cancelled: the exam is as it was")
        elif not editor.changed:
            self._end_edit()
            self.notify("nothing changed: nothing saved")
        else:
            edit.saving = True
            spawn(
                self,
                partial(write_atomic, edit.path, editor.text),
                name="exam-save",
                done=lambda _none: self._saved(edit),
                failed=partial(self._save_failed, edit),
            )

    def _save_failed(self, edit: _Edit, error: Exception) -> None:
        edit.saving = False  # the editor stays open: nothing is lost
        self.notify(f"not saved: {describe(error)}", severity="error", timeout=10)

    def _saved(self, edit: _Edit) -> None:
        if self._edit is edit:
            self._end_edit()
        later = "; the next test run uses it" if self.session.loop_running else ""
        self.notify(f"saved {edit.rel} in your checkout{later}")

    def _end_edit(self) -> None:
        """Back to the highlighted exam; the loop resumes if the edit paused it."""
        edit, self._edit = self._edit, None
        if edit is None:
            return
        if edit.editor is not None:
            edit.editor.remove()
            self.pane.display = True
            self.pane.focus()
        self.load()
        if edit.paused:
            self.session.resume_after_edit()
        self.screen.refresh_bindings()

    # -- targets ------------------------------------------------------------------------------

    def add_target(self) -> None:
        """A target to add, asked for; the loop switches at its next test run."""
        if not self.session.loop_running:
            self.notify("the loop is not running: the targets cannot change now")
            return
        self.app.push_screen(
            PromptScreen(
                "Add a target to the exam",
                placeholder="tests/test_x.py::test_y (from the repository root)",
                note="now: " + " ".join(self.session.current_targets()),
                hint="enter to add (from the next test run on) · escape to cancel",
            ),
            self._target_entered,
        )

    def _target_entered(self, target: str | None) -> None:
        if target:
            self.change_targets((*self.session.current_targets(), target))

    def remove_target(self) -> None:
        """A target to remove, picked (one always stays)."""
        if not self.session.loop_running:
            self.notify("the loop is not running: the targets cannot change now")
            return
        current = self.session.current_targets()
        if len(current) < 2:
            self.notify(
                "the exam keeps at least one target: add another one first", severity="warning"
            )
            return
        self.app.push_screen(
            ChoiceScreen(
                "Remove which target?",
                current,
                "enter to remove it (from the next test run on) · escape to cancel",
            ),
            self._target_removed,
        )

    def _target_removed(self, target: str | None) -> None:
        if target:
            self.change_targets(tuple(t for t in self.session.current_targets() if t != target))

    def change_targets(self, targets: tuple[str, ...]) -> bool:
        """New targets, checked as the command line checks them, for the loop's next test run."""
        try:
            sent = self.session.change_targets(targets)
        except ConfigError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return False
        if isinstance(sent, str):
            self.notify(sent)
            return False
        self.note(narration.targets_pending(sent))
        return True

    # -- $EDITOR -------------------------------------------------------------------------------

    def edit_outside(self) -> None:
        """``$EDITOR`` on a target file, the app suspended meanwhile; the loop pauses."""
        if self._edit is not None:
            self.notify("finish the edit in the exam pane first (ctrl+s or escape)")
            return
        self.choose_file("Open which file of the exam in $EDITOR?", self._edit_outside)

    def _edit_outside(self, rel: str) -> None:
        command = [*editor_command(), str(self.session.config.repo / rel)]
        paused = self.session.pause_for_edit()
        # Synchronous, as with every suspend: while the editor runs, nothing may draw
        # (the app's output is stopped), so the event loop, and the engine with it, wait.
        outcome: int | str
        try:
            with self.app.suspend():
                outcome = run_editor(command, headless=False)
        except SuspendNotSupported:
            if self.app.is_headless:  # tests: there is no terminal to hand over
                outcome = run_editor(command, headless=True)
            else:
                outcome = "this terminal cannot hand the screen over to an editor"
        self.load()
        if paused:
            self.session.resume_after_edit()
        if isinstance(outcome, str):
            self.notify(outcome, severity="error", timeout=8)
        elif outcome != 0:
            self.notify(f"the editor exited with status {outcome}", severity="warning")


def run_editor(command: list[str], *, headless: bool) -> int | str:
    """Blocking: the developer's editor to its end; its exit status, or why it did not run."""
    previous: Any = None
    if not headless and threading.current_thread() is threading.main_thread():
        # The terminal is the editor's now: a ctrl+c there must not interrupt the app.
        previous = signal.signal(signal.SIGINT, lambda *_args: None)
    try:
        if headless:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
        else:
            done = subprocess.run(command)
    except OSError as exc:
        return f"cannot run the editor {command[0]!r}: {exc.strerror or exc}"
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return done.returncode
