"""Replay: a recorded session's model side, served again over the same wire.

A trace holds every event of a session. The model's turns (text fragments, tool calls,
usage, timing) are read back from it and served by a small OpenAI-compatible server on
127.0.0.1, so the loop talks to it exactly as to a live model, through the real client,
while the sandbox, the tests and the diff run for real.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from codexloop.core.errors import CodexloopError
from codexloop.core.trace import TRACE_VERSION


class TraceError(CodexloopError):
    """A trace that cannot be replayed; the message says why, in one line."""


@dataclass
class Fragment:
    delay_s: float  # since the previous fragment of the turn (recorded timing)
    text: str = ""
    reasoning: str = ""


@dataclass
class RecordedCall:
    call_id: str
    name: str
    arguments: str


@dataclass
class RecordedTurn:
    fragments: list[Fragment] = field(default_factory=list)
    calls: list[RecordedCall] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Recording:
    header: dict[str, Any]
    turns: list[RecordedTurn]
    events: list[dict[str, Any]]

    @property
    def outcomes(self) -> list[bool]:
        """Pass/fail of every test run, in order (baseline included)."""
        return [bool(e["passed"]) for e in self.events if e.get("type") == "test_finished"]


def read_recording(path: Path) -> Recording:
    """Parse a trace file; raise :class:`TraceError` for a missing, corrupt or newer one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read it ({exc})") from None
    events: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise TraceError(f"{path}: line {number} is not valid JSON (a corrupt trace)") from None
        if not isinstance(data, dict) or "type" not in data:
            raise TraceError(f"{path}: line {number} is not a trace event")
        events.append(data)
    if not events or events[0]["type"] != "trace_header":
        raise TraceError(f"{path}: not a codexloop trace (no header line)")
    header = events[0]
    version = header.get("version")
    if not isinstance(version, int) or version > TRACE_VERSION:
        raise TraceError(
            f"{path}: written by a newer codexloop (trace version {version}, this one reads "
            f"{TRACE_VERSION}); upgrade codexloop to replay it"
        )
    return Recording(header, _turns(events[1:]), events[1:])


def _turns(events: list[dict[str, Any]]) -> list[RecordedTurn]:
    turns: list[RecordedTurn] = []
    current: RecordedTurn | None = None
    last_t = 0.0
    for event in events:
        kind = event["type"]
        t = float(event.get("t", last_t))
        if kind == "model_turn_started":
            current = RecordedTurn()
            turns.append(current)
        elif current is None:
            pass
        elif kind in ("model_text", "model_reasoning"):
            fragment = Fragment(max(0.0, t - last_t))
            if kind == "model_text":
                fragment.text = event["text"]
            else:
                fragment.reasoning = event["text"]
            current.fragments.append(fragment)
        elif kind == "tool_call":
            current.calls.append(
                RecordedCall(
                    event.get("call_id") or f"call_{len(current.calls)}",
                    event["name"],
                    event["arguments"],
                )
            )
        elif kind == "usage":
            current.input_tokens, current.output_tokens = (
                event["input_tokens"],
                event["output_tokens"],
            )
        elif kind == "model_retry":
            current.fragments.clear()  # the retried attempt's fragments were discarded
        last_t = t
    return turns


class ReplayServer:
    """Serves recorded turns over Chat Completions streaming on 127.0.0.1, in order.

    ``speed`` scales the recorded timing: 1 plays it as it happened, ``None`` (max) as
    fast as the client reads. ``after``, given the request, answers once the recording is
    played out (the demo uses it to answer review feedback); without it, or when it
    returns None, the request is refused.
    """

    def __init__(
        self,
        turns: list[RecordedTurn],
        *,
        speed: float | None = None,
        model: str = "replay",
        after: Callable[[dict[str, Any]], RecordedTurn | None] | None = None,
    ) -> None:
        self._turns = list(turns)
        self._after = after
        self._lock = threading.Lock()
        self.speed = speed
        self.model = model
        self.served = 0
        handler = type("Handler", (_Handler,), {"replay": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/v1"

    def next_turn(self, request: dict[str, Any] | None = None) -> RecordedTurn | None:
        with self._lock:
            if self.served >= len(self._turns):
                turn = self._after(request or {}) if self._after is not None else None
            else:
                turn = self._turns[self.served]
            if turn is not None:
                self.served += 1
            return turn

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ReplayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    replay: ReplayServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.replay.model,
                            "object": "model",
                            "created": 0,
                            "owned_by": "codexloop-replay",
                        }
                    ],
                },
            )
        else:
            self._json(404, {"error": {"message": "not found", "type": "not_found_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(
                404,
                {
                    "error": {
                        "message": "only Chat Completions is replayed",
                        "type": "not_found_error",
                    }
                },
            )
            return
        turn = self.replay.next_turn(body)
        if turn is None:
            self._json(
                400,
                {
                    "error": {
                        "message": "the recording has no model turn left: the replay "
                        "diverged from the recorded session",
                        "type": "invalid_request_error",
                        "code": "replay_exhausted",
                    }
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for chunk in _chunks(turn, body, self.replay.speed):
                data = f"data: {chunk}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def _chunks(turn: RecordedTurn, body: dict[str, Any], speed: float | None) -> Iterator[str]:
    created = int(time.time())
    base = {
        "id": "chatcmpl-replay",
        "object": "chat.completion.chunk",
        "created": created,
        "model": body.get("model", "replay"),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return json.dumps(
            {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        )

    yield chunk({"role": "assistant", "content": ""})
    for fragment in turn.fragments:
        if speed:
            time.sleep(min(fragment.delay_s / speed, 5.0))
        if fragment.reasoning:
            yield chunk({"reasoning_content": fragment.reasoning})
        if fragment.text:
            yield chunk({"content": fragment.text})
    for index, call in enumerate(turn.calls):
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ]
            }
        )
    yield chunk({}, "tool_calls" if turn.calls else "stop")
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {
            "prompt_tokens": turn.input_tokens,
            "completion_tokens": turn.output_tokens,
            "total_tokens": turn.input_tokens + turn.output_tokens,
        }
        yield json.dumps({**base, "choices": [], "usage": usage})
    yield "[DONE]"
