"""A scripted OpenAI-compatible HTTP server for tests that drive the real `openai` client.

Tests queue turns (`Reply`, `HTTPError`, `Drop`, or a callable returning one); each
POST /v1/chat/completions consumes the next turn. Standard library only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeAlias

__all__ = ["Call", "Drop", "HTTPError", "Reply", "ScriptedOpenAI", "Turn"]

HOLD_TIMEOUT = 30.0
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass
class Call:
    """One function tool call the model makes."""

    name: str
    arguments: str | dict[str, Any]
    id: str | None = None


@dataclass
class Reply:
    """One assistant turn; streamed in deltas of `chunk_size` characters."""

    text: str = ""
    tool_calls: list[Call] = field(default_factory=list)
    chunk_size: int = 7
    usage: tuple[int, int] = (100, 20)
    hold: threading.Event | None = None
    reasoning: str = ""


@dataclass
class HTTPError:
    """Answer the request with an HTTP error and an OpenAI error body."""

    status: int
    message: str = "scripted error"
    code: str | None = None


@dataclass
class Drop:
    """Stream `reply`, then close the connection after `after_chunks` SSE chunks."""

    reply: Reply
    after_chunks: int = 2


Turn: TypeAlias = Reply | HTTPError | Drop
_Scripted: TypeAlias = Turn | Callable[[dict[str, Any]], Turn]


class _Aborted(Exception):
    """The connection was (deliberately or not) cut; stop answering."""


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _arguments(call: Call) -> str:
    return call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)


def _error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class ScriptedOpenAI:
    """OpenAI-compatible server on 127.0.0.1 answering from a queue of scripted turns."""

    def __init__(self, models: list[str] | None = None) -> None:
        self.models: list[str] = list(models) if models is not None else ["scripted-model"]
        self.requests: list[dict[str, Any]] = []
        self._turns: deque[_Scripted] = deque()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._closing = threading.Event()
        self._closed = False
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.scripted = self
        port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"scripted-openai-{port}",
            daemon=True,
        )
        self._thread.start()

    def add(self, *turns: _Scripted) -> None:
        """Queue turns; a callable receives the request body and returns the turn."""
        with self._cond:
            self._turns.extend(turns)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least `n` chat requests arrived; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.requests) >= n, timeout=timeout)

    def close(self) -> None:
        """Stop serving and join the server thread; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedOpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by the handler -------------------------------------------------

    def _record(self, body: dict[str, Any]) -> tuple[int, _Scripted | None]:
        with self._cond:
            self.requests.append(body)
            number = len(self.requests)
            turn = self._turns.popleft() if self._turns else None
            self._cond.notify_all()
        return number, turn

    def _next_call_id(self) -> str:
        return f"call_{next(self._ids)}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    scripted: ScriptedOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: client disconnects are expected, anything else surfaces in the test."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""

    # -- routing -------------------------------------------------------------

    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _guard(self, action: Callable[[], None]) -> None:
        self.close_connection = True
        try:
            action()
        except (_Aborted, *_DISCONNECTS):
            self._abort()

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def _get(self) -> None:
        if self._path() != "/v1/models":
            self._not_found()
            return
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "scripted"}
            for m in self.server.scripted.models
        ]
        self._send_json(200, {"object": "list", "data": data})

    def _post(self) -> None:
        raw = self._read_body()
        if self._path() != "/v1/chat/completions":
            self._not_found()
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError as err:
            self._send_json(400, _error_body(400, f"scripted server: invalid JSON body: {err}"))
            return
        if not isinstance(body, dict):
            self._send_json(400, _error_body(400, "scripted server: body must be a JSON object"))
            return
        scripted = self.server.scripted
        number, entry = scripted._record(body)
        if entry is None:
            message = f"scripted server: no turn left for request #{number}"
            self._send_json(500, _error_body(500, message), {"x-should-retry": "false"})
            return
        try:
            turn = entry(body) if callable(entry) else entry
        except Exception as err:
            message = f"scripted server: turn callable failed for request #{number}: {err!r}"
            self._send_json(500, _error_body(500, message), {"x-should-retry": "false"})
            return
        if isinstance(turn, HTTPError):
            self._send_json(turn.status, _error_body(turn.status, turn.message, turn.code))
            return
        reply, drop_after = (
            (turn.reply, turn.after_chunks) if isinstance(turn, Drop) else (turn, None)
        )
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
            self._stream(number, body, reply, drop_after, include_usage)
        else:
            self._complete(number, body, reply, drop_after)

    def _not_found(self) -> None:
        message = f"scripted server: unknown path {self.command} {self.path}"
        self._send_json(404, _error_body(404, message))

    # -- I/O -----------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(
        self, status: int, payload: object, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _abort(self) -> None:
        """Cut the connection without finishing the response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _hold(self, reply: Reply) -> None:
        if reply.hold is None:
            return
        deadline = time.monotonic() + HOLD_TIMEOUT
        closing = self.server.scripted._closing
        while not reply.hold.wait(0.05):
            if closing.is_set() or time.monotonic() > deadline:
                raise _Aborted

    def _call_ids(self, reply: Reply) -> list[str]:
        return [
            c.id if c.id is not None else self.server.scripted._next_call_id()
            for c in reply.tool_calls
        ]

    # -- chat completions ------------------------------------------------------

    def _stream(
        self,
        number: int,
        body: dict[str, Any],
        reply: Reply,
        drop_after: int | None,
        include_usage: bool,
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

        chunks = self._chunks(number, body, reply, include_usage)
        for sent, chunk in enumerate(chunks):
            if drop_after is not None and sent >= drop_after:
                raise _Aborted
            self._write_event(json.dumps(chunk))
            if sent == 0:
                self._hold(reply)
        if drop_after is not None:
            raise _Aborted
        self._write_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _write_event(self, data: str) -> None:
        event = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")

    def _chunks(
        self, number: int, body: dict[str, Any], reply: Reply, include_usage: bool
    ) -> list[dict[str, Any]]:
        size = reply.chunk_size
        deltas: list[dict[str, Any]] = [
            {"reasoning_content": p} for p in _pieces(reply.reasoning, size)
        ]
        deltas += [{"content": p} for p in _pieces(reply.text, size)]
        for index, (call, call_id) in enumerate(
            zip(reply.tool_calls, self._call_ids(reply), strict=True)
        ):
            function = {"name": call.name, "arguments": ""}
            deltas.append(
                {
                    "tool_calls": [
                        {"index": index, "id": call_id, "type": "function", "function": function}
                    ]
                }
            )
            deltas += [
                {"tool_calls": [{"index": index, "function": {"arguments": p}}]}
                for p in _pieces(_arguments(call), size)
            ]
        if deltas:
            deltas[0] = {"role": "assistant", **deltas[0]}
        else:
            deltas = [{"role": "assistant", "content": ""}]

        base = {
            "id": f"chatcmpl-scripted-{number}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model") or "scripted-model",
            "system_fingerprint": None,
        }
        finish = "tool_calls" if reply.tool_calls else "stop"
        chunks = [
            {**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]}
            for d in deltas
        ]
        chunks.append(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}],
            }
        )
        if include_usage:
            chunks.append({**base, "choices": [], "usage": _usage(reply)})
        return chunks

    def _complete(
        self, number: int, body: dict[str, Any], reply: Reply, drop_after: int | None
    ) -> None:
        self._hold(reply)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text or None,
            "refusal": None,
        }
        if reply.reasoning:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": _arguments(c)},
                }
                for c, call_id in zip(reply.tool_calls, self._call_ids(reply), strict=True)
            ]
        payload = {
            "id": f"chatcmpl-scripted-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "scripted-model",
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                }
            ],
            "usage": _usage(reply),
        }
        if drop_after is None:
            self._send_json(200, payload)
            return
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        raise _Aborted


def _usage(reply: Reply) -> dict[str, int]:
    prompt, completion = reply.usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
