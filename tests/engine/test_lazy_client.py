"""The model client made on first use, and the endpoint check started beside the set-up."""

from __future__ import annotations

import threading

import anyio
import pytest
from scripted_openai import ScriptedOpenAI

from codexloop.core.model import EndpointCheck, ModelError, make_client

pytestmark = pytest.mark.anyio


def test_the_client_is_made_once_on_first_use_from_any_thread() -> None:
    client = make_client("http://127.0.0.1:9/v1", "sk-x", 30.0)
    assert client._client is None  # type: ignore[attr-defined]  # nothing made yet
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(client.base_url)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = client._client  # type: ignore[attr-defined]
    assert made is not None and all(url is made.base_url for url in seen)  # one client
    assert str(client.base_url) == "http://127.0.0.1:9/v1/"


async def test_the_check_passes_against_a_server_and_says_why_it_fails(
    scripted_openai: ScriptedOpenAI,
) -> None:
    good = EndpointCheck(make_client(scripted_openai.base_url, "sk-x", 30.0))
    await good.run()
    await good.passed()
    scripted_openai.models_status = 401
    refused = EndpointCheck(make_client(scripted_openai.base_url, "sk-wrong", 30.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(refused.run)
        with pytest.raises(ModelError, match="refused the API key"):
            await refused.passed()
    assert refused.error is not None


@pytest.mark.parametrize(
    ("status", "refused"), [(401, True), (403, True), (404, False), (500, False)]
)
async def test_the_quick_check_reads_statuses_as_the_clients_check_does(
    scripted_openai: ScriptedOpenAI, status: int, refused: bool
) -> None:
    """Through openai's own transport, before the client exists: a refused key is said with
    the server's message; any other answer means the endpoint is there (404: no /models)."""
    scripted_openai.models_status = status
    check = EndpointCheck(make_client(scripted_openai.base_url, "sk-x", 30.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(check.run)
        await check.settled()
        if refused:
            assert check.error is not None
            assert f"HTTP {status}: scripted /models error {status}" in str(check.error)
        else:
            assert check.error is None
            await check.passed()  # the client is made too
            assert check._client._client is not None  # type: ignore[attr-defined]
    assert scripted_openai.models_asked.is_set()


async def test_a_client_of_the_callers_is_checked_with_the_client(
    scripted_openai: ScriptedOpenAI,
) -> None:
    import openai

    async with openai.AsyncOpenAI(base_url=scripted_openai.base_url, api_key="sk-x") as client:
        scripted_openai.models_status = 401
        check = EndpointCheck(client)
        await check.run()
        assert check.error is not None and "refused the API key" in str(check.error)
