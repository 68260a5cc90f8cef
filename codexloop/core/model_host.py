"""The engine's side of the model worker (:mod:`codexloop.core.model_worker`):
:class:`ModelClient`, which the engine asks the endpoint through.

The engine never imports the openai client itself: the worker does, on another core, while
the session is set up (:func:`codexloop.core.model_process.start`), and what comes back is
JSON — a stream's events as the server sent them, its errors as :class:`EndpointError`. A
worker that died is started again by the next request (the request that saw it die fails
with :class:`WorkerLost`, which the model's retries treat as a dropped connection).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import anyio

from codexloop.core import model_process, sockets
from codexloop.core.model_process import connect
from codexloop.core.model_worker import LINE_LIMIT, line

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class EndpointError(Exception):
    """A request that failed on its way to the endpoint or back."""


class EndpointStatus(EndpointError):
    """The endpoint answered with an error status."""

    def __init__(self, status: int, message: str, body: object = None, code: str | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body
        self.code = code


class EndpointTimeout(EndpointError):
    """The request timed out."""


class EndpointUnreachable(EndpointError):
    """No connection (the message is the cause)."""


class WorkerLost(EndpointError):
    """The model worker stopped before it answered (it is started again on the next request)."""


def endpoint_error(error: dict[str, Any]) -> EndpointError:
    """The exception an error line stands for."""
    kind = error.get("kind")
    if kind == "status":
        return EndpointStatus(
            int(error.get("status") or 0),
            str(error.get("message") or ""),
            error.get("body"),
            error.get("code") if isinstance(error.get("code"), str) else None,
        )
    if kind == "timeout":
        return EndpointTimeout("the request timed out")
    if kind == "connection":
        return EndpointUnreachable(str(error.get("message") or "no connection"))
    return EndpointError(str(error.get("message") or "the request failed"))


STALL_MARGIN_S = 30.0
"""Beyond the request timeout, how long a worker may say nothing before it counts as stuck:
the client's own timeouts end every wait of a working worker sooner."""


class _Answer:
    """One request's socket: its request written, its answer read line by line.

    Read and written with :mod:`codexloop.core.sockets`, not anyio's socket streams (a race
    calls off its losers' streams mid-answer all the time)."""

    def __init__(self, sock: socket.socket, patience: float, pid: int | None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no line end
        self._patience = patience
        self._pid = pid

    async def send(self, data: bytes) -> None:
        try:
            await sockets.send_all(self._sock, data)
        except OSError:
            raise WorkerLost("the model worker stopped before it took the request") from None

    async def next(self) -> dict[str, Any]:
        with anyio.move_on_after(self._patience) as waited:
            raw = await self._line()
        if waited.cancelled_caught:  # stopped or stuck: the next request gets a new worker
            model_process.replace(self._pid)
            raise WorkerLost("the model worker stopped answering")
        message: dict[str, Any] = json.loads(raw)
        if "error" in message:
            raise endpoint_error(message["error"])
        return message

    async def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                raw = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                return raw
            self._scanned = len(self._buffer)
            if self._scanned > LINE_LIMIT:
                raise WorkerLost("the model worker sent a line too long to read")
            chunk = await sockets.receive(self._sock)
            if not chunk:
                raise WorkerLost("the model worker stopped before it answered")
            self._buffer += chunk

    async def aclose(self) -> None:
        self._sock.close()


class ChunkStream:
    """A streamed answer's chunks (plain dicts), closed when left (the request is called off
    if it was not over)."""

    def __init__(self, answer: _Answer, first: dict[str, Any]) -> None:
        self._answer = answer
        self._next: dict[str, Any] | None = first

    async def __aenter__(self) -> ChunkStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._answer.aclose()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        message, self._next = self._next, None
        if message is None:
            message = await self._answer.next()
        if "chunk" in message:
            chunk: dict[str, Any] = message["chunk"]
            return chunk
        raise StopAsyncIteration


class ModelClient:
    """An endpoint (its address, key and request timeout), asked through the worker."""

    def __init__(self, base_url: str | None, api_key: str, timeout: float = 120.0) -> None:
        self.settings = (base_url, api_key, timeout)
        self.listing: list[Any] | None = None  # the endpoint's models, when its check read them

    @property
    def base_url(self) -> str:
        """The endpoint's address, as the client resolves it (with a final slash)."""
        given = self.settings[0] or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        return str(given).rstrip("/") + "/"

    async def stream(self, api: str, body: dict[str, Any]) -> ChunkStream:
        """A streamed answer (``api``: ``chat`` or ``responses``; ``body``: the arguments of
        the client's ``create``); its error, if the endpoint refused the request."""
        answer = await self._ask({"op": api, "body": body})
        try:
            first = await answer.next()
        except BaseException:
            await answer.aclose()
            raise
        return ChunkStream(answer, first)

    async def models(self, timeout: float) -> list[dict[str, Any]]:
        """The endpoint's model listing."""
        message = await self._once({"op": "models", "timeout": timeout})
        return list(message.get("models") or [])

    async def check(self, timeout: float) -> None:
        """Reachable and the key not refused (401, 403), or its :class:`EndpointError`."""
        await self._once({"op": "check", "timeout": timeout})

    def prepare(self, api: str) -> None:
        """Have the worker make this client now, ahead of the first request (``api``: the
        protocol it will speak); nothing is waited for, and a failure is the first
        request's to meet."""
        try:
            sock = connect()
        except OSError:
            return
        with sock, contextlib.suppress(OSError):
            sock.sendall(line({"op": "prepare", "api": api, "client": list(self.settings)}))

    async def close(self) -> None:
        """Nothing to close: the worker serves every client of the process."""

    async def _once(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = await self._ask(request)
        try:
            return await answer.next()
        finally:
            await answer.aclose()

    async def _ask(self, request: dict[str, Any]) -> _Answer:
        # In a thread: handing the socket over may start a worker, or wait (a second at most)
        # on one that stopped reading before it is replaced; the event loop draws the screen.
        sock = await anyio.to_thread.run_sync(connect)
        answer = _Answer(sock, self.settings[2] + STALL_MARGIN_S, model_process.worker_pid())
        try:
            await answer.send(line({**request, "client": list(self.settings)}))
        except BaseException:
            await answer.aclose()
            raise
        return answer
