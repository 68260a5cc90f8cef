"""The scripted server speaks the Responses API wire format the real `openai` client expects."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from scripted_openai import (
    Call,
    Drop,
    Failed,
    Hangup,
    HTTPError,
    Incomplete,
    Reply,
    ScriptedOpenAI,
)

pytestmark = pytest.mark.anyio

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
        "strict": False,
    }
]


@pytest.fixture
async def client(scripted_openai: ScriptedOpenAI) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=scripted_openai.base_url, api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture
def make_server() -> Iterator[Callable[..., ScriptedOpenAI]]:
    servers: list[ScriptedOpenAI] = []

    def make(**options: Any) -> ScriptedOpenAI:
        servers.append(ScriptedOpenAI(**options))
        return servers[-1]

    try:
        yield make
    finally:
        for server in servers:
            server.close()


async def _events(client: AsyncOpenAI, **extra: Any) -> list[Any]:
    options: dict[str, Any] = {"model": "scripted-model", "input": "hello there", **extra}
    stream = await client.responses.create(stream=True, **options)
    return [event async for event in stream]


def _types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


async def test_text_deltas_reassemble(scripted_openai: ScriptedOpenAI, client: AsyncOpenAI) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    scripted_openai.add(Reply(text=text, chunk_size=5))
    events = await _events(client)
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 9
    assert "".join(d.delta for d in deltas) == text
    assert all((d.item_id, d.output_index, d.content_index) == ("msg_1", 0, 0) for d in deltas)
    assert all(d.logprobs == [] for d in deltas)
    assert _types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 9,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created = events[0].response
    assert (created.status, created.model, created.output) == ("in_progress", "scripted-model", [])
    assert created.id == events[-1].response.id
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == text
    final = events[-1].response
    assert final.status == "completed"
    assert final.output_text == text
    message = final.output[0]
    assert message.type == "message"
    assert (message.id, message.role, message.status) == ("msg_1", "assistant", "completed")
    assert scripted_openai.requests[0]["stream"] is True


async def test_function_call_arguments_split_and_reassemble(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    args = {"path": "src/app.py", "content": "print('hi')\n"}
    scripted_openai.add(Reply(tool_calls=[Call("write_file", args)], chunk_size=6))
    events = await _events(client)
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call"
    assert (added.item.id, added.item.call_id, added.item.name) == ("fc_1", "call_1", "write_file")
    assert (added.item.arguments, added.item.status) == ("", "in_progress")
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) >= 2
    assert all((d.item_id, d.output_index) == ("fc_1", 0) for d in deltas)
    assert json.loads("".join(d.delta for d in deltas)) == args
    arguments_done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(arguments_done.arguments) == args
    item_done = next(e for e in events if e.type == "response.output_item.done")
    item = item_done.item
    assert (item.type, item.call_id, item.name, item.status) == (
        "function_call",
        "call_1",
        "write_file",
        "completed",
    )
    assert json.loads(item.arguments) == args
    assert events[-1].type == "response.completed"
    assert events[-1].response.output == [item]


async def test_two_calls_keep_their_output_indexes(
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
    events = await _events(client)
    added = {e.output_index: e.item for e in events if e.type == "response.output_item.added"}
    assert [added[i].type for i in range(3)] == ["message", "function_call", "function_call"]
    args: dict[int, str] = {}
    for e in events:
        if e.type == "response.function_call_arguments.delta":
            args[e.output_index] = args.get(e.output_index, "") + e.delta
    assert json.loads(args[1]) == {"path": "a.py"}
    assert args[2] == '{"cmd": "pytest'
    done = {e.output_index: e.item for e in events if e.type == "response.output_item.done"}
    assert (done[1].call_id, done[1].name, done[1].id) == ("call_1", "read_file", "fc_1")
    assert (done[2].call_id, done[2].name, done[2].id) == ("mine", "run", "fc_2")
    assert [item.type for item in events[-1].response.output] == [
        "message",
        "function_call",
        "function_call",
    ]


async def test_reasoning_summary_precedes_text_with_encrypted_content(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Reply(text="answer", reasoning="thinking hard about it", chunk_size=4))
    events = await _events(
        client,
        include=["reasoning.encrypted_content"],
        reasoning={"effort": "low", "summary": "auto"},
    )
    types = _types(events)
    summary = [e for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert len(summary) >= 2
    assert "".join(e.delta for e in summary) == "thinking hard about it"
    assert all((e.item_id, e.output_index, e.summary_index) == ("rs_1", 0, 0) for e in summary)
    last_summary = max(
        i for i, t in enumerate(types) if t == "response.reasoning_summary_text.delta"
    )
    assert last_summary < types.index("response.output_text.delta")
    assert types[2:4] == ["response.output_item.added", "response.reasoning_summary_part.added"]
    text_done = next(e for e in events if e.type == "response.reasoning_summary_text.done")
    assert text_done.text == "thinking hard about it"
    part_done = next(e for e in events if e.type == "response.reasoning_summary_part.done")
    assert (part_done.part.type, part_done.part.text) == ("summary_text", "thinking hard about it")
    reasoning = next(
        e.item
        for e in events
        if e.type == "response.output_item.done" and e.item.type == "reasoning"
    )
    assert reasoning.id == "rs_1"
    assert reasoning.encrypted_content == "enc-1"
    assert [(s.type, s.text) for s in reasoning.summary] == [
        ("summary_text", "thinking hard about it")
    ]
    final = events[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "answer"


async def test_no_encrypted_content_unless_included(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Reply(reasoning="hmm"))
    events = await _events(client)
    reasoning = events[-1].response.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.encrypted_content is None


async def test_usage_in_completed_event(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Reply(text="ok", reasoning="x" * 41, usage=(321, 12)))
    events = await _events(client)
    completed = events[-1]
    assert completed.type == "response.completed"
    usage = completed.response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (321, 12, 333)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 10
    assert events[0].response.usage is None


async def test_incomplete_ends_with_response_incomplete(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Incomplete(Reply(text="cut short")))
    events = await _events(client)
    assert "response.completed" not in _types(events)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "cut short"
    assert last.response.usage is not None


async def test_incomplete_on_chat_finishes_with_length(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Incomplete(Reply(text="cut")), Incomplete(Reply(text="cut")))
    stream = await client.chat.completions.create(
        model="scripted-model", messages=MESSAGES, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason == "length"
    done = await client.chat.completions.create(model="scripted-model", messages=MESSAGES)
    assert done.choices[0].finish_reason == "length"
    assert done.choices[0].message.content == "cut"


async def test_failed_ends_with_response_failed(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Failed("the model broke", code="server_error"))
    events = await _events(client)
    assert _types(events) == ["response.created", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("server_error", "the model broke")
    assert failed.id == events[0].response.id


async def test_failed_on_chat_is_http_500(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Failed("the model broke"))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="scripted-model", messages=MESSAGES)
    assert caught.value.status_code == 500
    assert "the model broke" in str(caught.value)


async def test_http_error_raises_with_its_status(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(HTTPError(429, "slow down", code="rate_limit_exceeded"))
    with pytest.raises(openai.RateLimitError) as caught:
        await _events(client)
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert "slow down" in str(caught.value)


async def test_drop_breaks_the_stream(scripted_openai: ScriptedOpenAI, client: AsyncOpenAI) -> None:
    scripted_openai.add(Drop(Reply(text="a long answer that never finishes", chunk_size=3), 5))
    stream = await client.responses.create(model="scripted-model", input="hi", stream=True)
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        async for event in stream:
            received.append(event)
    assert _types(received) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert received[-1].delta == "a l"


async def test_hangup_ends_the_stream_before_it_completes(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    """No error on the client's side: the events just stop, with no ``response.completed``."""
    scripted_openai.add(Hangup(Reply(text="a long answer that never finishes", chunk_size=3), 5))
    stream = await client.responses.create(model="scripted-model", input="hi", stream=True)
    received = [event async for event in stream]
    assert _types(received)[-1] == "response.output_text.delta"
    assert "response.completed" not in _types(received)


