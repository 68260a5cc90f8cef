"""The model: one interface, two wire protocols.

:class:`ChatModel` speaks Chat Completions (every OpenAI-compatible server does);
:class:`ResponsesModel` speaks the Responses API (OpenAI's codex models are served
only there); :class:`AutoModel` picks one by endpoint and switches once when the
endpoint says the model needs the other. The loop keeps its conversation in the Chat
Completions shape; the Responses side converts it on every request.

One call of ``turn`` streams one assistant turn: text deltas go to a callback as they
arrive, function-call arguments are assembled per call, usage is counted. Connection
failures, dropped streams, rate limits and server errors are retried with backoff
(reported through ``on_retry``); errors no retry can fix raise :class:`ModelError`
with a message for people.

Over 400 lines: the two wire protocols, their streaming and the retry policy share one
Turn shape and one error mapping; split, each protocol would repeat the other's retry code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio

from codexloop.core.errors import CodexloopError
from codexloop.core.events import joined, whole_characters
from codexloop.core.model_host import (
    EndpointError,
    EndpointStatus,
    EndpointTimeout,
    EndpointUnreachable,
    ModelClient,
)

TextCallback = Callable[[str], Awaitable[None]]
RetryCallback = Callable[[int, str, float], Awaitable[None]]

MAX_ATTEMPTS = 4
MAX_TURN_CHARS = 200_000
"""Text, reasoning and tool-call arguments one model turn may stream before it is cut: a
model caught in a repetition loop (small local models are prone to it) would otherwise
stream forever, and a headless run would never end."""
CUT_FINISH = f"incomplete: the answer passed {MAX_TURN_CHARS} characters and was cut"
REPEAT_FINISH = "incomplete: the answer repeated itself and was cut"
CUT_FINISHES = (CUT_FINISH, REPEAT_FINISH)  # answers cut by the engine: nothing of them runs
REPEAT_TAIL = 400  # characters at the end of an answer that, found ...
REPEAT_TIMES = 4  # ... this often in it, make it a repetition loop
REPEAT_EVERY = 512  # characters between two looks


class Repetition:
    """Watches a streamed answer for a repetition loop: a small model that echoes the same
    block over and over (Qwen2.5-Coder-1.5B streamed the engine's message back for ten
    minutes at five tokens a second) is cut long before :data:`MAX_TURN_CHARS`."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self._next = REPEAT_TAIL * REPEAT_TIMES

    def add(self, text: str) -> bool:
        """Take streamed ``text`` in; True when the answer has become a repetition loop."""
        self.parts.append(text)
        self.size += len(text)
        if self.size < self._next:
            return False
        self._next = self.size + REPEAT_EVERY
        whole = "".join(self.parts)
        self.parts = [whole]
        tail = whole[-REPEAT_TAIL:]
        return len(tail.strip()) > REPEAT_TAIL // 4 and whole.count(tail) >= REPEAT_TIMES


BACKOFF_S = (1.0, 2.0, 4.0)


class ModelError(CodexloopError):
    """The endpoint refused in a way no retry fixes (bad key, unknown model, bad request)."""


class ContextOverflow(ModelError):
    """The conversation is longer than the model's context window: shorten it and ask again.

    ``window`` and ``prompt_tokens``: the model's context window and the refused request's
    size in tokens, when the refusal says them (OpenAI and vLLM in the message, llama.cpp
    as ``n_ctx`` and ``n_prompt_tokens`` in the error body).
    """

    def __init__(
        self, *args: object, window: int | None = None, prompt_tokens: int | None = None
    ) -> None:
        super().__init__(*args)
        self.window = window
        self.prompt_tokens = prompt_tokens


_OVERFLOW = re.compile(
    r"context[ _](length|window|size)|maximum context|too many tokens|prompt is too long"
    r"|exceeds? the (available )?context|input is too long|reduce the length",
    re.IGNORECASE,
)


def looks_like_overflow(code: str | None, message: str) -> bool:
    """Is this refusal the endpoint saying the conversation is too long for the model?"""
    return code in ("context_length_exceeded", "string_above_max_length") or bool(
        _OVERFLOW.search(message)
    )


