"""The status line: iteration N of M, state, elapsed time, tokens, tokens/s, isolation."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from codexloop.tui.state import StatusInfo

STATE_STYLES = {
    "starting": ("STARTING", "bold white on grey37"),
    "thinking": ("THINKING", "bold white on blue"),
    "tool": ("TOOL", "bold black on cyan"),
    "testing": ("TESTING", "bold black on yellow"),
    "paused": ("PAUSED", "bold black on dark_orange"),
    "red": ("RED", "bold white on red"),
    "green": ("GREEN", "bold black on green"),
    "stopped": ("STOPPED", "bold white on grey37"),
}
CHECKS = ("guard", "gates")  # after the exam, in the order they run
# A check's mark in the last run: passed, failed, not run (an earlier check failed).
CHECK_MARKS: dict[bool | None, tuple[str, str]] = {
    True: ("✓", "bold green"),
    False: ("✗", "bold red"),
    None: ("–", "dim"),
}
FINAL_STYLES = {
    "passed": ("✓ GREEN", "bold black on green"),
    "failed": ("✗ RED", "bold white on red"),
    "stopped": ("■ STOPPED", "bold white on grey37"),
}


def human_count(n: int | float) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1_000:.0f}k"
    if n >= 1_000:
        return f"{n / 1_000:.1f}k"
    return f"{n:.0f}"


def clock_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class StatusLine(Widget):
    """One line, most important first: it is cropped on the right at small widths.

    Repaints without a layout (a plain ``refresh``): it updates several times a second.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.info = StatusInfo()

    def show(self, info: StatusInfo) -> None:
        self.info = info
        self.refresh()

    def render(self) -> Text:
        return self.render_info()

    def render_info(self) -> Text:
        info = self.info
        line = Text(no_wrap=True, overflow="ellipsis")
        if info.final is not None:
            label, style = FINAL_STYLES.get(info.final, (info.final.upper(), "bold"))
            line.append(f" {label} ", style=style)
            if info.final_note:
                line.append(f" {info.final_note.removeprefix(' · ')}", style="bold")
        else:
            label, style = STATE_STYLES.get(info.state, (info.state.upper(), "bold"))
            if info.transition:
                label, style = info.transition.upper(), "bold black on dark_orange"
            line.append(f" {label} ", style=style)
            if info.hint:
                line.append(f" {info.hint}", style="bold")
        if info.isolation == "none":
            line.append(" ")
            line.append(" ⚠ no process isolation ", style="bold black on yellow")
        if info.max_iterations:
            line.append("  iteration ", style="dim")
            line.append(f"{info.iteration}/{info.max_iterations}", style="bold")
        if info.checks:
            line.append("  ")
            results = {"exam": info.exam_ok, "guard": info.guard_ok, "gates": info.gates_ok}
            for index, name in enumerate(("exam", *sorted(info.checks, key=CHECKS.index))):
                ok = results[name]
                if index:
                    line.append(" · ", style="dim")
                mark, style = CHECK_MARKS[ok]
                line.append(f"{name} ", style="dim")
                line.append(mark, style=style)
        line.append("  elapsed ", style="dim")
        line.append(clock_time(info.elapsed), style="bold")
        line.append("  tokens ", style="dim")
        line.append(human_count(info.tokens_in), style="bold")
        line.append(" in · ", style="dim")
        line.append(human_count(info.tokens_out), style="bold")
        line.append(" out", style="dim")
        if info.cost is not None:
            line.append(" · ", style="dim")
            line.append(f"${info.cost:.2f}", style="bold")
        if info.final is None:
            line.append("  ")
            line.append(f"{info.rate:.0f}", style="bold")
            line.append(" tok/s", style="dim")
        if info.isolation:
            line.append("  ")
            if info.isolation != "none":
                line.append("isolation ", style="dim")
                line.append(
                    info.isolation,
                    style="bold green" if info.isolation == "full" else "bold yellow",
                )
            if info.network:
                line.append(" · network on", style="yellow")
        if info.exam_attempts:
            line.append("  ")
            line.append(f"⛨ exam guarded ×{info.exam_attempts}", style="bold magenta")
        return line
