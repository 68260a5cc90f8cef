"""The conversation with the model, in named parts instead of a bare list of messages.

It opens with the system prompt and the first message, then grows by model turns, tool
results and the engine's user messages, each tagged with the iteration it belongs to.
Earlier iterations' long tool results are compacted once an iteration is red; the whole is
fitted to the context budget before every request (:meth:`Conversation.fit`).

Everything the engine adds passes through here, so here it is made plain once more: no
escape sequence, and paths inside the sandbox or the run tree written relative to the
project (``src/x.py``, not ``/home/.../worktrees/x/src/x.py``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from codexloop.core import context
from codexloop.core.context import KEEP_RECENT, Shortened, conversation_size, shorten_tool_result
from codexloop.core.model import PRIVATE_PREFIX, Turn, tool_message
from codexloop.core.process import plain_text
from codexloop.core.prompts import MORE_FILES, SYSTEM, FirstMessage
from codexloop.core.words import counted

OLD_TOOL_RESULT_CHARS = 600  # what is kept of a tool result of an earlier iteration
ITERATION = PRIVATE_PREFIX + "iteration"  # the iteration a message belongs to
LEFT_OUT = PRIVATE_PREFIX + "left_out"  # the note standing for messages left out
IDLE = PRIVATE_PREFIX + "idle"  # the engine's note on an answer that changed nothing
FILES_KEPT = 20  # of the first message's file listing, once it has to give way
EXAM_KEPT = 2_000  # of each exam file in the first message, as a last resort
BASELINE_KEPT = 1_500  # of the baseline failure in the first message, as a last resort

LEFT_OUT_NOTE = "[Left out to fit the model's context window: {what} ({messages}).]"


def relative_paths(text: str, roots: Sequence[str]) -> str:
    """``text`` with every path under one of ``roots`` (absolute folders, longest first)
    made relative to it, and a root itself written ``.``."""
    for root in roots:
        if root not in text:
            continue
        text = text.replace(root + "/", "")
        text = re.sub(re.escape(root) + r"(?![\w.-])", ".", text)
    return text


def _roots(folders: Iterable[Path | str]) -> list[str]:
    found: set[str] = set()
    for folder in folders:
        path = Path(folder)
        found.add(str(path).rstrip("/"))
        with contextlib.suppress(OSError):
            found.add(str(path.resolve()).rstrip("/"))
    return sorted((r for r in found if r and r != "/"), key=len, reverse=True)


class Conversation:
    def __init__(
        self,
        first_message: str | FirstMessage,
        *,
        roots: Iterable[Path | str] = (),
        system: str = SYSTEM,
    ) -> None:
        """``roots``: the folders whose paths the model reads relative to the project (the
        sandbox's worktree, the run tree the exam runs in); ``system``: the system prompt."""
        self._roots = _roots(roots)
        first = (
            first_message
            if isinstance(first_message, FirstMessage)
            else FirstMessage((("text", first_message),))
        )
        self._sections = [(kind, self.clean(text)) for kind, text in first.sections]
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            {"role": "user", "content": self._opening()},
        ]
        self.iteration = 0

    def clean(self, text: str) -> str:
        """``text`` as the model reads it: no escape sequence (a text with none is left
        exactly as it is: a file's carriage returns stay), project-relative paths."""
        if "\x1b" in text:
            text = plain_text(text)
        return relative_paths(text, self._roots)

    def _opening(self) -> str:
        return "\n".join(text for _kind, text in self._sections)

    def _add(self, message: dict[str, Any]) -> None:
        message[ITERATION] = self.iteration
        self.messages.append(message)

    def say(self, text: str, *, idle: bool = False) -> None:
        """A user message from the engine or the developer (``idle``: the engine's note on
        an answer that changed nothing, see :meth:`forget_idle_answer`)."""
        message: dict[str, Any] = {"role": "user", "content": self.clean(text)}
        if idle:
            message[IDLE] = True
        self._add(message)

    def last_user_text(self) -> str:
        """The text of the last user message (the engine's, or the developer's)."""
        for message in reversed(self.messages):
            if message["role"] == "user" and isinstance(message.get("content"), str):
                return str(message["content"])
        return ""

    def forget_idle_answer(self) -> bool:
        """Take the model's last answer out, with the notes on the idle answers before it,
        when it is text only (an answer with tool calls stays: their results answer them).

        A small model reads its own earlier answers as the answer and writes them again, word
        for word, turn after turn: an answer that changed nothing is not shown back to it. The
        note that follows (what was not applied, how to edit) says what it needs to know."""
        last = next(
            (i for i in range(len(self.messages) - 1, 1, -1) if self.messages[i]["role"] != "user"),
            None,
        )
        if last is None or self.messages[last].get("role") != "assistant":
            return False
        if self.messages[last].get("tool_calls"):
            return False
        del self.messages[last]
        self.messages[:] = [m for m in self.messages if not m.get(IDLE)]
        return True

    def answer(self, turn: Turn) -> None:
        """The model's turn (its text, reasoning items and tool calls)."""
        self._add(turn.message())

    def tool_result(self, call_id: str, content: str) -> None:
        self._add(tool_message(call_id, self.clean(content)))

    def forget_iterations(self) -> None:
        """Only the system prompt and the first message stay: a model that acts through text
        (a small one) starts each iteration afresh from the red run's message, which shows
        the code as it now is. Shown its earlier answers, it writes them again."""
        del self.messages[2:]

    def start_iteration(self) -> None:
        """A new iteration begins. The engine's messages just before it (the failure it is
        to fix) belong to it: leaving out the iteration before never leaves them out."""
        self.iteration += 1
        for message in reversed(self.messages[2:]):
            if message["role"] != "user" or message.get(LEFT_OUT):
                break
            message[ITERATION] = self.iteration

    def compact(self) -> None:
        """Shorten long tool results from before this iteration: the conversation stays small."""
        for message in self.messages[2:]:
            if message.get(ITERATION, 0) < self.iteration:
                shorten_tool_result(message, OLD_TOOL_RESULT_CHARS, why="")

    @property
    def size(self) -> int:
        return conversation_size(self.messages)

    # -- kept for a resume -----------------------------------------------------------

    def to_data(self) -> dict[str, Any]:
        """Everything needed to go on with this conversation later, as JSON-ready data
        (:meth:`restored`): what is sent and our own marks on it."""
        messages = []
        for message in self.messages:
            message = dict(message)
            note = message.get(LEFT_OUT)
            if isinstance(note, _LeftOut):
                message[LEFT_OUT] = {
                    "messages": note.messages,
                    "iterations": note.iterations,
                    "calls": {str(k): v for k, v in note.calls.items()},
                }
            messages.append(message)
        return {"sections": self._sections, "messages": messages, "iteration": self.iteration}

    @classmethod
    def restored(
        cls, data: dict[str, Any], *, roots: Iterable[Path | str] = (), system: str = SYSTEM
    ) -> Conversation:
        """The conversation :meth:`to_data` kept, with today's system prompt. Raises
        ``ValueError`` when ``data`` is not such a conversation."""
        sections = [(str(kind), str(text)) for kind, text in data["sections"]]
        messages = [dict(m) for m in data["messages"]]
        if len(messages) < 2 or any(not isinstance(m.get("role"), str) for m in messages):
            raise ValueError("not a kept conversation")
        conversation = cls(FirstMessage(tuple(sections)), roots=roots, system=system)
        for message in messages:
            note = message.get(LEFT_OUT)
            if isinstance(note, dict):
                record = _LeftOut()
                record.messages = int(note.get("messages", 0))
                record.iterations = [int(n) for n in note.get("iterations", ())]
                record.calls = {int(k): int(v) for k, v in dict(note.get("calls", {})).items()}
                message[LEFT_OUT] = record
        conversation.messages = [conversation.messages[0], *messages[1:]]
        conversation.iteration = int(data.get("iteration", 0))
        return conversation

    # -- fitting ----------------------------------------------------------------

    def fit(self, budget_chars: int) -> Shortened:
        """Shorten it to ``budget_chars`` and say what was done. Oldest and least needed
        first: earlier messages shortened (:func:`context.fit`, the recent ones left
        whole), whole earlier iterations left out, the recent messages shortened too, the
        first message's imported code and file listing cut, the older tool calls of this
        iteration left out, and at last the first message's exam and baseline failure cut.
        Whatever is left out goes with its tool results and leaves a note in its place."""
        report = Shortened()
        before = self.size
        if before <= budget_chars:
            return report
        steps: tuple[Callable[[], None], ...] = (
            lambda: self._shorten(budget_chars, report, (KEEP_RECENT,)),
            lambda: self._leave_out_iterations(budget_chars, report),
            lambda: self._shorten(budget_chars, report, (1, 0)),
            lambda: self._cut_opening(budget_chars, report, ("modules", "files")),
            lambda: self._leave_out_calls(budget_chars, report),
            lambda: self._cut_opening(budget_chars, report, ("exam", "baseline")),
        )
        for step in steps:
            step()
            if self.size <= budget_chars:
                break
        report.saved = before - self.size
        return report

    def _shorten(self, budget: int, report: Shortened, keep: tuple[int, ...]) -> None:
        context.fit(self.messages, budget, report, keep=keep)

    def _leave_out_iterations(self, budget: int, report: Shortened) -> None:
        earlier = sorted(
            {
                m[ITERATION]
                for m in self.messages[2:]
                if not m.get(LEFT_OUT) and 0 < m.get(ITERATION, 0) < self.iteration
            }
        )
        for number in earlier:
            if self.size <= budget:
                return
            self._leave_out(_of_iteration(number), iteration=number)
            report.left_out_iterations.append(number)

    def _leave_out_calls(self, budget: int, report: Shortened) -> None:
        """The current iteration's older model turns (each with its tool results), oldest
        first; its last turn and the engine's messages stay."""
        while self.size > budget:
            turns = [
                i
                for i, m in enumerate(self.messages)
                if i >= 2 and m["role"] == "assistant" and m.get(ITERATION) == self.iteration
            ]
            if len(turns) < 2:
                return
            start = end = turns[0]
            end += 1
            while end < len(self.messages) and self.messages[end]["role"] == "tool":
                end += 1
            calls = max(1, len(self.messages[start].get("tool_calls") or ()))
            self._leave_out(_one_of(self.messages[start:end]), calls=calls)
            report.left_out_calls += calls

    def _leave_out(
        self, gone: Callable[[dict[str, Any]], bool], *, iteration: int = 0, calls: int = 0
    ) -> None:
        """Remove the messages ``gone`` picks; the one note that stands for everything left
        out (where the first of it was) says what."""
        kept: list[dict[str, Any]] = []
        note: dict[str, Any] | None = None
        removed = 0
        for index, message in enumerate(self.messages):
            if message.get(LEFT_OUT):
                note = message
            elif index >= 2 and gone(message):
                removed += 1
                if note is None:
                    note = {"role": "user", "content": "", LEFT_OUT: _LeftOut()}
                    kept.append(note)
                continue
            kept.append(message)
        if note is None or not removed:
            return
        record: _LeftOut = note[LEFT_OUT]
        record.messages += removed
        if iteration:
            record.iterations.append(iteration)
        if calls:
            record.calls[self.iteration] = record.calls.get(self.iteration, 0) + calls
        note["content"] = record.text()
        self.messages = kept

    def _cut_opening(self, budget: int, report: Shortened, kinds: tuple[str, ...]) -> None:
        for kind in kinds:
            if self.size <= budget:
                return
            changed = False
            sections = []
            for section_kind, text in self._sections:
                if section_kind == kind:
                    shorter = _CUTS[kind](text)
                    changed = changed or len(shorter) < len(text)
                    text = shorter
                sections.append((section_kind, text))
            if changed:
                self._sections = sections
                self.messages[1]["content"] = self._opening()
                report.first_message.append(_OPENING_PARTS[kind])


