"""The model's turns: one request at a time, fitted to the context budget, usage counted.

The budget is counted in tokens: the configured one, or less once the endpoint says its
context window is smaller (:meth:`Turns.fit_to_window`) or refuses a request as too long.
What a request costs is counted in characters, the tool schemas included, and turned into
tokens with a ratio measured on the endpoint itself: after every answer, the characters
sent divided by the ``prompt_tokens`` its usage reported (text full of escapes or symbols
takes far more tokens than prose; four characters per token until the first report).

A request the endpoint refuses as too long is never sent again as it was: the budget drops
below what was refused (to three quarters of the window when the refusal says it, and in
any case under what was sent), the conversation is fitted to it — earlier iterations left
out whole, digests and tool results cut, see :meth:`Conversation.fit` — and sent again only
when it is smaller, at most :data:`MAX_CONTEXT_SHRINKS` times for one turn. The notice says
what was actually done. Streamed text, retries and notices become events as they happen.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from codexloop.core import events as ev
from codexloop.core.context import CHARS_PER_TOKEN
from codexloop.core.conversation import Conversation
from codexloop.core.model import (
    AutoModel,
    ContextOverflow,
    Turn,
    context_window,
    is_openai_endpoint,
)
from codexloop.core.tools import TOOL_SCHEMAS

if TYPE_CHECKING:
    from codexloop.core.model_host import ModelClient

MAX_CONTEXT_SHRINKS = 4  # a refused request is shortened and sent again at most this often
MIN_CHARS_PER_TOKEN = 1.0
MAX_CHARS_PER_TOKEN = 8.0  # more than any tokenizer gives: the server counted something else
WIDER_TEMPERATURE = 1.0  # asked of a local server once the model repeats itself
WIDER_NOTICE = (
    "the model gave the same answer again: its next requests ask the server to sample more "
    "widely (temperature {value:g}) until an answer changes something"
)
MIN_WINDOW_TOKENS = 512  # the least a budget from the endpoint's window is cut to
OVERFLOW_SHARE = 0.75  # of the refused request (or of the window) that the next one may take


class Turns:
    def __init__(
        self,
        model: AutoModel,
        client: ModelClient,
        *,
        model_name: str,
        base_url: str | None,
        context_tokens: int,
        emit: ev.Emit,
        tools: list[dict[str, Any]] | None = None,
        cost: Callable[[int, int], float | None] = lambda tokens_in, tokens_out: None,
    ) -> None:
        self.model = model
        self.client = client
        self.model_name = model_name
        self.base_url = base_url
        self.context_tokens = context_tokens
        self.tools = TOOL_SCHEMAS if tools is None else tools
        self.cost = cost  # US dollars of tokens in and out, when the prices are known
        self._emit = emit
        self.tokens_in = 0
        self.tokens_out = 0
        self.budget_tokens = context_tokens  # less once the endpoint says or refuses more
        self.chars_per_token = float(CHARS_PER_TOKEN)  # measured from usage reports
        self._noticed: set[str] = set()  # kinds of shortening the developer was told of
        self._told_wider = False

    @property
    def tools_chars(self) -> int:
        """What the tool schemas add to every request (the server renders them into the
        prompt)."""
        return len(json.dumps(self.tools)) if self.tools else 0

    @property
    def budget_chars(self) -> int:
        """Characters the conversation may take: the token budget at the measured ratio,
        less the tool schemas."""
        return max(0, int(self.budget_tokens * self.chars_per_token) - self.tools_chars)

    def calibrate(self, request_chars: int, prompt_tokens: int) -> None:
        """Characters per token from what a request carried (conversation and tools) and
        the ``prompt_tokens`` the endpoint counted for it; a ratio no tokenizer gives (a
        server that leaves cached tokens out of its count) is ignored."""
        if prompt_tokens <= 0 or request_chars <= 0:
            return
        ratio = request_chars / prompt_tokens
        if ratio > MAX_CHARS_PER_TOKEN:
            return
        self.chars_per_token = max(MIN_CHARS_PER_TOKEN, ratio)

    async def take(self, conversation: Conversation, *, wider: bool = False) -> Turn:
        """One model request, fitted to the context budget (shortened and asked again when
        the endpoint says it does not fit); its usage counted. ``wider``: the model keeps
        giving the same answer, so a local server is asked to sample more widely."""
        if self._sample(wider) and not self._told_wider:
            self._told_wider = True
            await self._emit(ev.Notice("info", WIDER_NOTICE.format(value=WIDER_TEMPERATURE)))
        shrinks = 0
        while True:
            report = conversation.fit(self.budget_chars)
            if report and not report.kinds() <= self._noticed:
                first = not self._noticed
                self._noticed |= report.kinds()
                await self._emit(
                    ev.Notice(
                        "info",
                        (
                            f"the conversation reached its budget of about {self.budget_tokens} "
                            "tokens: "
                            if first
                            else "to stay within the context budget: "
                        )
                        + report.describe(),
                    )
                )
            sent = conversation.size + self.tools_chars
            try:
                turn = await self.model.turn(
                    conversation.messages,
                    self.tools,
                    on_text=self._on_text,
                    on_reasoning=self._on_reasoning,
                    on_retry=self._on_retry,
                    on_discard=self._on_discard,
                    on_notice=self._on_notice,
                )
                break
            except ContextOverflow as exc:
                if shrinks == MAX_CONTEXT_SHRINKS:
                    raise  # shortened again and again and still too long
                shrinks += 1
                await self._shrink(conversation, exc, sent)
        self.calibrate(sent, turn.input_tokens)
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
                self.cost(self.tokens_in, self.tokens_out),
            )
        )
        if turn.finish_reason and turn.finish_reason.startswith("incomplete"):
            await self._emit(
                ev.Notice("warning", f"the model's answer was cut off ({turn.finish_reason})")
            )
        return turn

    async def _shrink(self, conversation: Conversation, exc: ContextOverflow, sent: int) -> None:
        """After a refusal of ``sent`` characters: a budget under it, the conversation fitted
        to it; raises when nothing more can be left out (the same request would be refused
        again)."""
        if exc.prompt_tokens:
            self.calibrate(sent, exc.prompt_tokens)
        refused_tokens = exc.prompt_tokens or int(sent / self.chars_per_token)
        tokens = int(refused_tokens * OVERFLOW_SHARE)
        if exc.window:
            tokens = min(tokens, max(MIN_WINDOW_TOKENS, int(exc.window * OVERFLOW_SHARE)))
        # Under what was sent, whatever the ratio says: the next request is smaller.
        tokens = min(tokens, int(sent * OVERFLOW_SHARE / self.chars_per_token))
        self.budget_tokens = min(self.budget_tokens, max(1, tokens))
        before = conversation.size
        report = conversation.fit(self.budget_chars)
        self._noticed |= report.kinds()
        after = conversation.size
        if after >= before:
            raise ContextOverflow(
                f"{exc}; the conversation cannot be shortened further "
                f"({before} characters, tools {self.tools_chars})",
                window=exc.window,
                prompt_tokens=exc.prompt_tokens,
            ) from exc
        await self._emit(
            ev.Notice(
                "warning",
                f"the conversation did not fit the model's context ({exc}): "
                f"{report.describe()} ({before} to {after} characters; the budget is now "
                f"about {self.budget_tokens} tokens); asking again",
            )
        )

    async def _on_text(self, text: str) -> None:
        await self._emit(ev.ModelText(text))

    async def _on_reasoning(self, text: str) -> None:
        await self._emit(ev.ModelReasoning(text))

    async def _on_retry(self, attempt: int, reason: str, delay: float) -> None:
        await self._emit(ev.ModelRetry(attempt, reason, delay))

    def _sample(self, wider: bool) -> bool:
        """A local server given the same prompt answers the same, word for word (llama.cpp's
        sampling kept Qwen2.5-Coder-1.5B's answers identical over six iterations): once the
        model repeats an answer that changed nothing, its requests carry a temperature of
        ``WIDER_TEMPERATURE`` until an answer changes something. Never sent to OpenAI's
        endpoint, whose reasoning models refuse a temperature. Whether it is sent now."""
        if is_openai_endpoint(self.base_url):
            return False
        self.model.temperature = WIDER_TEMPERATURE if wider else None
        return wider

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
        tokens = max(MIN_WINDOW_TOKENS, window * 3 // 4)  # the rest for the answer
        if tokens < self.budget_tokens:
            self.budget_tokens = tokens
            await self._emit(
                ev.Notice(
                    "info",
                    f"{self.model_name} has a context window of {window} tokens: the "
                    f"conversation is kept under about {tokens}",
                )
            )
