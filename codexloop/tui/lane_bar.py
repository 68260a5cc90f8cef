"""The lanes of a race, one chip each under the status line: number, state, iteration, tokens,
the last verdict; the focused one stands out, the winner is starred. ``1``…``9`` or a click
brings a lane into focus (the panes follow it)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Static

from codexloop.tui.lanes import Lane, Lanes
from codexloop.tui.status_line import FINAL_STYLES, STATE_STYLES, human_count

VERDICT = {True: ("✓", "bold green"), False: ("✗", "bold red"), None: ("·", "dim")}
WAITING = {"review": "review?", "budget": "budget spent"}


def lane_text(lane: Lane, *, winner: bool) -> Text:
    """``2 ✗ #3  THINKING  12k`` (``2 ★ ✓ #3  ✓ GREEN  12k`` for the winner)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{lane.number} ", style="bold")
    if winner:
        text.append("★ ", style="bold yellow")
    mark, style = VERDICT[lane.passed]
    text.append(f"{mark} ", style=style)
    text.append(f"#{lane.iteration} ", style="bold")
    if lane.finished is not None:
        label, style = FINAL_STYLES[lane.finished]
    elif lane.waiting:
        label, style = WAITING[lane.waiting], "bold black on yellow"
    else:
        label, style = STATE_STYLES.get(lane.state, (lane.state.upper(), "bold"))
    text.append(f" {label} ", style=style)
    if lane.tokens:
        text.append(f" {human_count(lane.tokens)}", style="dim")
    return text


class LaneChip(Static):
    """One lane; a click focuses it."""

    class Chosen(Message):
        def __init__(self, number: int) -> None:
            super().__init__()
            self.number = number

    def __init__(self, number: int) -> None:
        super().__init__(id=f"lane-{number}", classes="lane")
        self.number = number
        self._shown: Text | None = None

    def show(self, text: Text) -> None:
        if text != self._shown:
            self._shown = text
            self.update(text)

    def on_click(self) -> None:
        self.post_message(self.Chosen(self.number))


class LaneBar(Horizontal):
    """A chip per lane; hidden when the session is one attempt."""

    def __init__(self, lanes: Lanes | None, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lanes = lanes
        self.display = lanes is not None

    def compose(self) -> ComposeResult:
        for number in self.lanes.lanes if self.lanes else ():
            yield LaneChip(number)

    def sync(self) -> None:
        """Redraw the chips that changed, and which one has the focus."""
        lanes = self.lanes
        if lanes is None:
            return
        for chip in self.query(LaneChip):
            lane = lanes.lanes[chip.number]
            chip.show(lane_text(lane, winner=lanes.winner == chip.number))
            chip.set_class(chip.number == lanes.focused, "-focused")
