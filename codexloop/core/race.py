"""Attempts racing: ``--attempts N`` runs N loops from one snapshot, and the exam picks the winner.

Each attempt is a whole :class:`~codexloop.core.loop.Loop` — its own worktree and branch
(``codexloop/<session>/a1`` … ``aN``), conversation, budget and trace — started from the same
snapshot of the checkout (the exam still comes from the checkout, so an edit reaches every
attempt). What differs between attempts: the model, when ``--model a,b`` names several (spread
over the attempts in turn), an approach hint (``--hint``, one per attempt), and the sampling of
the model itself. Model requests run in parallel (they are waits); test runs share
``--jobs`` slots, the CPU count by default, so N attempts on a small machine do not thrash.
The baseline runs once for all (same snapshot, same exam), and test runs are cold: a warm
server per attempt held 50-80 MB each for little time saved (``bench/attempts.py``).

Selection: ``first`` — the first attempt to go green wins and the others are stopped at their
next safe point; ``best`` — every attempt runs to its end, and among the greens an unflagged
change beats a flagged one, then the smaller diff, then the earlier finish. Losers keep their
branches for reference (a loser that recorded nothing is removed). One attempt that fails — a
crash of the engine, an endpoint error — ends that attempt, never the race.

Events: every event of attempt K carries ``attempt=K``; each ``usage`` of an attempt is
followed by the session's running total (``usage`` with ``attempt`` 0, every attempt's
tokens together); an attempt's own ``loop_finished`` becomes ``attempt_finished``; the race ends with ``winner`` (when one went green), ``applied`` (with
``--accept``), then one ``loop_finished`` for the whole session, naming the winner's branch
(``attempt`` 0 when no attempt won).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from codexloop.core import diff, gitops, leftovers, outcome
from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.errors import AttemptLost, CodexloopError
from codexloop.core.exam import ExamError
from codexloop.core.gitops import ApplyResult
from codexloop.core.loop import Loop, LoopResult, SharedBaseline, event_channel
from codexloop.core.model import BACKOFF_S, make_client
from codexloop.core.sandbox import Sandbox, session_name
from codexloop.core.session import left_out_notice
from codexloop.core.trace import traces_dir

if TYPE_CHECKING:
    from codexloop.core.model_host import ModelClient


@dataclass
class Lane:
    """One attempt: its loop, the commands it reads, and how it ended."""

    number: int
    loop: Loop
    commands: MemoryObjectSendStream[ev.Command]
    inbox: MemoryObjectReceiveStream[ev.Command]
    result: LoopResult | None = None
    ended: ev.LoopFinished | None = None  # the loop's own end, held back by the forwarder
    finished: ev.AttemptFinished | None = None
    order: int = 0  # the how-manieth attempt to finish
    error: BaseException | None = None
    lost: str | None = None  # its machine went away (a Ray node): why
    setup_error: Exception | None = None  # the attempt could not start (no session)
    removed: bool = False  # it recorded nothing and lost: its branch went

    @property
    def green_commit(self) -> str | None:
        """What went green: the commit that was tested (and scanned for flags), never the
        worktree's later state (code under test may write there during the green run)."""
        if self.result is None or self.result.status != "passed":
            return None
        return self.result.green or self.result.head


@dataclass
class RaceState:
    winner: Lane | None = None
    why: str = ""
    finished: int = 0
    stopped: str | None = None  # a stop for every attempt (the developer's): the race is off
    exam_errors: list[ExamError] = field(default_factory=list)
    spent: dict[int, tuple[int, int]] = field(default_factory=dict)  # tokens in, out per attempt
    costs: dict[int, float] = field(default_factory=dict)  # US dollars so far per attempt


