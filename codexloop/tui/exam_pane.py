"""The exam: the target test files, syntax-highlighted, read-only while the loop runs.

The pane opens on the first targeted test (a test file's targets are often far down it), whose
definition carries a mark in the gutter, as does every targeted test's.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

from pygments.lexers import get_lexer_for_filename
from pygments.util import ClassNotFound
from rich.syntax import Syntax
from rich.text import Text

from codexloop.core import pysyntax
from codexloop.tui.linebuffer import LineBuffer

SYNTAX_THEME = "ansi_dark"
MAX_EXAM_BYTES = 1_000_000


TARGET_MARK = "▶"


class Exam(NamedTuple):
    """The exam as the pane shows it: its lines, and where the first targeted test starts."""

    lines: list[Text]
    first_target: int | None = None
    """Index in ``lines`` of the first targeted test's definition (None: a whole file)."""


def highlight_file(rel: str, source: str, marked: frozenset[int] = frozenset()) -> list[Text]:
    """One file of the exam: a header line, then numbered, highlighted lines; the line
    numbers in ``marked`` (a targeted test's definition) carry a mark in the gutter."""
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
        if number in marked:
            numbered.append(f"{number:>{width}} {TARGET_MARK} ", style="bold yellow")
        else:
            numbered.append(f"{number:>{width}} │ ", style="dim")
        line.end = ""
        numbered.append_text(line)
        out.append(numbered)
    return out


def load_exam(repo: Path, files: tuple[str, ...], targets: tuple[str, ...] = ()) -> Exam:
    """Blocking: read and highlight the exam's files (call from a thread)."""
    out: list[Text] = []
    first: int | None = None
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
        source = data.decode("utf-8", errors="replace")
        names = [t.split("::")[1:] for t in targets if t.split("::")[0] == rel and "::" in t]
        found = [line for n in names if (line := definition_line(source, n)) is not None]
        if found and first is None:
            first = len(out) + min(found)  # the header line comes first, then line 1
        out.extend(highlight_file(rel, source, frozenset(found)))
    if not out:
        out.append(Text("no test files among the targets", style="dim italic"))
    return Exam(out, first)


def definition_line(source: str, names: list[str]) -> int | None:
    """Where ``Class::test`` (a node id's names; a parametrized id's brackets dropped) is
    defined in ``source``: the line of its first decorator, or of its ``def``/``class``."""
    names = [name.split("[")[0] for name in names]
    if not names:
        return None
    try:
        body: list[ast.stmt] = pysyntax.parse(source).body
    except (SyntaxError, ValueError):  # being edited: the first line that defines the last name
        pattern = re.compile(rf"^\s*(?:async\s+def|def|class)\s+{re.escape(names[-1])}\b", re.M)
        match = pattern.search(source)
        return source.count("\n", 0, match.start()) + 1 if match else None
    node: ast.stmt | None = None
    for name in names:
        node = next(
            (
                n
                for n in body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and n.name == name
            ),
            None,
        )
        if node is None:
            return None
        body = node.body if isinstance(node, ast.ClassDef) else []
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


class ExamPane(LineBuffer):
    """The target tests: what success looks like."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, wrap=False, auto_scroll=False, max_lines=1_000_000)

    def show(self, exam: Exam, *, to_target: bool) -> None:
        """The exam's lines; with ``to_target``, scrolled to the first targeted test (with a
        line of context above it), else where the developer left it."""
        self.set_lines(exam.lines)
        if to_target:
            top = max(0, (exam.first_target or 0) - 1)
            self.call_after_refresh(self.scroll_to, y=top, animate=False)
