"""The event pump: engine events into the screen, streamed fragments at frame rate.

Every event goes through :meth:`EventPump.feed`: the session state takes it in first
(:meth:`~codexloop.tui.state.SessionState.apply`), then each widget that shows that type of event
gets it (the routes, registered by type: ``route(ev.TestOutput, terminal.test_output)``), then the
screen reacts to what the state says changed. Widgets only queue what they write; the panes paint
at most once a frame (:data:`FRAME_S`), however many fragments arrived in between, and repaint
just the lines that changed. No Textual here: the pump runs on the app's asyncio loop.

A race (``--attempts N``) has :class:`~codexloop.tui.lanes.Lanes`: every event goes to them
first, and only what the focused lane shows (and the race's own events) goes on to the state
and the panes; a lane that comes into focus is played into emptied panes (:meth:`replay`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from anyio.abc import ObjectReceiveStream

from codexloop.core import events as ev
from codexloop.tui.lanes import Lanes
from codexloop.tui.state import Changes, SessionState

FRAME_S = 1 / 60
"""Streamed fragments reach the panes at this period at most."""

E = TypeVar("E", bound=ev.Event)


class Pane(Protocol):
    def flush(self) -> bool: ...


class EventPump:
    """Engine events to the state, to the widgets that show them, and to the screen."""

    def __init__(self, state: SessionState, react: Callable[[Changes], None]) -> None:
        self.state = state
        self.react = react
        """Told what an event changed on screen besides the panes' text."""
        self.panes: Sequence[Pane] = ()
        """The buffers painted at frame rate."""
        self.running: Callable[[], bool] = lambda: True
        """Whether the screen is still there to paint on."""
        self.lanes: Lanes | None = None
        """The attempts of a race: they say which events the focused view shows."""
        self.ready_elsewhere: Callable[[int], None] = lambda attempt: None
        """A lane out of focus waits for the developer (green for review, or its budget
        spent): the screen may bring it into focus."""
        self.replaying = False
        """A lane's story is being played in again (:meth:`replay`), not happening now."""
        self._routes: dict[type[ev.Event], list[Callable[[Any], None]]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_flush = 0.0

    def route(self, kind: type[E], handler: Callable[[E], None]) -> None:
        """Events of type ``kind`` (exactly) go to ``handler``, after the state took them in."""
        self._routes.setdefault(kind, []).append(handler)

    def feed(self, event: ev.Event) -> None:
        """One engine event in: the state, the widgets that show it, then the screen."""
        lanes = self.lanes
        if lanes is not None:
            shown = lanes.take(event)
            if not isinstance(event, ev.STREAMED):
                self.react(Changes.LANES)
            if not shown:
                if isinstance(event, ev.ReviewReady | ev.BudgetSpent):
                    self.ready_elsewhere(event.attempt)
                return
        self.show(event)

    def replay(self, events: Sequence[ev.Event]) -> Changes:
        """Play what a lane showed so far into emptied panes (it comes into focus); what
        changed on screen, together, for the screen to redraw once."""
        react, changed = self.react, [Changes.NONE]

        def collect(changes: Changes) -> None:
            changed[0] |= changes

        self.react, self.replaying = collect, True
        try:
            for event in events:
                self.show(event)
        finally:
            self.react, self.replaying = react, False
        return changed[0]

    def show(self, event: ev.Event) -> None:
        """The state, the widgets that show ``event``, then the screen."""
        changes = self.state.apply(event)
        for handler in self._routes.get(type(event), ()):
            handler(event)
        if changes:
            self.react(changes)
        if self._flush_handle is None:
            self.request_flush()

    async def consume(self, receive: ObjectReceiveStream[ev.Event]) -> None:
        """Feed every event of a stream (the loop's, or a benchmark's) until it closes."""
        async with receive:
            async for event in receive:
                self.feed(event)

    def request_flush(self) -> None:
        """Paint at once if the last paint is a frame ago, else at the next frame boundary."""
        if self._flush_handle is not None:
            return
        loop = asyncio.get_running_loop()
        when = max(loop.time(), self._last_flush + FRAME_S)
        self._flush_handle = loop.call_at(when, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        if self.running():
            self.flush()

    def flush(self) -> None:
        """Queued writes onto the panes now; only what changed is repainted."""
        self._last_flush = asyncio.get_running_loop().time()
        for pane in self.panes:
            pane.flush()
        self.state.flushed()
