"""A scripted OpenAI-compatible HTTP server for tests that drive the real `openai` client.

Tests queue turns (`Reply`, `HTTPError`, `Drop`, `Hangup`, `Incomplete`, `Failed`, or a callable
returning one); each POST /v1/chat/completions or POST /v1/responses consumes the next
turn of the one shared queue. Standard library only.
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

__all__ = [
    "Call",
    "Drop",
    "Failed",
    "HTTPError",
    "Hangup",
    "Incomplete",
    "Reply",
    "ScriptedOpenAI",
    "Turn",
]

HOLD_TIMEOUT = 30.0
CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"
UNSUPPORTED_API_MESSAGE = (
    "This model is only supported in v1/responses and not in v1/chat/completions."
)
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


@dataclass
class Hangup:
    """Stream `reply`, then end the response cleanly after `after_chunks` SSE events: the body
    ends as a finished one does, but with no finish reason and no `[DONE]` (chat), no
    `response.completed` (responses) — a server or proxy that hung up mid-answer."""

    reply: Reply
    after_chunks: int = 2


@dataclass
class Incomplete:
    """Responses: stream `reply`, then end with `response.incomplete` (chat: finish "length")."""

    reply: Reply
    reason: str = "max_output_tokens"


@dataclass
class Failed:
    """Responses: `response.created`, then `response.failed` (chat: HTTP 500 `message`)."""

    message: str
    code: str = "server_error"


Turn: TypeAlias = Reply | HTTPError | Drop | Hangup | Incomplete | Failed
_Scripted: TypeAlias = Turn | Callable[[dict[str, Any]], Turn]


class _Aborted(Exception):
    """The connection was (deliberately or not) cut; stop answering."""


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _arguments(call: Call) -> str:
    return call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)


def _error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ScriptedOpenAI:
    """OpenAI-compatible server on 127.0.0.1 answering from a queue of scripted turns."""

    def __init__(
        self,
        models: list[str] | None = None,
        *,
        reject_chat_models: set[str] | frozenset[str] = frozenset(),
        responses_enabled: bool = True,
    ) -> None:
        self.models: list[str] = list(models) if models is not None else ["scripted-model"]
        # Extra fields of a model in the /models listing (e.g. vLLM's max_model_len).
        self.model_extra: dict[str, dict[str, Any]] = {}
        # Chat requests for these models get OpenAI's 400 "unsupported_api_for_model".
        self.reject_chat_models: set[str] | frozenset[str] = reject_chat_models
        # False: /v1/responses answers 404, like a server speaking Chat Completions only.
        self.responses_enabled = responses_enabled
        # Every request that consumed a turn, in arrival order (both endpoints).
        self.requests: list[dict[str, Any]] = []
        self.chat_requests: list[dict[str, Any]] = []
        self.responses_requests: list[dict[str, Any]] = []
        # (path, body) of requests refused by the switches above; they consume no turn.
        self.rejected_requests: list[tuple[str, dict[str, Any]]] = []
        self.authorizations: list[str] = []  # each request's Authorization header
        # GET /models: set when it was asked; answered once ``models_gate`` (if any) is set,
        # with ``models_status`` (an error) instead of the listing when that is not None.
        self.models_asked = threading.Event()
        self.models_count = 0  # how many times /models was asked
        self.models_gate: threading.Event | None = None
        self.models_status: int | None = None
        self._turns: deque[_Scripted] = deque()
        self._by_model: dict[str, deque[_Scripted]] = {}  # scripts of one model (attempts)
        self._cond = threading.Condition()
        self._ids: dict[str, itertools.count[int]] = {}
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

    def add_for(self, model: str, *turns: _Scripted) -> None:
        """Queue turns for requests naming ``model`` (attempts racing over a model list each
        follow their own script); other requests take the shared queue."""
        with self._cond:
            self._by_model.setdefault(model, deque()).extend(turns)
            if model not in self.models:
                self.models.append(model)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least `n` requests (chat or responses) arrived; False on timeout."""
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

    def _record(self, body: dict[str, Any], path: str = CHAT_PATH) -> tuple[int, _Scripted | None]:
        with self._cond:
            self.requests.append(body)
            (self.responses_requests if path == RESPONSES_PATH else self.chat_requests).append(body)
            number = len(self.requests)
            own = self._by_model.get(str(body.get("model")))
            if own is not None:
                turn = own.popleft() if own else None
            else:
                turn = self._turns.popleft() if self._turns else None
            self._cond.notify_all()
        return number, turn

    def _reject(self, path: str, body: dict[str, Any]) -> None:
        with self._cond:
            self.rejected_requests.append((path, body))
            self._cond.notify_all()

    def _next_id(self, prefix: str) -> str:
        with self._cond:
            counter = self._ids.setdefault(prefix, itertools.count(1))
            return f"{prefix}_{next(counter)}"

    def _next_call_id(self) -> str:
        return self._next_id("call")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    scripted: ScriptedOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: client disconnects are expected, anything else surfaces in the test."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _hang_up = False  # this request's turn is a `Hangup`

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
        scripted = self.server.scripted
        scripted.models_count += 1
        scripted.models_asked.set()
        if scripted.models_gate is not None:
            scripted.models_gate.wait(60)
        if scripted.models_status is not None:
            status = scripted.models_status
            self._send_json(status, _error_body(status, f"scripted /models error {status}"))
            return
        data = [
            {
                "id": m,
                "object": "model",
                "created": 0,
                "owned_by": "scripted",
                **scripted.model_extra.get(m, {}),
            }
            for m in scripted.models
        ]
        self._send_json(200, {"object": "list", "data": data})

    def _post(self) -> None:
        raw = self._read_body()
        path = self._path()
        scripted = self.server.scripted
        if path not in (CHAT_PATH, RESPONSES_PATH):
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
        if path == RESPONSES_PATH and not scripted.responses_enabled:
            scripted._reject(path, body)
            self._not_found()
            return
        if path == CHAT_PATH and body.get("model") in scripted.reject_chat_models:
            scripted._reject(path, body)
            error = _error_body(400, UNSUPPORTED_API_MESSAGE, "unsupported_api_for_model", "model")
            self._send_json(400, error)
            return
        scripted.authorizations.append(self.headers.get("Authorization", ""))
        number, entry = scripted._record(body, path)
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
        if isinstance(turn, Failed) and path == CHAT_PATH:
            turn = HTTPError(500, turn.message)
        if isinstance(turn, HTTPError):
            self._send_json(turn.status, _error_body(turn.status, turn.message, turn.code))
            return
        answer: Reply | Incomplete | Failed = (
            turn.reply if isinstance(turn, Drop | Hangup) else turn
        )
        drop_after = turn.after_chunks if isinstance(turn, Drop | Hangup) else None
        self._hang_up = isinstance(turn, Hangup)
        if path == RESPONSES_PATH:
            self._respond(number, body, answer, drop_after)
            return
        assert not isinstance(answer, Failed)
        reply, finish = (
            (answer.reply, "length") if isinstance(answer, Incomplete) else (answer, None)
        )
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
            self._stream(number, body, reply, drop_after, include_usage, finish)
        else:
            self._complete(number, body, reply, drop_after, finish)

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
        finish: str | None = None,
    ) -> None:
        self._start_event_stream()
        chunks = self._chunks(number, body, reply, include_usage, finish)
        for sent, chunk in enumerate(chunks):
            if drop_after is not None and sent >= drop_after:
                break
            self._write_event(json.dumps(chunk))
            if sent == 0:
                self._hold(reply)
        if drop_after is not None:
            self._cut_stream()
            return
        self._write_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _cut_stream(self) -> None:
        """`Drop`: abort the connection mid-body; `Hangup`: end the body as if it were whole."""
        if not self._hang_up:
            raise _Aborted
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def _start_event_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def _write_event(self, data: str, event_type: str | None = None) -> None:
        head = f"event: {event_type}\n" if event_type else ""
        event = f"{head}data: {data}\n\n".encode()
        self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")

    def _chunks(
        self,
        number: int,
        body: dict[str, Any],
        reply: Reply,
        include_usage: bool,
        finish: str | None = None,
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
        finish = finish or ("tool_calls" if reply.tool_calls else "stop")
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
        self,
        number: int,
        body: dict[str, Any],
        reply: Reply,
        drop_after: int | None,
        finish: str | None = None,
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
                    "finish_reason": finish or ("tool_calls" if reply.tool_calls else "stop"),
                }
            ],
            "usage": _usage(reply),
        }
        self._send_json_or_cut(payload, drop_after)

    def _send_json_or_cut(self, payload: dict[str, Any], drop_after: int | None) -> None:
        """Send `payload`; with `drop_after` set, only its first half, then cut."""
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

    # -- responses -------------------------------------------------------------

    def _respond(
        self,
        number: int,
        body: dict[str, Any],
        turn: Reply | Incomplete | Failed,
        drop_after: int | None,
    ) -> None:
        events = _ResponseEvents(self.server.scripted, number, body).build(turn)
        reply = turn.reply if isinstance(turn, Incomplete) else turn
        hold = reply if isinstance(reply, Reply) else None
        if not body.get("stream"):
            if hold is not None:
                self._hold(hold)
            self._send_json_or_cut(events[-1]["response"], drop_after)
            return
        self._start_event_stream()
        for sent, event in enumerate(events):
            if drop_after is not None and sent >= drop_after:
                break
            self._write_event(json.dumps(event), event["type"])
            if sent == 0 and hold is not None:
                self._hold(hold)
        if drop_after is not None:
            self._cut_stream()
            return
        self.wfile.write(b"0\r\n\r\n")