async def test_reject_chat_models_only_on_chat(make_server: Callable[..., ScriptedOpenAI]) -> None:
    server = make_server(reject_chat_models={"gpt-5-codex"})
    server.add(Reply(text="via responses"), Reply(text="other model on chat"))
    async with AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="gpt-5-codex", messages=MESSAGES)
        assert caught.value.status_code == 400
        assert caught.value.code == "unsupported_api_for_model"
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "unsupported_api_for_model"
        assert caught.value.body["message"] == (
            "This model is only supported in v1/responses and not in v1/chat/completions."
        )
        events = await _events(client, model="gpt-5-codex")
        assert events[-1].response.output_text == "via responses"
        done = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert done.choices[0].message.content == "other model on chat"
    assert [path for path, _ in server.rejected_requests] == ["/v1/chat/completions"]
    assert [r["model"] for r in server.requests] == ["gpt-5-codex", "gpt-4.1"]


async def test_responses_disabled_is_404(make_server: Callable[..., ScriptedOpenAI]) -> None:
    server = make_server(responses_enabled=False)
    server.add(Reply(text="chat still works"))
    async with AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await _events(client)
        assert caught.value.status_code == 404
        done = await client.chat.completions.create(model="scripted-model", messages=MESSAGES)
        assert done.choices[0].message.content == "chat still works"
    assert server.responses_requests == []
    assert [path for path, _ in server.rejected_requests] == ["/v1/responses"]
    assert len(server.requests) == 1


