"""``codexloop batch FILE``: a backlog of tasks, each run as its own session.

FILE holds one task a line, a JSON object such as
``{"targets": ["tests/test_x.py::test_y"], "task": "...", "attempts": 2}``: only ``targets``
is required; the command line's options are every task's defaults and the task's own keys
(:data:`KEYS`) override them. A task is named by its line in FILE, counted from 1: blank
lines and ``#`` comments are skipped but counted, so task 4 is line 4 of FILE. The whole
file, and every task's configuration, is checked before anything runs: bad input is one
line on standard error and exit 2.

Up to ``--concurrency`` sessions run at once (default 2), in FILE's order, each in its own
sandbox on its own preview branch of one repository; their worktrees are made one at a time
(one lock for all: concurrent ``git worktree add`` can fail on git's lock files). With
``--ray`` each session's attempts run as Ray actors, as for the main command.

Shown: a live table on a terminal, else a line as each task starts and ends; with
``--headless`` every event as a JSON line, as the main command prints it, plus ``task``.
Then one line per task. Exit 0 when every task went green, else 1; 130 when interrupted
(SIGINT, SIGTERM, SIGHUP stop every running session cleanly; tasks not started do not run).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio
from anyio.abc import ObjectReceiveStream

from codexloop.cli.args import _internal_error, _positive_int, build_parser, ray_flag
from codexloop.cli.batch_file import read_tasks, short_label, task_config
from codexloop.cli.batch_views import FINAL, Front, JsonLines, Progress, Table, Task, summary
from codexloop.core import events as ev
from codexloop.core.errors import (
    EXIT_GREEN,
    EXIT_INTERRUPTED,
    EXIT_RED,
    CodexloopError,
    UsageError,
    error_line,
    setup_failure,
)
from codexloop.core.executor import new_session, prepare
from codexloop.core.leftovers import discard_session
from codexloop.core.loop import Loop, event_channel
from codexloop.core.model import check_endpoint, make_client
from codexloop.core.race import Race

if TYPE_CHECKING:
    from codexloop.core.model_host import ModelClient

DESCRIPTION = """\
Run a backlog of tasks, each its own session on its own preview branch: FILE has one JSON
object a line, e.g. {"targets": ["tests/test_x.py::test_y"], "task": "...", "attempts": 2}.
Only targets is required; a task may also give task, test_cmd, attempts, model,
max_iterations, hints (a list) and pick, over the options given here (every task's
defaults). A task is named by its line in FILE (blank lines and # comments are skipped but
counted). Exit 0 when every task went green, 1 otherwise, 2 for bad input, 130 interrupted.
"""


def batch_parser() -> argparse.ArgumentParser:
    parser = build_parser(targets=False)
    parser.prog, parser.description = "codexloop batch", DESCRIPTION
    for action in parser._actions:
        if action.dest == "accept":  # refused: a batch keeps its work on preview branches
            action.help = argparse.SUPPRESS
    parser.add_argument("file", type=Path, metavar="FILE", help="the tasks, a JSON object a line")
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=2,
        metavar="N",
        help="sessions at once (default 2); with --ray, as many as the cluster should run",
    )
    return parser


# -- running ----------------------------------------------------------------------------------


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class Batch:
    def __init__(
        self, tasks: list[Task], *, client: ModelClient, concurrency: int, front: Front
    ) -> None:
        self.tasks = tasks
        self.client = client  # one endpoint for every task (its address is no task's key)
        self.concurrency = concurrency
        self.front = front
        front.on_closed = lambda: self.stop("standard output was closed")
        # Every session's worktree is set up (and a green that made nothing removed) under
        # one lock: concurrent `git worktree add` on one repository can fail on git's lock files.
        self.setup_lock = anyio.Lock()
        self.stopping: str | None = None
        self.interrupted = self.gave_up = False

    def stop(self, reason: str) -> None:
        """Stop every running session at its next safe point; start no other."""
        self.stopping = self.stopping or reason
        for task in self.tasks:
            if task.commands is not None:
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    task.commands.send_nowait(ev.Stop(reason))

    async def run(self) -> None:
        queue = deque(self.tasks)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_signals, tg.cancel_scope)
            tg.start_soon(self.front.run)
            async with anyio.create_task_group() as workers:
                for _ in range(min(self.concurrency, len(self.tasks))):
                    workers.start_soon(self._work, queue)
            tg.cancel_scope.cancel()
        for task in queue:
            task.ended = task.ended or time.monotonic()  # "not run"

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for _ in signals:
                if self.interrupted:  # a second interrupt: give up at once
                    self.gave_up = True
                    scope.cancel()
                    return
                self.interrupted = True
                self.stop("interrupted")

    async def _work(self, queue: deque[Task]) -> None:
        while queue and self.stopping is None:
            await self._run(queue.popleft())

    async def _run(self, task: Task) -> None:
        send_events, receive_events = event_channel()
        task.commands, commands = event_channel()
        task.state, task.started = "running", time.monotonic()
        self.front.started(task)
        session: Loop | Race | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow, task, receive_events)
            async with send_events:
                try:
                    session = new_session(task.config, client=self.client, write_trace=True)
                    for loop in session.loops if isinstance(session, Race) else [session]:
                        loop.setup_lock = self.setup_lock
                    result = await session.run(send_events, commands)
                except Exception as exc:
                    result = None
                    await self._failed(task, session, _innermost(exc))
        task.commands.close()
        commands.close()
        task.commands = None
        if result is not None:
            task.state, task.iterations = FINAL[result.status], result.iterations
            task.branch = result.branch
            if result.status != "passed":
                task.note = result.reason
            elif result.flagged:
                task.note = "flagged: the change touches test machinery; review it"
            if result.status == "passed" and session is not None:
                removed = await self._discard(session)
                if removed and result.branch in removed.split(", "):
                    task.branch, task.note = "", "green at once: nothing to keep"
        task.ended = time.monotonic()
        self.front.finished(task)

    async def _failed(self, task: Task, session: Loop | Race | None, exc: BaseException) -> None:
        """The session could not start (or a bug of ours ended it): that task fails alone."""
        task.state = "failed"
        failure = None
        if isinstance(exc, CodexloopError | OSError):
            exists = session is not None and session.sandbox is not None
            failure = setup_failure(exc, sandbox_exists=exists)
        if failure is None:
            _internal_error(exc)  # its line on standard error, the details in a file
            task.note = f"internal error: {type(exc).__name__}: {exc}"
            return
        task.note = error_line(failure).removeprefix("codexloop: error: ")
        if session is not None:  # an exam that can never pass made nothing worth a branch
            await self._discard(session)

    async def _discard(self, session: Loop | Race) -> str | None:
        async with self.setup_lock:
            return await anyio.to_thread.run_sync(discard_session, session)

    async def _follow(self, task: Task, events: ObjectReceiveStream[ev.Event]) -> None:
        async with events:
            async for event in events:
                task.see(event)
                self.front.event(task, event)


async def run_batch(tasks: list[Task], args: argparse.Namespace) -> int:
    first = tasks[0].config  # the endpoint is the command line's, the same for every task
    client = make_client(first.base_url, first.api_key, first.request_timeout)
    try:
        await check_endpoint(client)
    except CodexloopError as exc:
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    front: Front
    if args.headless:
        front = JsonLines(sys.stdout)
    elif _on_terminal(sys.stdout):
        front = Table(sys.stdout, tasks)
    else:
        front = Progress(sys.stdout)
    batch = Batch(tasks, client=client, concurrency=args.concurrency, front=front)
    await batch.run()
    front.close()
    if batch.gave_up:
        return EXIT_INTERRUPTED
    text = summary(tasks, batch.interrupted)
    if args.headless:  # standard output holds the events alone
        print(text, end="", file=sys.stderr)
    else:
        front.write(text)
    if batch.interrupted:
        return EXIT_INTERRUPTED
    if front.closed:
        print("codexloop: standard output was closed; the batch stopped", file=sys.stderr)
        return EXIT_RED
    return EXIT_GREEN if all(t.state == "green" for t in tasks) else EXIT_RED


def _on_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (OSError, ValueError):
        return False


def batch(argv: Sequence[str]) -> int:
    """``codexloop batch FILE [OPTIONS]``: check everything, then run the tasks."""
    args = batch_parser().parse_args(ray_flag(list(argv)))
    if args.accept != "none":
        raise UsageError(
            "--accept: a batch keeps each task's work on its preview branch (codexloop "
            "branches lists them); run one task alone with --headless --accept to apply it"
        )
    tasks = []
    for number, fields in read_tasks(args.file):
        config = task_config(args, fields, f"{args.file}:{number}")
        tasks.append(Task(number, short_label(fields["targets"]), config))
    if tasks[0].config.ray is not None:
        try:  # Ray missing or out of reach: said now, before any task runs
            prepare(tasks[0].config, sessions=min(args.concurrency, len(tasks)))
        except CodexloopError as exc:
            raise UsageError(str(exc), exit_code=exc.exit_code) from None
    try:
        return anyio.run(run_batch, tasks, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug of ours: one line, the details in a file
        return _internal_error(exc)
