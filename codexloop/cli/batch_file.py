"""``codexloop batch``'s FILE: one task a line, read and checked before anything runs, and
each task's configuration (the command line's options, the task's keys over them)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codexloop.cli.args import settings_of
from codexloop.core.config import Config, load_config
from codexloop.core.errors import CodexloopError, UsageError

KEYS: dict[str, str] = {  # what a task may say, and what each must be
    "targets": "a non-empty list of pytest node ids or test files",
    "task": "a string",
    "test_cmd": "a non-empty string",
    "attempts": "a whole number of at least 1",
    "model": "a non-empty string",
    "max_iterations": "a whole number of at least 1",
    "hints": "a list of strings",
    "pick": '"first" or "best"',
}
EXAMPLE = '{"targets": ["tests/test_x.py::test_y"], "task": "..."}'


def _fits(key: str, value: Any) -> bool:
    if key == "targets":
        return isinstance(value, list) and bool(value) and all(_text(v) for v in value)
    if key == "hints":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if key in ("attempts", "max_iterations"):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if key == "pick":
        return value in ("first", "best")
    return isinstance(value, str) if key == "task" else _text(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def read_tasks(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Each task of ``path`` with its line number; a :class:`UsageError` for the first flaw."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no flaw
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from None
    tasks = []
    # "\n" alone ends a line: str.splitlines would also split at a U+2028 inside a JSON string.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{where}: not a JSON object; a task is a line like {EXAMPLE}")
        unknown = [key for key in data if key not in KEYS]
        if unknown:
            raise UsageError(
                f"{where}: unknown key {json.dumps(unknown[0])} (allowed: {', '.join(KEYS)})"
            )
        if "targets" not in data:
            raise UsageError(
                f'{where}: no "targets" (the tests that define success), e.g. {EXAMPLE}'
            )
        for key, value in data.items():
            if not _fits(key, value):
                raise UsageError(f"{where}: {key} must be {KEYS[key]}, not {json.dumps(value)}")
        tasks.append((number, data))
    if not tasks:
        raise UsageError(f"{path}: no tasks in it (one JSON object a line, e.g. {EXAMPLE})")
    return tasks


def task_config(args: argparse.Namespace, task: dict[str, Any], where: str) -> Config:
    """The task's configuration, as the main command builds one: its keys over ``args``."""
    given = argparse.Namespace(**vars(args))
    for key, value in task.items():
        setattr(given, "hint" if key == "hints" else key, value)
    try:
        return load_config(settings_of(given))
    except CodexloopError as exc:
        raise UsageError(f"{where}: {exc}", exit_code=exc.exit_code) from None


def short_label(targets: Sequence[str], width: int = 40) -> str:
    """``test_calc.py::test_add +1``: the first target's file name and test, cut to fit."""
    first = targets[0]
    path, sep, test = first.partition("::")
    label = Path(path).name + sep + test
    more = f" +{len(targets) - 1}" if len(targets) > 1 else ""
    room = width - len(more)
    return (label if len(label) <= room else "…" + label[-room + 1 :]) + more