_WINDOW_SAID = (
    re.compile(r"maximum context length is (\d+)", re.IGNORECASE),  # OpenAI, vLLM
    re.compile(r"tokens? > (\d+) maximum", re.IGNORECASE),
    re.compile(r"context (?:size|window|length) (?:is |of )?\(?(\d+)", re.IGNORECASE),
)
_PROMPT_SAID = (
    re.compile(r"resulted in (\d+) tokens", re.IGNORECASE),  # OpenAI
    re.compile(r"\((\d+) in the messages", re.IGNORECASE),  # vLLM
    re.compile(r"(\d+) tokens? > \d+ maximum", re.IGNORECASE),
    re.compile(r"(?:prompt|input) (?:has|of|is) (\d+) tokens", re.IGNORECASE),
    re.compile(r"request \((\d+) tokens\) exceeds", re.IGNORECASE),  # llama.cpp
)


def overflow_numbers(message: str, body: object = None) -> tuple[int | None, int | None]:
    """``(window, prompt_tokens)`` as a context-length refusal states them, None when not."""

    def first(patterns: tuple[re.Pattern[str], ...]) -> int | None:
        for pattern in patterns:
            found = pattern.search(message)
            if found:
                return int(found.group(1))
        return None

    window, prompt = first(_WINDOW_SAID), first(_PROMPT_SAID)
    inner = _error_object(body)
    if inner is not None:  # llama.cpp: exceed_context_size_error
        for key, value in (("n_ctx", inner.get("n_ctx")), ("n", inner.get("n_prompt_tokens"))):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                if key == "n_ctx":
                    window = value
                else:
                    prompt = value
    return window, prompt


def _refusal(exc: EndpointStatus) -> ModelError:
    text = describe_error(exc)
    if looks_like_overflow(_error_code(exc), text):
        window, prompt = overflow_numbers(text, exc.body)
        return ContextOverflow(text, window=window, prompt_tokens=prompt)
    return ModelError(text)


class WrongProtocol(ModelError):
    """The endpoint says this model (or server) needs the other wire protocol."""


NoticeCallback = Callable[[str], Awaitable[None]]
PRIVATE_PREFIX = "codexloop_"  # message keys of ours, never sent to a server


@dataclass(frozen=True)
class ToolCallRequest:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Turn:
    text: str
    tool_calls: tuple[ToolCallRequest, ...]
    input_tokens: int
    output_tokens: int
    finish_reason: str | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    items: tuple[dict[str, Any], ...] = ()  # Responses output items, replayed as they came

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.items:
            msg[PRIVATE_PREFIX + "items"] = list(self.items)
        if self.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        return msg


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def make_client(base_url: str | None, api_key: str, timeout: float = 120.0) -> ModelClient:
    """The endpoint's client (asked through the model worker, started on first use if
    :func:`preload` did not start it)."""
    return ModelClient(base_url, api_key, timeout)


class EndpointCheck:
    """:func:`check_endpoint`, started ahead and awaited where it matters: beside the
    session's set-up and first test run, before the first event is shown and the first
    model request is sent. :meth:`passed` raises its :class:`ModelError`."""

    def __init__(self, client: ModelClient) -> None:
        self._client = client
        self._done = anyio.Event()  # the check has an outcome
        self.error: ModelError | None = None

    async def run(self) -> None:
        """The check; cancelled before it passed, it fails (nothing may go to an endpoint
        that was not checked)."""
        try:
            await check_endpoint(self._client)
        except ModelError as exc:
            self.error = exc
        except BaseException:  # called off
            self.error = ModelError("the endpoint's check was called off")
            raise
        finally:
            self._done.set()

    async def settled(self) -> None:
        """Until the check has an outcome, whichever it is."""
        await self._done.wait()

    async def passed(self) -> None:
        """Until the check has passed; its error if it failed."""
        await self._done.wait()
        if self.error is not None:
            raise self.error


