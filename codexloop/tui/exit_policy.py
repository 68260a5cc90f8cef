"""How the app leaves: never in the middle of the loop's work.

``q`` while the loop runs asks first (and names the preview branch), then stops the loop; while
the loop waits for the developer (green for review, or red with the budget spent) it finishes the
session as it stands. ``ctrl+c``, SIGTERM and SIGHUP stop the loop at once (exit status 130); a
second interrupt leaves without waiting. Any other way out (:meth:`App.exit`) stops the loop first.
The exit itself waits until both the loop and its event stream are over, so the preview branch is
consistent and the screen shows the end, or until a grace period has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from codexloop.core.errors import EXIT_INTERRUPTED, EXIT_RED
from codexloop.tui.dialogs import QuitScreen

if TYPE_CHECKING:
    from codexloop.tui.app import CodexloopApp

STOP_GRACE_S = 20.0
"""After a stop request, exit anyway if the loop has not finished by then."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class ExitArgs(NamedTuple):
    """What :meth:`App.exit` was called with (None: the session's exit status)."""

    result: Any = None
    return_code: int | None = None
    message: Any = None


class ExitPolicy:
    """Quit, interrupt and deferred exit, for one app and its session."""

    def __init__(self, app: CodexloopApp) -> None:
        self.app = app
        self.session = app.session
        self.exit_status = EXIT_RED
        """The status the app exits with (set when the session is over)."""
        self.interrupted = False
        self.deferred: ExitArgs | None = None
        """An exit asked for while the loop ran: it happens when the session is over."""
        self.forcing = False
        self.over = False
        self._previous_handlers: dict[int, Any] = {}

    def allows_exit(self, args: ExitArgs) -> bool:
        """Whether :meth:`App.exit` may leave now; if the loop runs, it is stopped first."""
        if self.session.loop_running and not self.forcing:
            if self.deferred is None:
                self.stop_then_exit("the app was closed", args)
            return False
        return True

    def request_quit(self) -> None:
        """``q``: leave now, finish a session that waits, or ask before stopping the loop."""
        session = self.session
        if not session.loop_running:
            self._leave()
            return
        if session.state.awaiting_developer and self.deferred is None:
            self.deferred = ExitArgs()  # waiting for the developer: finish
            session.stop("", finish=True)
            self.app.set_timer(STOP_GRACE_S, self.force_exit)
            return
        if self.deferred is not None:
            self.app.notify("stopping the loop… (ctrl+c twice to leave at once)")
            return
        if isinstance(self.app.screen, QuitScreen):
            return
        started = session.state.started
        branch = started.branch if started else ""
        worktree = started.worktree if started else ""
        self.app.push_screen(QuitScreen(branch, worktree), self._quit_answered)

    def _quit_answered(self, stop: bool | None) -> None:
        if stop:
            self.stop_then_exit("stopped by the developer")

    def interrupt(self, reason: str) -> None:
        """Stop the loop, then leave; a second interrupt leaves at once."""
        if not self.session.loop_running:
            if self.deferred is not None:
                self.force_exit()
            else:
                self._leave()
            return
        if self.interrupted:
            self.force_exit()
            return
        self.interrupted = True
        self.stop_then_exit(reason)

    def stop_then_exit(self, reason: str, deferred: ExitArgs | None = None) -> None:
        """Stop the loop at once; exit when it has finished (or after a grace period)."""
        self.deferred = deferred or ExitArgs()
        if self.over:
            self._leave(self.deferred)
            return
        state = self.session.state
        self.session.stop(reason, finish=state.awaiting_developer and not self.interrupted)
        self.app.set_timer(STOP_GRACE_S, self.force_exit)
        self.app.main.show_status()

    def session_over(self) -> None:
        """The loop and its events are over: the exit status is known; a deferred exit happens."""
        self.over = True
        self.exit_status = self.session.state.exit_status(interrupted=self.interrupted)
        self.app.main.pump.flush()
        self.app.main.show_status()
        if self.deferred is not None:
            self._leave(self.deferred)

    def force_exit(self) -> None:
        if self.forcing:
            return
        self.forcing = True
        if not self.over:
            self.exit_status = EXIT_INTERRUPTED if self.interrupted else EXIT_RED
        self._leave(self.deferred or ExitArgs())

    def _leave(self, args: ExitArgs | None = None) -> None:
        status = self.exit_status
        if args is None:
            self.app.exit(status, status)
            return
        self.app.exit(
            status if args.result is None else args.result,
            status if args.return_code is None else args.return_code,
            args.message,
        )

    # -- signals ---------------------------------------------------------------------------------

    def watch_signals(self) -> None:
        """SIGTERM and SIGHUP (a closed terminal, an ended tmux session) stop the loop like
        ctrl+c: the warm server and the scratch folder go with the session. After a hangup
        the terminal is gone: the standard streams are pointed at /dev/null first, so
        drawing the last frames cannot fail (EIO) and block the app on its output queue."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()

        def handler(signum: int, _frame: object) -> None:
            if signum == signal.SIGHUP:
                _detach_from_terminal()
            reason = "the terminal was closed" if signum == signal.SIGHUP else "terminated"
            with contextlib.suppress(RuntimeError):  # the app's event loop is over already
                loop.call_soon_threadsafe(self.interrupt, reason)

        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, handler)

    def restore_signals(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers.clear()


def _detach_from_terminal() -> None:
    """The terminal hung up: standard input and output become /dev/null (signal-safe)."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd)
    os.close(devnull)
