"""The full-screen app: four live panes over one loop.

The app owns one :class:`~codexloop.core.loop.Loop`. It runs in a worker; a second
worker consumes the loop's events (:mod:`codexloop.core.events`) and commands go back
on a second channel. Streamed fragments (model text, test and command output) are
only queued when they arrive; a frame-rate timer flushes them to the panes, which
re-wrap and repaint just the lines that changed. Git and diff work runs in thread
workers. Every worker's failure lands in one handler, :meth:`on_worker_state_changed`.

The exam stays the developer's: ``e`` edits a target file in place (the loop pauses
meanwhile), ``E`` opens ``$EDITOR`` on it, a watcher shows any change made in the
checkout at once, and the command palette adds or removes targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, cast

import anyio
import openai
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream
from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult, SuspendNotSupported, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, OptionList
from textual.worker import Worker, WorkerState
from watchfiles import awatch

from codexloop.core import events as ev
from codexloop.core.config import Config, ConfigError, resolve_targets
from codexloop.core.diff import commit_diff, sandbox_diff
from codexloop.core.loop import Loop, LoopResult, event_channel
from codexloop.core.model import ModelError, make_client
from codexloop.core.model import check_endpoint as probe_endpoint
from codexloop.tui.diff_pane import DiffPane, diff_stats, highlight_diff
from codexloop.tui.exam_editor import (
    ExamEditor,
    editor_command,
    read_exam_file,
    write_atomic,
)
from codexloop.tui.exam_pane import ExamPane, load_exam
from codexloop.tui.linebuffer import LineBuffer
from codexloop.tui.model_pane import ModelPane
from codexloop.tui.review import ReviewOutcome, ReviewScreen
from codexloop.tui.screens import DiffScreen, HelpScreen, IterationScreen, MessageScreen, QuitScreen
from codexloop.tui.status_line import StatusLine
from codexloop.tui.targets import AddTargetScreen, ChoiceScreen
from codexloop.tui.terminal_pane import TerminalPane
from codexloop.tui.timeline import IterationRecord, Timeline

EXIT_GREEN, EXIT_RED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

FRAME_S = 1 / 60
"""Streamed fragments reach the panes at this period at most."""
STATUS_S = 0.25
DIFF_DEBOUNCE_S = 0.15
RATE_WINDOW_S = 2.0
STOP_GRACE_S = 20.0
"""After a stop request, exit anyway if the loop has not finished by then."""
NARROW_COLUMNS = 100
PANE_LINES = 5_000

LoopFactory = Callable[[Config], Loop]


@dataclasses.dataclass
class _Edit:
    """An edit of one exam file in the exam pane."""

    rel: str
    path: Path
    paused: bool
    """Whether this edit paused the loop (then saving or cancelling resumes it)."""
    editor: ExamEditor | None = None
    saving: bool = False


class CodexloopApp(App[int]):
    """codexloop's screen: exam | model on top, terminal | diff below, timeline on the side."""

    CSS_PATH: ClassVar = "app.tcss"
    TITLE = "codexloop"
    BINDINGS: ClassVar = [
        Binding("space", "toggle_pause", "Pause/Resume"),
        Binding("m", "message", "Message"),
        Binding("v", "review", "Review"),
        Binding("c", "more_iterations", "More iterations"),
        Binding("e", "edit_exam", "Edit exam"),
        Binding("E", "external_editor", "$EDITOR"),
        Binding("t", "toggle_timeline", "Timeline", show=False),
        Binding("z", "zoom", "Zoom", show=False),
        Binding("question_mark,f1", "help", "Help"),
        Binding("q", "request_quit", "Quit"),
        Binding("ctrl+c", "interrupt", "Interrupt", show=False, priority=True),
    ]

    def __init__(
        self,
        config: Config,
        *,
        client: openai.AsyncOpenAI | None = None,
        loop_factory: LoopFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        autostart: bool = True,
        write_trace: bool = True,
        banner: str = "",
    ) -> None:
        super().__init__()
        self.config = config
        self._loop_factory: LoopFactory = loop_factory or (
            lambda cfg: Loop(cfg, client=client, write_trace=write_trace, review=True)
        )
        self.banner = banner
        self.review_ready: ev.ReviewReady | None = None
        self.budget_spent: ev.BudgetSpent | None = None
        """Green, and the loop waits for the developer's review (``v``; ``q`` finishes)."""
        self.clock = clock
        self.autostart = autostart
        self.loop: Loop | None = None
        self.started: ev.LoopStarted | None = None
        self.finished: ev.LoopFinished | None = None
        self.result: LoopResult | None = None
        self.failure: str | None = None
        self.state: str = "starting"
        self.exit_status = EXIT_RED
        self.session_over = False
        self._commands: MemoryObjectSendStream[ev.Command] | None = None
        self._loop_over = False
        self._events_over = False
        self._interrupted = False
        self._deferred_exit: tuple[Any, int | None, Any] | None = None
        self._forcing = False
        self._previous_handlers: dict[int, Any] = {}
        self._transition = ""
        self._started_at = clock()
        self._ended_at: float | None = None
        self._rate: deque[tuple[float, float]] = deque()
        self._rate_sum = 0.0
        self._rate_chars = 0
        self._records: dict[int, IterationRecord] = {}
        self._testing: IterationRecord | None = None
        self._working: IterationRecord | None = None  # the iteration the model works in
        self._event_log: deque[ev.Event] = deque(maxlen=5_000)
        self._waiters: list[
            tuple[type[ev.Event], Callable[[Any], bool] | None, asyncio.Future[Any]]
        ] = []
        self.diff = ""
        self._diff_lines: list[Text] | None = None
        self._diff_timer: Any = None
        self._diff_running = False
        self._diff_wanted = False
        self._diff_idle = asyncio.Event()
        self._diff_idle.set()
        self._on_result: dict[Worker[Any], Callable[[Any], None]] = {}
        self._timeline_choice: bool | None = None
        self._editing: _Edit | None = None
        self._pending_targets: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        """Targets sent to the loop, not applied yet (it applies them before a test run)."""
        self._watch_stop: asyncio.Event | None = None
        self.exam_watching = False
        """The watcher of the exam files is in place (changes from now on are seen)."""
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self.stream_events = 0
        """Streamed fragments received (model text, reasoning, test and command output)."""
        self.stream_flushed = 0
        """Streamed fragments handed to the panes (at most one frame after they arrived)."""
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_flush = 0.0
        self.flush_hook: Callable[[int], None] | None = None
        """Called after a flush that put new fragments on screen (benchmarks use it)."""
        self._handlers: dict[type[ev.Event], Callable[[Any], None]] = {
            ev.LoopStarted: self._on_loop_started,
            ev.StateChanged: self._on_state,
            ev.IterationStarted: self._on_iteration_started,
            ev.ModelTurnStarted: lambda e: self.model_pane.turn_started(),
            ev.ToolCall: lambda e: self.model_pane.tool_call(e),
            ev.ToolResult: self._on_tool_result,
            ev.Usage: self._on_usage,
            ev.ModelRetry: self._on_retry,
            ev.SandboxChanged: lambda e: self.schedule_diff(),
            ev.ExamRestored: self._on_exam_restored,
            ev.TamperDetected: self._on_tamper,
            ev.TestStarted: self._on_test_started,
            ev.TestFinished: self._on_test_finished,
            ev.IterationFinished: self._on_iteration_finished,
            ev.UserMessage: lambda e: self.model_pane.user_message(e.text),
            ev.Notice: self._on_notice,
            ev.Applied: self._on_applied,
            ev.ReviewReady: self._on_review_ready,
            ev.BudgetSpent: self._on_budget_spent,
            ev.HunksReverted: self._on_hunks_reverted,
            ev.ExamChanged: self._on_exam_changed,
            ev.TargetsChanged: self._on_targets_changed,
            ev.LoopFinished: self._on_loop_finished,
        }

    # -- layout ----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with Horizontal(id="main"):
            yield Timeline(id="timeline")
            with Vertical(id="panes"):
                with Horizontal(id="top"):
                    yield ExamPane(id="exam")
                    yield ModelPane(id="model", max_lines=PANE_LINES)
                with Horizontal(id="bottom"):
                    yield TerminalPane(id="terminal", max_lines=PANE_LINES)
                    yield DiffPane(id="diff")
        yield Footer()

    def on_mount(self) -> None:
        # Everything alive now (the imported modules of textual, rich, openai, httpx...) lives
        # as long as the app: take it out of the collector's sight, so the full collections
        # that long streams provoke scan only new objects (tens of ms less per collection).
        gc.freeze()
        self.status_line = self.query_one(StatusLine)
        self.timeline = self.query_one(Timeline)
        self.exam_pane = self.query_one(ExamPane)
        self.model_pane = self.query_one(ModelPane)
        self.terminal_pane = self.query_one(TerminalPane)
        self.diff_pane = self.query_one("#diff", DiffPane)
        self._stream_panes: tuple[LineBuffer, ...] = (self.model_pane, self.terminal_pane)
        self.timeline.border_title = "iterations"
        self._exam_title()
        self.model_pane.border_title = f"model · {self.config.model}"
        if self.banner:
            self.model_pane.border_title += f" · {self.banner}"
            self.model_pane.note(f"▌{self.banner}", "bold yellow")
        self.terminal_pane.border_title = "sandbox terminal"
        self.diff_pane.border_title = "diff vs base"
        self.status_line.info.max_iterations = self.config.max_iterations
        self.set_interval(STATUS_S, self._tick, name="status")
        self.load_exam()
        self.watch_exam()
        self._apply_layout()
        self._update_status()
        self.model_pane.focus()
        self.watch_stop_signals()
        if self.autostart:
            # After the first layout, so the loop knows the terminal pane's width from its
            # very first test run (pytest formats its output for it).
            self.call_after_refresh(self.start_loop)

    def on_unmount(self) -> None:
        self._stop_watching()
        self.restore_signals()

    def _exam_title(self) -> None:
        self.exam_pane.border_title = "exam · " + " ".join(self.config.targets)

    def load_exam(self) -> None:
        """(Re)read the exam from the developer's checkout, off the event loop."""
        self._spawn(
            partial(load_exam, self.config.repo, self.config.target_files),
            "exam",
            self._exam_loaded,
            thread=True,
        )

    def _exam_loaded(self, lines: list[Text]) -> None:
        self.exam_pane.set_lines(lines)
        self._check_conditions()

    def on_resize(self, event: events.Resize) -> None:
        if hasattr(self, "timeline"):
            self._apply_layout()

    def _apply_layout(self) -> None:
        narrow = self.size.width < NARROW_COLUMNS
        show = self._timeline_choice if self._timeline_choice is not None else not narrow
        self.timeline.display = show
        self.query_one("#main").set_class(narrow, "-narrow")

    # -- the loop and its events -----------------------------------------------------------

    def start_loop(self) -> None:
        """Build the loop from the config and run it; its events feed the panes."""
        self.loop = self._loop_factory(self.config)
        send_events, receive_events = event_channel()
        commands, receive_commands = event_channel()
        self._commands = cast(MemoryObjectSendStream[ev.Command], commands)
        if self.terminal_pane.columns > 0:
            self._send(ev.SetColumns(self.terminal_pane.columns))
        self.consume_events(receive_events)
        self._spawn(self._drive(self.loop, send_events, receive_commands), "loop", self._loop_done)

    def on_terminal_pane_resized(self, message: TerminalPane.Resized) -> None:
        self._send(ev.SetColumns(message.columns))

    def consume_events(self, receive: ObjectReceiveStream[ev.Event]) -> None:
        """Feed the panes from an event stream (the loop's, or a benchmark's)."""
        self._spawn(self._consume(receive), "events")

    async def _drive(
        self,
        loop: Loop,
        send: ObjectSendStream[ev.Event],
        commands: ObjectReceiveStream[ev.Command],
    ) -> LoopResult:
        async with send:
            return await loop.run(send, commands)

    async def _consume(self, receive: ObjectReceiveStream[ev.Event]) -> None:
        async with receive:
            async for event in receive:
                self.handle_event(event)

    def handle_event(self, event: ev.Event) -> None:
        """One engine event into the app: fragments are queued, the rest handled at once."""
        kind = type(event)
        if self._flush_handle is None:
            self._schedule_flush()
        if kind is ev.ModelText or kind is ev.ModelReasoning:
            self.stream_events += 1
            text: str = event.text  # type: ignore[attr-defined]
            self._rate_chars += len(text)
            if kind is ev.ModelText:
                self.model_pane.model_text(text)
            else:
                self.model_pane.reasoning(text)
        elif kind is ev.TestOutput:
            self.stream_events += 1
            self.terminal_pane.write(event.text)  # type: ignore[attr-defined]
            if self._testing is not None:
                self._testing.add_output(event.text)  # type: ignore[attr-defined]
        elif kind is ev.CommandOutput:
            self.stream_events += 1
            self.terminal_pane.write(event.text)  # type: ignore[attr-defined]
            if self._working is not None:
                self._working.add_command_output(event.text)  # type: ignore[attr-defined]
        else:
            self._event_log.append(event)
            handler = self._handlers.get(kind)
            if handler is not None:
                handler(event)
        if self._waiters or self._conditions:
            self._resolve_waiters(event)

    def _schedule_flush(self) -> None:
        """Flush at once if the last flush is a frame ago, else at the next frame boundary."""
        loop = asyncio.get_running_loop()
        when = max(loop.time(), self._last_flush + FRAME_S)
        self._flush_handle = loop.call_at(when, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        if self.is_running:
            self.flush_panes()

    def flush_panes(self) -> None:
        """Queued fragments to the panes (at most once a frame); only what changed is repainted."""
        self._last_flush = asyncio.get_running_loop().time()
        for pane in self._stream_panes:
            pane.flush()
        if self._rate_chars:
            self._add_rate(self._rate_chars / 4)
            self._rate_chars = 0
        if self.stream_flushed != self.stream_events:
            self.stream_flushed = self.stream_events
            if self.flush_hook is not None:
                self.flush_hook(self.stream_flushed)

    def note(self, text: str, style: str = "dim") -> None:
        """A note in the model pane from the app itself (not an engine event): shown next frame."""
        self.model_pane.note(text, style)
        if self._flush_handle is None:
            self._schedule_flush()

    def _send(self, command: ev.Command) -> bool:
        if self._commands is None:
            return False
        try:
            self._commands.send_nowait(command)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
            return False
        return True

    @property
    def loop_running(self) -> bool:
        return self._commands is not None and not self._loop_over and self.finished is None

    # -- event handlers -------------------------------------------------------------------

    def _on_loop_started(self, event: ev.LoopStarted) -> None:
        self.started = event
        info = self.status_line.info
        info.max_iterations = event.max_iterations
        info.isolation = event.isolation or "none"
        self.sub_title = event.branch
        note = Text()
        note.append("loop started", style="bold")
        note.append(f" · preview branch {event.branch}", style="dim")
        self.model_pane.write_line(note)
        sandbox = f"sandbox: {event.isolation} isolation"
        sandbox += f" — {event.isolation_reason}" if event.isolation_reason else ""
        sandbox += f"; {event.process_limit}" if event.process_limit else ""
        if event.max_memory_gib:
            sandbox += f"; at most {event.max_memory_gib} GiB of address space per command"
        if event.bwrap:
            sandbox += f"; {event.bwrap}"
        if event.shared:
            sandbox += "; shared read-only from your checkout: " + ", ".join(event.shared)
        self.model_pane.write_line(Text(sandbox, style="dim"))
        info.network = bool(getattr(event, "network", False))
        self._update_status()

    def _on_state(self, event: ev.StateChanged) -> None:
        self.state = event.state
        if event.state == "paused" or self._transition == "resuming…":
            self._transition = "" if self._transition != "stopping…" else self._transition
        self._update_status()

    def _on_iteration_started(self, event: ev.IterationStarted) -> None:
        self.review_ready = None
        self.budget_spent = None
        self.status_line.info.iteration = event.iteration
        total = self.started.max_iterations if self.started else self.config.max_iterations
        self.model_pane.separator(f"iteration {event.iteration} of {total}")
        self._working = self._record(event.iteration)
        self._update_status()

    def _on_usage(self, event: ev.Usage) -> None:
        info = self.status_line.info
        info.tokens_in, info.tokens_out = event.input_total, event.output_total

    def _on_retry(self, event: ev.ModelRetry) -> None:
        self.model_pane.note(
            f"↻ model request failed ({event.reason}); retry {event.attempt} in {event.delay_s:.0f}s",
            "yellow",
        )

    def _on_tool_result(self, event: ev.ToolResult) -> None:
        self.model_pane.tool_result(event)
        if event.refused and "is protected" in event.summary:
            self.status_line.info.exam_attempts += 1
            self._update_status()

    def _on_exam_restored(self, event: ev.ExamRestored) -> None:
        self.status_line.info.exam_attempts += len(event.paths)
        self._update_status()
        self.model_pane.note(
            "⛨ the exam was put back before the test run: " + ", ".join(event.paths), "magenta"
        )
        self.schedule_diff()

    def _on_tamper(self, event: ev.TamperDetected) -> None:
        self.model_pane.note(f"⚠ run {event.iteration} is red: {event.reason}", "red")
        self.notify(event.reason, title="test results tampered with", severity="error")

    def _on_test_started(self, event: ev.TestStarted) -> None:
        record = self._record(event.iteration)
        record.test_output.clear()
        self._testing = record
        self.terminal_pane.test_started(event)
        if event.iteration == 0:
            self.model_pane.separator("baseline: the exam as it stands")

    def _on_test_finished(self, event: ev.TestFinished) -> None:
        self.terminal_pane.test_finished(event)
        record = self._record(event.iteration)
        record.summary = event.summary
        if event.iteration == 0:
            record.passed, record.duration_s = event.passed, event.duration_s
            self.timeline.upsert(record)
        verdict = Text()
        verdict.append("  ● tests ", style="dim")
        verdict.append(
            "green" if event.passed else "red", style="bold green" if event.passed else "bold red"
        )
        if event.summary:
            verdict.append(f" · {event.summary}", style="dim")
        self.model_pane.write_line(verdict)
        self._testing = None

    def _on_iteration_finished(self, event: ev.IterationFinished) -> None:
        record = self._record(event.iteration)
        record.passed = event.passed
        record.duration_s = event.duration_s
        record.commit = event.commit
        record.input_tokens, record.output_tokens = event.input_tokens, event.output_tokens
        self.timeline.upsert(record)
        self.schedule_diff()

    def _on_notice(self, event: ev.Notice) -> None:
        icon, style = {
            "info": ("ℹ", "cyan"),
            "warning": ("⚠", "yellow"),
            "error": ("✗", "bold red"),
        }[event.level]
        self.model_pane.note(f"{icon} {event.message}", style)
        if event.level == "error":
            self.notify(event.message, severity="error", timeout=8)

    def _on_applied(self, event: ev.Applied) -> None:
        parts = [f"{len(event.written)} written", f"{len(event.deleted)} deleted"]
        if event.conflicts:
            parts.append(f"{len(event.conflicts)} conflicts")
        self.model_pane.note("applied to your working tree: " + ", ".join(parts), "cyan")

    @property
    def awaiting_developer(self) -> bool:
        """The loop waits for the developer: green for review, or red with the budget spent."""
        return self.review_ready is not None or self.budget_spent is not None

    def _on_budget_spent(self, event: ev.BudgetSpent) -> None:
        self.budget_spent = event
        self.model_pane.note(
            f"✗ not green after {event.iterations} iteration"
            f"{'s' if event.iterations != 1 else ''}: c gives it "
            f"{self.config.max_iterations} more (the conversation goes on), v reviews what it "
            "has, q finishes",
            "bold red",
        )
        self._update_status()
        self.refresh_bindings()

    def action_more_iterations(self) -> None:
        """Red with the budget spent: as many iterations again, the conversation kept."""
        if self.budget_spent is None or not self.loop_running:
            self.notify("more iterations are for a loop whose budget is spent")
            return
        if self._send(ev.MoreIterations(self.config.max_iterations)):
            self.budget_spent = None
            self.note(f"↻ {self.config.max_iterations} more iterations", "cyan")
            self._update_status()
            self.refresh_bindings()

    def _on_review_ready(self, event: ev.ReviewReady) -> None:
        self.review_ready = event
        self.model_pane.note(
            "✓ green: review the change with v (accept or reject hunks; a rejected hunk with a "
            "comment sends the loop on), or q to finish",
            "bold green",
        )
        self._update_status()
        self.refresh_bindings()
        if self.screen is self.screen_stack[0]:  # offered at once, unless a dialog is open
            self.action_review()

    def _on_hunks_reverted(self, event: ev.HunksReverted) -> None:
        if event.paths:
            self.model_pane.note("↺ rejected hunks reverted in " + ", ".join(event.paths), "cyan")
        if event.failed:
            self.model_pane.note(
                "⚠ could not revert in " + ", ".join(event.failed) + " (the model is told)",
                "yellow",
            )
        self.schedule_diff()

    def _on_exam_changed(self, event: ev.ExamChanged) -> None:
        self.model_pane.note(
            "✎ you changed the exam: " + ", ".join(event.paths) + " (the model hears of it next)",
            "magenta",
        )
        self.load_exam()

    def _on_targets_changed(self, event: ev.TargetsChanged) -> None:
        pending = self._pending_targets
        if pending is not None and pending[0] == event.targets:
            files = pending[1]
            self._pending_targets = None
        else:  # an earlier change (a later one is still pending): name its files again
            try:
                files = resolve_targets(self.config.repo, self.config.repo, event.targets)[1]
            except ConfigError:
                files = self.config.target_files
        self.config = dataclasses.replace(self.config, targets=event.targets, target_files=files)
        self._exam_title()
        self.model_pane.note("◎ the exam's targets now: " + " ".join(event.targets), "magenta")
        self.load_exam()
        self.watch_exam()

    def _on_loop_finished(self, event: ev.LoopFinished) -> None:
        self.finished = event
        self.review_ready = None
        self.budget_spent = None
        self._ended_at = self.clock()
        if self._transition != "stopping…":
            self._transition = ""
        info = self.status_line.info
        info.final = event.status
        count = f"{event.iterations} iteration{'s' if event.iterations != 1 else ''}"
        note = {
            "passed": f"green after {count}",
            "failed": event.reason or f"not green after {count}",
            "stopped": event.reason or "stopped",
        }[event.status]
        info.final_note = {
            "passed": f"after {count}",
            "failed": event.reason or f"after {count}",
            "stopped": event.reason or "",
        }[event.status] + " · q to quit"
        style = {"passed": "bold green", "failed": "bold red", "stopped": "bold"}[event.status]
        self.model_pane.separator("loop finished")
        self.model_pane.note(f"{note} · the work is on branch {event.branch}", style)
        self.schedule_diff(0)
        self._update_status()
        self.refresh_bindings()

    def _record(self, iteration: int) -> IterationRecord:
        record = self._records.get(iteration)
        if record is None:
            record = self._records[iteration] = IterationRecord(iteration)
            self.timeline.upsert(record)
        return record

    # -- workers: one place for results and failures ------------------------------------------

    def _spawn(
        self,
        work: Any,
        name: str,
        on_result: Callable[[Any], None] | None = None,
        *,
        thread: bool = False,
    ) -> Worker[Any]:
        worker = self.run_worker(work, name=name, group=name, thread=thread, exit_on_error=False)
        if on_result is not None:
            self._on_result[worker] = on_result
        return worker

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker, state = event.worker, event.state
        if state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        callback = self._on_result.pop(worker, None)
        if state == WorkerState.SUCCESS and callback is not None:
            callback(worker.result)
        elif state == WorkerState.ERROR:
            self._worker_failed(worker, worker.error)
        if worker.name == "loop":
            self._loop_over = True
            if self.finished is None:
                self.failure = self.failure or "the loop ended early"
                self.status_line.info.final = (
                    "stopped" if state == WorkerState.CANCELLED else "failed"
                )
                self.status_line.info.final_note = f"{self.failure} · q to quit"
                self._transition = ""
                self._update_status()
            self._maybe_over()
        elif worker.name == "events":
            self._events_over = True
            self._maybe_over()
        elif worker.name == "diff":
            self._diff_running = False
            if self._diff_wanted:
                self.schedule_diff(0)
            elif self._diff_timer is None:
                self._diff_idle.set()

    def _worker_failed(self, worker: Worker[Any], error: BaseException | None) -> None:
        message = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
        if worker.name == "loop":
            self.failure = f"the loop failed: {message}"
            self.model_pane.note(f"✗ {self.failure}", "bold red")
            self.notify(self.failure, severity="error", timeout=10)
        elif worker.name == "events":
            self.model_pane.note(f"✗ the event stream failed: {message}", "bold red")
        elif worker.name == "diff":
            self.diff_pane.show(
                f"diff unavailable: {message}", [Text(f"diff unavailable: {message}", style="red")]
            )
        elif worker.name == "exam":
            self.exam_pane.set_lines([Text(f"cannot show the exam: {message}", style="red")])
        elif worker.name == "exam-read":
            self.notify(str(error), severity="error", timeout=8)
            self._end_edit()
        elif worker.name == "exam-save":
            if self._editing is not None:
                self._editing.saving = False  # the editor stays open: nothing is lost
            self.notify(f"not saved: {message}", severity="error", timeout=10)
        elif worker.name == "watch":
            self.note(
                f"⚠ cannot watch the exam files ({message}): your edits still count, at the "
                "next test run",
                "yellow",
            )
        else:
            self.notify(f"{worker.name}: {message}", severity="error", timeout=8)

    def _loop_done(self, result: LoopResult) -> None:
        self.result = result

    def _maybe_over(self) -> None:
        if self.session_over or not (self._loop_over and self._events_over):
            return
        self.session_over = True
        if self._interrupted:
            self.exit_status = EXIT_INTERRUPTED
        elif self.finished is not None and self.finished.status == "passed":
            self.exit_status = EXIT_GREEN
        else:
            self.exit_status = EXIT_RED
        self.flush_panes()
        self._update_status()
        if self._deferred_exit is not None:
            result, code, message = self._deferred_exit
            super().exit(
                self.exit_status if result is None else result,
                self.exit_status if code is None else code,
                message,
            )

    # -- the exam: watched in the checkout, edited in place or in $EDITOR ------------------------

    def watch_exam(self) -> None:
        """Watch the exam's files in the checkout (again, after the targets changed)."""
        self._stop_watching()
        self.exam_watching = False
        self._watch_stop = asyncio.Event()
        self._watch_exam(self.config.repo, self.config.target_files, self._watch_stop)

    def _stop_watching(self) -> None:
        """Stop the watcher's thread now: it checks this event every 50 ms.

        (Its own timeout is 5 s; awatch sets the event itself when its task is cancelled,
        but only if the cancellation reaches it, so the app does not rely on that.)
        """
        if self._watch_stop is not None:
            self._watch_stop.set()
            self._watch_stop = None

    @work(exclusive=True, group="watch", name="watch", exit_on_error=False)
    async def _watch_exam(self, repo: Path, files: tuple[str, ...], stop: asyncio.Event) -> None:
        wanted: dict[str, str] = {}
        for rel in files:
            path = repo / rel
            wanted[os.path.join(os.path.realpath(path.parent), path.name)] = rel
        folders = sorted(
            {folder for folder in map(os.path.dirname, wanted) if os.path.isdir(folder)}
        )
        if not folders or stop.is_set():
            return
        # From here to awatch's first wait nothing yields: whoever sees the flag runs after
        # the watches are in place.
        self.exam_watching = True
        self._check_conditions()
        async for changes in awatch(
            *folders,
            watch_filter=lambda _change, path: path in wanted,
            stop_event=stop,
            recursive=False,
        ):
            self._exam_changed_on_disk(sorted({wanted[path] for _change, path in changes}))

    def _exam_changed_on_disk(self, rels: list[str]) -> None:
        self.load_exam()
        note = "✎ exam changed in your checkout: " + ", ".join(rels)
        if self.loop_running:
            # The engine notes it in the model pane at its next safe point (exam_changed);
            # a note from here could land mid-sentence of a streaming answer.
            self.notify(note[2:] + "; the next test run uses it", title="exam")
        else:
            self.note(note, "magenta")
        edit = self._editing
        if edit is not None and not edit.saving and edit.rel in rels:
            self.notify(
                f"{edit.rel} changed on disk while you edit it: ctrl+s overwrites that change, "
                "escape keeps it",
                severity="warning",
                timeout=10,
            )

    @property
    def exam_editor(self) -> ExamEditor | None:
        """The editor in the exam pane, while the developer edits the exam."""
        return self._editing.editor if self._editing is not None else None

    def _on_main_screen(self) -> bool:
        return bool(self.screen_stack) and self.screen is self.screen_stack[0]

    def _choose_exam_file(self, title: str, then: Callable[[str], None]) -> None:
        """The exam's only file, or the one the developer picks."""
        files = self.config.target_files
        if not files:
            self.notify("no test files among the targets: nothing to edit", severity="warning")
        elif len(files) == 1:
            then(files[0])
        else:

            def chosen(rel: str | None) -> None:
                if rel is not None:
                    then(rel)

            self.push_screen(ChoiceScreen(title, files), chosen)

    def _pause_for_edit(self) -> bool:
        """Ask the loop to pause at its next safe point; True when this edit did it."""
        if not self.loop_running or self.awaiting_developer:
            return False  # finished, or waiting for the developer: nothing to pause
        if self.state == "paused" or self._transition in ("pausing…", "stopping…"):
            return False  # paused already (by the developer): it stays so after the edit
        if not self._send(ev.Pause()):
            return False
        self._transition = "pausing…"
        self._update_status()
        return True

    def _resume_after_edit(self) -> None:
        if not self.loop_running or self._transition == "stopping…":
            return
        if self._send(ev.Resume()):
            self._transition = "resuming…" if self.state == "paused" else ""
            self._update_status()

    def action_edit_exam(self) -> None:
        """The exam pane becomes an editor of a target file; the loop pauses meanwhile."""
        if self._editing is not None:
            if self._editing.editor is not None:
                self._editing.editor.focus()
            return
        if self._on_main_screen():
            self._choose_exam_file("Edit which file of the exam?", self._edit_in_app)

    def _edit_in_app(self, rel: str) -> None:
        if self._editing is not None:
            return
        path = self.config.repo / rel
        edit = self._editing = _Edit(rel, path, self._pause_for_edit())
        self.refresh_bindings()
        self._spawn(
            partial(read_exam_file, path),
            "exam-read",
            lambda text: self._open_editor(edit, text),
            thread=True,
        )

    def _open_editor(self, edit: _Edit, text: str) -> None:
        if self._editing is not edit:
            return
        editor = edit.editor = ExamEditor(edit.rel, text, id="exam-editor")
        editor.border_title = f"editing {edit.rel}"
        editor.border_subtitle = "ctrl+s save · escape cancel"
        self.exam_pane.display = False
        self.query_one("#top").mount(editor, before=self.model_pane)
        editor.focus()
        self.refresh_bindings()
        self._check_conditions()

    def on_exam_editor_closed(self, message: ExamEditor.Closed) -> None:
        edit = self._editing
        editor = edit.editor if edit is not None else None
        if edit is None or editor is None or editor is not message.editor or edit.saving:
            return
        if not message.save:
            self._end_edit()
            self.notify("edit cancelled: the exam is as it was")
        elif not editor.changed:
            self._end_edit()
            self.notify("nothing changed: nothing saved")
        else:
            edit.saving = True
            self._spawn(
                partial(write_atomic, edit.path, editor.text),
                "exam-save",
                lambda _none: self._saved(edit),
                thread=True,
            )

    def _saved(self, edit: _Edit) -> None:
        if self._editing is edit:
            self._end_edit()
        later = "; the next test run uses it" if self.loop_running else ""
        self.notify(f"saved {edit.rel} in your checkout{later}")

    def _end_edit(self) -> None:
        """Back to the highlighted exam; the loop resumes if the edit paused it."""
        edit, self._editing = self._editing, None
        if edit is None:
            return
        if edit.editor is not None:
            edit.editor.remove()
            self.exam_pane.display = True
            self.exam_pane.focus()
        self.load_exam()
        if edit.paused:
            self._resume_after_edit()
        self.refresh_bindings()
        self._check_conditions()

    def action_external_editor(self) -> None:
        """``$EDITOR`` on a target file, the app suspended meanwhile; the loop pauses."""
        if self._editing is not None:
            self.notify("finish the edit in the exam pane first (ctrl+s or escape)")
            return
        if self._on_main_screen():
            self._choose_exam_file("Open which file of the exam in $EDITOR?", self._edit_outside)

    def _edit_outside(self, rel: str) -> None:
        command = [*editor_command(), str(self.config.repo / rel)]
        paused = self._pause_for_edit()
        # Synchronous, as with every suspend: while the editor runs, nothing may draw
        # (the app's output is stopped), so the event loop, and the engine with it, wait.
        outcome: int | str
        try:
            with self.suspend():
                outcome = _run_editor(command, headless=False)
        except SuspendNotSupported:
            if self.is_headless:  # tests: there is no terminal to hand over
                outcome = _run_editor(command, headless=True)
            else:
                outcome = "this terminal cannot hand the screen over to an editor"
        self.load_exam()
        if paused:
            self._resume_after_edit()
        if isinstance(outcome, str):
            self.notify(outcome, severity="error", timeout=8)
        elif outcome != 0:
            self.notify(f"the editor exited with status {outcome}", severity="warning")

    # -- targets ---------------------------------------------------------------------------------

    def _current_targets(self) -> tuple[str, ...]:
        return self._pending_targets[0] if self._pending_targets else self.config.targets

    def action_add_target(self) -> None:
        if not self.loop_running:
            self.notify("the loop is not running: the targets cannot change now")
            return
        self.push_screen(AddTargetScreen(self._current_targets()), self._target_entered)

    def _target_entered(self, target: str | None) -> None:
        if target:
            self.change_targets((*self._current_targets(), target))

    def action_remove_target(self) -> None:
        if not self.loop_running:
            self.notify("the loop is not running: the targets cannot change now")
            return
        current = self._current_targets()
        if len(current) < 2:
            self.notify(
                "the exam keeps at least one target: add another one first", severity="warning"
            )
            return
        self.push_screen(
            ChoiceScreen(
                "Remove which target?",
                current,
                "enter to remove it (from the next test run on) · escape to cancel",
            ),
            self._target_removed,
        )

    def _target_removed(self, target: str | None) -> None:
        if target:
            self.change_targets(tuple(t for t in self._current_targets() if t != target))

    def change_targets(self, targets: tuple[str, ...]) -> bool:
        """Check new targets as the command line does, then send them to the loop.

        The loop applies them at its next test run (then ``TargetsChanged`` comes back).
        """
        try:
            node_ids, files = resolve_targets(self.config.repo, self.config.repo, targets)
        except ConfigError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return False
        node_ids = tuple(dict.fromkeys(node_ids))
        if node_ids == self._current_targets():
            self.notify("the targets are unchanged")
            return False
        if not self.loop_running or not self._send(ev.SetTargets(node_ids, files)):
            self.notify("the loop is not running: the targets cannot change now")
            return False
        self._pending_targets = (node_ids, files)
        self.note("◎ targets from the next test run on: " + " ".join(node_ids), "magenta")
        return True

    # -- diff ------------------------------------------------------------------------------

    def schedule_diff(self, delay: float = DIFF_DEBOUNCE_S) -> None:
        """Recompute the sandbox diff soon (debounced), off the event loop."""
        if self.started is None:
            return
        self._diff_wanted = True
        self._diff_idle.clear()
        if self._diff_running:
            return
        if self._diff_timer is not None:
            if delay > 0:
                return
            self._diff_timer.stop()
        self._diff_timer = self.set_timer(delay, self._start_diff) if delay > 0 else None
        if delay <= 0:
            self._start_diff()

    def _start_diff(self) -> None:
        self._diff_timer = None
        if self._diff_running or not self._diff_wanted or self.started is None:
            return
        self._diff_wanted = False
        self._diff_running = True
        sandbox = self.loop.sandbox if self.loop is not None else None
        exclude = sandbox.exclude_file if sandbox is not None else None
        self._spawn(
            partial(
                _compute_diff,
                Path(self.started.worktree),
                self.started.base,
                exclude,
                self.config.target_files,
            ),
            "diff",
            self._show_diff,
            thread=True,
        )

    def _show_diff(self, result: tuple[str, list[Text], tuple[int, int, int]]) -> None:
        self.diff, self._diff_lines, (files, added, removed) = result
        self.diff_pane.show(self.diff, self._diff_lines)
        self.diff_pane.border_subtitle = (
            f"{files} file{'s' if files != 1 else ''} · +{added} −{removed}" if files else ""
        )
        for screen in self.screen_stack:
            if isinstance(screen, DiffScreen):
                screen.show(self.diff, self._diff_lines)

    # -- helpers for tests and tools ----------------------------------------------------------

    async def wait_for_event(
        self,
        kind: type[ev.Event],
        predicate: Callable[[Any], bool] | None = None,
        timeout: float = 30.0,
    ) -> Any:
        """The first handled event of ``kind`` (past or future) matching ``predicate``.

        Streamed fragments are not kept: only future ones match. When this returns, the
        panes hold everything received up to that event.
        """
        self.flush_panes()
        for event in self._event_log:
            if isinstance(event, kind) and (predicate is None or predicate(event)):
                return event
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append((kind, predicate, future))
        deadline = time.monotonic() + timeout
        try:
            while not future.done():
                if not self.is_running:
                    raise RuntimeError(f"the app stopped before a {kind.__name__} event")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {kind.__name__} event within {timeout:.0f}s")
                await asyncio.wait({future}, timeout=0.1)
        finally:
            self._waiters = [w for w in self._waiters if w[2] is not future]
        return future.result()

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``condition()`` holds (panes flushed).

        Checked after every handled event and after the app's own changes (the exam
        reloaded, the editor opened or closed, the exam watcher in place).
        """
        self.flush_panes()
        if condition():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._conditions.append(entry)
        deadline = time.monotonic() + timeout
        try:
            while not future.done() and not condition():
                if not self.is_running:
                    raise RuntimeError("the app stopped before the condition held")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the condition did not hold within {timeout:.0f}s")
                await asyncio.wait({future}, timeout=0.1)
        finally:
            self._conditions = [c for c in self._conditions if c is not entry]

    def _resolve_waiters(self, event: ev.Event) -> None:
        self.flush_panes()
        for waiter in list(self._waiters):
            kind, predicate, future = waiter
            if isinstance(event, kind) and (predicate is None or predicate(event)):
                self._waiters.remove(waiter)
                if not future.done():
                    future.set_result(event)
        self._check_conditions()

    def _check_conditions(self) -> None:
        for condition, future in list(self._conditions):
            if not future.done() and condition():
                future.set_result(None)

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until no diff is pending, then flush: what the screen shows is complete."""
        await asyncio.wait_for(self._diff_idle.wait(), timeout)
        self.flush_panes()

    # -- status ----------------------------------------------------------------------------

    def _add_rate(self, tokens: float) -> None:
        now = self.clock()
        self._rate.append((now, tokens))
        self._rate_sum += tokens

    def token_rate(self) -> float:
        now = self.clock()
        window = self._rate
        while window and window[0][0] < now - RATE_WINDOW_S:
            self._rate_sum -= window.popleft()[1]
        if not window:
            self._rate_sum = 0.0
            return 0.0
        return self._rate_sum / max(now - window[0][0], 1.0)

    def _tick(self) -> None:
        self._update_status()

    def _update_status(self) -> None:
        info = self.status_line.info
        info.state = self.state
        info.transition = self._transition
        end = self._ended_at if self._ended_at is not None else self.clock()
        info.elapsed = end - self._started_at
        info.rate = self.token_rate()
        if self.budget_spent is not None:
            info.hint = f"c for {self.config.max_iterations} more · v to review · q to finish"
        else:
            info.hint = "v to review · q to finish" if self.review_ready is not None else ""
        self.status_line.update_info()

    # -- actions ---------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While the exam is edited in place, only the editor's keys (and ctrl+c) act; "more
        iterations" shows only when the budget is spent."""
        if self._editing is not None and action in _IDLE_WHILE_EDITING:
            return False
        if action == "more_iterations":
            return self.budget_spent is not None
        return action not in ("edit_exam", "external_editor") or self._on_main_screen()

    def action_toggle_pause(self) -> None:
        if not self.loop_running:
            self.notify("the loop is not running")
            return
        if self._transition == "stopping…":
            return
        if self.state == "paused" or self._transition == "pausing…":
            self._send(ev.Resume())
            self._transition = "resuming…" if self.state == "paused" else ""
        else:
            self._send(ev.Pause())
            self._transition = "pausing…"
        self._update_status()

    def action_message(self) -> None:
        if not self.loop_running:
            self.notify("the loop has finished: there is no next model turn")
            return
        self.push_screen(MessageScreen(), self._message_entered)

    def _message_entered(self, text: str | None) -> None:
        if text and self._send(ev.Steer(text)):
            self.notify("message queued: it joins the conversation at the model's next turn")

    def action_review(self) -> None:
        """Hunk by hunk, the latest recorded state of the sandbox against the base."""
        if isinstance(self.screen, ReviewScreen | DiffScreen):
            return
        head = self._review_head()
        if self.started is None or head is None:
            self.push_screen(
                DiffScreen(
                    "the sandbox's changes so far (nothing recorded yet to review hunk by hunk)",
                    self.diff,
                    self._diff_lines,
                )
            )
            return
        self.push_screen(
            ReviewScreen(self.config.repo, self.started.base, head, self.config.target_files),
            self._review_done,
        )

    def _review_head(self) -> str | None:
        if self.review_ready is not None and self.review_ready.commit:
            return self.review_ready.commit
        if self.result is not None and self.result.head:
            return self.result.head
        return self._commit_at(max(self._records, default=0))

    def _review_done(self, outcome: ReviewOutcome | None) -> None:
        if outcome is None:
            return
        summary = f"review: {outcome.kept} hunk(s) kept, {outcome.dropped} not"
        if outcome.applied is not None:
            written = len(outcome.applied.written) + len(outcome.applied.deleted)
            summary += f"; {written} file(s) changed in your working tree"
        self.note(summary, "cyan")
        self.notify(summary)
        if outcome.feedback:
            if self.loop_running and self._send(ev.Feedback(outcome.feedback)):
                self.notify(
                    f"{len(outcome.feedback)} comment(s) sent to the model: the loop goes on"
                )
            else:
                self.notify("the loop has finished: the comments were not sent", severity="warning")
        elif self.review_ready is not None:
            self._send(ev.Finish())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_timeline(self) -> None:
        self._timeline_choice = not self.timeline.display
        self._apply_layout()

    def action_zoom(self) -> None:
        screen = self.screen
        if screen.maximized is not None:
            screen.minimize()
        elif screen.focused is not None:
            screen.maximize(screen.focused)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id != "timeline":
            return
        record = self.timeline.record_at(event.option.id)
        if record is None:
            return
        screen = IterationScreen(record)
        self.push_screen(screen)
        commit = self._commit_at(record.iteration)
        if self.started is None or commit is None:
            screen.show_diff("", None)
            return
        self._spawn(
            partial(
                _commit_diff,
                Path(self.started.worktree),
                self.started.base,
                commit,
                self.config.target_files,
            ),
            "iteration-diff",
            lambda result: screen.show_diff(*result),
            thread=True,
        )

    def _commit_at(self, iteration: int) -> str | None:
        for number in sorted(self._records, reverse=True):
            if number <= iteration and self._records[number].commit:
                return self._records[number].commit
        return None

    def action_request_quit(self) -> None:
        if not self.loop_running:
            self._exit_with_status()
            return
        if self.awaiting_developer and self._deferred_exit is None:
            self._deferred_exit = (None, None, None)  # waiting for the developer: finish
            self._send(ev.Finish())
            self.set_timer(STOP_GRACE_S, self._force_exit)
            return
        if self._deferred_exit is not None:
            self.notify("stopping the loop… (ctrl+c twice to leave at once)")
            return
        if isinstance(self.screen, QuitScreen):
            return
        branch = self.started.branch if self.started else ""
        worktree = self.started.worktree if self.started else ""
        self.push_screen(QuitScreen(branch, worktree), self._quit_answered)

    async def action_quit(self) -> None:
        self.action_request_quit()

    def _quit_answered(self, stop: bool | None) -> None:
        if stop:
            self.stop_then_exit("stopped by the developer")

    def action_interrupt(self) -> None:
        self._interrupt("interrupted")

    def _interrupt(self, reason: str) -> None:
        """Stop the loop, then leave; a second interrupt leaves at once."""
        if not self.loop_running:
            if self._deferred_exit is not None:
                self._force_exit()
            else:
                self._exit_with_status()
            return
        if self._interrupted:
            self._force_exit()
            return
        self._interrupted = True
        self.stop_then_exit(reason)

    def watch_stop_signals(self) -> None:
        """SIGTERM and SIGHUP (a closed terminal, an ended tmux session) stop the loop like
        ctrl+c: the warm server and the scratch folder go with the session. After a hangup
        the terminal is gone: the standard streams are pointed at /dev/null first, so
        drawing the last frames cannot fail (EIO) and block the app on its output queue."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()

        def handler(signum: int, _frame: object) -> None:
            if signum == signal.SIGHUP:
                _detach_from_terminal()
            reason = "the terminal was closed" if signum == signal.SIGHUP else "terminated"
            with contextlib.suppress(RuntimeError):  # the app's event loop is over already
                loop.call_soon_threadsafe(self._interrupt, reason)

        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, handler)

    def restore_signals(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers.clear()

    def stop_then_exit(
        self, reason: str, deferred: tuple[Any, int | None, Any] | None = None
    ) -> None:
        """Stop the loop at once; exit when it has finished (or after a grace period)."""
        self._deferred_exit = deferred or (None, None, None)
        if self.session_over:
            self._maybe_exit_now()
            return
        if self.awaiting_developer and not self._interrupted:
            self._send(ev.Finish())  # waiting already: end the session as it stands
        else:
            self._transition = "stopping…"
            self._send(ev.Stop(reason))
        self.set_timer(STOP_GRACE_S, self._force_exit)
        self._update_status()

    def _maybe_exit_now(self) -> None:
        assert self._deferred_exit is not None
        result, code, message = self._deferred_exit
        super().exit(
            self.exit_status if result is None else result,
            self.exit_status if code is None else code,
            message,
        )

    def _exit_with_status(self) -> None:
        super().exit(self.exit_status, self.exit_status)

    def _force_exit(self) -> None:
        if self._forcing:
            return
        self._forcing = True
        if not self.session_over:
            self.exit_status = EXIT_INTERRUPTED if self._interrupted else EXIT_RED
        result, code, message = self._deferred_exit or (None, None, None)
        super().exit(
            self.exit_status if result is None else result,
            self.exit_status if code is None else code,
            message,
        )

    def exit(self, result: Any = None, return_code: int = 0, message: Any = None) -> None:
        """Leaving while the loop runs stops it first: the preview branch is left consistent."""
        if self.loop_running and not self._forcing:
            if self._deferred_exit is None:
                self.stop_then_exit("the app was closed", (result, return_code, message))
            return
        super().exit(result, return_code, message)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand(
            "Pause / resume the loop",
            "At a safe point: after a tool call or before a test run",
            self.action_toggle_pause,
        )
        yield SystemCommand(
            "Message the model",
            "A steering message; it joins at the model's next turn",
            self.action_message,
        )
        yield SystemCommand(
            "Review the change",
            "Hunk by hunk: accept, reject, comment; apply to your working tree",
            self.action_review,
        )
        if self.budget_spent is not None:
            yield SystemCommand(
                "More iterations",
                "The budget is spent and it is still red: as many again, the conversation kept",
                self.action_more_iterations,
            )
        yield SystemCommand(
            "Edit the exam",
            "In the exam pane; the loop pauses; ctrl+s saves to your checkout, escape cancels",
            self.action_edit_exam,
        )
        yield SystemCommand(
            "Edit the exam in $EDITOR",
            "The app steps aside while your editor runs; the loop pauses",
            self.action_external_editor,
        )
        yield SystemCommand(
            "Add a target…",
            "A test or test file for the exam, from the next test run on",
            self.action_add_target,
        )
        yield SystemCommand(
            "Remove a target…",
            "From the next test run on; at least one stays",
            self.action_remove_target,
        )
        yield SystemCommand(
            "Timeline: show / hide", "The iterations, red or green", self.action_toggle_timeline
        )
        yield SystemCommand("Keys", "What every key does", self.action_help)
        yield SystemCommand(
            "Stop the loop and quit", "Asks first while the loop runs", self.action_request_quit
        )

    # -- summary for the terminal, after the screen closed ---------------------------------------

    def summary(self) -> str:
        if self.finished is None:
            return f"codexloop: {self.failure or 'the loop did not finish'}"
        word = {"passed": "green", "failed": "not green", "stopped": "stopped"}[
            self.finished.status
        ]
        line = f"codexloop: {word} after {self.finished.iterations} iteration(s)"
        if self.finished.reason and self.finished.status != "passed":
            line += f" ({self.finished.reason})"
        line += f"; the work is on branch {self.finished.branch}"
        if self.finished.worktree:
            line += f" (worktree {self.finished.worktree})"
        return line


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _detach_from_terminal() -> None:
    """The terminal hung up: standard input and output become /dev/null (signal-safe)."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd)
    os.close(devnull)


