"""Keep the conversation inside the model's context window.

The loop is stateless towards the endpoint: every request carries the whole
conversation, and a long session (many iterations, big files read, long command
output) outgrows any context window, and costs more with every turn. Before each
request the conversation is fitted to a budget of characters (the token budget times the
characters per token the endpoint's own usage reports measured, see
:class:`codexloop.core.turns.Turns`) by shortening what the model needs least, oldest first:

0. the encrypted reasoning of earlier turns (Responses API), which the model does not need
   back once a turn is over;
1. tool results (file contents, command output) to a short head;
2. long string arguments of earlier tool calls (a ``write_file`` of a whole file);
3. tool results to a line;
4. long answers of the model's earlier turns;
5. the failure digests of earlier iterations.

These passes (:func:`fit`) shorten and never remove, so every tool call keeps its result
(both wire protocols insist on that). When they are not enough, the conversation
(:meth:`codexloop.core.conversation.Conversation.fit`) leaves out whole earlier iterations,
then the older tool calls of the current one, and shortens its first message; every step
is counted in a :class:`Shortened` report, which is what the developer's notice says.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from codexloop.core.model import PRIVATE_PREFIX
from codexloop.core.words import counted

CHARS_PER_TOKEN = 4  # until the endpoint's usage reports measure it (turns.Turns)
DEFAULT_CONTEXT_TOKENS = 100_000
MIN_CONTEXT_TOKENS = 2_000
KEEP_RECENT = 6  # messages at the end left whole while older ones can still give way

_ITEMS = PRIVATE_PREFIX + "items"


def message_size(message: dict[str, Any]) -> int:
    """Characters a message puts in front of the model (roughly)."""
    size = len(message.get("content") or "")
    for call in message.get("tool_calls") or ():
        size += len(call["function"]["arguments"]) + len(call["function"]["name"])
    items = message.get(_ITEMS)
    if items:
        size += sum(len(json.dumps(item)) for item in items if item.get("type") != "function_call")
    return size


def conversation_size(messages: list[dict[str, Any]]) -> int:
    return sum(message_size(m) for m in messages)


def _elided(text: str, keep: int, what: str, why: str = " to fit the context") -> str:
    if len(text) <= keep + 80:
        return text  # the note would take about as much room as it saves
    return f"{text[:keep]}\n[... {len(text) - keep} characters of {what} elided{why} ...]"


def _drop_reasoning(message: dict[str, Any]) -> None:
    """Earlier turns' encrypted reasoning (Responses API): the model reasons afresh each turn."""
    items = message.get(_ITEMS)
    if message.get("role") == "assistant" and items:
        message[_ITEMS] = [item for item in items if item.get("type") != "reasoning"]


def shorten_tool_result(
    message: dict[str, Any], keep: int, why: str = " to fit the context"
) -> None:
    """A tool result cut to its first ``keep`` characters and a note of what went."""
    if message.get("role") == "tool" and isinstance(message.get("content"), str):
        message["content"] = _elided(message["content"], keep, "an earlier result", why)


def _shorten_result(keep: int) -> Callable[[dict[str, Any]], None]:
    return functools.partial(shorten_tool_result, keep=keep)


def _shorten_arguments(message: dict[str, Any]) -> None:
    if message.get("role") != "assistant":
        return
    shortened: dict[str, str] = {}
    for call in message.get("tool_calls") or ():
        function = call["function"]
        if len(function["arguments"]) > 400:
            function["arguments"] = _shrink_json(function["arguments"])
            shortened[call["id"]] = function["arguments"]
    for item in message.get(_ITEMS) or ():
        if item.get("type") == "function_call" and item.get("call_id") in shortened:
            item["arguments"] = shortened[item["call_id"]]


def _shrink_json(arguments: str) -> str:
    """Long string values of tool-call arguments shortened; the JSON stays valid."""
    try:
        data = json.loads(arguments)
    except ValueError:
        return json.dumps({"elided": _elided(arguments, 200, "arguments")})
    if not isinstance(data, dict):
        return arguments
    return json.dumps(
        {
            key: _elided(value, 200, "this argument") if isinstance(value, str) else value
            for key, value in data.items()
        }
    )


