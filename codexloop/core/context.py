"""Keep the conversation inside the model's context window.

The loop is stateless towards the endpoint: every request carries the whole
conversation, and a long session (many iterations, big files read, long command
output) outgrows any context window, and costs more with every turn. Before each
request the conversation is fitted to a budget of characters (about four per token)
by shortening what the model needs least, oldest first:

0. the encrypted reasoning of earlier turns (Responses API), which the model does not need
   back once a turn is over;
1. tool results (file contents, command output) to a short head;
2. long string arguments of earlier tool calls (a ``write_file`` of a whole file);
3. tool results to a line;
4. long answers of the model's earlier turns;
5. the failure digests of earlier iterations.

Nothing is ever removed, so every tool call keeps its result (both wire protocols
insist on that). The system message, the first user message (task, exam and the
baseline failure) and the most recent messages are kept whole as long as possible.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from codexloop.core.model import PRIVATE_PREFIX

CHARS_PER_TOKEN = 4
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


_PASSES: tuple[Callable[[dict[str, Any]], None], ...] = (
    _drop_reasoning,
    _shorten_result(600),
    _shorten_arguments,
    _shorten_result(120),
    _shorten_answer,
    _shorten_digest,
)


def fit(messages: list[dict[str, Any]], budget_chars: int) -> int:
    """Shorten ``messages`` in place until they fit ``budget_chars``; returns characters saved.

    The first two messages (system, the first user message) are never shortened; the last
    ``KEEP_RECENT`` only when the older ones are not enough, the very last one only when a
    single message is larger than the whole budget (it could not be sent anyway).
    """
    before = total = conversation_size(messages)
    if total <= budget_chars:
        return 0
    for keep_recent in (KEEP_RECENT, 1, 0):
        end = max(2, len(messages) - keep_recent)
        for shorten in _PASSES:
            for message in messages[2:end]:
                old = message_size(message)
                shorten(message)
                total -= old - message_size(message)
                if total <= budget_chars:
                    return before - total
    return before - total