class Race:
    """N attempts of one session racing; the exam picks the winner (:mod:`codexloop.core.race`).

    Presents what front ends use of a :class:`Loop`: ``run``, ``sandbox`` (the winner's),
    ``accept_all`` and ``accept_flagged``, ``flagged``, ``test_outcomes``, ``loops``.
    """

    def __init__(
        self,
        config: Config,
        *,
        client: ModelClient | None = None,
        name: str | None = None,
        backoff: tuple[float, ...] = BACKOFF_S,
        write_trace: bool = True,
        accept_all: bool = False,
        accept_flagged: bool = False,
        review: bool = False,
        clients: Sequence[ModelClient] = (),
        base: str | None = None,
        kind: type[Loop] = Loop,
    ) -> None:
        """``clients``: one per attempt (a replay serves each attempt's recorded turns on its
        own server); ``base``: the commit every attempt starts from (a replay's recorded
        snapshot) instead of a new snapshot of the checkout; ``kind``: what runs an attempt
        (a :class:`Loop` here, a Ray actor's stand-in with ``--ray``:
        :mod:`codexloop.core.executor`)."""
        self.config = config
        self.base = base
        self.name = name or session_name(config.targets)
        self.client = client or make_client(config.base_url, config.api_key, config.request_timeout)
        self.slots = anyio.CapacityLimiter(config.jobs or os.cpu_count() or 1)
        self.accept_all = accept_all
        self.accept_flagged = accept_flagged
        self.write_trace = write_trace
        # Cold test runs: a warm server per attempt held 50-80 MB for little time saved
        # (bench/attempts.py); a race's runs are bounded by --jobs anyway.
        cold = dataclasses.replace(config, warm=False)
        self.loops = [
            kind(
                cold,
                client=clients[number - 1] if clients else self.client,
                name=f"{self.name}/a{number}",
                backoff=backoff,
                write_trace=write_trace,
                review=review,
                attempt=number,
                test_slots=self.slots,
                base=base,
            )
            for number in range(1, config.attempts + 1)
        ]
        shared, setup = SharedBaseline(), anyio.Lock()
        for loop in self.loops:
            loop.shared_baseline, loop.setup_lock = shared, setup
        self.state = RaceState()
        self.flagged: list[ev.Flagged] = []
        self.applied: ApplyResult | None = None

    @property
    def winner(self) -> Loop | None:
        return self.state.winner.loop if self.state.winner else None

    @property
    def sandbox(self) -> Sandbox | None:
        """The winner's sandbox, else the first attempt's (None until one exists)."""
        chosen = self.winner or self.loops[0]
        return chosen.sandbox or next((lp.sandbox for lp in self.loops if lp.sandbox), None)

    @property
    def test_outcomes(self) -> list[bool]:
        return self.winner.test_outcomes if self.winner else self.loops[0].test_outcomes

    async def run(
        self,
        events: ObjectSendStream[ev.Event] | None = None,
        commands: ObjectReceiveStream[ev.Command] | None = None,
    ) -> LoopResult:
        config = self.config
        if config.continue_from is None and self.base is None:  # one snapshot, one read
            left_out: list[tuple[str, int]] = []
            snapshot = await anyio.to_thread.run_sync(gitops.snapshot, config.repo, left_out)
            for loop in self.loops:
                loop.snapshot = snapshot
            notice = left_out_notice(left_out)  # said once, for every attempt
            if notice is not None:
                await self._send(events, dataclasses.replace(notice, attempt=0))
        lanes = []
        for number, loop in enumerate(self.loops, 1):
            send, receive = event_channel()
            lanes.append(Lane(number, loop, send, receive))
        async with anyio.create_task_group() as tg:
            if commands is not None:
                tg.start_soon(self._route_commands, commands, lanes)
            async with anyio.create_task_group() as attempts:
                for lane in lanes:
                    attempts.start_soon(self._run_lane, lane, lanes, events)
            tg.cancel_scope.cancel()  # the command router: every attempt is over
        return await self._finish(lanes, events)

    # -- one attempt ---------------------------------------------------------------------------

    async def _run_lane(
        self, lane: Lane, lanes: list[Lane], out: ObjectSendStream[ev.Event] | None
    ) -> None:
        send, receive = event_channel()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward, lane, lanes, receive, out)
                try:
                    async with send:
                        lane.result = await lane.loop.run(send, lane.inbox)
                except ExamError as exc:  # every attempt meets the same exam: reported once
                    self.state.exam_errors.append(exc)
                except AttemptLost as exc:  # its machine went away: lost, the race goes on
                    lane.lost = str(exc)
                except Exception as exc:  # one attempt's crash ends that attempt, not the race
                    lane.error = exc = _innermost(exc)
                    if not lane.loop.set_up and isinstance(exc, CodexloopError | OSError):
                        lane.setup_error = exc  # its sandbox could not be set up
        finally:
            lane.commands.close()  # an attempt that is over reads no more commands
            lane.inbox.close()
        # Every event of the attempt is out (the forwarder drained them): now its end, once,
        # with the crash's reason when it crashed (whatever its loop said on the way out).
        ended, error = lane.ended, lane.error
        if lane.lost is not None or error is not None:
            finished = ev.AttemptFinished(
                "lost" if lane.lost is not None else "failed",
                ended.iterations if ended else lane.loop._iteration,
                lane.loop.sandbox.branch if lane.loop.sandbox else "",
                lane.lost or f"the attempt failed: {type(error).__name__}: {error}",
                attempt=lane.number,
            )
        elif ended is not None:
            finished = ev.AttemptFinished(
                ended.status, ended.iterations, ended.branch, ended.reason, attempt=lane.number
            )
        else:
            return  # an exam that can never pass: the session's end says it
        await self._lane_over(lane, lanes, out, finished)

    async def _forward(
        self,
        lane: Lane,
        lanes: list[Lane],
        receive: ObjectReceiveStream[ev.Event],
        out: ObjectSendStream[ev.Event] | None,
    ) -> None:
        """The attempt's events to the front end; its own end is held back (the attempt's
        end is said by :meth:`_run_lane` once the loop is over); a green (in the app: ready
        for review) may decide the race."""
        async with receive:
            async for event in receive:
                if isinstance(event, ev.LoopFinished):
                    lane.ended = event
                    continue
                await self._send(out, event)
                if isinstance(event, ev.Usage):
                    await self._send(out, self._total(lane, event))
                elif isinstance(event, ev.ReviewReady):
                    await self._green(lane, lanes, out)

    async def _lane_over(
        self,
        lane: Lane,
        lanes: list[Lane],
        out: ObjectSendStream[ev.Event] | None,
        finished: ev.AttemptFinished,
    ) -> None:
        if lane.finished is not None:
            return
        self.state.finished += 1
        lane.order, lane.finished = self.state.finished, finished
        await self._send(out, finished)
        if finished.status == "passed":
            await self._green(lane, lanes, out)

    async def _green(
        self, lane: Lane, lanes: list[Lane], out: ObjectSendStream[ev.Event] | None
    ) -> None:
        """``first``: the first green wins, and every other attempt is stopped. Once the
        developer stopped the race, no winner is decided any more."""
        state = self.state
        if self.config.pick != "first" or state.winner is not None or state.stopped is not None:
            return
        self.state.winner, self.state.why = lane, "the first attempt to go green"
        for other in lanes:
            if other is not lane and other.finished is None:
                await _command(other, ev.Stop(f"attempt {lane.number} went green first"))

    def _total(self, lane: Lane, usage: ev.Usage) -> ev.Usage:
        """The session's spend so far, every attempt together (``attempt`` 0); its cost when
        the attempts' usage carries one."""
        state = self.state
        state.spent[lane.number] = (usage.input_total, usage.output_total)
        if usage.cost_total is not None:
            state.costs[lane.number] = usage.cost_total
        return ev.Usage(
            usage.input_tokens,
            usage.output_tokens,
            sum(spent[0] for spent in state.spent.values()),
            sum(spent[1] for spent in state.spent.values()),
            usage.cached_tokens,
            usage.reasoning_tokens,
            cost_total=sum(state.costs.values()) if state.costs else None,
            attempt=0,
        )

    # -- commands ------------------------------------------------------------------------------

    async def _route_commands(
        self, commands: ObjectReceiveStream[ev.Command], lanes: list[Lane]
    ) -> None:
        """A command with an ``attempt`` goes to that attempt; any other to every attempt."""
        async for command in commands:
            if isinstance(command, ev.Stop) and command.attempt is None:
                self.state.stopped = command.reason  # before any attempt hears it
            for lane in lanes:
                if command.attempt in (None, lane.number):
                    await _command(lane, command)

    # -- the end -------------------------------------------------------------------------------

    async def _finish(
        self, lanes: list[Lane], out: ObjectSendStream[ev.Event] | None
    ) -> LoopResult:
        state = self.state
        if state.exam_errors and len(state.exam_errors) == len(lanes):
            await self._send(
                out, ev.LoopFinished("failed", 0, "", "", str(state.exam_errors[0]), attempt=0)
            )
            raise state.exam_errors[0]
        failed_setup = [lane.setup_error for lane in lanes if lane.setup_error is not None]
        if len(failed_setup) == len(lanes):  # no attempt could start: as one loop says it
            reason = f"the session could not start: {failed_setup[0]}"
            await self._send(out, ev.LoopFinished("failed", 0, "", "", reason, attempt=0))
            raise failed_setup[0]
        if self.config.pick == "best" and state.stopped is None:
            state.winner, state.why = await anyio.to_thread.run_sync(self._best, lanes)
        winner = state.winner
        if winner is not None:  # no winner: every branch stays (a stopped one is continued)
            for lane in lanes:
                if lane is not winner:
                    async with lane.loop.setup_lock or contextlib.nullcontext():
                        lane.removed = await anyio.to_thread.run_sync(_discard_empty, lane.loop)
        self._write_index(lanes)
        if winner is None or winner.result is None:
            return await self._no_winner(lanes, out)
        result, loop = winner.result, winner.loop
        await self._send(out, ev.Winner(result.branch, state.why, attempt=winner.number))
        self.flagged = list(loop.flagged)
        green = winner.green_commit
        if self.accept_all and loop.sandbox is not None and green is not None:
            self.applied = await outcome.apply(
                self.config.repo,
                loop.sandbox,
                green,
                self.config.target_files,
                self._emitter(out, winner.number),
                flagged=self.flagged,
                accept_flagged=self.accept_flagged,
            )
        await self._send(
            out,
            ev.LoopFinished(
                "passed",
                result.iterations,
                result.branch,
                str(result.worktree),
                state.why,
                attempt=winner.number,
            ),
        )
        return LoopResult(
            "passed",
            result.iterations,
            result.branch,
            result.worktree,
            result.base,
            result.head,
            state.why,
            result.trace,
            result.outcomes,
            tuple(self.flagged),
            self.applied,
            result.timings,
        )

    async def _no_winner(
        self, lanes: list[Lane], out: ObjectSendStream[ev.Event] | None
    ) -> LoopResult:
        """No winner: failed, or stopped (the developer stopped the race before it was
        decided, or every attempt was stopped); every branch stays."""
        ended = [lane.finished for lane in lanes if lane.finished is not None]
        everyone_stopped = bool(ended) and all(f.status == "stopped" for f in ended)
        stopped = self.state.stopped is not None or everyone_stopped
        status: ev.FinalStatus = "stopped" if stopped else "failed"
        reasons = "; ".join(f"a{f.attempt}: {f.reason or f.status}" for f in ended)
        if self.state.stopped is not None and any(f.status == "passed" for f in ended):
            reason = f"stopped before the race was decided ({reasons})"
        else:
            reason = f"no attempt went green ({reasons})"
        iterations = max((f.iterations for f in ended), default=0)
        await self._send(out, ev.LoopFinished(status, iterations, "", "", reason, attempt=0))
        first = next((lane.result for lane in lanes if lane.result is not None), None)
        if first is None:
            return LoopResult(status, iterations, "", Path(), "", None, reason)
        return dataclasses.replace(first, status=status, iterations=iterations, reason=reason)

    def _best(self, lanes: list[Lane]) -> tuple[Lane | None, str]:
        """Blocking: among the greens, unflagged first, then the smallest diff, then the
        earliest to finish."""
        greens = [lane for lane in lanes if lane.green_commit is not None]
        if not greens:
            return None, ""

        def size(lane: Lane) -> int:
            result, green = lane.result, lane.green_commit
            assert result is not None and green is not None
            try:
                found = diff.changes(self.config.repo, result.base, green, self.config.target_files)
            except (gitops.GitError, OSError):
                return 1 << 30
            return sum(h.added + h.removed for change in found for h in change.hunks) + sum(
                1 for change in found if change.whole
            )

        ranked = sorted(greens, key=lambda lane: (bool(lane.loop.flagged), size(lane), lane.order))
        best = ranked[0]
        if len(greens) == 1:
            why = "the only attempt to go green"
        elif bool(best.loop.flagged) != bool(ranked[1].loop.flagged):
            why = f"green without flags, of {len(greens)} green attempts"
        else:
            why = f"the smallest change ({size(best)} lines) of {len(greens)} green attempts"
        return best, why

    def _write_index(self, lanes: list[Lane]) -> None:
        """The session's index of traces: one line per attempt, and the winner."""
        if not self.write_trace:
            return
        winner = self.state.winner
        index = {
            "session": self.name,
            "attempts": [
                {
                    "attempt": lane.number,
                    "model": lane.loop.config.model,
                    "branch": lane.finished.branch if lane.finished else "",
                    "kept": bool(lane.loop.sandbox) and not lane.removed,
                    "status": lane.finished.status if lane.finished else "",
                    "trace": _trace_of(lane),
                }
                for lane in lanes
            ],
            "winner": winner.number if winner else None,
            "pick": self.config.pick,
        }
        path = traces_dir() / self.name / "index.json"
        with contextlib.suppress(OSError):  # an index is a convenience, never a failure
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(index, indent=2) + "\n")

    # -- plumbing ------------------------------------------------------------------------------

    async def _send(self, out: ObjectSendStream[ev.Event] | None, event: ev.Event) -> None:
        if out is None:
            return
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await out.send(event)

    def _emitter(self, out: ObjectSendStream[ev.Event] | None, number: int) -> ev.Emit:
        async def emit(event: ev.Event) -> None:
            await self._send(out, dataclasses.replace(event, attempt=number))

        return emit


def _trace_of(lane: Lane) -> str:
    """The attempt's trace (a crashed attempt's too: its session opened one)."""
    if lane.result is not None and lane.result.trace is not None:
        return str(lane.result.trace)
    session = lane.loop.session
    trace = session.trace if session is not None else None
    return str(trace.path) if trace is not None else ""


def _innermost(exc: Exception) -> Exception:
    """The first error inside task groups' exception groups (what actually went wrong)."""
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _command(lane: Lane, command: ev.Command) -> None:
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await lane.commands.send(command)  # (an attempt that is over reads no more)


def _discard_empty(loop: Loop) -> bool:
    """A losing attempt that recorded nothing is no reference: its branch goes (True)."""
    return leftovers.discard_session(loop) is not None
