"""Attacks on the model worker: a hostile or broken server behind the real client in its
own process, the worker's lifecycle, and what the sandbox could reach of it. Real
processes, the real client, servers over loopback."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from loophelpers import KATA, TARGET, kill_engine_and_await_worker, make_config, run_loop
from scripted_openai import Call, Reply, ScriptedOpenAI

from codexloop.core import model_process, model_worker
from codexloop.core.model import (
    ChatModel,
    ModelError,
    ResponsesModel,
    Turn,
    check_endpoint,
    context_window,
    make_client,
)
from codexloop.core.model_host import EndpointError, WorkerLost

pytestmark = pytest.mark.anyio

RIGHT = "def add(a, b):\n    return a + b\n"
Answer = Callable[["_Handler"], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        status, body = self.server.models
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.close_connection = True
        with self.server.lock:
            self.server.posts += 1
            answer = self.server.answers.popleft() if self.server.answers else None
        if answer is None:
            self.send_error(500)
            return
        try:
            answer(self)
        except (BrokenPipeError, ConnectionResetError):
            self.server.cut.set()

    def events(self, *data: str) -> None:
        """A 200 event stream of ``data`` (each a whole event, its ``data:`` lines written)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for item in data:
            self.wfile.write(item.encode())
            self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.answers: deque[Answer] = deque()
        self.posts = 0
        self.cut = threading.Event()  # an answer's write found the connection closed
        self.models: tuple[int, bytes] = (200, b'{"object": "list", "data": []}')

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def hostile() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def sse(payload: object) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def chat_chunk(delta: dict[str, Any], finish: object = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return sse({"id": "c", "object": "chat.completion.chunk", "choices": [choice]})


def answer_times(server: _Server, answer: Answer, times: int = 4) -> None:
    server.answers.extend([answer] * times)


async def _quiet(text: str) -> None:
    pass


async def chat_turn(base_url: str) -> Turn:
    model = ChatModel(make_client(base_url, "sk-x", 10.0), "m", backoff=(0.0,))
    with anyio.fail_after(60):
        return await model.turn([{"role": "user", "content": "hi"}], [], on_text=_quiet)


async def responses_turn(base_url: str) -> Turn:
    model = ResponsesModel(make_client(base_url, "sk-x", 10.0), "m", backoff=(0.0,))
    with anyio.fail_after(60):
        return await model.turn([{"role": "user", "content": "hi"}], [], on_text=_quiet)


def assert_well_typed(turn: Turn) -> None:
    """What the engine reads of a turn has the types the Turn says, whatever the server sent."""
    for number in (
        turn.input_tokens,
        turn.output_tokens,
        turn.cached_tokens,
        turn.reasoning_tokens,
    ):
        assert type(number) is int and number >= 0, turn
    assert isinstance(turn.text, str)
    assert turn.finish_reason is None or isinstance(turn.finish_reason, str), turn
    for call in turn.tool_calls:
        assert isinstance(call.id, str) and isinstance(call.name, str), call
        assert isinstance(call.arguments, str), call


# -- a hostile or broken server ---------------------------------------------------------


async def test_an_event_that_is_not_json_is_a_retried_stream_error(hostile: _Server) -> None:
    answer_times(hostile, lambda h: h.events(chat_chunk({"content": "x"}), "data: {oops\n\n"))
    with pytest.raises(ModelError, match="not JSON"):
        await chat_turn(hostile.base_url)
    assert hostile.posts == 4


async def test_an_error_inside_the_stream_is_the_endpoints_error(hostile: _Server) -> None:
    answer_times(
        hostile,
        lambda h: h.events(
            chat_chunk({"content": "half"}), sse({"error": {"message": "overloaded now"}})
        ),
    )
    with pytest.raises(ModelError, match="overloaded now"):
        await chat_turn(hostile.base_url)
    assert hostile.posts == 4


async def test_data_over_several_lines_and_no_done_still_make_the_answer(
    hostile: _Server,
) -> None:
    split = 'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "Hel"}}]}\n\n'
    hostile.answers.append(
        lambda h: h.events(
            split, ": a comment\n\n", chat_chunk({"content": "lo"}), chat_chunk({}, "stop")
        )
    )
    turn = await chat_turn(hostile.base_url)
    assert (turn.text, turn.finish_reason) == ("Hello", "stop")


async def test_tool_call_fields_of_the_wrong_types_make_no_call_of_the_wrong_types(
    hostile: _Server,
) -> None:
    hostile.answers.append(
        lambda h: h.events(
            chat_chunk(
                {
                    "tool_calls": [
                        {"index": "0", "id": 7, "function": {"name": "read_file"}},
                        {"index": 1, "id": None, "function": {"name": 5, "arguments": {"a": 1}}},
                        "not a call",
                        {"index": [2], "function": "read_file"},
                    ]
                }
            ),
            chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"path": "a"}'}}]}),
            chat_chunk({}, "tool_calls"),
        )
    )
    turn = await chat_turn(hostile.base_url)
    assert_well_typed(turn)
    assert turn.tool_calls[0].name == "read_file"
    assert turn.tool_calls[0].arguments == '{"path": "a"}'


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "100", "completion_tokens": "20"},
        {"prompt_tokens": 1.5, "completion_tokens": [3]},
        {"prompt_tokens": -4, "completion_tokens": True},
        {"prompt_tokens": {"n": 1}, "completion_tokens": None},
    ],
)
async def test_usage_of_the_wrong_types_counts_as_none(
    hostile: _Server, usage: dict[str, Any]
) -> None:
    hostile.answers.append(
        lambda h: h.events(
            chat_chunk({"content": "hi"}),
            chat_chunk({}, "stop"),
            sse({"choices": [], "usage": usage}),
        )
    )
    assert_well_typed(await chat_turn(hostile.base_url))


