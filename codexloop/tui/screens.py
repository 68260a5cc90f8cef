"""The app's other screens: help, quit confirmation, message to the model, diff, iteration."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Input, Label, Static

from codexloop.tui.diff_pane import DiffPane
from codexloop.tui.status_line import human_count
from codexloop.tui.terminal_pane import TerminalPane
from codexloop.tui.timeline import IterationRecord

KEYS = (
    (
        "space",
        "pause / resume the loop (it pauses at a safe point: after a tool call or before a test run)",
    ),
    ("m", "message the model: your text joins the conversation at its next turn"),
    (
        "c",
        "budget spent, still red: give the loop as many iterations again (it keeps its conversation)",
    ),
    (
        "v",
        "review hunk by hunk: a accept, x reject, c reject with a comment for the model, "
        "A accept all, enter apply the accepted ones to your checkout",
    ),
    (
        "e",
        "edit the exam in its pane (the loop pauses): ctrl+s saves to your checkout and "
        "resumes, escape cancels",
    ),
    ("E", "edit the exam in $EDITOR (the app steps aside; the loop pauses meanwhile)"),
    ("t", "show / hide the iteration timeline"),
    ("enter", "on the timeline: that iteration's commands, test output and diff"),
    ("tab", "move between panes (arrows, page up/down, home/end scroll)"),
    ("z", "zoom the focused pane (again to restore)"),
    ("ctrl+p", "command palette: the same actions by name"),
    ("? / f1", "this help"),
    ("q", "quit: while the loop runs, asks first, then stops it; when it waits for you, finishes"),
    ("ctrl+c", "interrupt: stop the loop now and exit with status 130"),
)


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "help.tcss"
    BINDINGS: ClassVar = [
        Binding("escape,q,question_mark,f1", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold", no_wrap=True)
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with Vertical(id="help-box"):
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

    def action_close(self) -> None:
        self.dismiss(None)


class QuitScreen(ModalScreen[bool]):
    """While the loop runs: stop it and quit? Says where the work stays."""

    CSS_PATH = "quit.tcss"
    BINDINGS: ClassVar = [
        Binding("y", "confirm", "Stop and quit"),
        Binding("n,escape", "cancel", "Keep going"),
    ]

    def __init__(self, branch: str, worktree: str) -> None:
        super().__init__()
        self.branch = branch
        self.worktree = worktree

    def compose(self) -> ComposeResult:
        where = Text()
        where.append("The loop is still running. ")
        if self.branch:
            where.append("Its work so far stays on the preview branch\n  ")
            where.append(self.branch, style="bold")
            where.append("\nin the worktree\n  ")
            where.append(self.worktree, style="bold")
        else:
            where.append("The sandbox is still being set up.")
        with Vertical(id="quit-box"):
            yield Label("Stop the loop and quit?", id="quit-title")
            yield Static(where, id="quit-where")
            with Horizontal(id="quit-buttons"):
                yield Button("Stop and quit (y)", variant="error", id="quit-yes")
                yield Button("Keep going (n)", variant="primary", id="quit-no")

    def on_mount(self) -> None:
        self.query_one("#quit-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "quit-yes")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


class MessageScreen(ModalScreen[str | None]):
    """A small input: a steering message for the model's next turn."""

    CSS_PATH = "message.tcss"
    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="message-box"):
            yield Label("Message to the model (joins the conversation at its next turn)")
            yield Input(placeholder="e.g. the function must also accept floats", id="message-input")
            yield Label("enter to send · escape to cancel", id="message-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DiffScreen(Screen[None]):
    """The whole diff, full screen (hunk-by-hunk review is its own feature, to come)."""

    CSS_PATH = "diff.tcss"
    BINDINGS: ClassVar = [Binding("escape,v,q", "close", "Back")]

    def __init__(self, title: str, diff: str, lines: list[Text] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self._diff = diff
        self._lines = lines

    def compose(self) -> ComposeResult:
        yield Label(self.title_text, id="diff-title")
        yield DiffPane(id="diff-full", empty="the sandbox has no changes yet")
        yield Footer()

    def on_mount(self) -> None:
        pane = self.query_one(DiffPane)
        pane.show(self._diff, self._lines)
        pane.focus()

    def show(self, diff: str, lines: list[Text] | None = None) -> None:
        self.query_one(DiffPane).show(diff, lines)

    def action_close(self) -> None:
        self.dismiss(None)


class IterationScreen(Screen[None]):
    """One iteration, looked back at: its test output and its diff against the base."""

    CSS_PATH = "iteration.tcss"
    BINDINGS: ClassVar = [Binding("escape,q", "close", "Back")]

    def __init__(self, record: IterationRecord) -> None:
        super().__init__()
        self.record = record

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

    def show_diff(self, diff: str, lines: list[Text] | None = None) -> None:
        pane = self.query_one(DiffPane)
        pane.empty = "no changes against the base at this iteration"
        pane.show(diff, lines)

    def action_close(self) -> None:
        self.dismiss(None)
