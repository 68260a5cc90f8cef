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
import json
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import anyio
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from codexloop.cli.args import _internal_error, _positive_int, build_parser, ray_flag, settings_of
from codexloop.cli.headless import _silence
from codexloop.core import events as ev
from codexloop.core.config import Config, load_config
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
from codexloop.core.words import counted

if TYPE_CHECKING:
    import openai

KEYS: dict[str, str] = {  # what a task may say, and what each must be
    "targets": "a non-empty list of pytest node ids or test files",
    "task": "a string",
    "test_cmd": "a non-empty string",
    "attempts": "a whole number of at least 1",
    "model": "a non-empty string",
    "max_iterations": "a whole number of at least 1",
    "hints": "a list of strings",
    "pick": '"first" or "best"',
}
EXAMPLE = '{"targets": ["tests/test_x.py::test_y"], "task": "..."}'
DESCRIPTION = """\
Run a backlog of tasks, each its own session on its own preview branch: FILE has one JSON
object a line, e.g. {"targets": ["tests/test_x.py::test_y"], "task": "...", "attempts": 2}.
Only targets is required; a task may also give task, test_cmd, attempts, model,
max_iterations, hints (a list) and pick, over the options given here (every task's
defaults). A task is named by its line in FILE (blank lines and # comments are skipped but
counted). Exit 0 when every task went green, 1 otherwise, 2 for bad input, 130 interrupted.
"""
FINAL = {"passed": "green", "failed": "red", "stopped": "stopped", "lost": "lost"}
REDRAW_S = 0.1  # the live table is drawn at most ten times a second


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


# -- the file ---------------------------------------------------------------------------------


