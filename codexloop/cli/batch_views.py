"""What ``codexloop batch`` shows: each task's state as its events tell it, and the three ways
of showing it (a live table on a terminal, a line as a task starts and ends, JSON lines)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from codexloop.cli.headless import _silence
from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.words import counted

FINAL = {"passed": "green", "failed": "red", "stopped": "stopped", "lost": "lost"}
REDRAW_S = 0.1  # the live table is drawn at most ten times a second


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