def _error_object(body: object) -> dict[str, Any] | None:
    """The error object of an error response's body (``{"error": {...}}``, or the body)."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    return inner if isinstance(inner, dict) else None


def _status_text(status: int, message: str, body: object) -> str:
    """``HTTP 401: <the error's own message, else message>``."""
    said = (_error_object(body) or {}).get("message")
    return f"HTTP {status}: {said if said else message}"


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, EndpointStatus):
        return _status_text(exc.status, exc.message, exc.body)
    if isinstance(exc, EndpointTimeout):
        return "the request timed out"
    if isinstance(exc, EndpointUnreachable):
        return f"connection failed ({exc})"
    if isinstance(exc, (EndpointError, _StreamFailed)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, EndpointStatus):
        return exc.status in (408, 409, 429) or exc.status >= 500
    return isinstance(exc, Exception)


class _StreamingModel:
    """The retry loop shared by both protocols."""

    protocol = ""

    def __init__(
        self,
        client: ModelClient,
        model: str,
        *,
        backoff: tuple[float, ...] = BACKOFF_S,
        reasoning: str | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.backoff = backoff
        self.reasoning = reasoning
        self.temperature: float | None = None  # None: the server's own (Chat Completions only)

    async def turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        on_text: TextCallback,
        on_reasoning: TextCallback | None = None,
        on_retry: RetryCallback | None = None,
        on_discard: Callable[[], Awaitable[None]] | None = None,
        on_notice: NoticeCallback | None = None,
    ) -> Turn:
        attempt = 0
        while True:
            attempt += 1
            streamed = False

            held = ""  # the first half of a character cut across two deltas

            async def text(chunk: str) -> None:
                nonlocal streamed, held
                streamed = True
                chunk, held = whole_characters(held + chunk)
                if chunk:
                    await on_text(chunk)

            try:
                answer = await self._stream(messages, tools, text, on_reasoning)
                if held:  # its other half never came
                    await on_text(joined(held))
                return answer
            except ModelError:
                raise
            except Exception as exc:
                if not _retryable(exc) or attempt >= MAX_ATTEMPTS:
                    raise ModelError(describe_error(exc)) from exc
                if streamed and on_discard is not None:
                    await on_discard()
                delay = (
                    self.backoff[min(attempt - 1, len(self.backoff) - 1)] if self.backoff else 0.0
                )
                if on_retry is not None:
                    await on_retry(attempt, describe_error(exc), delay)
                await anyio.sleep(delay)

    async def _stream(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: TextCallback,
        on_reasoning: TextCallback | None,
    ) -> Turn:
        raise NotImplementedError


