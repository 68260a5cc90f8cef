"""Headless mode: the same loop, one JSON event per line on stdout, each flushed.

Lines on standard input (when it is not a terminal) are steering messages for the
model. SIGINT, SIGTERM or SIGHUP (the terminal was closed) stops the loop cleanly (exit 130).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TextIO

import anyio
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.errors import (
    EXIT_GREEN,
    EXIT_INTERRUPTED,
    EXIT_RED,
    CodexloopError,
    SandboxError,
    error_line,
    setup_failure,
)
from codexloop.core.executor import new_session
from codexloop.core.leftovers import discard_session
from codexloop.core.loop import Loop, LoopResult, event_channel
from codexloop.core.model import EndpointCheck, make_client
from codexloop.core.race import Race
from codexloop.core.resume import SessionRecord
from codexloop.core.trace import traces_dir


async def print_events(
    events: ObjectReceiveStream[ev.Event],
    out: TextIO,
    on_closed: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Print every event; if the reader goes away (``| head``), say so once and drain quietly."""
    closed = False
    async with events:
        async for event in events:
            if closed:
                continue
            try:
                out.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
                out.flush()
            except OSError:  # a closed pipe (| head), a hung-up terminal (EIO)
                closed = True
                _silence(out)
                if on_closed is not None:
                    await on_closed()


