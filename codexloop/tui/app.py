"""The full-screen app: global concerns only (the session's screen, keys, palette, exit).

:class:`CodexloopApp` holds one :class:`~codexloop.tui.session.Session` (the loop, its commands
and state), shows it on its default screen, :class:`~codexloop.tui.main_screen.MainScreen`, binds
the keys of :mod:`codexloop.tui.keys` (session actions go to the main screen, from whatever screen
is on top), lists them in the palette (:mod:`codexloop.tui.commands`) and leaves through its
:class:`~codexloop.tui.exit_policy.ExitPolicy`. :func:`run_app` is the command line's way in.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from textual.app import App, SystemCommand
from textual.screen import Screen

from codexloop.core.config import Config
from codexloop.core.errors import EXIT_INTERRUPTED, EXIT_USAGE
from codexloop.core.executor import new_session
from codexloop.core.leftovers import discard_session
from codexloop.core.loop import Loop
from codexloop.core.model import ModelError, make_client
from codexloop.core.model import check_endpoint as probe_endpoint
from codexloop.core.race import Race
from codexloop.tui import commands, keys
from codexloop.tui.exit_policy import ExitArgs, ExitPolicy
from codexloop.tui.main_screen import MainScreen
from codexloop.tui.screens import HelpScreen
from codexloop.tui.session import LoopFactory, Session

if TYPE_CHECKING:
    from codexloop.core.model_host import ModelClient


class CodexloopApp(App[int]):
    """codexloop's screen: exam | model on top, terminal | diff below, timeline on the side.

    ``loop_factory`` and ``banner`` come together for a session that plays a recording (the
    scripted demo, a replay): the banner says so on screen, and the exam stays as recorded
    while it plays.
    """

    CSS_PATH: ClassVar = Path(__file__).with_name("app.tcss")  # also for subclasses elsewhere
    TITLE = "codexloop"
    BINDINGS: ClassVar = keys.bindings()

    def __init__(
        self,
        config: Config,
        *,
        client: ModelClient | None = None,
        loop_factory: LoopFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        autostart: bool = True,
        write_trace: bool = True,
        banner: str = "",
    ) -> None:
        super().__init__()
        factory: LoopFactory = loop_factory or partial(
            new_loop, client=client, write_trace=write_trace
        )
        self.session = Session(config, factory, clock)
        self.main = MainScreen(self.session, banner=banner, autostart=autostart)
        self.exit_policy = ExitPolicy(self)
        self.session.on_over = self.exit_policy.session_over

    def get_default_screen(self) -> MainScreen:
        return self.main

    def on_mount(self) -> None:
        # Everything alive now (the imported modules of textual, rich, openai, httpx...) lives
        # as long as the app: take it out of the collector's sight, so the full collections
        # that long streams provoke scan only new objects (tens of ms less per collection).
        gc.freeze()
        self.exit_policy.watch_signals()

    def on_unmount(self) -> None:
        self.exit_policy.restore_signals()

    @property
    def exit_status(self) -> int:
        return self.exit_policy.exit_status

    # -- keys ---------------------------------------------------------------------------------

    async def action_main(self, action: str) -> None:
        """A session action of the key table: the main screen's, whatever screen is on top."""
        await self.main.run_action(action)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "main" and parameters:
            return self.main.check_action(str(parameters[0]), ())
        return self.main.check_action(action, parameters)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_zoom(self) -> None:
        screen = self.screen
        if screen.maximized is not None:
            screen.minimize()
        elif screen.focused is not None:
            screen.maximize(screen.focused)

    def action_request_quit(self) -> None:
        self.exit_policy.request_quit()

    async def action_quit(self) -> None:
        self.exit_policy.request_quit()

    def action_interrupt(self) -> None:
        self.exit_policy.interrupt("interrupted")

    def exit(self, result: Any = None, return_code: int = 0, message: Any = None) -> None:
        """Leaving while the loop runs stops it first: the preview branch is left consistent."""
        if self.exit_policy.allows_exit(ExitArgs(result, return_code, message)):
            super().exit(result, return_code, message)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        return commands.system_commands(self, screen)

    def summary(self) -> str:
        """The line for the terminal, after the screen closed."""
        return self.session.state.summary()


async def _check_endpoint(config: Config) -> ModelClient:
    """The session's client, its endpoint checked (the listing the check read gives the
    model's context window without asking again)."""
    client = make_client(config.base_url, config.api_key, config.request_timeout)
    await probe_endpoint(client)
    return client


def new_loop(config: Config, *, client: ModelClient | None, write_trace: bool) -> Loop | Race:
    """The session's loop, waiting for the developer's review when green; with
    ``--attempts N`` a race, whose first green waits for the review (``--pick best``: the
    review opens once every attempt is over, on the winner)."""
    return new_session(config, client=client, write_trace=write_trace, review=True)


def leave(app: CodexloopApp, *, throwaway: bool) -> str:
    """After the screen closed: a session that recorded nothing and has nothing to continue
    (green at once, or an exam that can never pass) leaves no branch behind, as in headless
    mode; the line for the terminal ("" when the session never started)."""
    state, loop = app.session.state, app.session.loop
    finished = state.finished
    over = finished is not None and (finished.status == "passed" or state.error is not None)
    removed = discard_session(loop) if over and loop and not throwaway else None
    if state.started is None and state.failure is None:
        return ""
    return state.summary("throwaway" if throwaway else "removed" if removed else None)


def run_app(
    config: Config,
    *,
    loop_factory: LoopFactory | None = None,
    check_endpoint: bool = True,
    banner: str = "",
    throwaway: bool = False,
) -> int:
    """Open the app on ``config``; the exit status: 0 green, 1 not green or stopped, 130 interrupted.

    ``loop_factory`` lets demo and replay bring their own loop; ``banner`` says so on screen;
    ``throwaway``: the caller removes the session's branch afterwards (the exit line does not
    name it). Otherwise a session green with nothing recorded (the exam passed at once) leaves
    no branch behind, as in headless mode.
    """
    client: ModelClient | None = None
    if check_endpoint:
        try:
            client = anyio.run(_check_endpoint, config)
        except ModelError as exc:
            print(f"codexloop: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    app = CodexloopApp(config, client=client, loop_factory=loop_factory, banner=banner)
    try:
        app.run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        app.exit_policy.restore_signals()
    line = leave(app, throwaway=throwaway)
    if line:
        with contextlib.suppress(OSError):  # a closed terminal
            print(line)
    code = app.return_code
    return app.exit_status if code is None else code
