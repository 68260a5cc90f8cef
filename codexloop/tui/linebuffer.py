"""An append-only line buffer: streamed text at frame rate, only changed lines repainted.

Writes are queued (cheap, any number per frame) and applied by :meth:`LineBuffer.flush`,
which the app calls at frame rate. A flush re-wraps only what changed (the tail of the
open line, and the lines after it), refreshes only those rows, and renders a row to a
:class:`~textual.strip.Strip` once (cached) when it scrolls into view. History is
bounded: beyond ``max_lines`` logical lines the oldest ones are dropped.

The same widget serves the model stream (styled fragments, word wrap), the sandbox
terminal (ANSI colours, folded like a terminal) and the static panes (diff, exam: no
wrap, horizontal scroll).

Why one module of ~400 lines: the line model (ids, open line, ANSI decoding), the row layout
and the row cache share their indices; split, each part would reach into the others' state.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import ClassVar, NamedTuple

from rich._wrap import divide_line
from rich.ansi import AnsiDecoder
from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

MAX_OPEN_CHARS = 20_000
"""An open (unterminated) line longer than this is broken: terminals wrap anyway."""

Row = tuple[int, int, int]
"""A screen row: (line id, start offset, end offset) in that line's plain text."""


class _Fragment(NamedTuple):
    """Queued: streamed text (any number of newlines)."""

    text: str
    style: Style | str | None


class _WholeLine(NamedTuple):
    """Queued: a whole line."""

    line: Text | str
    tag: str | None


class _Replacement(NamedTuple):
    """Queued: the last line if it carries ``tag``, else a new one."""

    line: Text | str
    tag: str


_Op = _Fragment | _WholeLine | _Replacement


