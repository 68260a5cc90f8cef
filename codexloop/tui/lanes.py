"""The attempts of a race (``--attempts N``) as the app shows them: a lane each, one in focus.

Every event of the race passes through :meth:`Lanes.take` first. It keeps each lane's summary
(state, iteration, tokens, last verdict, how it ended) and its history, and says whether the
focused view shows the event: the panes, the timeline and the status line follow the focused
lane; the race's own events (the running total of tokens, the winner, the session's end, an
apply's answer) show whatever the focus. Changing the focus hands back what the newly focused
lane has shown so far, for the screen to play into its emptied panes. Streamed fragments are
joined in the history as they come, so a long lane replays in a few thousand events. Plain
Python: no Textual, no Rich.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from codexloop.core import events as ev

JOINED_CHARS = 4_096
"""Streamed fragments of one kind are joined in a lane's history up to this size."""


@dataclass
class Lane:
    """One attempt as its lane shows it."""

    number: int
    model: str = ""
    branch: str = ""
    state: str = "starting"
    iteration: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    passed: bool | None = None  # the verdict of its last test run
    finished: str | None = None  # passed | failed | stopped, once it is over
    reason: str = ""
    waiting: str = ""  # "review" | "budget": the attempt waits for the developer

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


def _session_level(event: ev.Event) -> bool:
    """An event of the whole race rather than of one attempt."""
    return event.attempt == 0 or isinstance(event, ev.Winner | ev.LoopFinished | ev.Applied)


class Lanes:
    """The lanes of a race, the one in focus, and what each has shown."""

    def __init__(self, count: int) -> None:
        self.lanes = {number: Lane(number) for number in range(1, count + 1)}
        self.focused = 1
        self.winner: int | None = None
        self._history: dict[int, list[ev.Event]] = {number: [] for number in self.lanes}
        self._session: list[ev.Event] = []

    def __len__(self) -> int:
        return len(self.lanes)

    def take(self, event: ev.Event) -> bool:
        """Note ``event``; True when the focused view shows it."""
        if _session_level(event):
            if isinstance(event, ev.Usage):  # the running total: only the latest matters
                self._session = [e for e in self._session if not isinstance(e, ev.Usage)]
            if isinstance(event, ev.Winner):
                self.winner = event.attempt
            self._session.append(event)
            return True
        lane = self.lanes.get(event.attempt)
        if lane is None:
            return True
        self._note(lane, event)
        self._remember(self._history[lane.number], event)
        return lane.number == self.focused

    def _note(self, lane: Lane, event: ev.Event) -> None:
        match event:
            case ev.LoopStarted():
                lane.model, lane.branch = event.model, event.branch
            case ev.StateChanged():
                lane.state = event.state
            case ev.IterationStarted():
                lane.iteration, lane.waiting = event.iteration, ""
            case ev.Usage():
                lane.tokens_in, lane.tokens_out = event.input_total, event.output_total
            case ev.TestFinished():
                lane.passed = event.passed
            case ev.ReviewReady():
                lane.waiting = "review"
            case ev.BudgetSpent():
                lane.waiting = "budget"
            case ev.AttemptFinished():
                lane.finished, lane.reason, lane.waiting = event.status, event.reason, ""
                lane.branch = event.branch or lane.branch

    @staticmethod
    def _remember(history: list[ev.Event], event: ev.Event) -> None:
        last = history[-1] if history else None
        if (
            isinstance(event, ev.STREAMED)
            and type(last) is type(event)
            and len(last.text) < JOINED_CHARS  # type: ignore[union-attr]
            and dataclasses.replace(event, text="") == dataclasses.replace(last, text="")  # type: ignore[arg-type]
        ):
            history[-1] = dataclasses.replace(event, text=last.text + event.text)  # type: ignore[union-attr]
            return
        history.append(event)

    def focus(self, number: int) -> list[ev.Event] | None:
        """Focus lane ``number``: what the focused view shows of it so far, in order (the
        race's own events last); None when there is no such lane or it has the focus."""
        if number not in self.lanes or number == self.focused:
            return None
        self.focused = number
        return [*self._history[number], *self._session]

    def waiting(self, kind: str) -> list[int]:
        """The lanes that wait for the developer (``review`` or ``budget``)."""
        return [n for n, lane in self.lanes.items() if lane.waiting == kind and not lane.finished]
