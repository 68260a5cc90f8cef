"""The app's other screens: help (from the key table), the whole diff, one iteration."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.signal import Signal
from textual.widgets import Footer, Label, Static

from codexloop.tui.diff_pane import DiffPane, DiffUpdate
from codexloop.tui.keys import help_rows
from codexloop.tui.state import IterationRecord
from codexloop.tui.status_line import human_count
from codexloop.tui.terminal_pane import TerminalPane
from codexloop.tui.workers import describe, spawn


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "help.tcss"
    BINDINGS: ClassVar = [
        Binding("escape,q,question_mark,f1", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold", no_wrap=True)
        table.add_column()
        for keys, what in help_rows():
            table.add_row(keys, what)
        with VerticalScroll(id="help-box"):
            yield Label("codexloop · keys", id="help-title")
            yield Static(table, id="help-keys")
            yield Static(
                "The exam (target tests) is protected: the model cannot change it. It stays "
                "yours: an edit in your checkout, here or in your own editor, counts from the "
                "next test run on; ctrl+p adds or removes targets. Your checkout is otherwise "
                "untouched; the sandbox's work is on the preview branch.",
                id="help-note",
            )
            yield Label("escape to close", id="help-close")

    def on_mount(self) -> None:
        self.query_one("#help-box").focus()  # arrows and page keys scroll a help cut short

    def action_close(self) -> None:
        self.dismiss(None)


class DiffScreen(Screen[None]):
    """The whole diff, full screen, kept up to date while it is open."""

    CSS_PATH = "diff.tcss"
    BINDINGS: ClassVar = [Binding("escape,v,q", "close", "Back")]

    def __init__(
        self,
        title: str,
        diff: str,
        lines: list[Text] | None = None,
        updates: Signal[DiffUpdate] | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self._diff = diff
        self._lines = lines
        self._updates = updates

    def compose(self) -> ComposeResult:
        yield Label(self.title_text, id="diff-title")
        yield DiffPane(id="diff-full", empty="the sandbox has no changes yet")
        yield Footer()

    def on_mount(self) -> None:
        pane = self.query_one(DiffPane)
        pane.show(self._diff, self._lines)
        pane.focus()
        if self._updates is not None:
            self._updates.subscribe(self, self.show)

    def show(self, update: DiffUpdate) -> None:
        self.query_one(DiffPane).show(*update)

    def action_close(self) -> None:
        self.dismiss(None)


class IterationScreen(Screen[None]):
    """One iteration, looked back at: its test output and its diff against the base.

    ``diff`` computes that diff (blocking: it runs in a thread once the screen is up); None
    when nothing was recorded at that iteration (the baseline is the base itself).
    """

    CSS_PATH = "iteration.tcss"
    BINDINGS: ClassVar = [Binding("escape,q", "close", "Back")]

    def __init__(self, record: IterationRecord, diff: Callable[[], DiffUpdate] | None) -> None:
        super().__init__()
        self.record = record
        self.diff = diff

    def compose(self) -> ComposeResult:
        record = self.record
        title = Text()
        if record.passed is None:
            title.append(" … ", style="bold black on yellow")
        elif record.passed:
            title.append(" ✓ GREEN ", style="bold black on green")
        else:
            title.append(" ✗ RED ", style="bold white on red")
        title.append(f" {record.label}", style="bold")
        title.append(f" · {record.duration_s:.1f}s", style="dim")
        tokens = record.input_tokens + record.output_tokens
        if tokens:
            title.append(
                f" · {human_count(record.input_tokens)} in / {human_count(record.output_tokens)} out",
                style="dim",
            )
        if record.summary:
            title.append(f" · {record.summary}")
        yield Static(title, id="iteration-title")
        with Grid(id="iteration-panes"):
            output = TerminalPane(id="iteration-output")
            output.border_title = "sandbox terminal at this iteration"
            yield output
            diff = DiffPane(id="iteration-diff", empty="loading the diff…")
            diff.border_title = "diff vs base at this iteration"
            yield diff
        yield Footer()

    def on_mount(self) -> None:
        output = self.query_one(TerminalPane)
        record = self.record
        if record.command_output:
            output.write_line(Text("── the model's commands ──", style="bold blue"))
            for chunk in record.command_output:
                output.write(chunk)
            output.write_line(Text("── test run ──", style="bold blue"))
        for chunk in record.test_output:
            output.write(chunk)
        if not record.test_output:
            output.write("(no test output recorded)")
        output.flush()
        if self.diff is None:
            self.show_diff(("", []))
        else:
            spawn(
                self,
                self.diff,
                name="iteration-diff",
                done=self.show_diff,
                failed=lambda error: self.show_diff(
                    (
                        f"diff unavailable: {describe(error)}",
                        [Text(f"diff unavailable: {describe(error)}", style="red")],
                    )
                ),
            )

    def show_diff(self, update: DiffUpdate) -> None:
        pane = self.query_one(DiffPane)
        pane.empty = "no changes against the base at this iteration"
        pane.show(*update)

    def action_close(self) -> None:
        self.dismiss(None)
