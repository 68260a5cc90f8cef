"""What goes over the wire: the conversation and the tools are sent as the engine built them.

The engine passes them past the client's request transform (``core/model.untransformed``, a
recursive walk costing ~15 ms a request at 30 messages). That is only right while the walk
would change nothing in them: these tests run a real session over each protocol, with every
kind of message and item the engine sends (system, first message, text answers, tool calls
with malformed arguments, tool results, reasoning), and hold the client's own transform of
each request that reached the server to the identity."""

from __future__ import annotations

from typing import Any

import pytest
from loophelpers import KATA, edit, make_config, run_loop
from openai._utils import async_maybe_transform
from openai.types import responses
from openai.types.chat import completion_create_params
from scripted_openai import Call, Reply

from codexloop.core.model import untransformed

pytestmark = pytest.mark.anyio

PARAMS = {
    "chat": completion_create_params.CompletionCreateParamsStreaming,
    "responses": responses.response_create_params.ResponseCreateParamsStreaming,
}


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_the_clients_transform_would_change_nothing_the_engine_sends(
    make_repo, scripted_openai, api: str
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            text="Trying multiplication.",
            tool_calls=[
                Call("read_file", {"path": "calc.py"}),
                Call("edit_file", '{"path": "calc.py", "old_text": '),
                edit("calc.py", "a - b", "a * b"),
            ],
            reasoning="The failure shows a subtraction.",
        ),
        Reply(text="done"),
        Reply(tool_calls=[edit("calc.py", "a * b", "a + b")]),
        Reply(text="fixed"),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url, api=api))
    assert result.status == "passed" and len(scripted_openai.requests) == 4
    last = scripted_openai.requests[-1]
    bulk = last.get("messages") or last.get("input")
    assert bulk and len(bulk) >= 6 and last["tools"]
    for request in scripted_openai.requests:
        transformed = await async_maybe_transform(request, PARAMS[api])
        assert transformed == request


def test_the_bulk_goes_in_extra_body_and_the_rest_stays() -> None:
    kwargs: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function"}],
        "tool_choice": "auto",
        "stream": True,
    }
    sent = untransformed(kwargs)
    assert sent == {
        "model": "m",
        "messages": [],
        "tool_choice": "auto",
        "stream": True,
        "extra_body": {"messages": kwargs["messages"], "tools": kwargs["tools"]},
    }
    assert untransformed({"model": "m"}) == {"model": "m"}
