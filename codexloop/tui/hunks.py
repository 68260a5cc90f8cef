"""One reviewable piece of a change (a hunk, or a whole file) and how the review shows it.

:class:`Item` is a hunk with the developer's decision and comment and what of it touches test
machinery; :class:`HunkView` shows one, highlighted, each wrapped line under its ``+`` or ``-``
(:class:`MarkedLines`), with its decision in the border and its flags above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.syntax import Syntax
from rich.text import Text
from textual.widgets import Static

from codexloop.core.diff import FileChange, Hunk
from codexloop.core.flags import Flag

Decision = Literal["pending", "accepted", "rejected"]
SHOWN_LINES = 400  # of one hunk or file in the review; its decision still covers all of it
MARKS = {"pending": ("·", "dim"), "accepted": ("✓", "bold green"), "rejected": ("✗", "bold red")}
FLAG_MARK = "⚠ flagged"
FLAG_STYLE = "bold yellow"


@dataclass
class Item:
    """One reviewable piece: a hunk, or a whole file (binary, added, deleted, renamed)."""

    change: FileChange
    hunk: Hunk | None
    decision: Decision = "pending"
    comment: str = ""
    flags: list[Flag] = field(default_factory=list)  # what in it touches test machinery

    @property
    def key(self) -> tuple[str, int]:
        return (self.change.path, self.hunk.index if self.hunk is not None else -1)

    def text(self) -> str:
        """What the review shows of it (a huge hunk or file: its head, and a note)."""
        full = self._full_text()
        if full.count("\n") <= SHOWN_LINES:
            return full
        lines = full.split("\n")
        return "\n".join(
            [*lines[:SHOWN_LINES], f"[... {len(lines) - SHOWN_LINES} more lines not shown ...]"]
        )

    def covers(self, flag: Flag) -> bool:
        """Whether ``flag`` (a line of the new version) falls in this hunk."""
        if flag.path != self.change.path:
            return False
        if self.hunk is None:
            return True
        return self.hunk.new_start <= flag.line < self.hunk.new_start + max(self.hunk.new_count, 1)

    def _full_text(self) -> str:
        if self.hunk is not None:
            return "\n".join([self.hunk.header, *self.hunk.lines])
        change = self.change
        if change.status == "renamed":
            return f"renamed {change.old_path} → {change.path}" + "".join(
                "\n" + "\n".join([h.header, *h.lines]) for h in change.hunks
            )
        kind = "binary file" if change.binary else "file"
        body = "".join("\n" + "\n".join([h.header, *h.lines]) for h in change.hunks)
        return f"{change.status} {kind} {change.path}{body}"


class MarkedLines:
    """A hunk's highlighted lines, wrapped to the width there is, each wrapped piece under
    its line's mark (``+``, ``-`` or a space), so a long added line reads as added throughout."""

    def __init__(self, text: Text) -> None:
        self.lines = text.split("\n", allow_blank=True)
        if self.lines and not self.lines[-1].plain:
            self.lines.pop()  # the hunk's last newline ends its last line

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(options.max_width, 2)
        for line in self.lines:
            if line.cell_len <= width or line.plain[:1] not in ("+", "-", " "):
                pieces = list(line.wrap(console, width))
            else:
                mark = line[:1]
                pieces = [Text.assemble(mark, piece) for piece in line[1:].wrap(console, width - 1)]
            for piece in pieces:
                piece.end = "\n"
                yield piece


class HunkView(Static):
    """One hunk, highlighted, with its decision."""

    def __init__(self, item: Item, number: int) -> None:
        super().__init__(id=f"hunk-{number}", classes="hunk")
        self.item = item
        self.refresh_view()

    def refresh_view(self) -> None:
        item = self.item
        mark, style = MARKS[item.decision]
        title = Text.assemble(
            (f" {mark} {item.decision} ", style), (f" {item.change.path}", "bold")
        )
        if item.flags:
            title.append(f"  {FLAG_MARK} ", style=FLAG_STYLE)
        if item.comment:
            title.append(f"  “{item.comment}”", style="italic")
        self.border_title = title
        self.set_classes(f"hunk {item.decision}{' flagged' if item.flags else ''}")
        diff = MarkedLines(Syntax("", "diff", theme="ansi_dark").highlight(item.text()))
        if not item.flags:
            self.update(diff)
            return
        warnings = [
            Text(
                f"{FLAG_MARK}: {f'line {flag.line}: ' if flag.line else ''}{flag.reason}",
                FLAG_STYLE,
            )
            for flag in item.flags
        ]
        self.update(Group(*warnings, diff))
