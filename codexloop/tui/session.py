"""One session as the app drives it: the loop, the commands sent to it, and its state.

:class:`Session` builds the :class:`~codexloop.core.loop.Loop` from the config, runs it (its
events flow to the screen through the event pump; commands go back on a second channel) and
turns the developer's controls into commands: pause and resume at a safe point, a steering
message, more iterations, new targets, the review's feedback. It changes the
:class:`~codexloop.tui.state.SessionState` only through its methods, and tells the screen what
changed (``on_change``). No Textual here.

With ``--attempts N`` the loop is a :class:`~codexloop.core.race.Race` and the session has
:class:`~codexloop.tui.lanes.Lanes`: pause, resume, stop and steering reach every attempt (a
steering message can name one), while what answers one lane — more iterations for a spent
budget, the review's hunks and comments — goes to that lane only.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, cast

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from codexloop.core import events as ev
from codexloop.core import outcome
from codexloop.core.config import Config, ConfigError, resolve_targets
from codexloop.core.loop import Loop, LoopResult, event_channel
from codexloop.core.race import Race
from codexloop.tui.lanes import Lanes
from codexloop.tui.state import Changes, SessionState

LoopFactory = Callable[[Config], Loop | Race]


class DiffSource(NamedTuple):
    """What the sandbox's diff is computed from."""

    worktree: Path
    base: str
    exclude: Path | None
    exam: tuple[str, ...]


