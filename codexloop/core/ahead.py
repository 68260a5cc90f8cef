"""Blocking calls started ahead, in threads, and taken where they are needed.

A session asks the project's interpreter three questions before its first test run (its
``sys.path``, what it has installed, its package folders), each a new interpreter of some
tens of milliseconds: started together when the session starts, they run beside the
snapshot and the worktree instead of one after the other on the way to the first run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class _Call:
    def __init__(self, function: Callable[..., Any], args: tuple[Hashable, ...]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(function, args), name="ahead", daemon=True
        )

    def _run(self, function: Callable[..., Any], args: tuple[Hashable, ...]) -> None:
        try:
            self.value = function(*args)
        except BaseException as exc:  # handed to whoever takes the result
            self.error = exc


_pending: dict[tuple[Callable[..., Any], tuple[Hashable, ...]], _Call] = {}
_lock = threading.Lock()


def start(function: Callable[..., Any], *args: Hashable) -> None:
    """Call ``function(*args)`` in a thread now, unless that call is already under way."""
    with _lock:
        if (function, args) in _pending:
            return
        call = _pending[(function, args)] = _Call(function, args)
    call.thread.start()


def take(function: Callable[..., T], *args: Hashable) -> T:
    """The result of ``function(*args)``: of the call started ahead (waited for, once), else
    of a call made now."""
    with _lock:
        call = _pending.pop((function, args), None)
    if call is None:
        return function(*args)
    call.thread.join()
    if call.error is not None:
        raise call.error
    return call.value  # type: ignore[no-any-return]
