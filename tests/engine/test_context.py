"""The conversation stays inside the model's context: a budget, and a refusal answered."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
from loophelpers import KATA, edit, make_config, of_type, run_loop
from scripted_openai import Call, HTTPError, Reply

from codexloop.core import events as ev
from codexloop.core.context import KEEP_RECENT, Shortened, conversation_size, fit
from codexloop.core.conversation import LEFT_OUT, Conversation
from codexloop.core.model import (
    PRIVATE_PREFIX,
    AutoModel,
    ToolCallRequest,
    Turn,
    looks_like_overflow,
    make_client,
    overflow_numbers,
)
from codexloop.core.prompts import FirstMessage
from codexloop.core.turns import Turns


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


def totals(requests: list[dict[str, Any]]) -> list[int]:
    """What each request puts in front of the model: the conversation and the tools."""
    return [
        conversation_size(r["messages"]) + len(json.dumps(r.get("tools") or []))
        if r.get("tools")
        else conversation_size(r["messages"])
        for r in requests
    ]


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
    # The tool schemas count: they are in every request's prompt.
    assert all(total <= 2_000 * 4 for total in totals(scripted_openai.requests))
    notes = [n.message for n in of_type(events, ev.Notice) if "budget" in n.message]
    assert "budget of about 2000 tokens" in notes[0]
    assert len(notes) == len(set(notes))  # said when something new is done, not every turn


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
    refused, retried = totals(scripted_openai.requests)[3:5]
    assert retried <= refused * 3 // 4
    warnings = [n.message for n in of_type(events, ev.Notice) if n.level == "warning"]
    assert any("did not fit the model's context" in w for w in warnings)


@pytest.mark.anyio
async def test_an_endless_overflow_ends_the_loop_with_the_reason(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    refusal = HTTPError(400, "prompt is too long", "context_length_exceeded")
    scripted_openai.add(*[refusal] * 6)
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config)
    assert result.status == "failed"
    assert "prompt is too long" in result.reason
    sent = totals(scripted_openai.requests)
    assert len(sent) >= 2
    assert all(later < earlier for earlier, later in itertools.pairwise(sent))  # never the same
    warnings = [n.message for n in of_type(events, ev.Notice) if "did not fit" in n.message]
    assert warnings and all("tool result" not in w for w in warnings)  # there were none
    assert "first message's imported code" in warnings[0]  # what was actually cut


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


# -- a real budget: whole iterations, the tools, the endpoint's own token counts ------------------


def session(iterations: int = 4, calls: int = 2) -> Conversation:
    """A conversation of red iterations that each read a large file ``calls`` times."""
    conversation = Conversation(
        FirstMessage(
            (
                ("targets", "Target tests (all must pass): tests/test_x.py::test_y"),
                ("files", "Project files:\n" + "".join(f"src/m{n}.py\n" for n in range(300))),
                (
                    "modules",
                    "\nProject code the tests import:\n--- src/x.py ---\n" + "x = 1\n" * 900,
                ),
                ("exam", "--- tests/test_x.py (protected) ---\n" + "assert x\n" * 900),
                ("baseline", "\nThe tests are red now:\n" + "E baseline\n" * 600),
            )
        )
    )
    for n in range(1, iterations + 1):
        conversation.start_iteration()
        for c in range(calls):
            call_id = f"r{n}-{c}"
            conversation.answer(
                Turn("", (ToolCallRequest(call_id, "read_file", '{"path": "big.py"}'),), 1, 1)
            )
            conversation.tool_result(call_id, f"content {n}\n" * 2_000)
        conversation.answer(Turn(f"Done with {n}.", (), 1, 1))
        conversation.compact()
        conversation.say(f"Failure digest {n}: " + "E " * 1_500)
    conversation.start_iteration()
    return conversation


def paired(messages: list[dict[str, Any]]) -> bool:
    """Every tool result follows the call it answers, every call has its result."""
    open_calls: set[str] = set()
    for message in messages:
        if message["role"] == "tool":
            if message["tool_call_id"] not in open_calls:
                return False
            open_calls.discard(message["tool_call_id"])
        elif open_calls:
            return False
        for call in message.get("tool_calls") or ():
            open_calls.add(call["id"])
    return not open_calls


def contents(conversation: Conversation) -> str:
    return "\n".join(str(m.get("content")) for m in conversation.messages)


def test_whole_earlier_iterations_are_left_out_and_the_latest_failure_stays() -> None:
    conversation = session()
    report = conversation.fit(12_000 + conversation.messages[1]["content"].__len__())
    assert report.left_out_iterations[:2] == [1, 2]
    text = contents(conversation)
    assert "content 1" not in text and "Failure digest 1" not in text
    assert "Failure digest 4" in text  # the failure the current iteration is to fix
    assert paired(conversation.messages)
    notes = [m["content"] for m in conversation.messages if m.get(LEFT_OUT)]
    assert len(notes) == 1 and notes[0].startswith("[Left out to fit the model's context window")
    assert "iterations 1-" in notes[0]
    assert "left out iterations 1-" in report.describe()


def test_the_first_message_gives_way_last_and_says_so() -> None:
    conversation = session(iterations=1)
    report = conversation.fit(4_000)
    opening = conversation.messages[1]["content"]
    assert "x = 1\nx = 1" not in opening  # the imported code went
    assert "read them with read_file" in opening and "src/x.py" in opening
    assert opening.count("src/m") < 30  # the listing cut
    assert "imported code" in report.describe() and "file listing" in report.describe()
    assert "Target tests (all must pass)" in opening
    assert paired(conversation.messages)


def test_a_tiny_budget_leaves_out_the_older_calls_of_this_iteration() -> None:
    conversation = session(iterations=0)
    for c in range(6):
        conversation.answer(Turn("", (ToolCallRequest(f"c{c}", "read_file", "{}"),), 1, 1))
        conversation.tool_result(f"c{c}", "y" * 3_000)
    report = conversation.fit(1_000)
    assert report.left_out_calls == 5
    assert paired(conversation.messages)
    assert [m["tool_call_id"] for m in conversation.messages if m["role"] == "tool"] == ["c5"]
    assert "left out 5 earlier tool calls of this iteration" in report.describe()


def test_the_report_says_only_what_was_done() -> None:
    report = Shortened()
    assert report.describe() == "nothing could be shortened"
    message: dict[str, Any] = {"role": "tool"}
    report.note("result", message)
    report.note("result", message)
    report.left_out_iterations += [1, 2, 3]
    assert report.describe() == "left out iterations 1-3; shortened 1 tool result"


@pytest.mark.parametrize(
    ("message", "body", "numbers"),
    [
        (
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9100 tokens. Please reduce the length of the messages.",
            None,
            (8192, 9100),
        ),
        (
            "This model's maximum context length is 4096 tokens. However, you requested 5000 "
            "tokens (4000 in the messages, 1000 in the completion).",
            None,
            (4096, 4000),
        ),
        ("prompt is too long: 210000 tokens > 200000 maximum", None, (200000, 210000)),
        (
            "the request exceeds the available context size, try increasing it",
            {
                "error": {
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": 6100,
                    "n_ctx": 4096,
                }
            },
            (4096, 6100),
        ),
        (
            "request (4476 tokens) exceeds the available context size (4096 tokens), try "
            "increasing it",
            None,
            (4096, 4476),
        ),
        ("prompt is too long", None, (None, None)),
    ],
)
def test_a_refusal_s_numbers_are_read(
    message: str, body: Any, numbers: tuple[int | None, int | None]
) -> None:
    assert overflow_numbers(message, body) == numbers


@pytest.mark.anyio
async def test_overflows_again_and_again_always_send_a_smaller_request(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({**KATA, "big.txt": "a line of a large file\n" * 1500})
    read_big = Reply(tool_calls=[Call("read_file", {"path": "big.txt"})])
    refusal = HTTPError(400, "prompt is too long", "context_length_exceeded")
    scripted_openai.add(
        read_big,
        read_big,
        Reply(text="Done."),  # red: iteration 1 ends
        read_big,
        Reply(text="Done."),  # red: iteration 2 ends
        read_big,
        *[refusal] * 3,
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Done."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed", [n.message for n in of_type(events, ev.Notice)]
    sent = totals(scripted_openai.requests)
    refused = sent[6:10]  # the three refused requests and the one that was answered
    assert all(later < earlier for earlier, later in itertools.pairwise(refused)), refused
    warnings = [n.message for n in of_type(events, ev.Notice) if "did not fit" in n.message]
    assert len(warnings) == 3
    assert "left out iterations 1-2" in warnings[0]


@pytest.mark.anyio
async def test_a_refusal_that_names_the_window_sets_the_budget_under_it(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({**KATA, "big.txt": "a line of a large file\n" * 1500})
    read_big = Reply(tool_calls=[Call("read_file", {"path": "big.txt"})])
    scripted_openai.add(
        read_big,
        Reply(text="Done."),  # red
        read_big,
        HTTPError(
            400,
            "This model's maximum context length is 3000 tokens. However, your messages "
            "resulted in 9000 tokens.",
            "context_length_exceeded",
        ),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Done."),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed"
    sent = totals(scripted_openai.requests)
    # 9000 tokens were this many characters: three quarters of a 3000-token window is a
    # quarter of them, and so are the requests after it.
    assert all(later <= sent[3] // 4 for later in sent[4:]), sent


@pytest.mark.anyio
async def test_characters_per_token_come_from_the_endpoint_s_usage(scripted_openai) -> None:
    client = make_client(scripted_openai.base_url, "key")
    model = AutoModel(client, "scripted-model", prefer="chat", backoff=(0.0,))
    seen: list[ev.Event] = []

    async def emit(event: ev.Event) -> None:
        seen.append(event)

    turns = Turns(
        model, client, model_name="scripted-model", base_url=None, context_tokens=10_000, emit=emit
    )
    assert turns.budget_chars == 10_000 * 4 - turns.tools_chars  # four until measured
    conversation = Conversation("x" * 4_000)
    sent = conversation.size + turns.tools_chars
    scripted_openai.add(
        Reply(text="a", usage=(sent // 2, 1)),  # two characters a token: escapes, symbols
        Reply(text="b", usage=(1, 1)),  # no tokenizer gives that: ignored
        Reply(text="c", usage=(sent * 10 // 35, 1)),  # 3.5
    )
    await turns.take(conversation)
    assert turns.chars_per_token == pytest.approx(2.0, rel=0.01)
    assert turns.budget_chars == pytest.approx(10_000 * 2 - turns.tools_chars, rel=0.01)
    await turns.take(conversation)
    assert turns.chars_per_token == pytest.approx(2.0, rel=0.01)
    await turns.take(conversation)
    assert turns.chars_per_token == pytest.approx(3.5, rel=0.01)
    await client.close()
