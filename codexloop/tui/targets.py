"""Small dialogs about the exam: add a target, pick one (to remove it, or a file to edit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option


class AddTargetScreen(ModalScreen[str | None]):
    """A target to add: a pytest node id or a test file, relative to the repository root."""

    CSS_PATH = "targets.tcss"
    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, targets: Sequence[str]) -> None:
        super().__init__()
        self.targets = tuple(targets)

    def compose(self) -> ComposeResult:
        with Vertical(id="targets-box"):
            yield Label("Add a target to the exam", id="targets-title")
            yield Label("now: " + " ".join(self.targets), id="targets-now")
            yield Input(placeholder="tests/test_x.py::test_y (from the repository root)")
            yield Label(
                "enter to add (from the next test run on) · escape to cancel",
                id="targets-hint",
            )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one of a few strings (a target to remove, a file to edit)."""

    CSS_PATH = "targets.tcss"
    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, choices: Sequence[str], hint: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.choices = tuple(choices)
        self.hint = hint or "enter to choose · escape to cancel"

    def compose(self) -> ComposeResult:
        with Vertical(id="targets-box"):
            yield Label(self.title_text, id="targets-title")
            yield OptionList(*(Option(choice, id=str(n)) for n, choice in enumerate(self.choices)))
            yield Label(self.hint, id="targets-hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()  # the app's own handler (the timeline) must not see it
        self.dismiss(self.choices[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
