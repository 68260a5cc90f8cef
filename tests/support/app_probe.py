"""The app as tests drive it: the production app, plus what only tests need.

:class:`ProbedApp` taps the main screen's event pump (every engine event the app handled is kept)
and lets a test wait for an event or a condition without sleeping. Nothing here ships in the
package.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from codexloop.core import events as ev
from codexloop.tui.app import CodexloopApp

E = TypeVar("E", bound=ev.Event)

FRAGMENTS = ev.STREAMED
POLL_S = 0.02


class ProbedApp(CodexloopApp):
    """The app with a log of the events it handled, and ways to wait on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: deque[ev.Event] = deque(maxlen=5_000)
        """The engine events the app handled (streamed fragments left out), oldest first."""
        self._handled = asyncio.Event()
        pump = self.main.pump
        feed = pump.feed

        def observed(event: ev.Event) -> None:
            feed(event)
            if not isinstance(event, FRAGMENTS):
                self.events.append(event)
            self._handled.set()

        setattr(pump, "feed", observed)  # noqa: B010 (the tap: every event, once the app took it in)

    def flush(self) -> None:
        """What the panes have queued, on them now."""
        self.main.pump.flush()

    async def wait_for_event(
        self,
        kind: type[E],
        predicate: Callable[[E], bool] | None = None,
        timeout: float = 30.0,
    ) -> E:
        """The first handled event of ``kind`` (past or future) matching ``predicate``.

        Streamed fragments are not kept: only future ones match. When this returns, the
        panes hold everything received up to then.
        """
        deadline = time.monotonic() + timeout
        while True:
            for event in list(self.events):
                if isinstance(event, kind) and (predicate is None or predicate(event)):
                    self.flush()
                    return event
            await self._next(deadline, f"a {kind.__name__} event")

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``condition()`` holds (panes flushed), checked after every handled event
        and every few milliseconds (the app's own changes: the exam read, the editor opened)."""
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            if condition():
                return
            await self._next(deadline, "the condition")

    async def _next(self, deadline: float, what: str) -> None:
        if not self.is_running:
            raise RuntimeError(f"the app stopped before {what}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {what} in time")
        self._handled.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._handled.wait(), min(POLL_S, remaining))

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until no diff is pending, then flush: what the screen shows is complete."""
        await self.wait_until(lambda: self.main.diff_pane.idle, timeout)
