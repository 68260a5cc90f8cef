"""The exam: the target test files, syntax-highlighted, read-only while the loop runs."""

from __future__ import annotations

from pathlib import Path

from pygments.lexers import get_lexer_for_filename
from pygments.util import ClassNotFound
from rich.syntax import Syntax
from rich.text import Text

from codexloop.tui.linebuffer import LineBuffer

SYNTAX_THEME = "ansi_dark"
MAX_EXAM_BYTES = 1_000_000


def highlight_file(rel: str, source: str) -> list[Text]:
    """One file of the exam: a header line, then numbered, highlighted lines."""
    try:
        lexer = get_lexer_for_filename(rel, stripnl=False, ensurenl=False)
        syntax: Syntax | None = Syntax("", lexer, theme=SYNTAX_THEME, background_color="default")
    except ClassNotFound:
        syntax = None
    code = source.expandtabs(4)
    body = syntax.highlight(code) if syntax is not None else Text(code)
    lines = body.split("\n", allow_blank=True)
    if lines and not lines[-1].plain and code.endswith("\n"):
        lines.pop()
    width = len(str(len(lines)))
    out = [Text(f" {rel} ", style="bold reverse")]
    for number, line in enumerate(lines, 1):
        numbered = Text()
        numbered.append(f"{number:>{width}} │ ", style="dim")
        line.end = ""
        numbered.append_text(line)
        out.append(numbered)
    return out


def load_exam(repo: Path, files: tuple[str, ...]) -> list[Text]:
    """Blocking: read and highlight the exam's files (call from a thread)."""
    out: list[Text] = []
    for rel in files:
        path = repo / rel
        if out:
            out.append(Text(""))
        try:
            data = path.read_bytes()[:MAX_EXAM_BYTES]
        except OSError as exc:
            out.append(Text(f" {rel} ", style="bold reverse"))
            out.append(Text(f"cannot read: {exc.strerror or exc}", style="red"))
            continue
        out.extend(highlight_file(rel, data.decode("utf-8", errors="replace")))
    if not out:
        out.append(Text("no test files among the targets", style="dim italic"))
    return out


class ExamPane(LineBuffer):
    """The target tests: what success looks like."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, wrap=False, auto_scroll=False, max_lines=1_000_000)