@pytest.mark.parametrize("finish", [1, ["stop"], {"reason": "stop"}, True])
async def test_a_finish_reason_that_is_not_text(hostile: _Server, finish: object) -> None:
    hostile.answers.append(
        lambda h: h.events(chat_chunk({"content": "hi"}), chat_chunk({}, finish))
    )
    assert_well_typed(await chat_turn(hostile.base_url))


async def test_a_session_survives_usage_and_finish_of_the_wrong_types(
    make_repo, hostile: _Server
) -> None:
    """Wrong types reached the engine's sums (``tokens_in += "100"``) and its
    ``finish_reason.startswith``: the session ended in an exception, not a result."""
    repo = make_repo(KATA)
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {
            "name": "write_file",
            "arguments": json.dumps({"path": "calc.py", "content": RIGHT}),
        },
    }
    usage = {"prompt_tokens": "100", "completion_tokens": "20"}
    hostile.answers.extend(
        [
            lambda h: h.events(
                chat_chunk({"tool_calls": [call]}),
                chat_chunk({}, ["tool_calls"]),
                sse({"choices": [], "usage": usage}),
            ),
            lambda h: h.events(chat_chunk({"content": "Fixed."}), chat_chunk({}, 1)),
        ]
    )
    result, _events = await run_loop(make_config(repo, hostile.base_url, TARGET))
    assert result.status == "passed"


def responses_events(*events: dict[str, Any]) -> Answer:
    return lambda h: h.events(*(f"event: {e.get('type')}\n{sse(e)}" for e in events))


async def test_responses_items_with_nulls_and_fields_of_the_wrong_types(
    hostile: _Server,
) -> None:
    usage = {
        "input_tokens": "9",
        "output_tokens": None,
        "input_tokens_details": {"cached_tokens": "3"},
        "output_tokens_details": None,
    }
    hostile.answers.append(
        responses_events(
            {"type": "response.output_text.delta", "delta": "hi"},
            {"type": "response.function_call_arguments.delta", "item_id": [1], "delta": "{}"},
            {
                "type": "response.output_item.done",
                "item": {
                    "type": "function_call",
                    "id": [1],
                    "call_id": 7,
                    "name": ["read_file"],
                    "arguments": {"path": "a"},
                    "status": None,
                    "extra": {"deep": [None, {"x": None}]},
                },
            },
            {"type": "response.output_item.done", "item": None},
            {"type": "response.output_item.done", "item": {"type": None, "content": [None]}},
            {"type": "response.completed", "response": {"usage": usage, "output": None}},
        )
    )
    turn = await responses_turn(hostile.base_url)
    assert_well_typed(turn)
    assert [(c.id, c.arguments) for c in turn.tool_calls] == [("7", "{}")]


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        b"[1, 2]",
        b'{"data": {"id": "m"}}',
        b'{"data": [1, null, "m", {"id": ["m"]}, {"id": "m", "max_model_len": "big"}]}',
    ],
)
async def test_a_models_listing_that_is_not_one_gives_no_window(
    hostile: _Server, body: bytes
) -> None:
    hostile.models = (200, body)
    client = make_client(hostile.base_url, "sk-x", 10.0)
    with anyio.fail_after(30):
        await check_endpoint(client)
        assert await context_window(client, "m") is None
        client.listing = None  # asked through the worker this time
        assert await context_window(client, "m") is None


