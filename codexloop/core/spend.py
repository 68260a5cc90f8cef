"""Budgets beyond iterations: tokens, wall time, money (``--max-tokens``, ``--max-time``,
``--max-cost``).

The loop looks at them at every safe point (where pause and stop are honoured): a spent
budget ends the session there, red, with its reason — or, when a developer is watching (the
app), waits there like a spent iteration budget: "more" gives as much again (``scale``). Money is known only when the model's
prices are configured (``price_in``/``price_out``, US dollars per million tokens): codexloop
ships no price table, since prices change and a wrong one would be worse than none.
"""

from __future__ import annotations

from codexloop.core.config import Config


class SpendExhausted(Exception):
    """A budget of the session is spent (raised at a safe point); the message says which."""


def cost(config: Config, tokens_in: int, tokens_out: int) -> float | None:
    """US dollars for these tokens at the configured prices; None when they are not set."""
    if config.price_in is None or config.price_out is None:
        return None
    return (tokens_in * config.price_in + tokens_out * config.price_out) / 1_000_000


def spent(
    config: Config, tokens_in: int, tokens_out: int, seconds: float, scale: int = 1
) -> str | None:
    """Which budget is spent, in words for the developer; None while every one holds.
    ``scale``: the budgets given so far (each "more" gives as much again)."""
    used = tokens_in + tokens_out
    if config.max_tokens is not None and used >= config.max_tokens * scale:
        return f"the token budget of {config.max_tokens * scale:,} is spent ({used:,} tokens used)"
    if config.max_time is not None and seconds >= config.max_time * scale:
        return f"the time budget of {duration_words(config.max_time * scale)} is spent"
    dollars = cost(config, tokens_in, tokens_out)
    if config.max_cost is not None and dollars is not None and dollars >= config.max_cost * scale:
        return f"the cost budget of ${config.max_cost * scale:.2f} is spent (${dollars:.2f} used)"
    return None


def duration_words(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [
        f"{hours} h" if hours else "",
        f"{minutes} min" if minutes else "",
        f"{secs} s" if secs else "",
    ]
    return " ".join(p for p in parts if p) or "0 s"
