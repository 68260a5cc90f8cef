"""The session as the app sees it: plain Python, fed one engine event at a time.

:meth:`SessionState.apply` takes an event from :mod:`codexloop.core.events`, updates the state
and returns the :class:`Changes` it made (the status line, the keys that act, a timeline row, the
diff, the exam...), so the screen redraws only that. The developer's own controls (pause, resume,
stop, more iterations) and the ends of the loop's and the event stream's workers change it through
the methods below. No Textual, no Rich (an import-linter contract): tests replay event lists in
milliseconds (tests/test_state.py).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from codexloop.core import events as ev
from codexloop.core.errors import CodexloopError, error_line, result_status
from codexloop.core.words import counted

RATE_WINDOW_S = 2.0
"""Tokens per second are measured over this window."""
TEST_OUTPUT_CHARS = 200_000
"""Test output kept per iteration (the tail); as much again of the model's commands."""


class Changes(enum.Flag):
    """What an event (or a control) changed, for the screen to redraw."""

    NONE = 0
    STATUS = enum.auto()
    """The status line."""
    BINDINGS = enum.auto()
    """Which keys and commands act (the footer, the palette)."""
    TIMELINE = enum.auto()
    """A row of the timeline."""
    DIFF = enum.auto()
    """The sandbox changed: its diff, soon (debounced)."""
    DIFF_NOW = enum.auto()
    """The sandbox's diff, at once."""
    EXAM = enum.auto()
    """The exam's files changed in the checkout: read them again."""
    TARGETS = enum.auto()
    """The exam's targets changed (so may its files)."""
    REVIEW = enum.auto()
    """Green, and the loop waits for the review: offer it."""
    LANES = enum.auto()
    """A lane of a race changed (its state, iteration, tokens, verdict), or the focus."""


def _keep_tail(chunks: list[str], chars: int) -> int:
    """Drop the oldest chunks past the cap; returns the characters left."""
    while chars > TEST_OUTPUT_CHARS and len(chunks) > 1:
        chars -= len(chunks.pop(0))
    return chars


@dataclass
class IterationRecord:
    """One iteration (0: the baseline run) as the timeline shows it and keeps it."""

    iteration: int
    passed: bool | None = None
    duration_s: float = 0.0
    commit: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    summary: str = ""
    test_output: list[str] = field(default_factory=list)
    command_output: list[str] = field(default_factory=list)  # the model's run_command calls
    _chars: int = 0
    _command_chars: int = 0

    def add_output(self, text: str) -> None:
        self.test_output.append(text)
        self._chars = _keep_tail(self.test_output, self._chars + len(text))

    def add_command_output(self, text: str) -> None:
        self.command_output.append(text)
        self._command_chars = _keep_tail(self.command_output, self._command_chars + len(text))

    @property
    def label(self) -> str:
        return "baseline" if self.iteration == 0 else f"iteration {self.iteration}"


@dataclass
class StatusInfo:
    """What the status line shows, most important first."""

    state: str = "starting"
    transition: str = ""  # "pausing…", "resuming…", "stopping…": sent, not yet done
    iteration: int = 0
    max_iterations: int = 0
    elapsed: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float | None = None  # US dollars so far, when the model's prices are set
    rate: float = 0.0
    isolation: str = ""
    network: bool = False
    final: str | None = None  # passed | failed | stopped
    final_note: str = ""
    hint: str = ""  # e.g. green and waiting for the review
    exam_attempts: int = 0  # changes of the exam the model tried (refused or undone)
    # The last run's checks once a guard or gate ran (None: not run in it): exam, guard, gates.
    exam_ok: bool | None = None
    guard_ok: bool | None = None
    gates_ok: bool | None = None
    checks: tuple[str, ...] = ()  # "guard", "gates": the checks that ran in this session


