"""The model worker: a child process that holds the openai client and streams its answers
back to the engine (started and spoken to by :mod:`codexloop.core.model_host`).

Why a process of its own: ``import openai`` is half a second to a second of one core's time
(its thousand pydantic types), and every streamed chunk is parsed into one of them. In the
engine's process that time held the interpreter's lock while the session was being set up
and, in the app, while the screen was being drawn; here it runs on another core, beside
the set-up, and what reaches the engine is plain JSON.

The worker answers requests, each on a socket of its own: the engine makes a socket pair,
hands one end over the control socket (the only descriptor the worker inherits) and
writes one request line on its own end; the worker writes answer lines back — stream
chunks and an end, a model listing, a check's verdict — or one error line. When the engine
closes a request's socket the request is called off (the HTTP stream closed); when the
engine's end of the control socket closes (it exited, however it exited) the worker exits.

Requests: ``{"op": "chat"|"responses"|"models"|"check", "client": [base_url, api_key,
timeout], "body": {...}, "timeout": seconds}``. Errors: ``{"error": {"kind": "status",
"status", "message", "body", "code"}}``, ``kind`` ``timeout``, ``connection`` (with
``message``: the cause) or ``other``.

Imports nothing of the engine: it starts in a fresh interpreter, and nothing but the
client (and the standard library) is worth its start-up time. The endpoint's check is the
engine's own (through the client's HTTP transport, without the client) where it can be.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

LINE_LIMIT = 1 << 27  # a request (the whole conversation) may be long; no line is longer
EVENT_LIMIT = 1 << 24
"""The longest server-sent event taken (a whole turn's answer is far shorter): a line that
never ends is cut here, not held until the machine runs out of memory."""
_LINE_END = re.compile(rb"\r\n|\r|\n")


def line(message: dict[str, Any]) -> bytes:
    """A message as one line; a lone surrogate a server sent (half an emoji cut by a UTF-16
    server) goes through as the client parsed it (``json.loads`` reads bytes so)."""
    text = json.dumps(message, ensure_ascii=False, default=str)
    return text.encode(errors="surrogatepass") + b"\n"


class Worker:
    """The client's package, the clients made (one per endpoint, key and timeout), the
    requests under way."""

    def __init__(self, openai: ModuleType | ImportError) -> None:
        self.openai = openai  # the client's package, or why it could not be imported
        self.clients: dict[tuple[Any, ...], Any] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def client(self, settings: list[Any]) -> tuple[ModuleType, Any]:
        openai = self.openai
        if isinstance(openai, ImportError):
            raise RuntimeError(f"the openai client could not be imported ({openai})")
        key = tuple(settings)
        if key not in self.clients:
            base_url, api_key, timeout = settings
            self.clients[key] = openai.AsyncOpenAI(
                base_url=base_url,
                api_key=api_key,
                max_retries=0,  # retries are the engine's, and visible
                timeout=openai.Timeout(timeout, connect=10.0),
            )
        return openai, self.clients[key]

    def take(self, conn: socket.socket) -> None:
        task = asyncio.ensure_future(self.serve(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve(self, conn: socket.socket) -> None:
        """One request: answered until done, or until the engine hangs up."""
        reader, writer = await asyncio.open_unix_connection(sock=conn, limit=LINE_LIMIT)
        try:
            request = await reader.readline()
            if not request:
                return
            asked = json.loads(request)
            if asked.get("op") == "prepare":
                self.prepare(asked)
                return
            work = asyncio.ensure_future(self.answer(asked, writer))
            hangup = asyncio.ensure_future(reader.read(1))  # the engine called it off
            await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
            for task in (work, hangup):
                task.cancel()
            await asyncio.gather(work, hangup, return_exceptions=True)
        except (OSError, ValueError):  # the engine went away, or wrote no request
            pass
        finally:
            writer.close()

    def prepare(self, request: dict[str, Any]) -> None:
        """Make a session's client ahead of its first request, while the engine sets the
        session up: its HTTP transport (a TLS context: tens of milliseconds) and the resource
        of its protocol (their modules are imported on first use). Nothing is answered."""
        try:
            _openai, client = self.client(request["client"])
            resource = (
                client.responses if request.get("api") == "responses" else client.chat.completions
            )
            _ = resource.with_streaming_response
        except Exception:  # the first request meets it again, and says it
            pass

    async def answer(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        try:
            op = request["op"]
            if op == "check":
                await self.check(request, writer)
                await writer.drain()
                return
            _openai, client = self.client(request["client"])
            if op == "models":
                listing = await client.with_options(
                    timeout=request["timeout"]
                ).models.with_raw_response.list()
                body = listing.http_response.json()
                entries = body.get("data") if isinstance(body, dict) else None
                writer.write(line({"models": entries if isinstance(entries, list) else []}))
            else:
                resource = client.chat.completions if op == "chat" else client.responses
                async with resource.with_streaming_response.create(**request["body"]) as response:
                    async for data in events(response.iter_bytes()):
                        if data.startswith("[DONE]"):
                            break
                        writer.write(line({"chunk": chunk(data)}))
                        await writer.drain()
                writer.write(line({"end": True}))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            openai = self.openai if isinstance(self.openai, ModuleType) else None
            writer.write(line({"error": describe(exc, openai)}))
        await writer.drain()

    async def check(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """Reachable, and the key not refused, asked with the client (the engine asks this
        only where it cannot ask through the client's HTTP transport itself): 401 and 403
        are errors, any other answer (404: no /models) means reachable."""
        openai, client = self.client(request["client"])
        try:
            await client.with_options(timeout=request["timeout"]).models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            raise
        except openai.APIStatusError:
            pass
        writer.write(line({"ok": True}))


async def lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body's lines, split at CR, LF and CRLF only, as the client splits them (a JSON
    string may hold U+2028 or U+0085 as they are); one longer than :data:`EVENT_LIMIT` is an
    error."""
    pending = bytearray()
    async for piece in chunks:
        if not pending and piece.endswith(b"\n"):  # whole lines: most pieces of a stream
            for text in _LINE_END.split(piece)[:-1]:
                yield text
            continue
        scan = max(0, len(pending) - 1)  # a CR held back may be half a CRLF
        pending += piece
        start = 0
        for end in _LINE_END.finditer(pending, scan):
            if end.group() == b"\r" and end.end() == len(pending):
                break
            yield bytes(pending[start : end.start()])
            start = end.end()
        del pending[:start]
        if len(pending) > EVENT_LIMIT:
            raise StreamError(f"the server sent a line longer than {EVENT_LIMIT} bytes")
    if pending:
        yield bytes(pending.rstrip(b"\r"))


async def events(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The data of each server-sent event (its ``data:`` lines joined), as the server sent it:
    no parsing into the client's types, which the engine would only turn back into JSON."""
    data: list[bytes] = []
    size = 0
    async for text in lines(chunks):
        if not text:
            if data:
                yield b"\n".join(data).decode(errors="replace")
            data, size = [], 0
        elif text.startswith(b"data:"):
            value = text[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
            size += len(value)
            if size > EVENT_LIMIT:
                raise StreamError(f"the server sent an event longer than {EVENT_LIMIT} bytes")
    if data:
        yield b"\n".join(data).decode(errors="replace")


class StreamError(Exception):
    """An error the server put in the stream (what the client raises as ``APIError``)."""


def chunk(data: str) -> Any:
    """One event's JSON; an error in it raised as the client raises it."""
    try:
        parsed = json.loads(data)
    except ValueError:
        raise StreamError(f"the server sent an event that is not JSON: {data[:200]!r}") from None
    if isinstance(parsed, dict) and parsed.get("error"):
        error = parsed["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise StreamError(
            message
            if isinstance(message, str) and message
            else "An error occurred during streaming"
        )
    return parsed


def describe(exc: BaseException, openai: ModuleType | None) -> dict[str, Any]:
    """An exception of the client as an error line's object (see the module's text)."""
    if openai is not None:
        if isinstance(exc, openai.APIStatusError):
            body = exc.body
            try:
                json.dumps(body)
            except (TypeError, ValueError):
                body = str(body)
            return {
                "kind": "status",
                "status": exc.status_code,
                "message": exc.message,
                "body": body,
                "code": exc.code,
            }
        if isinstance(exc, openai.APITimeoutError):
            return {"kind": "timeout"}
        if isinstance(exc, openai.APIConnectionError):
            return {"kind": "connection", "message": str(exc.__cause__ or exc)}
    httpx2 = sys.modules.get("httpx2")
    if httpx2 is not None:  # the transport's own, raised while the stream is read
        if isinstance(exc, httpx2.TimeoutException):
            return {"kind": "timeout"}
        if isinstance(exc, httpx2.TransportError):
            return {"kind": "connection", "message": str(exc) or type(exc).__name__}
    if isinstance(exc, StreamError):
        return {"kind": "other", "message": f"APIError: {exc}"}
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return {"kind": "other", "message": text}


async def serve(control: socket.socket, openai: ModuleType | ImportError) -> None:
    """Take request sockets from ``control`` until the engine closes it."""
    loop = asyncio.get_running_loop()
    worker = Worker(openai)
    closed = loop.create_future()
    control.setblocking(False)

    def readable() -> None:
        try:
            message, fds, _flags, _address = socket.recv_fds(control, 16, 4)
        except BlockingIOError:
            return
        except OSError:
            message, fds = b"", []
        for fd in fds:
            worker.take(socket.socket(fileno=fd))
        if not message and not closed.done():
            loop.remove_reader(control.fileno())
            closed.set_result(None)

    loop.add_reader(control.fileno(), readable)
    await closed


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the engine decides what an
    # interrupt stops, and the worker goes when the engine does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=int(argv[0]))
    # The client first: requests wait in the control socket meanwhile (the engine's own
    # endpoint check does not come here), and nothing else competes with the import.
    openai: ModuleType | ImportError
    try:
        openai = importlib.import_module("openai")
    except ImportError as exc:
        openai = exc
    asyncio.run(serve(control, openai))
    os._exit(0)  # requests still open end with the process; no teardown to wait for


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