async def test_line_separators_inside_the_json_do_not_split_the_event(hostile: _Server) -> None:
    """JSON may carry U+2028, U+2029 and U+0085 unescaped (vLLM, llama.cpp send UTF-8 as it
    is); the client splits lines at CR and LF only, and so must the worker."""
    odd = "a\u2028b\u2029c\x85d"
    hostile.answers.append(
        lambda h: h.events(
            "data: "
            + json.dumps({"choices": [{"index": 0, "delta": {"content": odd}}]}, ensure_ascii=False)
            + "\r\n\r\n",
            chat_chunk({}, "stop").replace("\n", "\r"),
        )
    )
    turn = await chat_turn(hostile.base_url)
    assert (turn.text, turn.finish_reason) == (odd, "stop")


async def test_a_split_surrogate_pair_reaches_the_engine_as_its_character(
    hostile: _Server,
) -> None:
    """A server whose strings are UTF-16 (JavaScript) may cut an emoji in two deltas, each
    a lone surrogate in JSON escapes: the worker could not encode them as UTF-8 and failed
    every attempt; the engine then kept two halves no UTF-8 writer could take."""
    hostile.answers.append(
        lambda h: h.events(
            'data: {"choices": [{"index": 0, "delta": {"content": "smile \\ud83d"}}]}\n\n',
            'data: {"choices": [{"index": 0, "delta": {"content": "\\ude00"}}]}\n\n',
            chat_chunk({}, "stop"),
        )
    )
    turn = await chat_turn(hostile.base_url)
    assert turn.text == "smile \U0001f600"


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b"data: 1\r", b"\ndata: 2\r", b"\r", b"data: 3\n", b"\n"], ["1\n2", "3"]),
        ([b"data: 1\r", b"\n\r", b"\n", b"data: \xe2\x80", b"\xa8\r"], ["1", "\u2028"]),
        ([b"event: x\ndata:a\n: note\ndata:  b\n\n\n\n"], ["a\n b"]),
    ],
)
async def test_events_split_at_cr_lf_and_crlf_wherever_the_pieces_end(
    pieces: list[bytes], expected: list[str]
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    assert [data async for data in model_worker.events(body())] == expected


async def test_an_endless_event_is_cut_not_held(hostile: _Server) -> None:
    """An event line that never ends: the worker held all of it (hundreds of MB, until the
    machine ran out) before the engine heard anything."""
    sent: list[int] = []

    def endless(h: _Handler) -> None:
        h.events('data: {"choices": [{"index": 0, "delta": {"content": "')
        block = b"a" * (1 << 20)
        total = 0
        try:
            while total < 96 << 20:
                h.wfile.write(block)
                total += len(block)
        finally:
            sent.append(total)

    answer_times(hostile, endless)
    with pytest.raises(ModelError, match="longer than"):
        await chat_turn(hostile.base_url)
    assert sent and max(sent) < 48 << 20


# -- the worker's lifecycle -------------------------------------------------------------


async def test_a_request_called_off_mid_stream_closes_the_upstream_stream(
    hostile: _Server,
) -> None:
    """The engine leaving a stream (a stop, a race won elsewhere) closes the worker's HTTP
    stream: the server's next writes find the connection gone."""
    go_on = threading.Event()
    written: list[int] = []

    def slow(h: _Handler) -> None:
        h.events(chat_chunk({"content": "first"}))
        go_on.wait(30)
        for n in range(200):
            h.wfile.write(chat_chunk({"content": "more"}).encode())
            h.wfile.flush()
            written.append(n)
            time.sleep(0.05)

    hostile.answers.append(slow)
    client = make_client(hostile.base_url, "sk-x", 30.0)
    with anyio.fail_after(30):
        async with await client.stream(
            "chat", {"model": "m", "messages": [], "stream": True}
        ) as stream:
            async for chunk in stream:
                assert chunk["choices"][0]["delta"]["content"] == "first"
                break
        go_on.set()
        while not hostile.cut.is_set():
            await anyio.sleep(0.05)
    assert len(written) < 100


async def test_a_worker_killed_between_requests_is_replaced_without_a_failed_request(
    scripted_openai: ScriptedOpenAI,
) -> None:
    scripted_openai.add(Reply(text="one"), Reply(text="two"))
    retries: list[str] = []

    async def on_retry(attempt: int, why: str, delay: float) -> None:
        retries.append(why)

    model = ChatModel(make_client(scripted_openai.base_url, "sk-x", 30.0), "m", backoff=(0.0,))
    ask = [{"role": "user", "content": "hi"}]
    assert (await model.turn(ask, [], on_text=_quiet, on_retry=on_retry)).text == "one"
    first = model_process.worker_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    watch = os.pidfd_open(first)
    try:
        await anyio.to_thread.run_sync(select.select, [watch], [], [], 10)
    finally:
        os.close(watch)
    assert (await model.turn(ask, [], on_text=_quiet, on_retry=on_retry)).text == "two"
    assert retries == []
    assert model_process.worker_pid() not in (None, first)


async def test_many_requests_at_once_each_get_their_own_answer(
    scripted_openai: ScriptedOpenAI,
) -> None:
    """A race's attempts share the one worker: eight streams at once, none crossed."""

    def echo(body: dict[str, Any]) -> Reply:
        return Reply(text=body["messages"][0]["content"] * 40, chunk_size=3)

    scripted_openai.add(*[echo] * 8)
    client = make_client(scripted_openai.base_url, "sk-x", 30.0)
    texts: dict[str, str] = {}

    async def one(name: str) -> None:
        model = ChatModel(client, "m", backoff=(0.0,))
        turn = await model.turn([{"role": "user", "content": name}], [], on_text=_quiet)
        texts[name] = turn.text

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(one, f"<{n}>")
    assert texts == {f"<{n}>": f"<{n}>" * 40 for n in range(8)}


def test_two_engines_each_have_their_own_worker_and_each_takes_its_own_away() -> None:
    code = (
        "from codexloop.core import model_process\n"
        "model_process.start()\n"
        "print(model_process.worker_pid(), flush=True)\n"
        "import sys; sys.stdin.read()\n"
    )
    engines = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    workers = []
    for engine in engines:
        assert engine.stdout is not None
        workers.append(int(engine.stdout.readline()))
    assert workers[0] != workers[1]
    watches = [os.pidfd_open(pid) for pid in workers]
    try:
        engines[0].kill()
        engines[0].wait()
        ended, _, _ = select.select(watches[:1], [], [], 30)
        assert ended, "the first engine's worker outlived it"
        ended, _, _ = select.select(watches[1:], [], [], 0.5)
        assert not ended, "the second engine's worker went with the first engine"
        assert engines[1].stdin is not None
        engines[1].stdin.close()
        engines[1].wait(30)
        ended, _, _ = select.select(watches[1:], [], [], 30)
        assert ended
    finally:
        for watch in watches:
            os.close(watch)
        for engine in engines:
            engine.kill()
            engine.wait()


def test_an_engine_killed_mid_stream_takes_the_worker_and_its_stream_away(
    hostile: _Server,
) -> None:
    go_on = threading.Event()

    def slow(h: _Handler) -> None:
        h.events(chat_chunk({"content": "first"}))
        go_on.wait(30)
        for _ in range(200):
            h.wfile.write(chat_chunk({"content": "more"}).encode())
            h.wfile.flush()
            time.sleep(0.05)

    hostile.answers.append(slow)
    code = (
        "import anyio\n"
        "from codexloop.core import model_process\n"
        "from codexloop.core.model import make_client\n"
        "async def main():\n"
        f"    client = make_client({hostile.base_url!r}, 'sk-x', 30.0)\n"
        "    body = {'model': 'm', 'messages': [], 'stream': True}\n"
        "    async with await client.stream('chat', body) as stream:\n"
        "        async for chunk in stream:\n"
        "            print(model_process.worker_pid(), flush=True)\n"
        "            await anyio.sleep(60)\n"
        "anyio.run(main)\n"
    )
    engine = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        kill_engine_and_await_worker(engine)
        go_on.set()
        assert hostile.cut.wait(30), "the stream went on without anyone reading it"
    finally:
        go_on.set()
        engine.kill()
        engine.wait()


async def test_a_request_queued_to_a_worker_that_dies_fails_rather_than_waits(
    scripted_openai: ScriptedOpenAI,
) -> None:
    """Killed before it took the request's socket from the control socket: the socket goes
    with the worker's queue, and the engine hears the end instead of waiting for ever."""
    scripted_openai.add(Reply(text="after"))
    client = make_client(scripted_openai.base_url, "sk-x", 30.0)
    model_process.start()
    worker = model_process.worker_pid()
    assert worker is not None
    os.kill(worker, signal.SIGSTOP)
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                failed: list[BaseException] = []

                async def ask() -> None:
                    try:
                        await client.stream("chat", {"model": "m", "messages": [], "stream": True})
                    except EndpointError as exc:
                        failed.append(exc)

                tg.start_soon(ask)
                await anyio.sleep(0.3)
                os.kill(worker, signal.SIGKILL)
        assert [type(exc) for exc in failed] == [WorkerLost]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
    model = ChatModel(client, "m", backoff=(0.0,))
    turn = await model.turn([{"role": "user", "content": "hi"}], [], on_text=_quiet)
    assert turn.text == "after"


# -- what the sandbox could reach -------------------------------------------------------


async def test_the_sandbox_cannot_see_the_worker_or_name_a_socket_of_it(
    make_repo, scripted_openai: ScriptedOpenAI
) -> None:
    """A command of the model's looks for the worker among the processes it can see and for
    named sockets to knock on: bubblewrap's own /proc and network namespace show neither."""
    model_process.start()
    worker = model_process.worker_pid()
    repo = make_repo(KATA)
    look = (
        "echo found $(grep -l 'model_[w]orker' /proc/[0-9]*/cmdline) end; "
        f"ls -l /proc/{worker}/fd/ 2>&1 | grep socket; "
        "grep -c . /proc/net/unix; echo looked"
    )
    scripted_openai.add(
        Reply(tool_calls=[Call("run_command", {"command": look})]),
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": RIGHT})]),
        Reply(text="Fixed."),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url, TARGET))
    assert result.status == "passed"
    seen = "".join(
        m["content"] for m in scripted_openai.requests[1]["messages"] if m["role"] == "tool"
    )
    assert "looked" in seen
    assert "found end" in seen
    assert "socket:" not in seen


