"""Small dialogs: one line of text (a message, a target, a comment), a choice, quit or not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option


class PromptScreen(ModalScreen[str | None]):
    """One line from the developer: a message for the model, a target to add, a comment.

    Dismissed with the text (stripped; None when empty) on enter, None on escape.
    """

    CSS_PATH = "dialogs.tcss"
    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        title: str,
        *,
        placeholder: str = "",
        note: str = "",
        hint: str = "enter to send · escape to cancel",
        warning: bool = False,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.placeholder = placeholder
        self.note = note
        self.hint = hint
        self.warning = warning

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt-box", classes="-warning" if self.warning else ""):
            yield Label(self.title_text, id="prompt-title")
            if self.note:
                yield Label(self.note, id="prompt-note")
            yield Input(placeholder=self.placeholder, id="prompt-input")
            if self.hint:
                yield Label(self.hint, id="prompt-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one of a few strings (a target to remove, a file to edit)."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, choices: Sequence[str], hint: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.choices = tuple(choices)
        self.hint = hint or "enter to choose · escape to cancel"

    def compose(self) -> ComposeResult:
        with Vertical(id="choice-box"):
            yield Label(self.title_text, id="choice-title")
            yield OptionList(*(Option(choice, id=str(n)) for n, choice in enumerate(self.choices)))
            yield Label(self.hint, id="choice-hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()  # the main screen's own handler (the timeline) must not see it
        self.dismiss(self.choices[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)


class QuitScreen(ModalScreen[bool]):
    """While the loop runs: stop it and quit? Says where the work stays."""

    CSS_PATH = "dialogs.tcss"
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
