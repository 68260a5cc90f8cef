"""Questions to the project's interpreter, asked once and then remembered while nothing they
depend on has changed.

A session asks the project's interpreter three things before its first test run: its
``sys.path`` (the folders the sandbox shows it, :mod:`codexloop.core.isolation`), what it has
installed (pytest plugins, and the names a new module must not shadow:
:mod:`codexloop.core.plugins`) and its package folders (:mod:`codexloop.core.warm`). Each is a
new interpreter: 20-30 ms of a core alone, several times that on a start where git, bubblewrap
and the model worker's import share two cores, and the last of them held ``loop_started`` back.

An answer depends on the interpreter and the folders it reads at start-up, nothing else: it
is kept in ``interpreters.json`` (beside ``probes.json``) with the state of each — the
executable, the venv's ``pyvenv.cfg``, every entry of the interpreter's path as it starts
(a distribution installed or removed changes its folder), the ``.pth`` files in those
folders and the user's site folder (there or not). Anything of it changed, and the
interpreter is asked again. An answer it did not give (an error, a timeout) is never kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codexloop.core.remembered import Remembered, identity, state_home

TIMEOUT_S = 20.0
KIND = "answers"
_MARK = b"\0codexloop-watch\0"
# Put before every question: the interpreter's path as it started, and its user site folder
# (None when it does not read one), on stderr. Only modules every interpreter has loaded by
# now: nothing is looked up on a path that may hold the current folder.
_WATCH = (
    "import sys as _s, os as _o, site as _t\n"
    "_s.stderr.flush()\n"
    "_s.stderr.buffer.write(b'\\0codexloop-watch\\0' + b'\\0'.join(_o.fsencode(p) for p in "
    "[_t.getusersitepackages() if _t.ENABLE_USER_SITE else ''] + _s.path) + b'\\n')\n"
    "_s.stderr.buffer.flush()\n"
    "del _s, _o, _t\n"
)

_memories: dict[Path, Remembered] = {}
_memories_lock = threading.Lock()


def _memory() -> Remembered:
    """One :class:`Remembered` per file in this process (the questions run side by side)."""
    path = state_home() / "interpreters.json"
    with _memories_lock:
        return _memories.setdefault(path, Remembered(path))


def ask(
    python: str, code: str, *, isolated: bool = False, timeout: float = TIMEOUT_S
) -> str | None:
    """``python -c code`` (``-I`` when ``isolated``), run from ``/`` with no ``PYTHON*``
    variable of ours: its standard output, or None if it failed or did not finish in
    ``timeout`` seconds (blocking). An answer given before, by the same interpreter reading
    the same folders, is not asked again."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    flags = ["-I"] if isolated else []
    key = _key(python, flags, code, env)
    memory = _memory()
    if key is not None:
        known = memory.get(KIND, key)
        if known is not None and _still(known, python):
            out = known.get("out")
            if isinstance(out, str):
                return out
    try:
        done = subprocess.run(
            [python, *flags, "-c", _WATCH + code],
            cwd="/",
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        out = done.stdout.decode()
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    if done.returncode != 0:
        return None
    watched = _watched(done.stderr)
    if key is not None and watched is not None:
        with contextlib.suppress(OSError):  # the interpreter went since: nothing to keep
            memory.put(KIND, key, {"out": out, **_state(python, watched)})
    return out


def ask_json(python: str, code: str, *, isolated: bool = False, timeout: float = TIMEOUT_S) -> Any:
    """:func:`ask` a question that prints JSON: the value, or None if there was no answer
    or it was not JSON."""
    out = ask(python, code, isolated=isolated, timeout=timeout)
    try:
        return json.loads(out) if out is not None else None
    except ValueError:
        return None


def _key(python: str, flags: Sequence[str], code: str, env: dict[str, str]) -> str | None:
    """What names a question: the interpreter, how it is run, the code, and what of the
    environment it reads at start-up (the home folder holds the user site)."""
    if not os.path.isabs(python):
        return None  # looked up on PATH: not a fixed interpreter
    data = [python, list(flags), code, env.get("HOME")]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _watched(stderr: bytes) -> list[str] | None:
    """The folders the interpreter said it reads (see :data:`_WATCH`); None if it did not."""
    start = stderr.find(_MARK)
    if start < 0:
        return None
    line = stderr[start + len(_MARK) :].split(b"\n", 1)[0]
    user, *path = (os.fsdecode(part) for part in line.split(b"\0"))
    # Relative entries (the current folder) are the question's own, not the interpreter's.
    return [p for p in [user, *path] if os.path.isabs(p)]


def _state(python: str, watched: list[str]) -> dict[str, object]:
    """What an answer depends on, as it is now (raises OSError when the interpreter is gone)."""
    return {
        "interpreter": [python, *identity(python)],
        "files": [
            _file_state(path) for path in [str(Path(python).parent.parent / "pyvenv.cfg"), *watched]
        ],
    }


def _file_state(path: str) -> list[object]:
    """A file or folder's identity and mtime, and for a folder its ``.pth`` files'; just the
    path when there is nothing (something appearing there counts as a change)."""
    try:
        st = os.stat(path)
    except OSError:
        return [path]
    row: list[object] = [path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
    if stat.S_ISDIR(st.st_mode):
        try:
            with os.scandir(path) as entries:
                row.append(
                    sorted(
                        [entry.name, entry.stat().st_mtime_ns]
                        for entry in entries
                        if entry.name.endswith(".pth")
                    )
                )
        except OSError:
            row.append(None)
    return row


def _still(known: dict[str, object], python: str) -> bool:
    """Whether everything a remembered answer depended on is as it was."""
    files = known.get("files")
    if not isinstance(files, list) or not files or not isinstance(files[0], list):
        return False
    watched = [row[0] for row in files[1:] if isinstance(row, list) and row]
    try:
        now = _state(python, [str(path) for path in watched])
    except OSError:
        return False
    return json.loads(json.dumps(now)) == {k: known.get(k) for k in now}
