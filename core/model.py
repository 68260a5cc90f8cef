"""The model: an OpenAI-compatible endpoint over Chat Completions streaming.

One call of :meth:`ChatModel.turn` streams one assistant turn: text deltas go to a
callback as they arrive, tool-call deltas are assembled per index, usage is
counted. Connection failures, dropped streams, rate limits and server errors are
retried with backoff (and reported through ``on_retry``); errors no retry can fix
raise :class:`ModelError` with a message for people.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import openai

TextCallback = Callable[[str], Awaitable[None]]
RetryCallback = Callable[[int, str, float], Awaitable[None]]

MAX_ATTEMPTS = 4
BACKOFF_S = (1.0, 2.0, 4.0)


class ModelError(Exception):
    """The endpoint refused in a way no retry fixes (bad key, unknown model, bad request)."""


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

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.text or None}
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


def make_client(base_url: str | None, api_key: str, timeout: float = 120.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,  # retries are ours, and visible
        timeout=openai.Timeout(timeout, connect=10.0),
    )


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        message = exc.message
        body = exc.body
        if isinstance(body, dict):
            inner = body.get("error", body)
            if isinstance(inner, dict) and inner.get("message"):
                message = str(inner["message"])
        return f"HTTP {exc.status_code}: {message}"
    if isinstance(exc, openai.APITimeoutError):
        return "the request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection failed ({cause or exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, Exception)


class ChatModel:
    """Chat Completions streaming with function tools."""

    def __init__(
        self, client: openai.AsyncOpenAI, model: str, *, backoff: tuple[float, ...] = BACKOFF_S
    ) -> None:
        self.client = client
        self.model = model
        self.backoff = backoff
        self._usage_in_stream = True

    async def turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        on_text: TextCallback,
        on_reasoning: TextCallback | None = None,
        on_retry: RetryCallback | None = None,
        on_discard: Callable[[], Awaitable[None]] | None = None,
    ) -> Turn:
        attempt = 0
        while True:
            attempt += 1
            streamed = False

            async def text(chunk: str) -> None:
                nonlocal streamed
                streamed = True
                await on_text(chunk)

            try:
                return await self._stream(messages, tools, text, on_reasoning)
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
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "tools": tools,
            "stream": True,
        }
        if self._usage_in_stream:
            kwargs["stream_options"] = {"include_usage": True}
        try:
            stream = await self.client.chat.completions.create(**kwargs)
        except openai.BadRequestError as exc:
            if self._usage_in_stream and "stream_options" in str(exc):
                self._usage_in_stream = False  # an older server: ask again without it
                return await self._stream(messages, tools, on_text, on_reasoning)
            raise ModelError(describe_error(exc)) from exc
        except openai.APIStatusError as exc:
            if not _retryable(exc):
                raise ModelError(describe_error(exc)) from exc
            raise
        text: list[str] = []
        calls: dict[int, _PartialCall] = {}
        input_tokens = output_tokens = 0
        finish: str | None = None
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    input_tokens = chunk.usage.prompt_tokens or 0
                    output_tokens = chunk.usage.completion_tokens or 0
                for choice in chunk.choices:
                    delta = choice.delta
                    if choice.finish_reason:
                        finish = choice.finish_reason
                    if delta is None:
                        continue
                    reasoning = getattr(delta, "reasoning_content", None) or getattr(
                        delta, "reasoning", None
                    )
                    if reasoning and on_reasoning is not None and isinstance(reasoning, str):
                        await on_reasoning(reasoning)
                    if delta.content:
                        text.append(delta.content)
                        await on_text(delta.content)
                    for tc in delta.tool_calls or ():
                        partial = calls.setdefault(tc.index, _PartialCall())
                        if tc.id:
                            partial.id = tc.id
                        if tc.function is not None:
                            if tc.function.name:
                                partial.name += tc.function.name
                            if tc.function.arguments:
                                partial.arguments.append(tc.function.arguments)
        full_text = "".join(text)
        if not output_tokens:
            output_tokens = max(1, len(full_text) // 4) if full_text else 0
        tool_calls = tuple(
            ToolCallRequest(p.id or f"call_{index}", p.name, "".join(p.arguments))
            for index, p in sorted(calls.items())
        )
        return Turn(full_text, tool_calls, input_tokens, output_tokens, finish)


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


async def check_endpoint(client: openai.AsyncOpenAI, timeout: float = 5.0) -> None:
    """Fail fast, before any model call, when the endpoint is unreachable or refuses the key.

    A server without ``/models`` (404, 405) is fine: it is reachable.
    """
    try:
        with anyio.fail_after(timeout + 1):
            await client.with_options(timeout=timeout).models.list()
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise ModelError(f"the endpoint refused the API key ({describe_error(exc)})") from exc
    except openai.APIStatusError:
        return
    except (openai.APIConnectionError, TimeoutError) as exc:
        raise ModelError(
            f"cannot reach the model endpoint {client.base_url} ({describe_error(exc)})"
        ) from exc
