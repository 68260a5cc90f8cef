"""The scripted server speaks the wire format the real `openai` client expects."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from scripted_openai import Call, Drop, Hangup, HTTPError, Reply, ScriptedOpenAI

pytestmark = pytest.mark.anyio

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def client(scripted_openai: ScriptedOpenAI) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=scripted_openai.base_url, api_key="x", max_retries=0) as c:
        yield c


async def _chunks(client: AsyncOpenAI, **extra: Any) -> list[Any]:
    stream = await client.chat.completions.create(
        model="scripted-model", messages=MESSAGES, stream=True, **extra
    )
    return [chunk async for chunk in stream]


async def test_text_arrives_in_several_deltas(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    scripted_openai.add(Reply(text=text, chunk_size=5))
    chunks = await _chunks(client)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) == 9
    assert "".join(pieces) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is None
    assert scripted_openai.requests[0]["stream"] is True


async def test_tool_call_arguments_split_and_reassemble(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    args = {"path": "src/app.py", "content": "print('hi')\n"}
    scripted_openai.add(Reply(tool_calls=[Call("write_file", args)], chunk_size=6))
    chunks = await _chunks(client)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    header, *rest = calls
    assert header.id == "call_1"
    assert header.type == "function"
    assert header.function is not None and header.function.name == "write_file"
    assert header.function.arguments == ""
    arg_pieces = [tc.function.arguments for tc in rest if tc.function and tc.function.arguments]
    assert len(arg_pieces) >= 2
    assert all(tc.id is None and tc.function and tc.function.name is None for tc in rest)
    assert json.loads("".join(arg_pieces)) == args
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_two_tool_calls_keep_their_indexes(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(
        Reply(
            text="Let me look.",
            tool_calls=[
                Call("read_file", {"path": "a.py"}),
                Call("run", '{"cmd": "pytest', id="mine"),  # malformed JSON sent verbatim
            ],
        )
    )
    chunks = await _chunks(client)
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    args: dict[int, str] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            if tc.id:
                ids[tc.index] = tc.id
            if tc.function and tc.function.name:
                names[tc.index] = tc.function.name
            if tc.function and tc.function.arguments:
                args[tc.index] = args.get(tc.index, "") + tc.function.arguments
    assert names == {0: "read_file", 1: "run"}
    assert ids == {0: "call_1", 1: "mine"}
    assert json.loads(args[0]) == {"path": "a.py"}
    assert args[1] == '{"cmd": "pytest'


async def test_usage_chunk_with_include_usage(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Reply(text="ok", usage=(321, 12)))
    chunks = await _chunks(client, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (321, 12)
    assert last.usage.total_tokens == 333


async def test_reasoning_content_precedes_text(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Reply(text="answer", reasoning="thinking hard"))
    chunks = await _chunks(client)
    deltas = [c.choices[0].delta.model_dump() for c in chunks if c.choices]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    assert reasoning == "thinking hard"
    first_text = next(i for i, d in enumerate(deltas) if d.get("content"))
    last_reasoning = max(i for i, d in enumerate(deltas) if d.get("reasoning_content"))
    assert last_reasoning < first_text


async def test_callable_turn_sees_the_request(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    seen: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> Reply:
        seen.append(body)
        return Reply(text=f"you said: {body['messages'][-1]['content']}")

    scripted_openai.add(answer)
    chunks = await _chunks(client)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "you said: hello there"
    assert seen[0]["messages"] == MESSAGES
    assert scripted_openai.requests == seen


async def test_non_streaming_completion(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Reply(text="whole", tool_calls=[Call("f", {"a": 1})]))
    done = await client.chat.completions.create(model="scripted-model", messages=MESSAGES)
    message = done.choices[0].message
    assert message.content == "whole"
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.type == "function"
    assert call.id == "call_1"
    assert (call.function.name, json.loads(call.function.arguments)) == ("f", {"a": 1})
    assert done.choices[0].finish_reason == "tool_calls"
    assert done.usage is not None and done.usage.total_tokens == 120


async def test_http_error_surfaces_with_its_status(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(HTTPError(429, "slow down", code="rate_limit_exceeded"))
    with pytest.raises(openai.RateLimitError) as caught:
        await _chunks(client)
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert "slow down" in str(caught.value)


async def test_drop_breaks_the_stream(scripted_openai: ScriptedOpenAI, client: AsyncOpenAI) -> None:
    scripted_openai.add(Drop(Reply(text="a long answer that never finishes", chunk_size=3), 2))
    stream = await client.chat.completions.create(
        model="scripted-model", messages=MESSAGES, stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["a l", "ong"]


async def test_hangup_ends_the_stream_without_finish_or_done(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    """No error on the client's side: the stream just ends, with no finish reason."""
    scripted_openai.add(Hangup(Reply(text="a long answer that never finishes", chunk_size=3), 2))
    chunks = await _chunks(client)
    assert [c.choices[0].delta.content for c in chunks] == ["a l", "ong"]
    assert all(c.choices[0].finish_reason is None for c in chunks)


async def test_exhausted_script_answers_500(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Reply(text="only one"))
    await _chunks(client)
    with pytest.raises(openai.InternalServerError) as caught:
        await _chunks(client)
    assert caught.value.status_code == 500
    assert "scripted server: no turn left for request #2" in str(caught.value)
    assert len(scripted_openai.requests) == 2


async def test_models_list(scripted_openai: ScriptedOpenAI, client: AsyncOpenAI) -> None:
    scripted_openai.models = ["model-a", "model-b"]
    page = await client.models.list()
    assert [m.id for m in page.data] == ["model-a", "model-b"]


async def test_unknown_path_is_404(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="scripted-model", input="x")


async def test_hold_withholds_the_rest_until_set(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    gate = threading.Event()
    scripted_openai.add(Reply(text="first-rest of it", chunk_size=6, hold=gate))
    stream = await client.chat.completions.create(
        model="scripted-model", messages=MESSAGES, stream=True
    )
    first = await stream.__anext__()
    assert first.choices[0].delta.content == "first-"
    following = asyncio.ensure_future(stream.__anext__())
    # Can only pass or fail, never flake: while `gate` is unset the server is blocked.
    done, _ = await asyncio.wait({following}, timeout=0.3)
    assert not done
    gate.set()
    rest = [(await following).choices[0].delta.content]
    rest += [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(p or "" for p in rest) == "rest of it"


async def test_wait_for_requests_and_close() -> None:
    server = ScriptedOpenAI()
    try:
        assert not server.wait_for_requests(1, timeout=0.01)
        server.add(Reply(text="x"))
        async with AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as other:
            await other.chat.completions.create(model="m", messages=MESSAGES)
        assert server.wait_for_requests(1, timeout=1)
    finally:
        server.close()
        server.close()
