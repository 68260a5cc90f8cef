"""What earlier sessions on this machine found out, kept in small JSON files under codexloop's
cache folder: isolation probe verdicts (``probes.json``, see :mod:`codexloop.core.isolation`)
and the project interpreter's answers (``interpreters.json``, see
:mod:`codexloop.core.interpreter`).

Each file is a few kinds of entries, each kind a bounded map from a key to a JSON object.
A file that cannot be read or parsed counts as empty; a write is whole or not at all (a
fresh file renamed over the old), and one that fails is simply not kept: whatever it held
is asked again next time.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def identity(path: str) -> list[object]:
    """What names one executable in a remembered entry: where it really is, and its device,
    inode, size and mtime (replaced or rebuilt, it is another)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return [real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def state_home() -> Path:
    """codexloop's folder for what outlives a session (worktrees, runs, what is remembered)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "codexloop"


class Remembered:
    """One JSON file of remembered entries, read once, by kind and key (threads may share
    one: the questions of a session's start are asked side by side)."""

    LIMIT = 64  # entries of each kind kept (the newest)

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, object]] | None = None  # the file, read once
        self._lock = threading.Lock()

    def get(self, kind: str, key: str) -> dict[str, object] | None:
        with self._lock:
            found = self._load().get(kind, {}).get(key)
        return found if isinstance(found, dict) else None

    def put(self, kind: str, key: str, value: dict[str, object]) -> None:
        with self._lock:
            data = self._load()
            entries = {k: v for k, v in data.get(kind, {}).items() if k != key}
            entries[key] = value
            data[kind] = dict(list(entries.items())[-self.LIMIT :])
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fresh = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                fresh.write_text(json.dumps(data))
                fresh.replace(self.path)  # whole or not at all, whoever else writes it
            except OSError:
                pass  # not kept: asked again next time

    def _load(self) -> dict[str, dict[str, object]]:
        if self._data is None:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
            self._data = (
                {k: v for k, v in data.items() if isinstance(v, dict)}
                if isinstance(data, dict)
                else {}
            )
        return self._data
