"""Work off the event loop, with one way to end: a result callback or a failure callback.

Every worker of the app starts here. Blocking work (git, difflib, file IO) runs in a thread;
coroutines run on the app's loop. The worker itself never fails (``exit_on_error=False``, and
nothing escapes it): an exception goes to the caller's ``failed``, or else to
:func:`report_failure`, a toast. A worker whose node goes away (a dismissed screen) is cancelled
with it, and its late result is dropped, never delivered to a widget that is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from textual.dom import DOMNode
from textual.worker import Worker

T = TypeVar("T")


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def report_failure(node: DOMNode, what: str, error: BaseException) -> None:
    """The one handler of failures nobody asked to handle: a toast naming the work."""
    node.app.notify(f"{what}: {describe(error)}", severity="error", timeout=8)


def spawn(
    node: DOMNode,
    work: Callable[[], T] | Coroutine[Any, Any, T],
    *,
    name: str,
    done: Callable[[T], object] | None = None,
    failed: Callable[[Exception], object] | None = None,
    exclusive: bool = False,
) -> Worker[None]:
    """Run ``work`` (a blocking callable, in a thread; or a coroutine) for ``node``.

    ``done`` gets the result, ``failed`` the exception (default: :func:`report_failure`). With
    ``exclusive``, an earlier worker of the same name on ``node`` is cancelled first.
    """

    async def run() -> None:
        try:
            if isinstance(work, Coroutine):
                result: T = await work
            else:
                result = await asyncio.to_thread(work)
        except Exception as exc:
            _call(node, name, failed, exc)
            return
        if done is not None:
            _call(node, name, done, result)

    return node.run_worker(run(), name=name, group=name, exclusive=exclusive, exit_on_error=False)


def _call(node: DOMNode, name: str, callback: Callable[[Any], object] | None, value: Any) -> None:
    """A callback of a worker; a bug in it is reported, never lost in the worker's state."""
    try:
        if callback is None:
            report_failure(node, name, value)
        else:
            callback(value)
    except Exception as exc:
        report_failure(node, name, exc)