class LineBuffer(ScrollView, can_focus=True):
    """Logical lines of styled text, wrapped to the widget's width on demand."""

    DEFAULT_CSS = """
    LineBuffer {
        overflow-y: scroll;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
        scrollbar-size-horizontal: 1;
    }
    LineBuffer.-nowrap {
        overflow-x: auto;
    }
    """

    BINDINGS: ClassVar = [
        Binding("up", "scroll_up", "Scroll up", show=False),
        Binding("down", "scroll_down", "Scroll down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "scroll_home", "Top", show=False),
        Binding("end", "scroll_end", "Bottom", show=False),
        Binding("left", "scroll_left", "Scroll left", show=False),
        Binding("right", "scroll_right", "Scroll right", show=False),
    ]

    def __init__(
        self,
        *,
        max_lines: int = 5_000,
        wrap: bool = True,
        ansi: bool = False,
        auto_scroll: bool = True,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        if not wrap:
            classes = f"{classes} -nowrap" if classes else "-nowrap"
        super().__init__(name=name, id=id, classes=classes)
        self.max_lines = max_lines
        self.wrap = wrap
        self.ansi = ansi
        self.auto_scroll = auto_scroll
        self._lines: list[Text] = []
        self._first = 0  # line id of self._lines[0]
        self._open = False  # the last line takes more text
        self._open_raw = ""  # ANSI mode: the open line as received
        self._pending_cr = False
        self._decoder = AnsiDecoder()
        self._last_tag: str | None = None
        self._rows: list[Row] = []
        self._dirty_from: int | None = None
        self._grow_only = True
        self._wrap_width = 0
        self._max_width = 0
        self._cache: LRUCache[Row, Strip] = LRUCache(2_048)
        self._pending: list[_Op] = []
        self.lines_written = 0
        self._line_style = Style()
        self._line_width = 0
        self._following = True
        self.line_filter: Callable[[str], bool] | None = None
        """ANSI mode: a finished line whose plain text fails this test is dropped."""

    # -- writing (queued; applied by flush) --------------------------------------

    def write(self, text: str, style: Style | str | None = None) -> None:
        """Queue a streamed fragment; it may hold any number of newlines."""
        if text:
            self._pending.append(_Fragment(text, style))

    def write_line(self, line: Text | str, tag: str | None = None) -> None:
        """Queue a whole line (the open line, if any, ends first)."""
        self._pending.append(_WholeLine(line, tag))

    def replace_line(self, tag: str, line: Text | str) -> None:
        """Queue: replace the last line if it carries ``tag``, else add ``line``."""
        self._pending.append(_Replacement(line, tag))

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def flush(self) -> bool:
        """Apply queued writes; returns whether anything was written."""
        if not self._pending:
            return False
        pending, self._pending = self._pending, []
        for op in pending:
            if isinstance(op, _Fragment):
                if self.ansi:
                    self._add_ansi(op.text)
                else:
                    self._add_text(op.text, op.style)
                self._last_tag = None
            elif isinstance(op, _WholeLine):
                self._add_line(op.line, op.tag)
            else:
                self._replace_line(op.line, op.tag)
        self._prune()
        self._update()
        return True

    def set_lines(self, lines: Iterable[Text | str]) -> None:
        """Replace everything at once (diff, exam); keeps the scroll position if it can."""
        self._pending.clear()
        self._first += len(self._lines) + 1  # fresh ids: no stale cache hits
        self._lines = [text for line in lines for text in _split(line)]
        self._open = False
        self._open_raw = ""
        self._last_tag = None
        self._rows = []
        self._cache.clear()
        self._max_width = 0
        self._mark(self._first, grow=False)
        self._update(keep_position=True)

    def clear(self) -> None:
        self.set_lines([])

    @property
    def text(self) -> str:
        """Everything held (queued writes excluded), as plain text."""
        return "\n".join(line.plain for line in self._lines)

    @property
    def line_count(self) -> int:
        return len(self._lines)

    # -- line model ----------------------------------------------------------------

    def _mark(self, line_id: int, *, grow: bool) -> None:
        if self._dirty_from is None or line_id < self._dirty_from:
            self._dirty_from, self._grow_only = line_id, grow
        elif line_id == self._dirty_from:
            self._grow_only = self._grow_only and grow

    def _last_id(self) -> int:
        return self._first + len(self._lines) - 1

    def _new_line(self, text: Text, *, open_: bool) -> None:
        self._lines.append(text)
        self._open = open_
        self._mark(self._last_id(), grow=True)
        self.lines_written += 1

    def _end_line(self) -> None:
        if self._open:
            self._open = False
            self._open_raw = ""
        else:
            self._new_line(Text(), open_=False)

    def _add_text(self, text: str, style: Style | str | None) -> None:
        if "\t" in text:
            text = text.replace("\t", "    ")
        pieces = text.split("\n")
        for index, piece in enumerate(pieces):
            if index:
                self._end_line()
            if not piece:
                continue
            if not self._open:
                self._new_line(Text(), open_=True)
            line = self._lines[-1]
            line.append(piece, style)
            self._mark(self._last_id(), grow=True)
            if len(line) > MAX_OPEN_CHARS:
                self._end_line()

    def _add_ansi(self, text: str) -> None:
        if self._pending_cr:
            text = "\r" + text
            self._pending_cr = False
        if text.endswith("\r"):
            text, self._pending_cr = text[:-1], True
        text = text.replace("\r\n", "\n")
        if "\t" in text:
            text = text.replace("\t", "    ")
        pieces = text.split("\n")
        for index, piece in enumerate(pieces):
            if index:
                if self._open:
                    self._lines[-1] = self._decoder.decode_line(self._open_raw)
                    self._mark(self._last_id(), grow=True)
                    if self.line_filter is not None and not self.line_filter(self._lines[-1].plain):
                        self._lines.pop()
                        self._mark(self._last_id() + 1, grow=False)
                        self._open, self._open_raw = False, ""
                    else:
                        self._end_line()
                else:
                    self._end_line()
            if not piece:
                continue
            if not self._open:
                self._new_line(Text(), open_=True)
            self._open_raw += piece
            saved = self._decoder.style
            self._lines[-1] = self._decoder.decode_line(self._open_raw)
            self._decoder.style = saved
            self._mark(self._last_id(), grow="\r" not in piece)
            if len(self._open_raw) > MAX_OPEN_CHARS:
                self._lines[-1] = self._decoder.decode_line(self._open_raw)
                self._end_line()

    def _add_line(self, line: Text | str, tag: str | None) -> None:
        if self._open:
            self._end_line()
        for text in _split(line):
            self._new_line(text, open_=False)
        self._last_tag = tag

    def _replace_line(self, line: Text | str, tag: str) -> None:
        if self._lines and not self._open and self._last_tag == tag:
            first, *rest = _split(line)
            self._lines[-1] = first
            self._mark(self._last_id(), grow=False)
            for text in rest:
                self._new_line(text, open_=False)
            self._last_tag = None
        else:
            self._add_line(line, None)

    def _prune(self) -> None:
        excess = len(self._lines) - self.max_lines
        if excess <= max(50, self.max_lines // 10):
            return
        del self._lines[:excess]
        self._first += excess
        cut = bisect_left(self._rows, (self._first, -1, -1))
        del self._rows[:cut]
        if self._dirty_from is not None and self._dirty_from < self._first:
            self._dirty_from, self._grow_only = self._first, False
        if cut and not self.is_vertical_scroll_end:
            self.scroll_to(y=max(0, self.scroll_offset.y - cut), animate=False, immediate=True)

    # -- layout ----------------------------------------------------------------------

    def _content_width(self) -> int:
        width = self.scrollable_content_region.width
        return width if width > 0 else 80

    def _relayout(self) -> int:
        """Recompute the rows of dirty lines; returns the first row that changed."""
        dirty = self._dirty_from
        if dirty is None:
            return len(self._rows)
        self._dirty_from = None
        rows = self._rows
        cut = bisect_left(rows, (dirty, -1, -1))
        resume_at = 0
        if self._grow_only and self.wrap and cut < len(rows) and rows[-1][0] == dirty:
            # The line only grew: its rows before the last one cannot change.
            cut = len(rows) - 1
            resume_at = rows[cut][1]
        for key in rows[cut:]:
            self._cache.discard(key)
        del rows[cut:]
        width = self._wrap_width
        lines = self._lines
        first = self._first
        for line_id in range(dirty, first + len(lines)):
            plain = lines[line_id - first].plain
            start = resume_at if line_id == dirty else 0
            if not self.wrap:
                rows.append((line_id, 0, len(plain)))
                self._max_width = max(self._max_width, cell_len(plain))
                continue
            tail = plain[start:]
            if not tail:
                rows.append((line_id, start, start))
                continue
            bounds = [start, *(start + offset for offset in divide_line(tail, width)), len(plain)]
            rows.extend((line_id, a, b) for a, b in pairwise(bounds))
        return cut

    def _update(self, *, keep_position: bool = False) -> None:
        if self.wrap:
            self._wrap_width = self._content_width()
        at_end = self.is_vertical_scroll_end
        first_changed = self._relayout()
        width = self._wrap_width if self.wrap else self._max_width
        size = Size(width, len(self._rows))
        if size != self.virtual_size:
            if self.wrap:
                # Wrapped: the scrollbars never come or go (overflow-x hidden, overflow-y
                # scroll), so a new height needs no layout of the screen, which would cost a
                # full reflow per frame. Update the reactive and the scrollbars only.
                fast = getattr(self, "_scroll_update", None)  # private Textual API
                if fast is not None:
                    self.set_reactive(ScrollView.virtual_size, size)
                    fast(size)
                else:
                    self.virtual_size = size
            else:
                self.virtual_size = size
        if self.auto_scroll and at_end and not keep_position:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        if keep_position:
            self.refresh()
        else:
            self.refresh_lines(first_changed, max(1, len(self._rows) - first_changed))

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._following = new_value >= self.max_scroll_y

    def on_resize(self, event: events.Resize) -> None:
        if self.wrap and self._content_width() != self._wrap_width and self._lines:
            # Whether it followed the tail before the resize (measured now, with the new size
            # and the old rows, a pane shrunk back from a zoom would seem scrolled up).
            at_end = self._following
            self._rows.clear()
            self._cache.clear()
            self._mark(self._first, grow=False)
            self._update(keep_position=not at_end)
            if at_end:
                self.scroll_end(animate=False, immediate=True, x_axis=False)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()

    # -- rendering -------------------------------------------------------------------

    def render_lines(self, crop: Region) -> list[Strip]:
        # Once per pass, not per line: a refresh clears Textual's cache of it.
        self._line_style = self.rich_style
        self._line_width = self.scrollable_content_region.width
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self._line_width
        style = self._line_style
        index = scroll_y + y
        if index >= len(self._rows):
            return Strip.blank(width, style)
        key = self._rows[index]
        strip = self._cache.get(key)
        if strip is None:
            line_id, start, end = key
            line = self._lines[line_id - self._first]
            if start or end < len(line):
                line = line[start:end]
            strip = Strip(list(line.render(self.app.console)), line.cell_len).apply_style(style)
            self._cache[key] = strip
        return strip.crop_extend(scroll_x, scroll_x + width, style)


def _as_text(line: Text | str) -> Text:
    if isinstance(line, Text):
        return line
    return Text(line.replace("\t", "    "))


def _split(line: Text | str) -> list[Text]:
    """A whole line as logical lines: a newline inside it (a message of several lines) starts
    another one. A newline never reaches the terminal: it would draw over other panes."""
    text = _as_text(line)
    if "\n" not in text.plain:
        return [text]
    return list(text.split("\n", allow_blank=True))
