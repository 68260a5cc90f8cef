"""The loop over both wire protocols: the same behaviour on Chat Completions and Responses."""

from __future__ import annotations

from typing import Any

import pytest
from loophelpers import KATA, edit, event_channel_run, make_config, of_type, run_loop
from scripted_openai import Call, Failed, Incomplete, Reply, ScriptedOpenAI

from codexloop.core import events as ev
from codexloop.core.loop import Loop

pytestmark = pytest.mark.anyio


def texts_sent(request: dict[str, Any]) -> str:
    """Every user text and tool output a request carries, whatever its protocol."""
    parts = []
    for item in request.get("messages") or request.get("input") or []:
        if item.get("role") == "user" or item.get("role") == "tool":
            parts.append(str(item.get("content")))
        if item.get("type") == "function_call_output":
            parts.append(str(item.get("output")))
    return "\n".join(parts)


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_red_then_green_with_refusals_and_malformed_calls(
    make_repo, scripted_openai, api: str
) -> None:
    repo = make_repo(KATA)
    seen: dict[str, str] = {}

    def second(request: dict[str, Any]) -> Reply:
        seen["sent"] = texts_sent(request)
        return Reply(
            tool_calls=[edit("calc.py", "a * b", "a + b")],
            reasoning="The failure shows multiplication.",
        )

    scripted_openai.add(
        Reply(
            text="Trying multiplication.",
            tool_calls=[
                Call(
                    "write_file",
                    {"path": "tests/test_calc.py", "content": "def test_add(): pass\n"},
                ),
                Call("edit_file", '{"path": "calc.py", "old_text": '),
                edit("calc.py", "a - b", "a * b"),
            ],
        ),
        Reply(text="done"),
        second,
        Reply(text="fixed"),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, api=api))
    assert result.status == "passed" and result.iterations == 2
    assert of_type(events, ev.LoopStarted)[0].api == api
    results = of_type(events, ev.ToolResult)
    assert results[0].refused and "protected" in results[0].summary
    assert results[1].summary == "malformed arguments" and results[2].ok
    assert "assert 6 == 5" in seen["sent"]  # the failure went back over this protocol
    assert "refused:" in texts_sent(scripted_openai.requests[1])
    if api == "responses":
        assert len(scripted_openai.responses_requests) == 4 and not scripted_openai.chat_requests
        body = scripted_openai.responses_requests[0]
        assert body["store"] is False and "rules" not in body and body["instructions"]
        assert {t["name"] for t in body["tools"]} >= {"read_file", "edit_file", "run_command"}
        reasoning = "".join(e.text for e in of_type(events, ev.ModelReasoning))
        assert reasoning == "The failure shows multiplication."
    else:
        assert len(scripted_openai.chat_requests) == 4 and not scripted_openai.responses_requests


async def test_responses_replays_encrypted_reasoning_without_ids(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")], reasoning="Subtraction is wrong."),
        Reply(text="fixed"),
    )
    config = make_config(repo, scripted_openai.base_url, api="responses", model="gpt-5.1-codex")
    result, events = await run_loop(config)
    assert result.status == "passed"
    first, second = scripted_openai.responses_requests
    assert (
        first["include"] == ["reasoning.encrypted_content"]
        and first["reasoning"]["summary"] == "auto"
    )
    replayed = [
        item for item in second["input"] if item.get("type") in ("reasoning", "function_call")
    ]
    assert [item["type"] for item in replayed] == ["reasoning", "function_call"]
    assert replayed[0]["encrypted_content"].startswith("enc-")
    assert all("id" not in item for item in second["input"])
    usage = of_type(events, ev.Usage)[0]
    assert usage.reasoning_tokens == len("Subtraction is wrong.") // 4


async def test_reasoning_effort_is_passed_through(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="ok"))
    result, _ = await run_loop(
        make_config(repo, scripted_openai.base_url, api="responses", reasoning="high")
    )
    assert result.status == "passed"
    assert scripted_openai.responses_requests[0]["reasoning"] == {
        "summary": "auto",
        "effort": "high",
    }


async def test_auto_switches_once_when_chat_is_refused_for_the_model(make_repo) -> None:
    repo = make_repo(KATA)
    with ScriptedOpenAI(reject_chat_models={"gpt-9-codex"}) as server:
        server.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="fixed"))
        config = make_config(
            repo, server.base_url, model="gpt-9-codex"
        )  # auto, not OpenAI's host: chat first
        result, events = await run_loop(config)
    assert result.status == "passed"
    assert len(server.rejected_requests) == 1  # one chat attempt, then Responses for the session
    assert len(server.responses_requests) == 2
    notices = [n.message for n in of_type(events, ev.Notice)]
    assert any("switching to the Responses API" in n for n in notices)


async def test_auto_falls_back_to_chat_when_the_server_has_no_responses_api(make_repo) -> None:
    repo = make_repo(KATA)
    with ScriptedOpenAI(responses_enabled=False) as server:
        server.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="fixed"))
        config = make_config(repo, server.base_url, api="auto")
        loop = Loop(config, backoff=(0.0,))
        loop.model.current = loop.model._make("responses")  # as auto picks on OpenAI's own endpoint
        result, events = await event_channel_run(loop)
    assert result.status == "passed"
    assert len(server.chat_requests) == 2
    assert any(
        "switching to the Chat Completions API" in n.message for n in of_type(events, ev.Notice)
    )


async def test_a_forced_protocol_that_is_refused_ends_with_one_clear_line(make_repo) -> None:
    repo = make_repo(KATA)
    with ScriptedOpenAI(reject_chat_models={"gpt-9-codex"}) as server:
        config = make_config(repo, server.base_url, model="gpt-9-codex", api="chat")
        result, _ = await run_loop(config)
    assert result.status == "failed"
    assert "only supported in v1/responses" in result.reason and "--api responses" in result.reason


async def test_incomplete_and_failed_responses(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Failed("the server had an error"),
        Incomplete(Reply(text="I was about to")),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="fixed"),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, api="responses"))
    assert result.status == "passed"
    assert [r.retry for r in of_type(events, ev.ModelRetry)] == [1]
    assert any("cut off" in n.message for n in of_type(events, ev.Notice))


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_runaway_answer_is_cut_and_the_loop_goes_on(
    make_repo, scripted_openai, api: str
) -> None:
    """A model that will not stop: the turn is cut at MAX_TURN_CHARS, its tool call not run, the
    model told. (A text that repeats itself is cut much earlier: test_small_model_prompts.)"""
    from codexloop.core.model import MAX_TURN_CHARS

    repo = make_repo(KATA)
    endless = "".join(f"all work and no play, line {n}\n" for n in range(MAX_TURN_CHARS // 20))
    scripted_openai.add(
        Reply(text=endless, tool_calls=[edit("calc.py", "a - b", "a * b")], chunk_size=2_000),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, api=api))
    assert result.status == "passed" and result.iterations == 2
    notices = [n.message for n in of_type(events, ev.Notice)]
    assert any("was cut" in n for n in notices)
    said = "".join(e.text for e in of_type(events, ev.ModelText))
    assert MAX_TURN_CHARS <= len(said) < MAX_TURN_CHARS + 10_000  # cut, not streamed to the end
    assert not any("a * b" in call.arguments for call in of_type(events, ev.ToolCall))
    assert "was cut off" in texts_sent(scripted_openai.requests[1])