class SessionState:
    """Everything the screen shows that is not a pane's own text."""

    def __init__(self, max_iterations: int, clock: Callable[[], float]) -> None:
        self.budget = max_iterations
        """The configured budget: what ``c`` gives again once it is spent."""
        self.clock = clock
        self.transition = ""
        self.failure: str | None = None
        """Why the loop ended without finishing (it failed, or never started)."""
        self.error: CodexloopError | None = None
        """A user-facing error that ended the session (the sandbox could not be set up, an exam
        that can never pass): the app exits with its status, as headless mode does."""
        self.applied: int | None = None
        """Files the review changed in the developer's working tree (None: nothing applied)."""
        self.loop_over = False
        self.events_over = False
        self.started_at = clock()
        self.forget_events()

    def forget_events(self) -> None:
        """Forget what the events showed, keeping what the developer and the workers did:
        another attempt of a race comes into focus, and its events are played in again."""
        self.info = StatusInfo(max_iterations=self.budget)
        self.started: ev.LoopStarted | None = None
        self.finished: ev.LoopFinished | None = None
        self.review_ready: ev.ReviewReady | None = None
        """Green, and the loop waits for the developer's review (``v``; ``q`` finishes)."""
        self.budget_spent: ev.BudgetSpent | None = None
        """Red with the budget spent, and the loop waits (``c`` for more; ``q`` finishes)."""
        self.state: str = "starting"
        self.records: dict[int, IterationRecord] = {}
        self.testing: IterationRecord | None = None
        """The iteration whose test run streams its output now."""
        self.working: IterationRecord | None = None
        """The iteration the model works in (its commands' output)."""
        self.ended_at: float | None = None
        self._rate: deque[tuple[float, float]] = deque()
        self._rate_sum = 0.0
        self._rate_chars = 0

    # -- engine events ---------------------------------------------------------------------

    def apply(self, event: ev.Event) -> Changes:
        """Take one engine event in; what changed on screen."""
        match event:
            case ev.ModelText() | ev.ModelReasoning():
                self._rate_chars += len(event.text)
            case ev.TestOutput():
                if self.testing is not None:
                    self.testing.add_output(event.text)
            case ev.CommandOutput():
                if self.working is not None:
                    self.working.add_command_output(event.text)
            case ev.LoopStarted():
                return self._loop_started(event)
            case ev.StateChanged():
                self.state = event.state
                if event.state == "paused" or self.transition == "resuming…":
                    self.transition = "" if self.transition != "stopping…" else self.transition
                return Changes.STATUS
            case ev.IterationStarted():
                self.review_ready = self.budget_spent = None
                self.info.iteration = event.iteration
                self.working = self.record(event.iteration)
                return Changes.STATUS | Changes.TIMELINE
            case ev.Usage():
                self.info.tokens_in, self.info.tokens_out = event.input_total, event.output_total
                self.info.cost = event.cost_total
            case ev.ToolResult():
                if event.refused and "is protected" in event.summary:
                    self.info.exam_attempts += 1
                    return Changes.STATUS
            case ev.ExamRestored():
                self.info.exam_attempts += len(event.paths)
                return Changes.STATUS | Changes.DIFF
            case ev.TestStarted():
                record = self.record(event.iteration)
                record.test_output.clear()
                self.testing = record
                return Changes.TIMELINE
            case ev.GuardFinished() if event.iteration > 0:
                self.info.guard_ok = event.passed
                self.info.checks = tuple(dict.fromkeys((*self.info.checks, "guard")))
                return Changes.STATUS
            case ev.GateFinished():
                self.info.gates_ok = event.passed and self.info.gates_ok is not False
                self.info.checks = tuple(dict.fromkeys((*self.info.checks, "gates")))
                return Changes.STATUS
            case ev.TestFinished():
                if event.iteration > 0:
                    info = self.info
                    info.exam_ok, info.guard_ok, info.gates_ok = event.passed, None, None
                record = self.record(event.iteration)
                record.summary = event.summary
                if event.iteration == 0:
                    record.passed, record.duration_s = event.passed, event.duration_s
                self.testing = None
                return Changes.TIMELINE
            case ev.IterationFinished():
                record = self.record(event.iteration)
                record.passed = event.passed
                record.duration_s = event.duration_s
                record.commit = event.commit
                record.input_tokens, record.output_tokens = event.input_tokens, event.output_tokens
                return Changes.TIMELINE | Changes.DIFF
            case ev.SandboxChanged() | ev.HunksReverted():
                return Changes.DIFF
            case ev.BudgetSpent():
                self.budget_spent = event
                return Changes.STATUS | Changes.BINDINGS
            case ev.ReviewReady():
                self.review_ready = event
                return Changes.STATUS | Changes.BINDINGS | Changes.REVIEW
            case ev.ExamChanged():
                return Changes.EXAM
            case ev.TargetsChanged():
                return Changes.TARGETS
            case ev.LoopFinished():
                return self._loop_finished(event)
        return Changes.NONE

    def _loop_started(self, event: ev.LoopStarted) -> Changes:
        self.started = event
        self.info.max_iterations = event.max_iterations
        self.info.isolation = event.isolation or "none"
        self.info.network = event.network
        return Changes.STATUS

    def _loop_finished(self, event: ev.LoopFinished) -> Changes:
        self.finished = event
        self.review_ready = self.budget_spent = None
        self.ended_at = self.clock()
        if self.transition != "stopping…":
            self.transition = ""
        count = counted(event.iterations, "iteration")
        self.info.final = event.status
        self.info.final_note = {
            "passed": f"after {count}",
            "failed": event.reason or f"after {count}",
            "stopped": event.reason or "",
        }[event.status] + " · q to quit"
        return Changes.STATUS | Changes.BINDINGS | Changes.DIFF_NOW

    def record(self, iteration: int) -> IterationRecord:
        """The record of ``iteration``, made on first use."""
        record = self.records.get(iteration)
        if record is None:
            record = self.records[iteration] = IterationRecord(iteration)
        return record

    # -- the developer's controls and the workers' ends ---------------------------------------

    @property
    def awaiting_developer(self) -> bool:
        """The loop waits for the developer: green for review, or red with the budget spent."""
        return self.review_ready is not None or self.budget_spent is not None

    @property
    def total_iterations(self) -> int:
        """The iterations the loop may run: as it announced them, plus what was given since."""
        return self.info.max_iterations

    def pausing(self) -> Changes:
        self.transition = "pausing…"
        return Changes.STATUS

    def resuming(self) -> Changes:
        self.transition = "resuming…" if self.state == "paused" else ""
        return Changes.STATUS

    def stopping(self) -> Changes:
        self.transition = "stopping…"
        return Changes.STATUS

    def more_iterations(self, count: int) -> Changes:
        """``count`` more iterations were given to a loop whose budget was spent."""
        if self.budget_spent is not None and not self.budget_spent.reason:
            self.info.max_iterations = self.budget_spent.iterations + count
        self.budget_spent = None
        return Changes.STATUS | Changes.BINDINGS

    def feedback_sent(self) -> Changes:
        """Rejected hunks went back to a loop that waited: it goes on with a fresh budget."""
        waited_at = (
            self.review_ready.iteration
            if self.review_ready is not None
            else self.budget_spent.iterations
            if self.budget_spent is not None
            else None
        )
        if waited_at is None:
            return Changes.NONE  # the loop was running: its budget stays
        self.info.max_iterations = waited_at + self.budget
        return Changes.STATUS

    def loop_failed(self, message: str) -> None:
        """The loop raised something outside the error hierarchy (a bug of ours)."""
        self.failure = f"the loop failed: {message}"

    def session_error(self, error: CodexloopError) -> None:
        """The loop raised a user-facing error (see :func:`codexloop.core.errors.setup_failure`)."""
        self.error = error
        self.failure = " ".join(str(error).split())

    def loop_ended(self, *, cancelled: bool) -> Changes:
        """The loop's worker is over; without a ``LoopFinished``, it failed or was cancelled."""
        self.loop_over = True
        if self.finished is not None:
            return Changes.NONE
        self.failure = self.failure or "the loop ended early"
        self.info.final = "stopped" if cancelled else "failed"
        self.info.final_note = f"{self.failure} · q to quit"
        self.transition = ""
        return Changes.STATUS

    def events_ended(self) -> None:
        self.events_over = True

    @property
    def session_over(self) -> bool:
        """Both the loop and the stream of its events are over."""
        return self.loop_over and self.events_over

    def exit_status(self, *, interrupted: bool) -> int:
        """130 interrupted; a user-facing error's own status (2); else 0 green, 1 not."""
        if self.error is not None and not interrupted:
            return self.error.exit_code
        return result_status(
            self.finished.status if self.finished else None, interrupted=interrupted
        )

    # -- what was recorded --------------------------------------------------------------------

    def commit_at(self, iteration: int) -> str | None:
        """The commit recorded at ``iteration`` or the last one before it."""
        for number in sorted(self.records, reverse=True):
            if number <= iteration and self.records[number].commit:
                return self.records[number].commit
        return None

    def review_head(self, result_head: str | None) -> str | None:
        """What a review looks at: the green commit, the loop's result, or the latest recorded."""
        if self.review_ready is not None and self.review_ready.commit:
            return self.review_ready.commit
        if result_head:
            return result_head
        return self.commit_at(max(self.records, default=0))

    # -- status -------------------------------------------------------------------------------

    def flushed(self) -> None:
        """Streamed text reached the screen: it counts for tokens/s now (about 4 chars a token)."""
        if self._rate_chars:
            now = self.clock()
            tokens = self._rate_chars / 4
            self._rate.append((now, tokens))
            self._rate_sum += tokens
            self._rate_chars = 0

    def token_rate(self) -> float:
        now = self.clock()
        window = self._rate
        while window and window[0][0] < now - RATE_WINDOW_S:
            self._rate_sum -= window.popleft()[1]
        if not window:
            self._rate_sum = 0.0
            return 0.0
        return self._rate_sum / max(now - window[0][0], 1.0)

    def status(self) -> StatusInfo:
        """The status line's content now (elapsed time and rate measured at this call)."""
        info = self.info
        info.state = self.state
        info.transition = self.transition
        end = self.ended_at if self.ended_at is not None else self.clock()
        info.elapsed = end - self.started_at
        info.rate = self.token_rate()
        if self.budget_spent is not None:
            more = "as much again" if self.budget_spent.reason else f"{self.budget} more"
            info.hint = f"c for {more} · v to review · q to finish"
        else:
            info.hint = "v to review · q to finish" if self.review_ready is not None else ""
        return info

    def summary(self, branch: Literal["removed", "throwaway"] | None = None) -> str:
        """The line printed on the terminal after the screen closed. ``branch``: the session's
        branch was removed, having nothing to keep; or it is the demo's or a replay's, removed
        by the caller (not named)."""
        if self.error is not None:
            return error_line(self.error)
        if self.finished is None:
            return f"codexloop: {self.failure or 'the loop did not finish'}"
        finished = self.finished
        word = {"passed": "green", "failed": "not green", "stopped": "stopped"}[finished.status]
        line = f"codexloop: {word} after {counted(finished.iterations, 'iteration')}"
        if finished.reason and finished.status != "passed":
            line += f" ({finished.reason})"
        if self.applied:
            line += f"; {counted(self.applied, 'file')} changed in your working tree"
        else:
            line += "; nothing applied to your working tree"
        if branch == "removed":
            line += f"; nothing to keep: removed {finished.branch} and its worktree"
        elif branch is None:
            line += f"; the work is on branch {finished.branch}"
            if finished.worktree:
                line += f" (worktree {finished.worktree})"
        return line
