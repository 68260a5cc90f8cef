"""The endpoint's check, asked by the engine itself (not the model worker): a refused key
said with the server's message, any other answer reachable, the listing it read kept for
the model's context window, proxies honoured."""

from __future__ import annotations

import socket

import anyio
import pytest
from scripted_openai import ScriptedOpenAI

from codexloop.core.model import (
    EndpointCheck,
    ModelError,
    check_endpoint,
    context_window,
    make_client,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("status", "refused"), [(401, True), (403, True), (404, False), (500, False)]
)
async def test_a_refused_key_is_said_with_the_servers_message_and_any_other_answer_is_reachable(
    scripted_openai: ScriptedOpenAI, status: int, refused: bool
) -> None:
    scripted_openai.models_status = status
    check = EndpointCheck(make_client(scripted_openai.base_url, "sk-x", 30.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(check.run)
        await check.settled()
    if refused:
        assert check.error is not None
        assert "refused the API key" in str(check.error)
        assert f"HTTP {status}: scripted /models error {status}" in str(check.error)
    else:
        assert check.error is None
        await check.passed()
    assert scripted_openai.models_asked.is_set()


async def test_an_endpoint_nobody_listens_on_is_unreachable() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/v1", "sk-x", 30.0)
    with pytest.raises(
        ModelError, match=rf"cannot reach the model endpoint http://127.0.0.1:{port}/v1/"
    ):
        await check_endpoint(client, timeout=5.0)


async def test_the_listing_the_check_read_gives_the_context_window_without_asking_again(
    scripted_openai: ScriptedOpenAI,
) -> None:
    scripted_openai.model_extra["scripted-model"] = {"max_model_len": 4_000}
    client = make_client(scripted_openai.base_url, "sk-x", 30.0)
    await check_endpoint(client)
    assert await context_window(client, "scripted-model") == 4_000
    assert scripted_openai.models_count == 1
    unchecked = make_client(scripted_openai.base_url, "sk-x", 30.0)
    assert await context_window(unchecked, "scripted-model") == 4_000  # asked (the worker)
    assert scripted_openai.models_count == 2


async def test_a_proxy_in_the_environment_is_taken_for_a_plain_endpoint_too(
    scripted_openai: ScriptedOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a proxy set, the check goes the way the client's requests go (through it), not
    straight to the server: here a proxy nobody listens on, so the server is never asked."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(ModelError, match="cannot reach the model endpoint"):
        await check_endpoint(make_client(scripted_openai.base_url, "sk-x", 30.0))
    assert not scripted_openai.models_asked.is_set()
