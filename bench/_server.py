"""The scripted model server in a process of its own, as a real endpoint is.

In the benchmark's process its thread would hold the GIL while it answers (Python switches
threads every 5 ms), and that wait would be counted as the engine's.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from scripted_openai import ScriptedOpenAI


def _serve(replies: Sequence[Any], conn: Connection) -> None:
    server = ScriptedOpenAI()
    server.add(*replies)
    conn.send(server.base_url)
    conn.recv()  # until told to stop
    server.close()


@contextmanager
def server_process(replies: Sequence[Any]) -> Iterator[str]:
    """A scripted server answering ``replies`` in a child process; yields its base URL."""
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=_serve, args=(list(replies), theirs), daemon=True
    )
    child.start()
    try:
        yield str(ours.recv())
    finally:
        ours.send("stop")
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