class ChatModel(_StreamingModel):
    """Chat Completions streaming with function tools."""

    protocol = "chat"

    def __init__(self, client: ModelClient, model: str, **kwargs: Any) -> None:
        super().__init__(client, model, **kwargs)
        self._usage_in_stream = True

    async def _stream(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: TextCallback,
        on_reasoning: TextCallback | None,
    ) -> Turn:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [_public(m) for m in messages],
            "stream": True,
        }
        if tools:
            # "auto" said, not implied: some servers drop the tools when it is missing
            # (llama-cpp-python's chatml-function-calling format).
            kwargs["tools"] = tools
            kwargs["tool_choice"] = "auto"
        if self._usage_in_stream:
            kwargs["stream_options"] = {"include_usage": True}
        if self.reasoning:
            kwargs["reasoning_effort"] = self.reasoning
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        try:
            stream = await self.client.stream("chat", untransformed(kwargs))
        except EndpointStatus as exc:
            if exc.status == 400 and _error_code(exc) == "unsupported_api_for_model":
                raise WrongProtocol(describe_error(exc)) from exc
            if exc.status == 400 and self._usage_in_stream and "stream_options" in str(exc):
                self._usage_in_stream = False  # an older server: ask again without it
                return await self._stream(messages, tools, on_text, on_reasoning)
            if not _retryable(exc):
                raise _refusal(exc) from exc
            raise
        text: list[str] = []
        calls: dict[int, _PartialCall] = {}
        input_tokens = output_tokens = 0
        finish: str | None = None
        produced = 0
        repetition = Repetition()
        looping = False
        async with stream:
            async for chunk in stream:
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    input_tokens = _count(usage.get("prompt_tokens"))
                    output_tokens = _count(usage.get("completion_tokens"))
                if produced > MAX_TURN_CHARS or looping:
                    finish = REPEAT_FINISH if looping else CUT_FINISH
                    calls.clear()  # a call cut short is no call
                    break
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
                    delta = choice.get("delta")
                    if not isinstance(delta, dict):
                        continue
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if reasoning and on_reasoning is not None and isinstance(reasoning, str):
                        produced += len(reasoning)
                        await on_reasoning(reasoning)
                    content = delta.get("content")
                    if content and isinstance(content, str):
                        produced += len(content)
                        text.append(content)
                        await on_text(content)
                        looping = looping or repetition.add(content)
                    for tc in delta.get("tool_calls") or ():
                        if not isinstance(tc, dict):
                            continue
                        index = tc.get("index")
                        partial = calls.setdefault(
                            index if isinstance(index, int) else 0, _PartialCall()
                        )
                        if tc.get("id"):
                            partial.id = str(tc["id"])
                        function = _mapping(tc.get("function"))
                        name, arguments = function.get("name"), function.get("arguments")
                        if name and isinstance(name, str):
                            partial.name += name
                        if arguments and isinstance(arguments, str):
                            produced += len(arguments)
                            partial.arguments.append(arguments)
        if finish is None:
            # Every complete answer ends with a finish reason ("stop", "tool_calls", "length"):
            # a body that ends without one is a server or proxy that hung up mid-answer, not
            # the model's whole turn (its text may stop mid-word, its last call mid-argument).
            raise _StreamFailed("the stream ended before the answer was finished")
        full_text = joined("".join(text))
        if not output_tokens:
            output_tokens = max(1, len(full_text) // 4) if full_text else 0
        tool_calls = tuple(
            ToolCallRequest(p.id or f"call_{index}", p.name, "".join(p.arguments))
            for index, p in sorted(calls.items())
        )
        return Turn(full_text, tool_calls, input_tokens, output_tokens, finish)


class ResponsesModel(_StreamingModel):
    """The Responses API, stateless: the full input every time, ``store`` off.

    Stateless rather than ``previous_response_id``: nothing is kept on the server (so it
    works for zero-data-retention organisations and for replays), and the conversation
    stays ours to trim. Reasoning carries over turns as encrypted reasoning items, sent
    back without their server ids (which only name stored items).
    """

    protocol = "responses"

    async def _stream(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: TextCallback,
        on_reasoning: TextCallback | None,
    ) -> Turn:
        instructions, items = to_responses_input(messages)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "input": items,
            "stream": True,
            "store": False,
        }
        if tools:
            kwargs["tools"] = [responses_tool(t) for t in tools]
            kwargs["tool_choice"] = "auto"
        if instructions:
            kwargs["instructions"] = instructions
        if self.reasoning or is_reasoning_model(self.model):
            kwargs["reasoning"] = {
                "summary": "auto",
                **({"effort": self.reasoning} if self.reasoning else {}),
            }
            kwargs["include"] = ["reasoning.encrypted_content"]
        try:
            stream = await self.client.stream("responses", untransformed(kwargs))
        except EndpointStatus as exc:
            if exc.status == 404 and _error_code(exc) == "model_not_found":
                raise ModelError(describe_error(exc)) from exc
            if exc.status == 404:
                raise WrongProtocol(
                    f"this endpoint has no Responses API ({describe_error(exc)})"
                ) from exc
            if not _retryable(exc):
                raise _refusal(exc) from exc
            raise
        text: list[str] = []
        arguments: dict[str, list[str]] = {}
        done_items: list[dict[str, Any]] = []
        usage: dict[str, Any] = {}
        finish: str | None = None
        produced = 0
        repetition = Repetition()
        looping = False
        async with stream:
            async for event in stream:
                kind = event.get("type")
                if produced > MAX_TURN_CHARS or looping:
                    finish = REPEAT_FINISH if looping else CUT_FINISH
                    done_items.clear()  # nothing of a cut answer is replayed or called
                    break
                delta = event.get("delta")
                delta = delta if isinstance(delta, str) else ""
                response = event.get("response")
                response = response if isinstance(response, dict) else {}
                if kind == "response.output_text.delta":
                    produced += len(delta)
                    text.append(delta)
                    await on_text(delta)
                    looping = looping or repetition.add(delta)
                elif kind == "response.reasoning_summary_text.delta":
                    produced += len(delta)
                    if on_reasoning is not None:
                        await on_reasoning(delta)
                elif kind == "response.function_call_arguments.delta":
                    produced += len(delta)
                    arguments.setdefault(str(event.get("item_id")), []).append(delta)
                elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
                    done_items.append(_without_none(event["item"]))
                elif kind == "response.completed":
                    usage, finish = _mapping(response.get("usage")), "completed"
                elif kind == "response.incomplete":
                    usage = _mapping(response.get("usage"))
                    reason = _mapping(response.get("incomplete_details")).get("reason")
                    finish = f"incomplete: {reason or 'unknown reason'}"
                elif kind == "response.failed":
                    error = _mapping(response.get("error"))
                    # Strings whatever the server sent (a number, an object): the failure
                    # is told as it came, not turned into a TypeError and retried.
                    message = str(error.get("message") or "the response failed")
                    code = str(error.get("code") or "")
                    if code in ("server_error", "rate_limit_exceeded", "vector_store_timeout"):
                        raise _StreamFailed(f"{code}: {message}")
                    failure = f"{code}: {message}" if code else message
                    if looks_like_overflow(code, message):
                        raise ContextOverflow(failure)
                    raise ModelError(failure)
                elif kind == "error":
                    raise _StreamFailed(f"{event.get('code') or 'error'}: {event.get('message')}")
        if finish is None:  # no response.completed, .incomplete or .failed: a hang-up
            raise _StreamFailed("the stream ended before the answer was finished")
        calls = []
        for item in done_items:
            if item.get("type") == "function_call":
                args = item.get("arguments")
                if not isinstance(args, str):
                    args = "".join(arguments.get(str(item.get("id")), []))
                name = item.get("name")
                call_id = item.get("call_id") or item.get("id") or ""
                calls.append(
                    ToolCallRequest(str(call_id), name if isinstance(name, str) else "", args)
                )
        full_text = joined("".join(text))
        input_tokens = _count(usage.get("input_tokens"))
        output_tokens = _count(usage.get("output_tokens")) or len(full_text) // 4
        cached = _count(_mapping(usage.get("input_tokens_details")).get("cached_tokens"))
        reasoning = _count(_mapping(usage.get("output_tokens_details")).get("reasoning_tokens"))
        return Turn(
            full_text,
            tuple(calls),
            input_tokens,
            output_tokens,
            finish,
            cached,
            reasoning,
            tuple(replayable(done_items)),
        )


