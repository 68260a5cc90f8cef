"""Tasks for ``codexloop batch`` tests: a repository of three small katas, scripted models
that fix one or get it wrong, the tasks file, and what a headless batch's events tell."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from scripted_openai import Call, Reply

FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "sub.py": "def sub(a, b):\n    return a + b\n",
    "mul.py": "def mul(a, b):\n    return a + b\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    "tests/test_sub.py": "from sub import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n",
    "tests/test_mul.py": "from mul import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n",
}
FIXED = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "sub.py": "def sub(a, b):\n    return a - b\n",
    "mul.py": "def mul(a, b):\n    return a * b\n",
}
ADD, SUB, MUL = "tests/test_calc.py::test_add", "tests/test_sub.py::test_sub", "tests/test_mul.py"


def fix(path: str, hold: threading.Event | None = None) -> list[Reply]:
    """A model's two turns: the right change (its first turn held until ``hold``), then done."""
    change = Call("write_file", {"path": path, "content": FIXED[path]})
    return [Reply(tool_calls=[change], hold=hold), Reply(text="Fixed.")]


def wrong(path: str, hold: threading.Event | None = None) -> list[Reply]:
    change = Call("write_file", {"path": path, "content": "def mul(a, b):\n    return a - b\n"})
    return [Reply(tool_calls=[change], hold=hold), Reply(text="Tried.")]


def write_tasks(repo: Path, *lines: str | dict[str, Any]) -> Path:
    path = repo.parent / "tasks.jsonl"
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(text) + "\n")
    return path


def ends(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each task's session-level ``loop_finished``."""
    return {e["task"]: e for e in events if e["type"] == "loop_finished"}


def most_at_once(events: list[dict[str, Any]]) -> int:
    """The most sessions under way at once, as the stream tells it (a session's events are
    all out before the next session starts in its place)."""
    running = most = 0
    for event in events:
        if event["type"] == "loop_started" and event["attempt"] == 1:
            running += 1
        elif event["type"] == "loop_finished":
            running -= 1
        most = max(most, running)
    return most
