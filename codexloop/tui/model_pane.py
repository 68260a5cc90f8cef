"""The model stream: streamed text, compact tool calls, iteration separators, your messages."""

from __future__ import annotations

import json
from collections.abc import Iterable

from rich.text import Text

from codexloop.core import events as ev
from codexloop.tui import narration
from codexloop.tui.linebuffer import LineBuffer
from codexloop.tui.narration import Line
from codexloop.tui.pump import EventPump
from codexloop.tui.state import SessionState

REASONING_STYLE = "dim italic"
SUMMARY_CHARS = 160


def call_subject(name: str, arguments: str) -> str:
    """The one thing worth seeing of a tool call's arguments: a path, a command, a pattern."""
    try:
        data = json.loads(arguments)
    except (json.JSONDecodeError, ValueError):
        return _one_line(arguments, 60) if arguments.strip() else ""
    if not isinstance(data, dict):
        return _one_line(arguments, 60)
    if name == "run_command" and isinstance(data.get("command"), str):
        return _one_line(data["command"], 80)
    if name == "grep" and isinstance(data.get("pattern"), str):
        where = data.get("path") if isinstance(data.get("path"), str) else ""
        return _one_line(f"{data['pattern']!r} {where}".strip(), 80)
    path = data.get("path")
    if isinstance(path, str):
        return _one_line(path, 80)
    if name == "list_files":
        return "."
    return _one_line(json.dumps(data), 60)


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tool_call_line(call: ev.ToolCall) -> Text:
    line = Text()
    line.append("  ▸ ", style="yellow")
    line.append(call.name, style="bold")
    subject = call_subject(call.name, call.arguments)
    if subject:
        line.append(" " + subject, style="cyan")
    return line


def tool_result_line(call: ev.ToolCall | None, result: ev.ToolResult) -> Text:
    if result.refused:
        mark, style = "  ⊘ ", "bold magenta"
    elif result.ok:
        mark, style = "  ✓ ", "green"
    else:
        mark, style = "  ✗ ", "red"
    line = Text()
    line.append(mark, style=style)
    line.append(result.name, style="bold")
    if call is not None:
        subject = call_subject(call.name, call.arguments)
        if subject and subject.rstrip("…") not in result.summary:
            line.append(" " + subject, style="cyan")
    if result.summary:
        line.append(" — ", style="dim")
        summary = _one_line(result.summary, SUMMARY_CHARS)
        refused = result.refused and not summary.startswith("refused")
        line.append(("refused: " if refused else "") + summary, style=None if result.ok else style)
    return line


class ModelPane(LineBuffer):
    """What the model says and does, one block per model turn, and the session's story between
    (:mod:`codexloop.tui.narration`)."""

    def __init__(self, *, id: str | None = None, max_lines: int = 5_000) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=True)
        self._calls: dict[str, ev.ToolCall] = {}
        self._in_text = False

    def connect(self, pump: EventPump, state: SessionState) -> None:
        """Show the model's stream and the narrated events from ``pump``."""
        pump.route(ev.ModelTurnStarted, lambda _event: self.turn_started())
        pump.route(ev.ModelText, lambda event: self.model_text(event.text))
        pump.route(ev.ModelReasoning, lambda event: self.reasoning(event.text))
        pump.route(ev.ToolCall, self.tool_call)
        pump.route(ev.ToolResult, self.tool_result)
        pump.route(ev.UserMessage, lambda event: self.user_message(event.text))
        for kind in narration.NARRATED:
            pump.route(kind, lambda event: self.narrate(narration.narrate(event, state)))

    def reset(self) -> None:
        """Empty, for another attempt's story (a race's lane came into focus)."""
        self.clear()
        self._calls.clear()
        self._in_text = False

    def narrate(self, lines: Iterable[Line]) -> None:
        for line in lines:
            if line.kind == "separator":
                self.separator(line.text)
            elif line.kind == "note":
                text, style = line.spans[0]
                self.note(text, style)
            elif len(line.spans) == 1:
                text, style = line.spans[0]
                self.write_line(Text(text, style=style))
            else:
                styled = Text()
                for text, style in line.spans:
                    styled.append(text, style=style)
                self.write_line(styled)

    def separator(self, label: str) -> None:
        self._in_text = False
        self.write_line("")
        self.write_line(Text(f"── {label} ──", style="bold blue"))

    def turn_started(self) -> None:
        if self._in_text:
            self.write_line("")
        self._in_text = False

    def model_text(self, text: str) -> None:
        self._in_text = True
        self.write(text)

    def reasoning(self, text: str) -> None:
        self._in_text = True
        self.write(text, REASONING_STYLE)

    def tool_call(self, call: ev.ToolCall) -> None:
        self._in_text = False
        key = call.call_id or f"{call.name}:{call.arguments}"
        self._calls[key] = call
        self.write_line(tool_call_line(call), tag=key)

    def tool_result(self, result: ev.ToolResult) -> None:
        key = result.call_id or next(
            (k for k, c in reversed(self._calls.items()) if c.name == result.name), ""
        )
        call = self._calls.pop(key, None)
        self.replace_line(key, tool_result_line(call, result))

    def user_message(self, text: str) -> None:
        """The developer's words (a message, the review's feedback), each line of them."""
        self._in_text = False
        first, *rest = text.split("\n")
        line = Text()
        line.append(" you ", style="bold reverse magenta")
        line.append(" " + first, style="bold magenta")
        self.write_line(line)
        for more in rest:
            self.write_line(Text(" " * 6 + more, style="magenta"))

    def note(self, text: str, style: str = "dim") -> None:
        self._in_text = False
        self.write_line(Text(text, style=style))