def _fits(key: str, value: Any) -> bool:
    if key == "targets":
        return isinstance(value, list) and bool(value) and all(_text(v) for v in value)
    if key == "hints":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if key in ("attempts", "max_iterations"):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if key == "pick":
        return value in ("first", "best")
    return isinstance(value, str) if key == "task" else _text(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def read_tasks(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Each task of ``path`` with its line number; a :class:`UsageError` for the first flaw."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no flaw
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from None
    tasks = []
    # "\n" alone ends a line: str.splitlines would also split at a U+2028 inside a JSON string.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{where}: not a JSON object; a task is a line like {EXAMPLE}")
        unknown = [key for key in data if key not in KEYS]
        if unknown:
            raise UsageError(
                f"{where}: unknown key {json.dumps(unknown[0])} (allowed: {', '.join(KEYS)})"
            )
        if "targets" not in data:
            raise UsageError(
                f'{where}: no "targets" (the tests that define success), e.g. {EXAMPLE}'
            )
        for key, value in data.items():
            if not _fits(key, value):
                raise UsageError(f"{where}: {key} must be {KEYS[key]}, not {json.dumps(value)}")
        tasks.append((number, data))
    if not tasks:
        raise UsageError(f"{path}: no tasks in it (one JSON object a line, e.g. {EXAMPLE})")
    return tasks


def task_config(args: argparse.Namespace, task: dict[str, Any], where: str) -> Config:
    """The task's configuration, as the main command builds one: its keys over ``args``."""
    given = argparse.Namespace(**vars(args))
    for key, value in task.items():
        setattr(given, "hint" if key == "hints" else key, value)
    try:
        return load_config(settings_of(given))
    except CodexloopError as exc:
        raise UsageError(f"{where}: {exc}", exit_code=exc.exit_code) from None


def short_label(targets: Sequence[str], width: int = 40) -> str:
    """``test_calc.py::test_add +1``: the first target's file name and test, cut to fit."""
    first = targets[0]
    path, sep, test = first.partition("::")
    label = Path(path).name + sep + test
    more = f" +{len(targets) - 1}" if len(targets) > 1 else ""
    room = width - len(more)
    return (label if len(label) <= room else "…" + label[-room + 1 :]) + more


# -- what each task is doing ------------------------------------------------------------------


@dataclass
class Lane:
    """One attempt of a task's session, as the table shows it."""

    state: str = "starting"
    iteration: int = 0
    tokens: int = 0


@dataclass
class Task:
    number: int  # its line in FILE
    label: str
    config: Config
    state: str = "queued"  # running, then green, red, stopped or failed ("queued": never ran)
    lanes: dict[int, Lane] = field(default_factory=dict)
    iterations: int = 0
    tokens: int = 0
    branch: str = ""
    note: str = ""  # why it was not green, or what became of its branch
    started: float = 0.0
    ended: float = 0.0
    commands: MemoryObjectSendStream[ev.Command] | None = None  # while it runs

    @property
    def seconds(self) -> float:
        if not self.started:
            return 0.0
        return (self.ended or time.monotonic()) - self.started

    def see(self, event: ev.Event) -> None:
        """Follow the session's events (``attempt`` 0: the race's own)."""
        lane = self.lanes.setdefault(event.attempt, Lane()) if event.attempt else None
        if isinstance(event, ev.Usage):
            total = event.input_total + event.output_total
            if lane is not None:
                lane.tokens = total
            if lane is None or self.config.attempts == 1:  # a race's total comes as attempt 0
                self.tokens = total
        elif lane is None:
            return
        elif isinstance(event, ev.StateChanged):
            lane.state = event.state
        elif isinstance(event, ev.IterationStarted):
            lane.iteration = event.iteration
            self.iterations = max(self.iterations, event.iteration)
        elif isinstance(event, ev.AttemptFinished):
            lane.state, lane.iteration = FINAL[event.status], event.iterations
        elif isinstance(event, ev.LoopStarted) and self.config.attempts == 1:
            self.branch = event.branch

    @property
    def shown_state(self) -> str:
        if self.state == "running":
            return "racing" if self.config.attempts > 1 else self.lanes.get(1, Lane()).state
        return "not run" if self.state == "queued" and self.ended else self.state


# -- front ends -------------------------------------------------------------------------------


class Front:
    """Where a batch shows itself; writes that fail (the reader went away) call ``on_closed``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.closed = False
        self.on_closed: Callable[[], None] = lambda: None

    def write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except OSError:  # a closed pipe (| head), a hung-up terminal (EIO)
            self.closed = True
            _silence(self.out)
            self.on_closed()

    def started(self, task: Task) -> None:
        pass

    def event(self, task: Task, event: ev.Event) -> None:
        pass

    def finished(self, task: Task) -> None:
        pass

    async def run(self) -> None:
        """Runs beside the sessions (the table redraws here)."""

    def close(self) -> None:
        pass


class JsonLines(Front):
    """``--headless``: every event, as the main command prints it, with ``task``."""

    def event(self, task: Task, event: ev.Event) -> None:
        data = event.to_dict()
        line = {"type": data.pop("type"), "task": task.number, **data}
        self.write(json.dumps(line, ensure_ascii=False) + "\n")


class Progress(Front):
    """Not a terminal: a line as each task starts and as it ends."""

    def started(self, task: Task) -> None:
        self.write(f"task {task.number} started: {task.label}\n")

    def finished(self, task: Task) -> None:
        self.write(f"task {task.number} {task.state}: {_outcome(task)}\n")


class Table(Front):
    """A terminal: a table of the tasks, redrawn in place as events arrive (at most ten
    times a second, and each second for the clocks)."""

    def __init__(self, out: TextIO, tasks: list[Task]) -> None:
        super().__init__(out)
        self.tasks = tasks
        self.changed = anyio.Event()
        self.drawn = 0  # lines of the last frame
        self.frame: list[str] = []

    def started(self, task: Task) -> None:
        self.changed.set()

    def event(self, task: Task, event: ev.Event) -> None:
        self.changed.set()

    def finished(self, task: Task) -> None:
        self.changed.set()

    async def run(self) -> None:
        while True:
            self.draw()
            with anyio.move_on_after(1):
                await self.changed.wait()
            self.changed = anyio.Event()
            await anyio.sleep(REDRAW_S)

    def close(self) -> None:
        """Take the table away: the summary follows in its place."""
        self.write(f"\x1b[{self.drawn}A\r\x1b[J" if self.drawn else "")

    def lines(self, rows: int) -> list[str]:
        width = max(len("targets"), *(len(t.label) for t in self.tasks))
        head = f"{'#':>4}  {'targets':<{width}}  {'state':<9} {'iter':>5} {'tokens':>7} {'time':>6}"
        blocks = []
        for task in self.tasks:
            iters = f"{task.iterations}/{task.config.max_iterations}" if task.started else ""
            tokens = _short(task.tokens) if task.started else ""
            clock = _clock(task.seconds) if task.started else ""
            block = [
                f"{task.number:>4}  {task.label:<{width}}  {task.shown_state:<9} "
                f"{iters:>5} {tokens:>7} {clock:>6}"
            ]
            if task.config.attempts > 1 and task.state == "running":
                for number, lane in sorted(self.lanes_of(task).items()):
                    block.append(
                        f"{'':>4}  {'  a' + str(number):<{width}}  {lane.state:<9} "
                        f"{lane.iteration:>5} {_short(lane.tokens):>7}"
                    )
            blocks.append((task, block))
        lines = [line for _, block in blocks for line in block]
        if len(lines) + 1 > rows:  # too tall to redraw in place: the running tasks, and a count
            done = sum(t.state not in ("queued", "running") for t in self.tasks)
            queued = sum(t.state == "queued" for t in self.tasks)
            lines = [ln for task, block in blocks if task.state == "running" for ln in block]
            lines = [*lines[: rows - 2], f"      … and {done} done, {queued} queued"]
        return [head, *lines]

    @staticmethod
    def lanes_of(task: Task) -> dict[int, Lane]:
        return {n: lane for n, lane in task.lanes.items() if n <= task.config.attempts}

    def draw(self) -> None:
        columns, rows = shutil.get_terminal_size()
        lines = [line[: columns - 1] for line in self.lines(max(rows - 1, 3))]
        if lines == self.frame:
            return
        self.frame = lines
        up = f"\x1b[{self.drawn}A\r" if self.drawn else ""
        self.write(up + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        self.drawn = len(lines)


def _short(tokens: int) -> str:
    if tokens < 1000:
        return str(tokens)
    return f"{tokens / 1000:.1f}k" if tokens < 1_000_000 else f"{tokens / 1_000_000:.1f}M"


def _clock(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _outcome(task: Task) -> str:
    """Branch, iterations, tokens, duration (and a note): how a task ended."""
    if not task.started:
        return "not started"
    parts = [
        task.branch or "no branch",
        counted(task.iterations, "iteration"),
        f"{task.tokens:,} tokens",
        f"{task.seconds:.1f} s",
    ]
    return ", ".join(parts) + (f" ({task.note})" if task.note else "")


def summary(tasks: list[Task], interrupted: bool) -> str:
    green = sum(t.state == "green" for t in tasks)
    ended = ", interrupted" if interrupted else ""
    lines = [f"codexloop batch: {green} of {counted(len(tasks), 'task')} green{ended}"]
    width = max(len(t.label) for t in tasks)
    for task in tasks:
        lines.append(
            f"task {task.number:<3} {task.shown_state:<7} {task.label:<{width}}  {_outcome(task)}"
        )
    return "\n".join(lines) + "\n"


# -- running ----------------------------------------------------------------------------------


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class Batch:
    def __init__(
        self, tasks: list[Task], *, client: openai.AsyncOpenAI, concurrency: int, front: Front
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
