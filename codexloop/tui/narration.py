"""What the model pane says about the session: the line or lines for each lifecycle event.

The model pane shows the model's own stream (text, reasoning, tool calls) and, between them, the
session's story: the loop started in this sandbox, iteration 3 of 10, the tests went red, the exam
was put back, green, the loop finished. Those lines are data here — text and style names — so they
read in one place and are tested without a screen. No Textual, no Rich (an import-linter contract);
the model pane turns a :class:`Line` into styled text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from codexloop.core import events as ev
from codexloop.core.words import counted
from codexloop.tui.state import SessionState

Span = tuple[str, str]
"""Text and its style (a Rich style name: ``"bold red"``, ``"dim"``)."""


class Line(NamedTuple):
    """One line of the model pane.

    ``note``: one span, a line of its own (it ends the model's open text). ``line``: spans written
    as they are. ``separator``: a blank line, then ``── label ──``.
    """

    spans: tuple[Span, ...]
    kind: Literal["note", "line", "separator"] = "note"

    @property
    def text(self) -> str:
        return "".join(text for text, _style in self.spans)


def note(text: str, style: str = "dim") -> Line:
    return Line(((text, style),))


def line(*spans: Span) -> Line:
    return Line(spans, "line")


def separator(label: str) -> Line:
    return Line(((label, "bold blue"),), "separator")


NARRATED: tuple[type[ev.Event], ...] = (
    ev.LoopStarted,
    ev.IterationStarted,
    ev.ModelRetry,
    ev.ExamRestored,
    ev.TamperDetected,
    ev.TestStarted,
    ev.TestFinished,
    ev.GuardFinished,
    ev.GateFinished,
    ev.Notice,
    ev.Applied,
    ev.BudgetSpent,
    ev.ReviewReady,
    ev.HunksReverted,
    ev.ExamChanged,
    ev.TargetsChanged,
    ev.LoopFinished,
)
"""The events :func:`narrate` has lines for."""

NOTICE_STYLES = {"info": ("ℹ", "cyan"), "warning": ("⚠", "yellow"), "error": ("✗", "bold red")}


def narrate(event: ev.Event, state: SessionState) -> list[Line]:
    """The model pane's lines for ``event`` (after ``state`` took it in); most events have none."""
    match event:
        case ev.LoopStarted():
            return loop_started(event)
        case ev.IterationStarted():
            return [separator(f"iteration {event.iteration} of {state.total_iterations}")]
        case ev.ModelRetry():
            return [
                note(
                    f"↻ model request failed ({event.reason}); retry {event.retry} in "
                    f"{event.delay_s:.0f}s",
                    "yellow",
                )
            ]
        case ev.ExamRestored():
            paths = ", ".join(event.paths)
            return [note(f"⛨ the exam was put back before the test run: {paths}", "magenta")]
        case ev.TamperDetected():
            return [note(f"⚠ run {event.iteration} is red: {event.reason}", "red")]
        case ev.TestStarted() if event.iteration == 0:
            return [separator("baseline: the exam as it stands")]
        case ev.TestFinished():
            return [verdict(event)]
        case ev.GuardFinished():
            return [guard_line(event)]
        case ev.GateFinished():
            return [gate_line(event)]
        case ev.Notice():
            icon, style = NOTICE_STYLES[event.level]
            return [note(f"{icon} {event.message}", style)]
        case ev.Applied():
            return [applied(event)]
        case ev.BudgetSpent() if event.reason:
            return [
                note(
                    f"✗ {event.reason}: c gives as much again (the conversation goes on), "
                    "v reviews what it has, q finishes",
                    "bold red",
                )
            ]
        case ev.BudgetSpent():
            return [
                note(
                    f"✗ not green after {counted(event.iterations, 'iteration')}: "
                    f"c gives it {state.budget} more "
                    "(the conversation goes on), v reviews what it has, q finishes",
                    "bold red",
                )
            ]
        case ev.ReviewReady():
            return [
                note(
                    "✓ green: review the change with v (accept or reject hunks; a rejected hunk "
                    "with a comment sends the loop on), or q to finish",
                    "bold green",
                )
            ]
        case ev.HunksReverted():
            return hunks_reverted(event)
        case ev.ExamChanged():
            paths = ", ".join(event.paths)
            return [
                note(f"✎ you changed the exam: {paths} (the model hears of it next)", "magenta")
            ]
        case ev.TargetsChanged():
            return [note("◎ the exam's targets now: " + " ".join(event.targets), "magenta")]
        case ev.LoopFinished():
            return loop_finished(event)
    return []


def loop_started(event: ev.LoopStarted) -> list[Line]:
    sandbox = f"sandbox: {event.isolation} isolation"
    sandbox += f" — {event.isolation_reason}" if event.isolation_reason else ""
    sandbox += f"; {event.process_limit}" if event.process_limit else ""
    if event.max_memory_gib:
        sandbox += f"; at most {event.max_memory_gib} GiB of address space per command"
    if event.bwrap:
        sandbox += f"; {event.bwrap}"
    if event.shared:
        sandbox += "; shared read-only from your checkout: " + ", ".join(event.shared)
    return [
        line(("loop started", "bold"), (f" · preview branch {event.branch}", "dim")),
        line((sandbox, "dim")),
    ]


def verdict(event: ev.TestFinished) -> Line:
    spans: list[Span] = [("  ● tests ", "dim")]
    spans.append(("green", "bold green") if event.passed else ("red", "bold red"))
    if event.summary:
        spans.append((f" · {event.summary}", "dim"))
    return line(*spans)


def guard_line(event: ev.GuardFinished) -> Line:
    if event.iteration == 0:
        already = (
            f"; already failing, not counted: {counted(len(event.failing), 'test')}"
            if event.failing
            else ""
        )
        return line(
            ("  ● regression guard learned", "dim"), (f" · {event.summary}{already}", "dim")
        )
    spans: list[Span] = [("  ● regression guard ", "dim")]
    if event.passed:
        spans += [("green", "bold green"), (f" · {event.summary}", "dim")]
    else:
        names = ", ".join(event.broken[:3]) + (" …" if len(event.broken) > 3 else "")
        broke = f" · broke {counted(len(event.broken), 'test')}: {names}" if event.broken else ""
        spans += [("red", "bold red"), (f"{broke} · {event.summary}", "dim")]
    return line(*spans)


def gate_line(event: ev.GateFinished) -> Line:
    how = "timed out" if event.timed_out else f"exit {event.exit_code}"
    return line(
        ("  ● gate ", "dim"),
        ("passed", "bold green") if event.passed else ("failed", "bold red"),
        (f" · {event.command} ({how})", "dim"),
    )


def hunks_reverted(event: ev.HunksReverted) -> list[Line]:
    lines = []
    if event.paths:
        lines.append(note("↺ rejected hunks reverted in " + ", ".join(event.paths), "cyan"))
    if event.failed:
        failed = ", ".join(event.failed)
        lines.append(note(f"⚠ could not revert in {failed} (the model is told)", "yellow"))
    return lines


def loop_finished(event: ev.LoopFinished) -> list[Line]:
    count = counted(event.iterations, "iteration")
    text = {
        "passed": f"green after {count}",
        "failed": event.reason or f"not green after {count}",
        "stopped": event.reason or "stopped",
    }[event.status]
    style = {"passed": "bold green", "failed": "bold red", "stopped": "bold"}[event.status]
    return [
        separator("loop finished"),
        note(f"{text} · the work is on branch {event.branch}", style),
    ]


# -- lines of the app's own (not an engine event) ----------------------------------------------


def more_iterations(count: int) -> Line:
    return note(f"↻ {counted(count, 'more iteration')}", "cyan")


def more_spend() -> Line:
    return note("↻ as much budget again (tokens, time, cost)", "cyan")


def targets_pending(targets: Sequence[str]) -> Line:
    return note("◎ targets from the next test run on: " + " ".join(targets), "magenta")


def exam_changed_on_disk(paths: Sequence[str]) -> Line:
    return note("✎ exam changed in your checkout: " + ", ".join(paths), "magenta")


def watch_failed(message: str) -> Line:
    return note(
        f"⚠ cannot watch the exam files ({message}): your edits still count, at the next test run",
        "yellow",
    )


def loop_failed(failure: str) -> Line:
    return note(f"✗ {failure}", "bold red")


def events_failed(message: str) -> Line:
    return note(f"✗ the event stream failed: {message}", "bold red")


def applied(event: ev.Applied) -> Line:
    """What a change did to the working tree: all of it, or nothing and why."""
    if event.error:
        return note(f"✗ nothing applied to your working tree: {event.error}", "bold red")
    if event.conflicts:
        conflicts = "; ".join(event.conflicts)
        return note(
            f"✗ nothing applied: conflicts with your working tree ({conflicts})", "bold red"
        )
    parts = [f"{len(event.written)} written", f"{len(event.deleted)} deleted"]
    return note("applied to your working tree: " + ", ".join(parts), "cyan")


def review_summary(kept: int, dropped: int, changed_files: int | None) -> str:
    """After a review: what was kept, and what changed in the working tree (when applied)."""
    summary = f"review: {counted(kept, 'hunk')} kept, {dropped} not"
    if changed_files is not None:
        summary += f"; {counted(changed_files, 'file')} changed in your working tree"
    return summary