class Session:
    """The loop of one session, the channel of commands to it, and what the app knows of it."""

    def __init__(self, config: Config, loop_factory: LoopFactory, clock: Callable[[], float]):
        self.config = config
        self.loop_factory = loop_factory
        self.state = SessionState(config.max_iterations, clock)
        self.lanes = Lanes(config.attempts) if config.attempts > 1 else None
        """The attempts of a race (None: one attempt)."""
        self.loop: Loop | Race | None = None
        self.result: LoopResult | None = None
        self.pending_targets: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        """Targets sent to the loop, not applied yet (it applies them before a test run)."""
        self.on_change: Callable[[Changes], None] = lambda changes: None
        """Told what a control changed (the screen redraws it)."""
        self.on_over: Callable[[], None] = lambda: None
        """Called once, when both the loop and the stream of its events are over."""
        self._commands: MemoryObjectSendStream[ev.Command] | None = None
        self._over = False
        self._applying: asyncio.Future[ev.Applied] | None = None
        """A review's hunks sent to the loop, its ``applied`` answer not in yet."""

    # -- running the loop --------------------------------------------------------------------

    def start(
        self,
    ) -> tuple[
        Loop | Race,
        ObjectSendStream[ev.Event],
        ObjectReceiveStream[ev.Event],
        ObjectReceiveStream[ev.Command],
    ]:
        """Build the loop and its two channels: (loop, events out, events in, commands in)."""
        self.loop = self.loop_factory(self.config)
        send_events, receive_events = event_channel()
        commands, receive_commands = event_channel()
        self._commands = cast(MemoryObjectSendStream[ev.Command], commands)
        return self.loop, send_events, receive_events, receive_commands

    async def drive(
        self,
        loop: Loop | Race,
        send: ObjectSendStream[ev.Event],
        commands: ObjectReceiveStream[ev.Command],
        failed: Callable[[Exception], None],
    ) -> None:
        """Run the loop to its end; its failure goes to ``failed`` before the end is marked."""
        cancelled = False
        try:
            async with send:
                self.result = await loop.run(send, commands)
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Exception as exc:
            failed(exc)
        finally:
            self.on_change(self.state.loop_ended(cancelled=cancelled))
            self._maybe_over()

    def events_ended(self) -> None:
        """The stream of the loop's events is over (closed, or its worker cancelled)."""
        self.state.events_ended()
        if self._applying is not None and not self._applying.done():
            # Every event is in: the loop ended before it answered.
            error = "the loop ended before the hunks were applied"
            self._applying.set_result(ev.Applied((), (), error=error))
        self._maybe_over()

    def _maybe_over(self) -> None:
        if self.state.session_over and not self._over:
            self._over = True
            self.on_over()

    @property
    def loop_running(self) -> bool:
        state = self.state
        return self._commands is not None and not state.loop_over and state.finished is None

    def send(self, command: ev.Command) -> bool:
        """Hand a command to the loop (it acts at its next safe point); False if it is gone."""
        if self._commands is None:
            return False
        try:
            self._commands.send_nowait(command)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
            return False
        return True

    # -- the developer's controls --------------------------------------------------------------

    def toggle_pause(self) -> None:
        """Pause at the next safe point, or resume (also a pause not yet reached)."""
        state = self.state
        if state.transition == "stopping…":
            return
        if state.state == "paused" or state.transition == "pausing…":
            self.send(ev.Resume())
            self.on_change(state.resuming())
        else:
            self.send(ev.Pause())
            self.on_change(state.pausing())

    def pause_for_edit(self) -> bool:
        """Ask the loop to pause at its next safe point; True when this call did it."""
        state = self.state
        if not self.loop_running or state.awaiting_developer:
            return False  # finished, or waiting for the developer: nothing to pause
        if state.state == "paused" or state.transition in ("pausing…", "stopping…"):
            return False  # paused already (by the developer): it stays so after the edit
        if not self.send(ev.Pause()):
            return False
        self.on_change(state.pausing())
        return True

    def resume_after_edit(self) -> None:
        if not self.loop_running or self.state.transition == "stopping…":
            return
        if self.send(ev.Resume()):
            self.on_change(self.state.resuming())

    def _lane(self) -> int | None:
        """The focused attempt, for what answers one lane (None: one attempt)."""
        return self.lanes.focused if self.lanes is not None else None

    def more_iterations(self) -> bool:
        """Red with the budget spent: as many iterations again, the conversation kept (in a
        race, to every lane that waits for it)."""
        if self.state.budget_spent is None or not self.loop_running:
            return False
        lanes: list[int | None] = [*self.lanes.waiting("budget")] if self.lanes is not None else []
        count = self.config.max_iterations
        sent = [self.send(ev.MoreIterations(count, attempt=k)) for k in lanes or [None]]
        if not all(sent):
            return False
        self.on_change(self.state.more_iterations(self.config.max_iterations))
        return True

    def feedback(self, rejections: tuple[ev.Rejection, ...]) -> bool:
        """Rejected hunks with comments back to the model: the loop goes on from them."""
        if not self.loop_running or not self.send(ev.Feedback(rejections, attempt=self._lane())):
            return False
        self.on_change(self.state.feedback_sent())
        return True

    async def apply_hunks(
        self, head: str, hunks: tuple[tuple[str, int], ...], feed: Callable[[ev.Event], None]
    ) -> ev.Applied:
        """A review's accepted hunks into the working tree. The loop applies them while it
        runs (its trace records the ``applied`` answer); once it is over, the same engine
        function runs here, and ``feed`` takes its answer as the loop's events go."""
        if self.loop_running and (self._applying is None or self._applying.done()):
            self._applying = asyncio.get_running_loop().create_future()
            if self.send(ev.Apply(head, hunks, attempt=self._lane())):
                return await self._applying
        started = self.state.started
        if started is None:
            return ev.Applied((), (), error="the session has no snapshot to apply against")

        async def emit(event: ev.Event) -> None:
            feed(event)

        return await outcome.apply_hunks(self.config.repo, started.base, head, hunks, emit)

    def applied(self, event: ev.Applied) -> None:
        """The loop's answer to :meth:`apply_hunks`."""
        if self._applying is not None and not self._applying.done():
            self._applying.set_result(event)

    def stop(self, reason: str, *, finish: bool) -> None:
        """End the session: ``finish`` it as it stands (it waits for the developer), or stop it."""
        if finish:
            self.send(ev.Finish())
        else:
            self.send(ev.Stop(reason))
            self.on_change(self.state.stopping())

    # -- the exam's targets ----------------------------------------------------------------------

    def current_targets(self) -> tuple[str, ...]:
        return self.pending_targets[0] if self.pending_targets else self.config.targets

    def change_targets(self, targets: tuple[str, ...]) -> tuple[str, ...] | str:
        """Check new targets as the command line does (:class:`ConfigError` if one is wrong),
        then send them to the loop; the targets sent, or why none were.

        The loop applies them at its next test run (then ``TargetsChanged`` comes back).
        """
        node_ids, files = resolve_targets(self.config.repo, self.config.repo, targets)
        node_ids = tuple(dict.fromkeys(node_ids))
        if node_ids == self.current_targets():
            return "the targets are unchanged"
        if not self.loop_running or not self.send(ev.SetTargets(node_ids, files)):
            return "the loop is not running: the targets cannot change now"
        self.pending_targets = (node_ids, files)
        return node_ids

    def targets_changed(self, event: ev.TargetsChanged) -> None:
        """The loop switched targets: the config names them and their files from now on."""
        pending = self.pending_targets
        if pending is not None and pending[0] == event.targets:
            files = pending[1]
            self.pending_targets = None
        else:  # an earlier change (a later one is still pending): name its files again
            try:
                files = resolve_targets(self.config.repo, self.config.repo, event.targets)[1]
            except ConfigError:
                files = self.config.target_files
        self.config = dataclasses.replace(self.config, targets=event.targets, target_files=files)

    # -- what the panes are computed from --------------------------------------------------------

    def diff_source(self) -> DiffSource | None:
        """The sandbox's diff inputs, once the sandbox exists."""
        started = self.state.started
        if started is None:
            return None
        sandbox = self.loop.sandbox if self.loop is not None else None
        exclude = sandbox.exclude_file if sandbox is not None else None
        return DiffSource(Path(started.worktree), started.base, exclude, self.config.target_files)

    def review_head(self) -> str | None:
        """The focused lane's: a race's result is its winner's."""
        lanes, result = self.lanes, self.result
        if lanes is not None and lanes.focused != lanes.winner:
            result = None
        return self.state.review_head(result.head if result is not None else None)
