"""The model's turns: one request at a time, fitted to the context budget, usage counted.

The budget is the configured one, or less once the endpoint says its context window is
smaller (:meth:`Turns.fit_to_window`) or refuses a request as too long (then the older tool
results are shortened and the request sent again, at most :data:`MAX_CONTEXT_SHRINKS` times).
Streamed text, retries and notices become events as they happen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import openai

from codexloop.core import events as ev
from codexloop.core.context import CHARS_PER_TOKEN, MIN_CONTEXT_TOKENS
from codexloop.core.conversation import Conversation
from codexloop.core.model import (
    AutoModel,
    ContextOverflow,
    Turn,
    context_window,
    is_openai_endpoint,
)
from codexloop.core.tools import TOOL_SCHEMAS

Emit = Callable[[ev.Event], Awaitable[None]]
MAX_CONTEXT_SHRINKS = 2  # a refused request is shortened and sent again at most this often


class Turns:
    def __init__(
        self,
        model: AutoModel,
        client: openai.AsyncOpenAI,
        *,
        model_name: str,
        base_url: str | None,
        context_tokens: int,
        emit: Emit,
    ) -> None:
        self.model = model
        self.client = client
        self.model_name = model_name
        self.base_url = base_url
        self.context_tokens = context_tokens
        self._emit = emit
        self.tokens_in = 0
        self.tokens_out = 0
        self._context_budget: int | None = None  # characters, once the endpoint refused more
        self._context_noted = False

    async def take(self, conversation: Conversation) -> Turn:
        """One model request, fitted to the context budget (shortened and asked again when
        the endpoint says it does not fit); its usage counted."""
        shrinks = 0
        while True:
            budget = self._context_budget or self.context_tokens * CHARS_PER_TOKEN
            saved = conversation.fit(budget)
            if saved and not self._context_noted:
                self._context_noted = True
                await self._emit(
                    ev.Notice(
                        "info",
                        f"the conversation reached its budget of about {budget // CHARS_PER_TOKEN} "
                        "tokens: older tool results are shortened from now on",
                    )
                )
            try:
                turn = await self.model.turn(
                    conversation.messages,
                    TOOL_SCHEMAS,
                    on_text=self._on_text,
                    on_reasoning=self._on_reasoning,
                    on_retry=self._on_retry,
                    on_discard=self._on_discard,
                    on_notice=self._on_notice,
                )
                break
            except ContextOverflow as exc:
                if shrinks == MAX_CONTEXT_SHRINKS:
                    raise  # shortened twice and still too long: nothing more to give
                shrinks += 1
                smaller = conversation.size * 3 // 5
                self._context_budget = max(MIN_CONTEXT_TOKENS * CHARS_PER_TOKEN, smaller)
                self._context_noted = True
                await self._emit(
                    ev.Notice(
                        "warning",
                        f"the conversation did not fit the model's context ({exc}); older tool "
                        f"results shortened to about {self._context_budget // CHARS_PER_TOKEN} "
                        "tokens and asked again",
                    )
                )
        self.tokens_in += turn.input_tokens
        self.tokens_out += turn.output_tokens
        await self._emit(
            ev.Usage(
                turn.input_tokens,
                turn.output_tokens,
                self.tokens_in,
                self.tokens_out,
                turn.cached_tokens,
                turn.reasoning_tokens,
            )
        )
        if turn.finish_reason and turn.finish_reason.startswith("incomplete"):
            await self._emit(
                ev.Notice("warning", f"the model's answer was cut off ({turn.finish_reason})")
            )
        return turn

    async def _on_text(self, text: str) -> None:
        await self._emit(ev.ModelText(text))

    async def _on_reasoning(self, text: str) -> None:
        await self._emit(ev.ModelReasoning(text))

    async def _on_retry(self, attempt: int, reason: str, delay: float) -> None:
        await self._emit(ev.ModelRetry(attempt, reason, delay))

    async def _on_notice(self, message: str) -> None:
        await self._emit(ev.Notice("warning", message))

    async def _on_discard(self) -> None:
        await self._emit(
            ev.Notice("warning", "the model's stream broke off; its partial answer is discarded")
        )

    async def fit_to_window(self) -> None:
        """A budget inside the model's context window, when the endpoint says how big it is
        (local servers do; OpenAI's listing does not, so it is not asked)."""
        if is_openai_endpoint(self.base_url):
            return
        window = await context_window(self.client, self.model_name)
        if window is None:
            return
        tokens = window * 3 // 4  # the rest for the answer
        if tokens < self.context_tokens:
            self._context_budget = max(MIN_CONTEXT_TOKENS, tokens) * CHARS_PER_TOKEN
            await self._emit(
                ev.Notice(
                    "info",
                    f"{self.model_name} has a context window of {window} tokens: the "
                    f"conversation is kept under about {self._context_budget // CHARS_PER_TOKEN}",
                )
            )