async def test_chat_and_responses_share_one_queue(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(Reply(text="first"), Reply(text="second"), Reply(text="third"))
    chat = await client.chat.completions.create(model="scripted-model", messages=MESSAGES)
    events = await _events(client)
    done = await client.responses.create(model="scripted-model", input="again")
    assert chat.choices[0].message.content == "first"
    assert events[-1].response.output_text == "second"
    assert done.output_text == "third"
    requests = scripted_openai.requests
    assert len(requests) == 3
    assert scripted_openai.chat_requests == [requests[0]]
    assert scripted_openai.responses_requests == requests[1:]
    assert "messages" in requests[0]
    assert requests[1]["input"] == "hello there"
    assert requests[2]["input"] == "again"
    assert scripted_openai.wait_for_requests(3, timeout=0)


async def test_recorded_request_body(scripted_openai: ScriptedOpenAI, client: AsyncOpenAI) -> None:
    scripted_openai.add(Reply(tool_calls=[Call("read_file", {"path": "a.py"})]))
    conversation: list[Any] = [
        {"role": "user", "content": "read a.py"},
        {"type": "function_call_output", "call_id": "call_0", "output": "earlier"},
    ]
    events = await _events(
        client, input=conversation, tools=TOOLS, instructions="You are a careful coder."
    )
    body = scripted_openai.responses_requests[0]
    assert body["input"] == conversation
    assert body["tools"] == TOOLS
    assert body["instructions"] == "You are a careful coder."
    assert body["model"] == "scripted-model"
    final = events[-1].response
    assert final.instructions == "You are a careful coder."
    assert [t.name for t in final.tools] == ["read_file"]


async def test_non_streamed_response_is_the_final_object(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(
        Reply(text="whole", reasoning="why", tool_calls=[Call("f", {"a": 1})]),
        Incomplete(Reply(text="half"), reason="content_filter"),
        Failed("nope"),
    )
    done = await client.responses.create(
        model="scripted-model", input="hi", include=["reasoning.encrypted_content"]
    )
    assert done.status == "completed"
    assert done.output_text == "whole"
    assert [item.type for item in done.output] == ["reasoning", "message", "function_call"]
    call = done.output[2]
    assert call.type == "function_call"
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_1", "f", {"a": 1})
    assert done.usage is not None and done.usage.total_tokens == 120
    cut = await client.responses.create(model="scripted-model", input="hi")
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "content_filter"
    failed = await client.responses.create(model="scripted-model", input="hi")
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.message == "nope"


async def test_stream_helper_accumulates_the_final_response(
    scripted_openai: ScriptedOpenAI, client: AsyncOpenAI
) -> None:
    scripted_openai.add(
        Reply(text="done", reasoning="plan", tool_calls=[Call("read_file", {"path": "a.py"})])
    )
    async with client.responses.stream(model="scripted-model", input="hi", tools=TOOLS) as stream:
        text = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert text == ["done"]
    assert final.output_text == "done"
    call = final.output[2]
    assert call.type == "function_call"
    assert (call.call_id, json.loads(call.arguments)) == ("call_1", {"path": "a.py"})


async def test_wire_format_names_each_event(scripted_openai: ScriptedOpenAI) -> None:
    scripted_openai.add(Reply(text="hi"))
    payload = json.dumps({"model": "m", "input": "x", "stream": True}).encode()
    request = urllib.request.Request(
        f"{scripted_openai.base_url}/responses",
        data=payload,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # the server runs in a thread
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "text/event-stream"
        assert answer.headers["Transfer-Encoding"] == "chunked"
        raw = answer.read().decode()
    blocks = [b for b in raw.split("\n\n") if b]
    assert len(blocks) == 9
    for number, block in enumerate(blocks):
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        assert data["sequence_number"] == number
    assert "[DONE]" not in raw