def test_the_worker_imports_nothing_from_the_folder_it_was_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripted_openai: ScriptedOpenAI
) -> None:
    """Modules named as the worker's imports in the folder the engine runs in (the
    developer's project): the worker starts in / with -P and reads none of them."""
    marker = tmp_path / "imported"
    for name in ("openai", "asyncio", "json", "socket", "codexloop"):
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    monkeypatch.chdir(tmp_path)
    scripted_openai.add(Reply(text="hello"))
    code = (
        "import anyio\n"
        "from codexloop.core.model import ChatModel, make_client\n"
        "async def main():\n"
        f"    model = ChatModel(make_client({scripted_openai.base_url!r}, 'sk-x', 30.0), 'm')\n"
        "    async def quiet(text): pass\n"
        "    turn = await model.turn([{'role': 'user', 'content': 'hi'}], [], on_text=quiet)\n"
        "    print(turn.text)\n"
        "anyio.run(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "hello", done.stderr[-2000:]
    assert not marker.exists(), marker.read_text()


@pytest.mark.parametrize("message", [{"text": "nested"}, 42, ["a"]])
async def test_a_failed_response_whose_message_is_not_text_is_told_not_retried(
    hostile: _Server, message: object
) -> None:
    """``response.failed`` with an error message of another type: the failure as sent, one
    request, not a TypeError retried until the attempts ran out."""
    failed = {"type": "response.failed", "response": {"error": {"code": 7, "message": message}}}
    hostile.answers.append(lambda h: h.events(f"data: {json.dumps(failed)}\n\n"))
    with pytest.raises(ModelError) as said:
        await responses_turn(hostile.base_url)
    assert str(message) in str(said.value) and "7" in str(said.value)
    assert hostile.posts == 1