def _of_iteration(number: int) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get(ITERATION) == number


def _one_of(messages: list[dict[str, Any]]) -> Callable[[dict[str, Any]], bool]:
    ids = {id(m) for m in messages}
    return lambda message: id(message) in ids


class _LeftOut:
    """What the note in place of left-out messages stands for."""

    def __init__(self) -> None:
        self.messages = 0
        self.iterations: list[int] = []
        self.calls: dict[int, int] = {}  # iteration -> its earlier tool calls left out

    def __bool__(self) -> bool:
        return True

    def text(self) -> str:
        what = [context.iterations(self.iterations)] if self.iterations else []
        what += [
            f"{counted(count, 'earlier tool call')} of iteration {number}"
            for number, count in sorted(self.calls.items())
            if number not in self.iterations
        ]
        return LEFT_OUT_NOTE.format(
            what=" and ".join(what), messages=counted(self.messages, "message")
        )


def _cut_modules(text: str) -> str:
    paths = re.findall(r"^--- (\S+)", text, re.MULTILINE)
    if not paths:
        return ""
    return f"[The tests import {', '.join(paths)}: read them with read_file.]"


def _cut_files(text: str) -> str:
    lines = text.rstrip("\n").split("\n")
    files = [line for line in lines[1:] if line and not line.startswith("[...")]
    if len(files) <= FILES_KEPT:
        return text
    shown = "\n".join([lines[0], *files[:FILES_KEPT]])
    return shown + MORE_FILES.format(count=len(files) - FILES_KEPT) + "\n"


def _cut_head(keep: int) -> Callable[[str], str]:
    def cut(text: str) -> str:
        if len(text) <= keep + 80:
            return text
        return f"{text[:keep]}\n[... {len(text) - keep} characters cut to fit the context ...]"

    return cut


_CUTS: dict[str, Callable[[str], str]] = {
    "modules": _cut_modules,
    "files": _cut_files,
    "exam": _cut_head(EXAM_KEPT),
    "baseline": _cut_head(BASELINE_KEPT),
}
_OPENING_PARTS = {
    "modules": "imported code",
    "files": "file listing",
    "exam": "exam",
    "baseline": "baseline failure",
}
