"""Every event of a session appended to a JSONL trace: for replay, debugging and cost."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

from codexloop.core.events import STREAMED, Event

TRACE_VERSION = 1


def traces_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "codexloop" / "traces"


class TraceWriter:
    """Appends one JSON object per event, each with ``t``: seconds since the session began.

    Streaming fragments are buffered; everything else is flushed as it happens, so a
    crash loses at most a few fragments.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # A lone surrogate (half a character from a UTF-16 server, in reasoning text say) is
        # written spelled out, never an error that would end the session.
        self._file: IO[str] = path.open("a", encoding="utf-8", errors="backslashreplace")
        self._start = time.monotonic()
        self._write({"type": "trace_header", "version": TRACE_VERSION, **header}, flush=True)

    def _write(self, data: dict[str, Any], *, flush: bool) -> None:
        self._file.write(json.dumps(data, ensure_ascii=False) + "\n")
        if flush:
            self._file.flush()

    def write(self, event: Event) -> None:
        data = event.to_dict()
        data["t"] = round(time.monotonic() - self._start, 4)
        self._write(data, flush=not isinstance(event, STREAMED))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_trace(path: Path) -> list[dict[str, Any]]:
    events = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                events.append(json.loads(line))
    return events