_IDLE_WHILE_EDITING = frozenset(
    {
        "toggle_pause",
        "message",
        "review",
        "more_iterations",
        "edit_exam",
        "external_editor",
        "toggle_timeline",
        "zoom",
        "help",
        "request_quit",
    }
)


def _run_editor(command: list[str], *, headless: bool) -> int | str:
    """Blocking: the developer's editor to its end; its exit status, or why it did not run."""
    previous: Any = None
    if not headless and threading.current_thread() is threading.main_thread():
        # The terminal is the editor's now: a ctrl+c there must not interrupt the app.
        previous = signal.signal(signal.SIGINT, lambda *_args: None)
    try:
        if headless:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
        else:
            done = subprocess.run(command)
    except OSError as exc:
        return f"cannot run the editor {command[0]!r}: {exc.strerror or exc}"
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return done.returncode


def _compute_diff(
    worktree: Path, base: str, exclude: Path | None, exam: tuple[str, ...]
) -> tuple[str, list[Text], tuple[int, int, int]]:
    """Blocking (thread): the sandbox's diff against the base (the exam left out), highlighted
    (clipped when huge), and its counts."""
    text = sandbox_diff(worktree, base, exclude, exam)
    return text, highlight_diff(text), diff_stats(text)


def _commit_diff(
    worktree: Path, base: str, commit: str, exam: tuple[str, ...]
) -> tuple[str, list[Text]]:
    """Blocking (thread): an iteration's recorded state against the base (the exam left out)."""
    text = commit_diff(worktree, base, commit, exam)
    return text, highlight_diff(text)


async def _check_endpoint(config: Config) -> None:
    client = make_client(config.base_url, config.api_key)
    try:
        await probe_endpoint(client)
    finally:
        await client.close()


def run_app(
    config: Config,
    *,
    loop_factory: LoopFactory | None = None,
    check_endpoint: bool = True,
    banner: str = "",
) -> int:
    """Open the app on ``config``; the exit status: 0 green, 1 not green or stopped, 130 interrupted.

    ``loop_factory`` lets demo and replay bring their own loop; ``banner`` says so on screen.
    """
    if check_endpoint:
        try:
            anyio.run(_check_endpoint, config)
        except ModelError as exc:
            print(f"codexloop: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    app = CodexloopApp(config, loop_factory=loop_factory, banner=banner)
    try:
        app.run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        app.restore_signals()
    if app.started is not None or app.failure is not None:
        with contextlib.suppress(OSError):  # a closed terminal
            print(app.summary())
    code = app.return_code
    return app.exit_status if code is None else code
