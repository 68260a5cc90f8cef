"""The developer's controls over a running loop: pause, stop, steer, targets, review answers.

Front ends send :class:`~codexloop.core.events.Command` objects; :meth:`Controls.read` turns
them into state here. The loop looks at that state at safe points (:meth:`Controls.checkpoint`)
and waits for the developer with one helper (:meth:`Controls.wait_for`): for a paused loop to
resume, for a review's answer, for more iterations once the budget is spent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import ObjectReceiveStream

from codexloop.core import events as ev


class Stopped(Exception):
    """The developer stopped the loop (raised at a safe point)."""


@dataclass
class Controls:
    paused: bool = False
    stop_reason: str | None = None
    steering: list[str] = field(default_factory=list)
    feedback: list[ev.Rejection] = field(default_factory=list)
    finish: bool = False
    more: int = 0  # iterations given after the budget was spent
    targets: ev.SetTargets | None = None
    columns: int | None = None  # the front end's terminal width (SetColumns)
    on_stop: Callable[[], None] = lambda: None  # cancels the work in progress
    on_apply: Callable[[ev.Apply], None] = lambda command: None  # applies a review's hunks
    _changed: anyio.Event = field(default_factory=anyio.Event)

    async def read(self, commands: ObjectReceiveStream[ev.Command]) -> None:
        """Apply every command the front end sends, until it closes the stream."""
        async for command in commands:
            self.apply(command)

    def apply(self, command: ev.Command) -> None:
        if isinstance(command, ev.Pause):
            self.paused = True
        elif isinstance(command, ev.Resume):
            self.paused = False
        elif isinstance(command, ev.Stop):
            self.stop_reason = command.reason
            self.on_stop()
        elif isinstance(command, ev.Steer) and command.text.strip():
            self.steering.append(command.text.strip())
        elif isinstance(command, ev.Feedback) and command.rejections:
            self.feedback.extend(command.rejections)
        elif isinstance(command, ev.SetTargets) and command.targets:
            self.targets = command
        elif isinstance(command, ev.Finish):
            self.finish = True
        elif isinstance(command, ev.MoreIterations) and command.iterations > 0:
            self.more += command.iterations
        elif isinstance(command, ev.Apply):
            self.on_apply(command)  # at once, beside the work: it touches only the working tree
        elif isinstance(command, ev.SetColumns) and command.columns > 0:
            self.columns = command.columns
        self._changed.set()  # whoever waits looks again
        self._changed = anyio.Event()

    async def wait_for(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()`` holds; it is asked again after every command."""
        while not ready():
            await self._changed.wait()

    async def checkpoint(self, pause: Callable[[bool], Awaitable[None]]) -> None:
        """A safe point: honour stop and pause here. ``pause(True)`` is called when the loop
        pauses and ``pause(False)`` when it goes on (the loop's state shows it)."""
        if self.stop_reason is not None:
            raise Stopped
        if self.paused:
            await pause(True)
            await self.wait_for(lambda: not self.paused or self.stop_reason is not None)
            if self.stop_reason is not None:
                raise Stopped
            await pause(False)

    def take_steering(self) -> list[str]:
        taken, self.steering = self.steering, []
        return taken

    def take_feedback(self) -> list[ev.Rejection]:
        taken, self.feedback = self.feedback, []
        return taken

    def take_targets(self) -> ev.SetTargets | None:
        taken, self.targets = self.targets, None
        return taken

    def take_more(self) -> int:
        taken, self.more = self.more, 0
        return taken
