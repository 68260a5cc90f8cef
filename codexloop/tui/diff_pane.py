"""The diff: what the sandbox changed against the base snapshot, file by file, highlighted."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from pygments.lexers import get_lexer_for_filename
from pygments.util import ClassNotFound
from rich.syntax import Syntax
from rich.text import Text
from textual.signal import Signal
from textual.timer import Timer

from codexloop.core.diff import CLIP_MARK, clip_diff, commit_diff, sandbox_diff
from codexloop.core.words import counted
from codexloop.tui.linebuffer import LineBuffer
from codexloop.tui.session import DiffSource
from codexloop.tui.workers import describe, spawn

SYNTAX_THEME = "ansi_dark"
HIGHLIGHT_LINES = 4_000
"""Beyond this many lines a diff is coloured by line kind only (no code highlighting)."""

DEBOUNCE_S = 0.15
"""A burst of changes (a model editing file after file) is diffed once, this long after."""

DiffUpdate = tuple[str, list[Text]]
"""A diff and its highlighted lines."""

ADDED_BG = "on #0d2d1a"
REMOVED_BG = "on #3a1114"


@lru_cache(maxsize=64)
def _syntax_for(path: str) -> Syntax | None:
    try:
        lexer = get_lexer_for_filename(path, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None
    return Syntax("", lexer, theme=SYNTAX_THEME, background_color="default")


def _code(syntax: Syntax | None, code: str) -> Text:
    if syntax is None or not code.strip():
        return Text(code)
    text = syntax.highlight(code)
    text.rstrip()
    text.end = ""
    return text


def _changed_line(syntax: Syntax | None, raw: str, sign_style: str, background: str) -> Text:
    """An added or removed line: its sign, its highlighted code, its background."""
    line = Text()
    line.append(raw[0], style=sign_style)
    line.append_text(_code(syntax, raw[1:]))
    line.stylize(background)
    return line


def highlight_diff(diff: str) -> list[Text]:
    """A unified diff as styled lines: headers, hunk markers, and highlighted code.

    Huge diffs are clipped first (see ``clip_diff``): what is left out is said in the pane.
    """
    lines = clip_diff(diff).splitlines()
    highlight = len(lines) <= HIGHLIGHT_LINES
    out: list[Text] = []
    syntax: Syntax | None = None
    for raw in lines:
        if raw.startswith("diff --git "):
            path = raw.split(" b/", 1)[-1] if " b/" in raw else raw[11:]
            syntax = _syntax_for(path) if highlight else None
            if out:
                out.append(Text(""))
            out.append(Text(f"━━ {path} ", style="bold reverse"))
        elif raw.startswith(
            ("index ", "--- ", "+++ ", "similarity ", "rename ", "old mode", "new mode")
        ):
            out.append(Text(raw, style="dim"))
        elif raw.startswith(("new file", "deleted file", "Binary files")):
            out.append(Text(raw, style="bold yellow"))
        elif raw.startswith("@@"):
            head, _, rest = raw.partition(" @@")
            line = Text()
            line.append(head + " @@", style="cyan")
            if rest:
                line.append(rest, style="dim")
            out.append(line)
        elif raw.startswith("+"):
            out.append(_changed_line(syntax, raw, "bold green", ADDED_BG))
        elif raw.startswith("-"):
            out.append(_changed_line(syntax, raw, "bold red", REMOVED_BG))
        elif raw.startswith(("\\", CLIP_MARK)):
            out.append(Text(raw, style="dim italic"))
        else:
            line = Text(" ")
            line.append_text(_code(syntax, raw[1:] if raw.startswith(" ") else raw))
            out.append(line)
    return out


def diff_stats(diff: str) -> tuple[int, int, int]:
    """(files, lines added, lines removed) of a unified diff."""
    files = added = removed = 0
    for raw in diff.splitlines():
        if raw.startswith("diff --git "):
            files += 1
        elif raw.startswith("+") and not raw.startswith("+++ "):
            added += 1
        elif raw.startswith("-") and not raw.startswith("--- "):
            removed += 1
    return files, added, removed


class DiffPane(LineBuffer):
    """A highlighted diff, replaced as a whole when it is recomputed."""

    def __init__(self, *, id: str | None = None, empty: str = "no changes yet") -> None:
        super().__init__(id=id, wrap=False, auto_scroll=False, max_lines=1_000_000)
        self.empty = empty
        self.diff = ""

    def on_mount(self) -> None:
        super().on_mount()
        if not self.line_count:
            self.set_lines([Text(self.empty, style="dim italic")])

    def show(self, diff: str, lines: list[Text] | None = None) -> None:
        self.diff = diff
        if not diff.strip():
            self.set_lines([Text(self.empty, style="dim italic")])
            return
        self.set_lines(lines if lines is not None else highlight_diff(diff))


class SandboxDiffPane(DiffPane):
    """The sandbox against its base, recomputed when asked: off the event loop, debounced, one
    computation at a time (asked again meanwhile, it runs once more when that one is done).

    ``updated`` is published with each new diff (the full-screen diff follows it).
    """

    def __init__(self, source: Callable[[], DiffSource | None], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.source = source
        self.lines: list[Text] | None = None
        self.updated: Signal[DiffUpdate] = Signal(self, "diff-updated")
        self._debounce: Timer | None = None
        self._computing = False
        self._asked = False

    @property
    def idle(self) -> bool:
        """No computation runs, is due or is wanted: the pane shows the sandbox as it is."""
        return not (self._computing or self._asked or self._debounce is not None)

    def request(self, delay: float = DEBOUNCE_S) -> None:
        """Recompute soon (after ``delay``, debounced; at once with 0)."""
        if self.source() is None:
            return
        self._asked = True
        if self._computing:
            return
        if self._debounce is not None:
            if delay > 0:
                return
            self._debounce.stop()
        self._debounce = self.set_timer(delay, self._start) if delay > 0 else None
        if delay <= 0:
            self._start()

    def _start(self) -> None:
        self._debounce = None
        source = self.source()
        if self._computing or not self._asked or source is None:
            return
        self._asked = False
        self._computing = True
        spawn(
            self,
            lambda: compute_diff(source),
            name="diff",
            done=self._computed,
            failed=self._failed,
        )

    def _computed(self, result: tuple[str, list[Text], tuple[int, int, int]]) -> None:
        self.diff, self.lines, (files, added, removed) = result
        self.show(self.diff, self.lines)
        self.border_subtitle = f"{counted(files, 'file')} · +{added} −{removed}" if files else ""
        self.updated.publish((self.diff, self.lines))
        self._finished()

    def _failed(self, error: Exception) -> None:
        message = f"diff unavailable: {describe(error)}"
        self.show(message, [Text(message, style="red")])
        self._finished()

    def _finished(self) -> None:
        self._computing = False
        if self._asked:
            self.request(0)


def compute_diff(source: DiffSource) -> tuple[str, list[Text], tuple[int, int, int]]:
    """Blocking (thread): the sandbox's diff against the base (the exam left out), highlighted
    (clipped when huge), and its counts."""
    text = sandbox_diff(source.worktree, source.base, source.exclude, source.exam)
    return text, highlight_diff(text), diff_stats(text)


def iteration_diff(worktree: Path, base: str, commit: str, exam: tuple[str, ...]) -> DiffUpdate:
    """Blocking (thread): an iteration's recorded state against the base (the exam left out)."""
    text = commit_diff(worktree, base, commit, exam)
    return text, highlight_diff(text)