def _silence(out: TextIO) -> None:
    """Point the closed stream at /dev/null so nothing fails again when Python exits."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


def _read_stdin(
    commands: MemoryObjectSendStream[ev.Command], token: anyio.lowlevel.EventLoopToken
) -> None:
    """Thread: every line of stdin is a steering message."""
    try:
        for line in sys.stdin:
            text = line.strip()
            if text:
                anyio.from_thread.run_sync(commands.send_nowait, ev.Steer(text), token=token)
    except Exception:  # stdin unreadable, or the loop is over: nothing more to steer
        return


async def headless_session(
    config: Config,
    out: TextIO,
    *,
    accept_all: bool = False,
    accept_flagged: bool = False,
    read_stdin: bool = True,
    loop: Loop | Race | None = None,
    resumed: SessionRecord | None = None,
) -> int:
    """Run one session, printing its events; ``loop`` lets demo and replay bring their own
    (and clean up after it: a session built here that made nothing is removed here)."""
    own_loop = loop is None
    endpoint: EndpointCheck | None = None
    if loop is None:
        client = make_client(config.base_url, config.api_key, config.request_timeout)
        endpoint = EndpointCheck(client)
        if config.ray is not None:  # the attempts run elsewhere: checked before they start
            await endpoint.run()
            if endpoint.error is not None:
                print(error_line(endpoint.error), file=sys.stderr)
                return endpoint.error.exit_code
            endpoint = None
        loop = new_session(
            config,
            client=client,
            accept_all=accept_all,
            accept_flagged=accept_flagged,
            resumed=resumed,
        )
        if endpoint is not None:  # checked beside the set-up: see EndpointCheck
            for one in loop.loops if isinstance(loop, Race) else [loop]:
                one.endpoint = endpoint
    send_events, receive_events = event_channel()
    send_commands, receive_commands = event_channel()
    interrupted = output_closed = gave_up = shown = False
    checking = anyio.CancelScope()  # the endpoint's check: called off by an interrupt
    failure: CodexloopError | None = None
    result: LoopResult | None = None

    async def stop_for_closed_output() -> None:
        nonlocal output_closed
        output_closed = True
        print("codexloop: standard output was closed; stopping the loop", file=sys.stderr)
        await send_commands.send(ev.Stop("standard output was closed"))

    async def watch_signals() -> None:
        nonlocal interrupted, gave_up
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for _ in signals:
                if interrupted:  # a second interrupt: give up at once (no traceback)
                    gave_up = True
                    tg.cancel_scope.cancel()
                    return
                interrupted = True
                if not shown:  # nothing shown yet: the check is not waited for
                    checking.cancel()
                await send_commands.send(ev.Stop("interrupted"))

    async def run_check(check: EndpointCheck) -> None:
        with checking:
            await check.run()

    async def check_then_print() -> None:
        """Events are shown once the endpoint passed its check; if it fails (or the run is
        interrupted first), none is and the session stops (its set-up is thrown away below)."""
        nonlocal shown
        if endpoint is not None:
            tg.start_soon(run_check, endpoint)
            await endpoint.settled()
            if endpoint.error is not None:
                await send_commands.send(ev.Stop("the model endpoint failed its check"))
                async with receive_events:
                    async for _ in receive_events:
                        pass
                return
        shown = True
        await print_events(receive_events, out, stop_for_closed_output)

    async with anyio.create_task_group() as tg:
        tg.start_soon(check_then_print)
        async with anyio.create_task_group() as inner:
            inner.start_soon(watch_signals)
            if read_stdin and sys.stdin is not None and not sys.stdin.isatty():
                token = anyio.lowlevel.current_token()
                threading.Thread(
                    target=_read_stdin, args=(send_commands, token), daemon=True
                ).start()
            async with send_events:  # closing it lets the printer drain and end
                try:
                    result = await loop.run(send_events, receive_commands)
                except (CodexloopError, OSError) as exc:  # the session could not start
                    failed = setup_failure(exc, sandbox_exists=loop.sandbox is not None)
                    if failed is None:
                        raise  # a bug of ours: the internal-error path keeps its details
                    failure, result = failed, None
            inner.cancel_scope.cancel()
    if endpoint is not None and not shown and (interrupted or gave_up):
        await throw_away(loop)  # interrupted before anything was shown: as if never started
        return EXIT_INTERRUPTED
    if gave_up:
        return EXIT_INTERRUPTED
    if endpoint is not None and endpoint.error is not None:  # as if checked first: no session
        print(error_line(endpoint.error), file=sys.stderr)
        await throw_away(loop)
        return endpoint.error.exit_code
    if failure is not None or result is None:
        failure = failure or SandboxError("the session ended before it started")
        print(error_line(failure), file=sys.stderr)
        if own_loop:  # an exam that can never pass: the session made nothing worth a branch
            await anyio.to_thread.run_sync(discard_session, loop)
        return failure.exit_code
    if own_loop and result.status == "passed":  # a stopped session stays, to be continued
        removed = await anyio.to_thread.run_sync(discard_session, loop)
        if removed is not None:
            print(
                f"codexloop: nothing to keep: removed {removed} and its worktree", file=sys.stderr
            )
    if interrupted:
        return EXIT_INTERRUPTED
    held_back = result.status == "passed" and held_back_by_flags(loop, result)
    if held_back:
        report_flags(list(result.flagged), result.branch)
    if (
        result.status == "passed"
        and not output_closed
        and not held_back
        and (result.applied is None or result.applied.ok)
    ):
        return EXIT_GREEN
    return EXIT_RED


async def throw_away(loop: Loop | Race) -> None:
    """A session set up but never shown: its branches, worktrees, scratch and traces."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(functools.partial(discard_session, loop, always=True))
    for one in loop.loops if isinstance(loop, Race) else [loop]:
        trace = one.session.trace if one.session is not None else None
        if trace is not None:
            trace.path.unlink(missing_ok=True)
    if isinstance(loop, Race):
        folder = traces_dir() / loop.name
        (folder / "index.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def held_back_by_flags(loop: Loop | Race, result: LoopResult) -> bool:
    """``--accept all`` and a flagged green: nothing was applied, and the run is not green."""
    return loop.accept_all and not loop.accept_flagged and bool(result.flagged)


def report_flags(flagged: list[ev.Flagged], branch: str) -> None:
    """The flags on standard error, one a line, and what to do about them."""
    print(
        "codexloop: green, but not applied: the change touches test machinery "
        "(code inside the test process can fake a pass):",
        file=sys.stderr,
    )
    for flag in flagged:
        where = f"{flag.path}:{flag.line}" if flag.line else flag.path
        print(f"  {where}: {flag.reason}", file=sys.stderr)
    print(
        f"codexloop: review branch {branch}, or run again with --accept flagged to apply it anyway",
        file=sys.stderr,
    )


def run_headless(
    config: Config,
    *,
    accept_all: bool = False,
    accept_flagged: bool = False,
    loop: Loop | Race | None = None,
    resumed: SessionRecord | None = None,
) -> int:
    try:
        return anyio.run(
            functools.partial(
                headless_session,
                config,
                sys.stdout,
                accept_all=accept_all,
                accept_flagged=accept_flagged,
                loop=loop,
                resumed=resumed,
            )
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
