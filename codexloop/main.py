"""The ``codexloop`` program: the command line, with the Textual app as its full-screen front end.

``codexloop.cli`` parses and runs everything that needs no screen; the app is handed to it here,
so the command line never imports Textual (``--help`` and headless runs stay fast).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from codexloop.core.config import Config
    from codexloop.core.loop import Loop
    from codexloop.core.race import Race


def open_app(
    config: Config,
    *,
    loop_factory: Callable[[Config], Loop | Race] | None = None,
    check_endpoint: bool = True,
    banner: str = "",
    throwaway: bool = False,
) -> int:
    """Open the full-screen app on ``config`` (Textual is imported only now)."""
    from codexloop.tui.app import run_app

    return run_app(
        config,
        loop_factory=loop_factory,
        check_endpoint=check_endpoint,
        banner=banner,
        throwaway=throwaway,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from codexloop.cli.args import main as cli_main

    try:
        return cli_main(argv, open_app=open_app)
    except BrokenPipeError:  # `codexloop branches | head`: the reader left, and that is fine
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail again
        return 1


def run() -> NoReturn:
    """The ``codexloop`` command: :func:`main`, then :func:`leave`."""
    leave(main())


def leave(code: int) -> NoReturn:
    """Exit with ``code`` without the interpreter's teardown of every module and object
    (a quarter of a second once the model client is loaded, measured by ``bench/peer.py``).
    What must happen at exit still does: other threads that are not daemons are waited for
    (by taking the ordinary way out), exit handlers run (temporary folders, Ray's shutdown,
    logging) and the standard streams are flushed — a failed flush exits 120, as Python's own
    exit does."""
    import atexit
    import os
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    run()
