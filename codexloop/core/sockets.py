"""A non-blocking socket read and written from the event loop, without anyio's socket streams.

A receive of anyio's socket streams cancelled just as data arrives sets the result of a
cancelled future in the event loop (``InvalidStateError``, anyio 4.16), and codexloop cancels
reads mid-stream all the time: a race calls off its losers' model streams, a test run is cut
by its time limit. Here the socket is read only once :func:`anyio.wait_readable` said it can
be: a cancelled wait has nothing in flight.
"""

from __future__ import annotations

import socket

import anyio

CHUNK = 1 << 16


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data`` to the non-blocking ``sock`` (OSError when the peer is gone)."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]


async def receive(sock: socket.socket, size: int = CHUNK) -> bytes:
    """What the non-blocking ``sock`` has (waited for); ``b""`` at its end or when it broke."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            await anyio.wait_readable(sock)
        except OSError:
            return b""
