"""Choosing the wire protocol, and carrying one conversation across both."""

from __future__ import annotations

from typing import Any

import pytest
from loophelpers import KATA, edit, make_config, of_type, run_loop
from scripted_openai import Hangup, Reply, ScriptedOpenAI

from codexloop.core import events as ev
from codexloop.core.model import (
    PRIVATE_PREFIX,
    ChatModel,
    ResponsesModel,
    ToolCallRequest,
    Turn,
    _public,
    choose_protocol,
    is_reasoning_model,
    make_client,
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


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_stream_that_ends_without_finishing_is_retried_not_taken(
    scripted_openai: ScriptedOpenAI, api: str
) -> None:
    """A body that ends cleanly but without a finish reason / [DONE] (chat) or without
    ``response.completed`` (responses) is a dropped stream: retried after a backoff, the
    partial text discarded, and the next answer is the turn."""
    scripted_openai.add(
        # After some text: 3 deltas on chat; created, in_progress, two added and 2 deltas on responses
        Hangup(
            Reply(text="I will fix the addition operator now", chunk_size=4),
            after_chunks=3 if api == "chat" else 6,
        ),
        Reply(text="the whole answer"),
    )
    client = make_client(scripted_openai.base_url, "k")
    kind = ChatModel if api == "chat" else ResponsesModel
    model = kind(client, "scripted-model", backoff=(0.01,))
    shown: list[str] = []
    retries: list[tuple[int, str, float]] = []
    discarded: list[bool] = []

    async def on_text(chunk: str) -> None:
        shown.append(chunk)

    async def on_retry(attempt: int, reason: str, delay: float) -> None:
        retries.append((attempt, reason, delay))

    async def on_discard() -> None:
        discarded.append(True)

    try:
        turn = await model.turn(
            [{"role": "user", "content": "fix it"}],
            TOOL_SCHEMAS,
            on_text=on_text,
            on_retry=on_retry,
            on_discard=on_discard,
        )
    finally:
        await client.close()
    assert turn.text == "the whole answer"
    assert retries == [(1, "the stream ended before the answer was finished", 0.01)]
    assert discarded == [True]
    assert len(scripted_openai.requests) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_hung_up_stream_is_a_visible_model_retry_in_the_loop(
    make_repo, scripted_openai: ScriptedOpenAI, api: str
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Hangup(Reply(tool_calls=[edit("calc.py", "a - b", "a * b")], chunk_size=4), 3),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="fixed"),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, api=api))
    assert result.status == "passed" and result.iterations == 1
    [retry] = of_type(events, ev.ModelRetry)
    assert retry.retry == 1 and "ended before the answer was finished" in retry.reason
    # The cut call was never run: the only edit is the whole one.
    assert [c.arguments for c in of_type(events, ev.ToolCall)] == [
        '{"path": "calc.py", "old_text": "a - b", "new_text": "a + b"}'
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_tool_choice_auto_is_sent_with_the_tools(
    scripted_openai: ScriptedOpenAI, api: str
) -> None:
    """Said, not implied: some servers drop the tools when tool_choice is missing
    (llama-cpp-python's chatml-function-calling); a request without tools says neither."""
    scripted_openai.add(Reply(text="one"), Reply(text="two"))
    client = make_client(scripted_openai.base_url, "k")
    kind = ChatModel if api == "chat" else ResponsesModel
    model = kind(client, "scripted-model", backoff=(0.0,))

    async def on_text(chunk: str) -> None:
        pass

    try:
        await model.turn([{"role": "user", "content": "fix it"}], TOOL_SCHEMAS, on_text=on_text)
        await model.turn([{"role": "user", "content": "fix it"}], [], on_text=on_text)
    finally:
        await client.close()
    with_tools, without = scripted_openai.requests
    assert with_tools["tool_choice"] == "auto" and len(with_tools["tools"]) == len(TOOL_SCHEMAS)
    assert "tool_choice" not in without and "tools" not in without