class _StreamFailed(Exception):
    """A stream that ended in an error a retry may fix."""


def _without_none(value: Any) -> Any:
    """``value`` with its null fields left out, at every depth (an item as the server sent it,
    replayed as input: fields it left empty are not sent back)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _count(value: object) -> int:
    """A token count the server reported, 0 when it is not one (the engine sums them)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _mapping(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a field a server left out)."""
    return value if isinstance(value, dict) else {}


class AutoModel:
    """Chat Completions or Responses, chosen by endpoint; switches once if told to."""

    def __init__(
        self,
        client: ModelClient,
        model: str,
        *,
        prefer: str,
        switchable: bool = True,
        backoff: tuple[float, ...] = BACKOFF_S,
        reasoning: str | None = None,
    ) -> None:
        self._kwargs: dict[str, Any] = {"backoff": backoff, "reasoning": reasoning}
        self.client = client
        self.model = model
        self.switchable = switchable
        self.current: _StreamingModel = self._make(prefer)

    def _make(self, protocol: str) -> _StreamingModel:
        kind = ResponsesModel if protocol == "responses" else ChatModel
        return kind(self.client, self.model, **self._kwargs)

    @property
    def protocol(self) -> str:
        return self.current.protocol

    @property
    def temperature(self) -> float | None:
        """Sent with Chat Completions requests when set (the Responses side never sends one)."""
        return self.current.temperature

    @temperature.setter
    def temperature(self, value: float | None) -> None:
        self.current.temperature = value

    async def turn(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], **callbacks: Any
    ) -> Turn:
        try:
            return await self.current.turn(messages, tools, **callbacks)
        except WrongProtocol as exc:
            other = "chat" if self.protocol == "responses" else "responses"
            if not self.switchable:
                raise ModelError(f"{exc} — try --api {other} (or --api auto)") from exc
            self.switchable = False
            self.current = self._make(other)
            notice = callbacks.get("on_notice")
            if notice is not None:
                name = "Responses API" if other == "responses" else "Chat Completions API"
                await notice(f"{exc}; switching to the {name} for this session")
            return await self.current.turn(messages, tools, **callbacks)


def is_openai_endpoint(base_url: str | None) -> bool:
    """OpenAI's own endpoint (no base URL means it)."""
    return base_url is None or (urlsplit(base_url).hostname or "") == "api.openai.com"