class _ResponseEvents:
    """The Responses API event sequence of one scripted turn."""

    def __init__(self, scripted: ScriptedOpenAI, number: int, body: dict[str, Any]) -> None:
        self.scripted = scripted
        self.body = body
        self.id = f"resp_scripted_{number}"
        self.created_at = int(time.time())
        include = body.get("include")
        self.encrypted = isinstance(include, list) and "reasoning.encrypted_content" in include
        self.events: list[dict[str, Any]] = []

    def build(self, turn: Reply | Incomplete | Failed) -> list[dict[str, Any]]:
        self._emit("response.created", response=self._response("in_progress", []))
        if isinstance(turn, Failed):
            error = {"code": turn.code, "message": turn.message}
            self._emit("response.failed", response=self._response("failed", [], error=error))
            return self.events
        self._emit("response.in_progress", response=self._response("in_progress", []))
        reply = turn.reply if isinstance(turn, Incomplete) else turn
        output: list[dict[str, Any]] = []
        if reply.reasoning:
            output.append(self._reasoning(len(output), reply))
        if reply.text:
            output.append(self._message(len(output), reply))
        for call in reply.tool_calls:
            output.append(self._function_call(len(output), call, reply.chunk_size))
        usage = _responses_usage(reply)
        if isinstance(turn, Incomplete):
            details = {"reason": turn.reason}
            final = self._response("incomplete", output, usage=usage, incomplete_details=details)
            self._emit("response.incomplete", response=final)
        else:
            final = self._response("completed", output, usage=usage)
            final["completed_at"] = self.created_at
            self._emit("response.completed", response=final)
        return self.events

    def _emit(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, "sequence_number": len(self.events), **fields})

    def _response(
        self,
        status: str,
        output: list[dict[str, Any]],
        *,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete_details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete_details,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {},
            "model": body.get("model") or "scripted-model",
            "output": [dict(item) for item in output],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": usage,
            "user": body.get("user"),
        }

    def _reasoning(self, index: int, reply: Reply) -> dict[str, Any]:
        item_id = self.scripted._next_id("rs")
        item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
        if self.encrypted:
            item["encrypted_content"] = "enc-" + item_id.removeprefix("rs_")
        where = {"item_id": item_id, "output_index": index, "summary_index": 0}
        text = reply.reasoning
        self._emit("response.output_item.added", output_index=index, item=dict(item))
        part = {"type": "summary_text", "text": ""}
        self._emit("response.reasoning_summary_part.added", **where, part=part)
        for piece in _pieces(text, reply.chunk_size):
            self._emit("response.reasoning_summary_text.delta", **where, delta=piece)
        self._emit("response.reasoning_summary_text.done", **where, text=text)
        part = {"type": "summary_text", "text": text}
        self._emit("response.reasoning_summary_part.done", **where, part=part)
        item["summary"] = [{"type": "summary_text", "text": text}]
        self._emit("response.output_item.done", output_index=index, item=item)
        return item

    def _message(self, index: int, reply: Reply) -> dict[str, Any]:
        item_id = self.scripted._next_id("msg")
        added = {
            "id": item_id,
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        text = reply.text
        self._emit("response.output_item.added", output_index=index, item=added)
        part: dict[str, Any] = {
            "type": "output_text",
            "annotations": [],
            "logprobs": [],
            "text": "",
        }
        self._emit("response.content_part.added", **where, part=part)
        for piece in _pieces(text, reply.chunk_size):
            self._emit("response.output_text.delta", **where, delta=piece, logprobs=[])
        self._emit("response.output_text.done", **where, text=text, logprobs=[])
        part = {**part, "text": text}
        self._emit("response.content_part.done", **where, part=part)
        item = {**added, "status": "completed", "content": [part]}
        self._emit("response.output_item.done", output_index=index, item=item)
        return item

    def _function_call(self, index: int, call: Call, chunk_size: int) -> dict[str, Any]:
        item_id = self.scripted._next_id("fc")
        call_id = call.id if call.id is not None else self.scripted._next_call_id()
        arguments = _arguments(call)
        added = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call_id,
            "name": call.name,
        }
        where = {"item_id": item_id, "output_index": index}
        self._emit("response.output_item.added", output_index=index, item=added)
        for piece in _pieces(arguments, chunk_size):
            self._emit("response.function_call_arguments.delta", **where, delta=piece)
        self._emit("response.function_call_arguments.done", **where, arguments=arguments)
        item = {**added, "status": "completed", "arguments": arguments}
        self._emit("response.output_item.done", output_index=index, item=item)
        return item


def _usage(reply: Reply) -> dict[str, int]:
    prompt, completion = reply.usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _responses_usage(reply: Reply) -> dict[str, Any]:
    prompt, completion = reply.usage
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": len(reply.reasoning) // 4},
        "total_tokens": prompt + completion,
    }
