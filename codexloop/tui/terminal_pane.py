"""The sandbox terminal: live output of test runs and the model's commands, ANSI colours kept."""

from __future__ import annotations

import re
import shlex
from pathlib import PurePath

from rich.text import Text
from textual import events
from textual.message import Message

from codexloop.core import events as ev
from codexloop.tui.linebuffer import LineBuffer
from codexloop.tui.pump import EventPump

_JUNIT_NOTE = re.compile(r"^-+ generated xml file: .* -+$")


def keep_line(plain: str) -> bool:
    """Drop pytest's note about the JUnit report the engine asks for: not the user's output."""
    return not (plain.startswith("-") and _JUNIT_NOTE.match(plain))


def short_command(command: str) -> str:
    """The test command as people read it: an absolute interpreter path shown by its name."""
    try:
        parts = shlex.split(command)
    except ValueError:
        return command
    if parts and PurePath(parts[0]).is_absolute() and PurePath(parts[0]).name.startswith("python"):
        parts[0] = PurePath(parts[0]).name
        return shlex.join(parts)
    return command


def test_verdict_line(finished: ev.TestFinished) -> Text:
    line = Text()
    if finished.passed:
        line.append(" ✓ green ", style="bold black on green")
    else:
        line.append(" ✗ red ", style="bold white on red")
    detail = f" {finished.summary}" if finished.summary else ""
    if finished.timed_out:
        detail += " (timed out)"
    elif finished.exit_code not in (None, 0):
        detail += f" (exit {finished.exit_code})"
    line.append(f"{detail} · {finished.duration_s:.2f}s", style="bold")
    return line


class TerminalPane(LineBuffer):
    """Output of test runs and ``run_command``: colours kept, history capped."""

    class Resized(Message):
        """The pane's text width changed: commands should format their output for it."""

        def __init__(self, columns: int) -> None:
            super().__init__()
            self.columns = columns

    def __init__(self, *, id: str | None = None, max_lines: int = 5_000) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=True, ansi=True)
        self.line_filter = keep_line

    def connect(self, pump: EventPump) -> None:
        """Show the test runs and the model's commands from ``pump``."""
        pump.route(ev.TestStarted, self.test_started)
        pump.route(ev.TestOutput, lambda event: self.write(event.text))
        pump.route(ev.CommandOutput, lambda event: self.write(event.text))
        pump.route(ev.TestFinished, self.test_finished)

    @property
    def columns(self) -> int:
        """Characters per line of output once the scrollbar shows (0 before the first layout)."""
        width = self.scrollable_content_region.width
        if width > 0 and not self.show_vertical_scrollbar:
            width -= self.styles.scrollbar_size_vertical  # it comes with the first long output
        return max(width, 0)

    def on_resize(self, event: events.Resize) -> None:
        super().on_resize(event)
        if self.columns > 0:
            self.post_message(self.Resized(self.columns))

    def test_started(self, started: ev.TestStarted) -> None:
        label = (
            "baseline test run"
            if started.iteration == 0
            else f"test run · iteration {started.iteration}"
        )
        self.write_line(Text(f"── {label} ──", style="bold blue"))
        self.write_line(Text(f"$ {short_command(started.command)}", style="dim"))

    def test_finished(self, finished: ev.TestFinished) -> None:
        self.write_line(test_verdict_line(finished))