def choose_protocol(api: str, base_url: str | None) -> str:
    """``auto``: the Responses API on OpenAI's own endpoint, Chat Completions elsewhere."""
    if api in ("chat", "responses"):
        return api
    return "responses" if is_openai_endpoint(base_url) else "chat"


def is_reasoning_model(model: str) -> bool:
    name = model.lower().rsplit("/", 1)[-1]
    return name.startswith(("gpt-5", "o1", "o3", "o4", "codex")) or "codex" in name


def responses_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions function tool in the Responses shape."""
    fn = tool["function"]
    return {
        "type": "function",
        "name": fn["name"],
        "description": fn.get("description", ""),
        "parameters": fn["parameters"],
        "strict": False,
    }


def replayable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as input for the next stateless request: no server ids, no bare reasoning."""
    kept = []
    for item in items:
        item = {k: v for k, v in item.items() if k != "id"}
        if item.get("type") == "reasoning":
            if not item.get("encrypted_content"):
                continue
            item = {k: item[k] for k in ("type", "summary", "encrypted_content") if k in item}
        kept.append(item)
    return kept


def to_responses_input(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(instructions, input items) from a conversation in the Chat Completions shape."""
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        content = message.get("content")
        if role == "system":
            instructions.append(content or "")
        elif role == "user":
            items.append({"role": "user", "content": content or ""})
        elif role == "assistant":
            raw = message.get(PRIVATE_PREFIX + "items")
            if raw is not None:
                items.extend(raw)
                continue
            if content:
                items.append({"role": "assistant", "content": content})
            for call in message.get("tool_calls") or ():
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": call["function"]["name"],
                        "arguments": call["function"]["arguments"],
                    }
                )
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message["tool_call_id"],
                    "output": content or "",
                }
            )
    return "\n\n".join(instructions), items


BULK = ("messages", "input", "tools")
"""The parts of a request that grow with the conversation."""


def untransformed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request's arguments with the conversation and the tools sent as they are.

    The client walks every request body against its parameter types before sending it
    (``openai._utils._transform``), a recursive walk that copies each message and changes
    nothing in what the engine sends (plain text, tool calls, function tools: no field it
    renames or formats; ``tests/engine/test_model_requests.py`` holds it to that): ~15 ms a
    request for a 30-message conversation on this machine, growing with each iteration. Sent
    in ``extra_body``, which the client merges into the body after the walk, the same JSON
    goes out without it."""
    bulk = {key: kwargs[key] for key in BULK if key in kwargs}
    if not bulk:
        return kwargs
    rest = {key: value for key, value in kwargs.items() if key not in bulk}
    placeholders: dict[str, list[Any]] = {key: [] for key in bulk if key in ("messages", "input")}
    return {**rest, **placeholders, "extra_body": bulk}


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if not k.startswith(PRIVATE_PREFIX)}


def _error_code(exc: EndpointStatus) -> str | None:
    code = (_error_object(exc.body) or {}).get("code")
    return str(code) if code else exc.code


