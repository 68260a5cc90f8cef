"""The ``codexloop`` program: the command line, with the Textual app as its full-screen front end.

``codexloop.cli`` parses and runs everything that needs no screen; the app is handed to it here,
so the command line never imports Textual (``--help`` and headless runs stay fast).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

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


if __name__ == "__main__":
    sys.exit(main())