def _shorten_digest(message: dict[str, Any]) -> None:
    if message.get("role") == "user" and isinstance(message.get("content"), str):
        message["content"] = _elided(message["content"], 1_500, "an earlier message")


def _shorten_answer(message: dict[str, Any]) -> None:
    if message.get("role") == "assistant" and isinstance(message.get("content"), str):
        message["content"] = _elided(message["content"], 1_000, "an earlier answer")


@dataclass
class Shortened:
    """What fitting did to the conversation, for the notice that says it."""

    saved: int = 0  # characters
    shortened: dict[str, set[int]] = field(default_factory=dict)  # what -> message ids
    left_out_iterations: list[int] = field(default_factory=list)
    left_out_calls: int = 0  # earlier tool calls of the current iteration
    first_message: list[str] = field(default_factory=list)  # parts of it cut

    def __bool__(self) -> bool:
        return self.saved > 0

    def note(self, what: str, message: dict[str, Any]) -> None:
        self.shortened.setdefault(what, set()).add(id(message))

    def kinds(self) -> set[str]:
        """The kinds of action taken (a notice is worth giving when one is new)."""
        found = {what for what, ids in self.shortened.items() if ids}
        if self.left_out_iterations:
            found.add("iterations")
        if self.left_out_calls:
            found.add("calls")
        found.update(f"first message {part}" for part in self.first_message)
        return found

    def describe(self) -> str:
        """What was done, in words: only what was actually done."""
        done: list[str] = []
        if self.left_out_iterations:
            done.append(f"left out {iterations(self.left_out_iterations)}")
        if self.left_out_calls:
            done.append(
                f"left out {counted(self.left_out_calls, 'earlier tool call')} of this iteration"
            )
        nouns = {what: len(ids) for what, ids in self.shortened.items() if ids}
        shortened = [
            _NOUNS[what](count) for what, count in nouns.items() if what in _NOUNS and count
        ]
        if shortened:
            done.append("shortened " + _joined(shortened))
        if self.first_message:
            done.append("cut the first message's " + _joined(self.first_message))
        return "; ".join(done) or "nothing could be shortened"


def iterations(numbers: Iterable[int]) -> str:
    """``iteration 1``, ``iterations 1-3``, ``iterations 1, 3``."""
    ordered = sorted(set(numbers))
    if len(ordered) == 1:
        return f"iteration {ordered[0]}"
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"iterations {ordered[0]}-{ordered[-1]}"
    return "iterations " + ", ".join(map(str, ordered))


def _joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


_NOUNS: dict[str, Callable[[int], str]] = {
    "reasoning": lambda n: f"the reasoning of {counted(n, 'earlier turn')}",
    "result": lambda n: counted(n, "tool result"),
    "arguments": lambda n: f"the arguments of {counted(n, 'tool call')}",
    "answer": lambda n: counted(n, "earlier answer"),
    "message": lambda n: counted(n, "earlier message"),
}

_PASSES: tuple[tuple[str, Callable[[dict[str, Any]], None]], ...] = (
    ("reasoning", _drop_reasoning),
    ("result", _shorten_result(600)),
    ("arguments", _shorten_arguments),
    ("result", _shorten_result(120)),
    ("answer", _shorten_answer),
    ("message", _shorten_digest),
)


def fit(
    messages: list[dict[str, Any]],
    budget_chars: int,
    report: Shortened | None = None,
    *,
    keep: tuple[int, ...] = (KEEP_RECENT, 1, 0),
) -> int:
    """Shorten ``messages`` in place until they fit ``budget_chars``; returns characters saved
    (and notes what was shortened in ``report``).

    The first two messages (system, the first user message) are never shortened here; the
    last ``KEEP_RECENT`` only when the older ones are not enough, the very last one only when
    a single message is larger than the whole budget (it could not be sent anyway).
    ``keep``: how many recent messages each round leaves alone.
    """
    before = total = conversation_size(messages)
    if total <= budget_chars:
        return 0
    for keep_recent in keep:
        end = max(2, len(messages) - keep_recent)
        for what, shorten in _PASSES:
            for message in messages[2:end]:
                old = message_size(message)
                shorten(message)
                new = message_size(message)
                if new < old:
                    total -= old - new
                    if report is not None:
                        report.note(what, message)
                if total <= budget_chars:
                    return before - total
    return before - total