def tool_message(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def pretty_arguments(arguments: str, limit: int = 200) -> str:
    """A compact one-line rendering of tool arguments for people."""
    try:
        data = json.loads(arguments)
    except json.JSONDecodeError:
        return arguments[:limit]
    if isinstance(data, dict):
        parts = []
        for key, value in data.items():
            text = value if isinstance(value, str) else json.dumps(value)
            text = text.replace("\n", "⏎")
            parts.append(f"{key}={text[:60]}{'…' if len(text) > 60 else ''}")
        return ", ".join(parts)[:limit]
    return arguments[:limit]


_WINDOW_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length")


def window_of(entry: dict[str, Any]) -> int | None:
    """A model's context window, as OpenAI-compatible servers put it in their /models listing:
    vLLM ``max_model_len``, OpenRouter and LM Studio ``context_length`` (or under
    ``top_provider``), others ``context_window``; llama.cpp ``meta.n_ctx_train``."""
    nested = [entry, entry.get("top_provider"), entry.get("meta")]
    for source in nested:
        if not isinstance(source, dict):
            continue
        for key in (*_WINDOW_KEYS, "n_ctx", "n_ctx_train"):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


async def context_window(client: ModelClient, model: str, timeout: float = 3.0) -> int | None:
    """The model's context window if the endpoint's model listing says it, else None."""
    entries = client.listing  # the endpoint's check read it already
    if entries is None:
        try:
            with anyio.fail_after(timeout + 1):
                entries = await client.models(timeout)
        except Exception:  # a listing is a courtesy: no answer, no window
            return None
    for entry in entries:
        if isinstance(entry, dict) and entry.get("id") == model:
            return window_of(entry)
    return None


async def check_endpoint(client: ModelClient, timeout: float = 5.0) -> None:
    """Fail fast, before any model call, when the endpoint is unreachable or refuses the key.

    A server without ``/models`` (404, 405) is fine: it is reachable.
    """
    try:
        with anyio.fail_after(timeout + 2):
            if not await _quick_check(client, timeout):
                await client.check(timeout)
    except EndpointStatus as exc:
        raise _refused(describe_error(exc)) from exc
    except (EndpointError, TimeoutError) as exc:
        what = "the request timed out" if isinstance(exc, TimeoutError) else describe_error(exc)
        raise _unreachable(client.base_url, what) from exc


async def _quick_check(client: ModelClient, timeout: float) -> bool:
    """The check here, without waiting for the worker's import of the client: False when it
    cannot be asked here (the worker checks with the client then). Raises as the client
    would. A plain ``http://`` endpoint with no proxy in the environment (a local server) is
    asked with the standard library's HTTP client, in a thread; any other through the client's
    own HTTP transport (``httpx2``: the same proxies and certificates), whose import and TLS
    context were ~80 ms of the start's single core. Redirects of a plain endpoint are not
    followed (an answer is an answer; a redirect to TLS would go unverified)."""
    api_key = client.settings[1]
    url = client.base_url + "models"
    headers = {"Authorization": f"Bearer {api_key}"}
    if url.startswith("http://") and not any(os.environ.get(name) for name in _PROXY_VARIABLES):
        status, reason, raw = await anyio.to_thread.run_sync(_plain_get, url, headers, timeout)
    else:
        try:
            import httpx2
        except ImportError:
            return False
        try:
            async with httpx2.AsyncClient(timeout=timeout, follow_redirects=True) as http:
                response = await http.get(url, headers=headers)
        except (httpx2.TimeoutException, TimeoutError) as exc:
            raise EndpointTimeout("the request timed out") from exc
        except (httpx2.HTTPError, OSError) as exc:
            raise EndpointUnreachable(str(exc) or type(exc).__name__) from exc
        status, reason, raw = response.status_code, response.reason_phrase, response.content
    body: object = None
    with contextlib.suppress(ValueError):
        body = json.loads(raw)
    if status in (401, 403):
        raise EndpointStatus(status, reason, body)
    entries = body.get("data") if isinstance(body, dict) else None
    if status == 200 and isinstance(entries, list):
        client.listing = entries  # the model's context window, without asking again
    return True  # reachable: another status (404, 405: no /models) is fine too


_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
_LISTING_LIMIT = 8 << 20  # bytes of a /models answer read: a listing, not a download


def _plain_get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, str, bytes]:
    """``GET url`` over plain HTTP (blocking): status, reason, body (its first 8 MiB)."""
    import http.client

    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.reason, response.read(_LISTING_LIMIT)
    except TimeoutError as exc:
        raise EndpointTimeout("the request timed out") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise EndpointUnreachable(str(exc) or type(exc).__name__) from exc
    finally:
        connection.close()


def _refused(why: str) -> ModelError:
    return ModelError(f"the endpoint refused the API key ({why})")


def _unreachable(base_url: str, why: str) -> ModelError:
    return ModelError(f"cannot reach the model endpoint {base_url} ({why})")
