"""Editing the exam from the app: an in-place editor, ``$EDITOR``, and a careful write.

The exam lives in the developer's checkout; the engine re-reads it at every safe point.
So an edit here only has to land in the checkout, whole (an atomic replace), with the
file's mode kept.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import tempfile
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import ClassVar

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from codexloop.tui.exam_pane import MAX_EXAM_BYTES


class ExamEditError(Exception):
    """The file cannot be edited in the app (unreadable, too big, not UTF-8 text)."""


def read_exam_file(path: Path) -> str:
    """Blocking: the file as text for the editor, or :class:`ExamEditError` saying why not."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExamEditError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if len(data) > MAX_EXAM_BYTES:
        raise ExamEditError(f"{path.name} is too big to edit here: use E ($EDITOR)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ExamEditError(f"{path.name} is not UTF-8 text: use E ($EDITOR)") from None


def write_atomic(path: Path, text: str) -> None:
    """Blocking: replace ``path`` with ``text`` at once (temp file beside it, then rename).

    A reader (the engine, a watcher, the developer's editor) sees the old file or the new
    one, never half of it. The file's permission bits are kept.
    """
    try:
        mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".codexloop")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def editor_command(env: Mapping[str, str] | None = None) -> list[str]:
    """The developer's editor: ``$EDITOR``, else ``$VISUAL``, else ``vi`` (split like a shell)."""
    env = os.environ if env is None else env
    for name in ("EDITOR", "VISUAL"):
        value = env.get(name, "").strip()
        if value:
            return shlex.split(value)
    return ["vi"]


def editor_language(rel: str) -> str | None:
    """``python`` for a .py file, unless tree-sitter is there without its Python grammar.

    Without tree-sitter the editor shows plain text (Textual falls back quietly); with
    tree-sitter but no ``tree_sitter_python``, naming the language would be an error.
    """
    if not rel.endswith(".py"):
        return None
    if find_spec("tree_sitter") is not None and find_spec("tree_sitter_python") is None:
        return None
    return "python"


class ExamEditor(TextArea):
    """One target file, editable; ``ctrl+s`` saves it to the checkout, ``escape`` cancels.

    Printable keys (``space``, ``q``, ``m``...) are typed, never the app's actions: the
    text area stops them before they bubble up to the app's (non-priority) bindings. Save
    and cancel are priority bindings, so they win over the text area's own keys.
    """

    BINDINGS: ClassVar = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("escape", "cancel", "Cancel", priority=True),
    ]

    class Closed(Message):
        """The developer is done: ``save`` says whether to write the text."""

        def __init__(self, editor: ExamEditor, save: bool) -> None:
            super().__init__()
            self.editor = editor
            self.save = save

    def __init__(self, rel: str, text: str, *, id: str | None = None) -> None:
        super().__init__(
            text,
            language=editor_language(rel),
            soft_wrap=False,
            tab_behavior="indent",
            show_line_numbers=True,
            id=id,
        )
        self.rel = rel
        self.original = text
        # A steady cursor: a blinking one is gone half the time (a terminal that reports
        # focus oddly, a tmux capture), and the panes beside it move all the time anyway.
        self.cursor_blink = False

    @property
    def changed(self) -> bool:
        return self.text != self.original

    def action_save(self) -> None:
        self.post_message(self.Closed(self, save=True))

    def action_cancel(self) -> None:
        self.post_message(self.Closed(self, save=False))
