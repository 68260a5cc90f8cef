"""The conversation stays inside the model's context: a budget, and a refusal answered."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from loophelpers import KATA, edit, make_config, of_type, run_loop
from scripted_openai import Call, HTTPError, Reply

from codexloop.core import events as ev
from codexloop.core.context import KEEP_RECENT, conversation_size, fit
from codexloop.core.model import PRIVATE_PREFIX, looks_like_overflow


def call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def long_session(iterations: int = 6) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You fix code." * 50},
        {"role": "user", "content": "The exam and the baseline failure. " * 100},
    ]
    for n in range(iterations):
        messages.append(
            {
                "role": "assistant",
                "content": f"Attempt {n}.",
                "tool_calls": [
                    call(f"r{n}", "read_file", {"path": "big.py"}),
                    call(f"w{n}", "write_file", {"path": "big.py", "content": "x = 1\n" * 2000}),
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": f"r{n}", "content": "line\n" * 4000})
        messages.append({"role": "tool", "tool_call_id": f"w{n}", "content": "wrote big.py"})
        messages.append({"role": "user", "content": f"Failure digest {n}: " + "E " * 1500})
    return messages


def shape(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            m["role"],
            m.get("tool_call_id"),
            tuple(c["id"] for c in m.get("tool_calls") or ()),
        )
        for m in messages
    ]


def test_a_conversation_within_budget_is_left_alone() -> None:
    messages = long_session(2)
    before = copy.deepcopy(messages)
    assert fit(messages, conversation_size(messages)) == 0
    assert messages == before


def test_fitting_shortens_the_oldest_first_and_keeps_every_call_with_its_result() -> None:
    messages = long_session()
    before = copy.deepcopy(messages)
    budget = conversation_size(messages) // 3
    saved = fit(messages, budget)
    assert saved > 0 and conversation_size(messages) <= budget
    assert shape(messages) == shape(before)  # nothing removed, pairs intact
    assert messages[:2] == before[:2]  # system and the first user message whole
    assert messages[-KEEP_RECENT:] == before[-KEEP_RECENT:]  # the recent turns whole
    assert "elided to fit the context" in messages[3]["content"]
    for message in messages:
        for tool_call in message.get("tool_calls") or ():
            json.loads(tool_call["function"]["arguments"])  # still valid JSON


def test_a_tight_budget_shortens_old_arguments_and_digests_too() -> None:
    messages = long_session()
    budget = 30_000
    fit(messages, budget)
    assert conversation_size(messages) <= budget
    old_write = json.loads(messages[2]["tool_calls"][1]["function"]["arguments"])
    assert old_write["path"] == "big.py" and "elided" in old_write["content"]


def test_responses_items_follow_the_shortened_arguments() -> None:
    messages = long_session(3)
    for message in messages:
        if message["role"] == "assistant":
            message[PRIVATE_PREFIX + "items"] = [
                {"type": "reasoning", "encrypted_content": "opaque"},
                *(
                    {
                        "type": "function_call",
                        "call_id": c["id"],
                        "name": c["function"]["name"],
                        "arguments": c["function"]["arguments"],
                    }
                    for c in message["tool_calls"]
                ),
            ]
    fit(messages, 20_000)
    for message in messages:
        if message["role"] == "assistant":
            by_id = {c["id"]: c["function"]["arguments"] for c in message["tool_calls"]}
            calls = [i for i in message[PRIVATE_PREFIX + "items"] if i["type"] == "function_call"]
            assert len(calls) == len(by_id)
            for item in calls:
                assert item["arguments"] == by_id[item["call_id"]]


def test_a_long_winded_earlier_answer_gives_way_too() -> None:
    messages = long_session(2)
    messages[2]["content"] = "I think " * 20_000
    fit(messages, 40_000)
    assert conversation_size(messages) <= 40_000
    assert "elided to fit the context" in messages[2]["content"]


def test_old_encrypted_reasoning_goes_first_and_the_recent_stays() -> None:
    messages = long_session(4)
    reasoning = {"type": "reasoning", "encrypted_content": "z" * 20_000}
    for message in messages:
        if message["role"] == "assistant":
            message[PRIVATE_PREFIX + "items"] = [dict(reasoning)]
    size = conversation_size(messages)
    fit(messages, size - 30_000)  # two turns' worth of reasoning too much
    kinds = [
        [i["type"] for i in m[PRIVATE_PREFIX + "items"]]
        for m in messages
        if m["role"] == "assistant"
    ]
    assert kinds[0] == [] and kinds[1] == []  # the oldest turns' reasoning dropped
    assert kinds[-1] == ["reasoning"]  # the latest turn keeps its own
    assert all("elided" not in str(m.get("content")) for m in messages)  # nothing else needed


def test_one_message_bigger_than_the_budget_is_shortened_as_a_last_resort() -> None:
    messages = long_session(1)
    messages.append({"role": "tool", "tool_call_id": "r9", "content": "y" * 50_000})
    fit(messages, 20_000)
    assert conversation_size(messages) <= 20_000


@pytest.mark.parametrize(
    ("code", "message", "overflow"),
    [
        ("context_length_exceeded", "anything", True),
        (None, "This model's maximum context length is 8192 tokens.", True),
        (None, "the request exceeds the available context size, try increasing it", True),
        (None, "prompt is too long: 210000 tokens > 200000 maximum", True),
        ("invalid_api_key", "Incorrect API key provided", False),
        (None, "model 'x' not found", False),
    ],
)
def test_overflow_refusals_are_recognised(code: str | None, message: str, overflow: bool) -> None:
    assert looks_like_overflow(code, message) is overflow


# -- end to end: the real client against the scripted server --------------------------------------


def sizes(requests: list[dict[str, Any]]) -> list[int]:
    return [conversation_size(r["messages"]) for r in requests]


@pytest.mark.anyio
async def test_the_conversation_is_kept_under_its_budget(make_repo, scripted_openai) -> None:
    repo = make_repo({**KATA, "big.txt": "a line of a large file\n" * 1500})  # ~34k characters
    scripted_openai.add(
        Reply(tool_calls=[Call("read_file", {"path": "big.txt"})]),
        Reply(tool_calls=[Call("read_file", {"path": "big.txt"})]),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Done."),
    )
    config = make_config(repo, scripted_openai.base_url, context_tokens=2_000)
    result, events = await run_loop(config)
    assert result.status == "passed"
    assert all(size <= 2_000 * 4 for size in sizes(scripted_openai.requests))
    notes = [n.message for n in of_type(events, ev.Notice) if "budget" in n.message]
    assert len(notes) == 1 and "about 2000 tokens" in notes[0]


@pytest.mark.anyio
async def test_a_context_overflow_is_answered_by_shortening_and_asking_again(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({**KATA, "big.txt": "a line of a large file\n" * 1500})
    scripted_openai.add(
        Reply(tool_calls=[Call("read_file", {"path": "big.txt"})]),
        Reply(tool_calls=[Call("read_file", {"path": "big.txt"})]),
        Reply(tool_calls=[Call("read_file", {"path": "calc.py"})]),
        HTTPError(
            400, "This model's maximum context length is 8192 tokens.", "context_length_exceeded"
        ),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Done."),
    )
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config)
    assert result.status == "passed"
    refused, retried = sizes(scripted_openai.requests)[3:5]
    assert retried <= refused * 3 // 5
    warnings = [n.message for n in of_type(events, ev.Notice) if n.level == "warning"]
    assert any("did not fit the model's context" in w for w in warnings)


@pytest.mark.anyio
async def test_an_endless_overflow_ends_the_loop_with_the_reason(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    refusal = HTTPError(400, "prompt is too long", "context_length_exceeded")
    scripted_openai.add(refusal, refusal, refusal)
    config = make_config(repo, scripted_openai.base_url)
    result, _events = await run_loop(config)
    assert result.status == "failed"
    assert "prompt is too long" in result.reason
    assert len(scripted_openai.requests) == 3  # asked, shortened twice, then gave up


@pytest.mark.parametrize(
    ("entry", "window"),
    [
        ({"id": "m", "max_model_len": 8192}, 8192),  # vLLM
        ({"id": "m", "context_length": 32768}, 32768),  # LM Studio, OpenRouter
        ({"id": "m", "top_provider": {"context_length": 65536}}, 65536),  # OpenRouter
        ({"id": "m", "meta": {"n_ctx_train": 4096}}, 4096),  # llama.cpp
        ({"id": "m", "owned_by": "openai"}, None),  # OpenAI says nothing
        ({"id": "m", "context_length": True}, None),
    ],
)
def test_context_windows_are_read_from_model_listings(
    entry: dict[str, Any], window: int | None
) -> None:
    from codexloop.core.model import window_of

    assert window_of(entry) == window


@pytest.mark.anyio
async def test_a_small_window_from_the_endpoint_sets_the_budget(make_repo, scripted_openai) -> None:
    repo = make_repo({**KATA, "big.txt": "a line of a large file\n" * 1500})
    scripted_openai.model_extra["scripted-model"] = {"max_model_len": 4_000}
    scripted_openai.add(
        Reply(tool_calls=[Call("read_file", {"path": "big.txt"})]),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Done."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed"
    assert all(size <= 3_000 * 4 for size in sizes(scripted_openai.requests))
    notes = [n.message for n in of_type(events, ev.Notice)]
    assert any("context window of 4000 tokens" in n and "about 3000" in n for n in notes)
