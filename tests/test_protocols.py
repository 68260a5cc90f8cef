"""Choosing the wire protocol, and carrying one conversation across both."""

from __future__ import annotations

from typing import Any

import pytest

from codexloop.core.model import (
    PRIVATE_PREFIX,
    ToolCallRequest,
    Turn,
    _public,
    choose_protocol,
    is_reasoning_model,
    replayable,
    responses_tool,
    to_responses_input,
)
from codexloop.core.tools import TOOL_SCHEMAS


@pytest.mark.parametrize(
    ("api", "base_url", "expected"),
    [
        ("auto", None, "responses"),
        ("auto", "https://api.openai.com/v1", "responses"),
        ("auto", "http://localhost:11434/v1", "chat"),
        ("auto", "https://openrouter.ai/api/v1", "chat"),
        ("auto", "https://api.openai.com.evil.example/v1", "chat"),
        ("chat", None, "chat"),
        ("responses", "http://localhost:8000/v1", "responses"),
    ],
)
def test_auto_uses_responses_on_openai_and_chat_elsewhere(
    api: str, base_url: str | None, expected: str
) -> None:
    assert choose_protocol(api, base_url) == expected


def test_reasoning_models_are_recognised() -> None:
    assert is_reasoning_model("gpt-5.1-codex") and is_reasoning_model("o4-mini")
    assert is_reasoning_model("openai/gpt-5-codex-mini")
    assert not is_reasoning_model("qwen2.5-coder") and not is_reasoning_model("gpt-4.1")


def test_tools_take_the_responses_shape() -> None:
    converted = [responses_tool(t) for t in TOOL_SCHEMAS]
    assert [t["name"] for t in converted] == [t["function"]["name"] for t in TOOL_SCHEMAS]
    assert all(
        t["type"] == "function" and "parameters" in t and "function" not in t for t in converted
    )


def test_a_chat_conversation_becomes_instructions_and_input_items() -> None:
    turn = Turn("reading", (ToolCallRequest("call_1", "read_file", '{"path": "a.py"}'),), 10, 5)
    messages = [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "fix it"},
        turn.message(),
        {"role": "tool", "tool_call_id": "call_1", "content": "x = 1"},
    ]
    instructions, items = to_responses_input(messages)
    assert instructions == "rules"
    assert items == [
        {"role": "user", "content": "fix it"},
        {"role": "assistant", "content": "reading"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "read_file",
            "arguments": '{"path": "a.py"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "x = 1"},
    ]


def test_responses_items_replay_without_server_ids_or_bare_reasoning() -> None:
    raw: list[dict[str, Any]] = [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "enc"},
        {"type": "reasoning", "id": "rs_2", "summary": []},
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hi"}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_9",
            "name": "grep",
            "arguments": "{}",
        },
    ]
    kept = replayable(raw)
    assert all("id" not in item for item in kept)
    assert [item["type"] for item in kept] == ["reasoning", "message", "function_call"]
    assert kept[0] == {"type": "reasoning", "summary": [], "encrypted_content": "enc"}
    message = Turn("hi", (), 1, 1, items=tuple(kept)).message()
    _, items = to_responses_input([message])
    assert items == kept  # replayed exactly as they came
    assert PRIVATE_PREFIX + "items" not in _public(message)  # never sent to a chat server
