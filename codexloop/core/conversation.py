"""The conversation with the model, in named parts instead of a bare list of messages.

It opens with the system prompt and the first message (never shortened), then grows by
model turns, tool results and the engine's user messages. Earlier iterations' long tool
results are compacted once an iteration is red; the whole is fitted to the context budget
before every request (:mod:`codexloop.core.context`).
"""

from __future__ import annotations

from typing import Any

from codexloop.core.context import conversation_size, fit, shorten_tool_result
from codexloop.core.model import Turn, tool_message
from codexloop.core.prompts import SYSTEM

OLD_TOOL_RESULT_CHARS = 600  # what is kept of a tool result of an earlier iteration


class Conversation:
    def __init__(self, first_message: str) -> None:
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": first_message},
        ]
        self._iteration_start = len(self.messages)

    def say(self, text: str) -> None:
        """A user message from the engine or the developer."""
        self.messages.append({"role": "user", "content": text})

    def answer(self, turn: Turn) -> None:
        """The model's turn (its text, reasoning items and tool calls)."""
        self.messages.append(turn.message())

    def tool_result(self, call_id: str, content: str) -> None:
        self.messages.append(tool_message(call_id, content))

    def start_iteration(self) -> None:
        """Mark where this iteration's messages begin (see :meth:`compact`)."""
        self._iteration_start = len(self.messages)

    def compact(self) -> None:
        """Shorten long tool results from before this iteration: the conversation stays small."""
        for message in self.messages[: self._iteration_start]:
            shorten_tool_result(message, OLD_TOOL_RESULT_CHARS, why="")

    def fit(self, budget_chars: int) -> int:
        """Shorten it to ``budget_chars``; the characters saved."""
        return fit(self.messages, budget_chars)

    @property
    def size(self) -> int:
        return conversation_size(self.messages)
