"""Run one command with streamed output, a time limit and a cap on what is kept.

The command runs in its own session (process group); on timeout the whole group
is terminated, then killed. Output is decoded incrementally, streamed to a
callback, and kept as head + tail with a marker of what was cut.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process

OutputCallback = Callable[[str], Awaitable[None]]

DEFAULT_KEEP = 1 << 20  # characters kept per run (head + tail)
DEFAULT_HARD_LIMIT = 64 << 20  # bytes read before the run is killed
_READ_SIZE = 1 << 16
_KILL_GRACE_S = 2.0
_DRAIN_GRACE_S = 0.5

# Keep SGR colour sequences (ESC [ ... m); drop every other escape sequence: OSC (title,
# clipboard OSC 52, hyperlinks), other CSI (cursor movement, screen clearing), DCS/APC/PM.
_UNSAFE_ESCAPES = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC ... BEL or ST
    r"|\x1b[P_^X][^\x1b]*(?:\x1b\\)?"  # DCS / APC / PM / SOS ... ST
    r"|\x1b\[[0-?]*[ -/]*[@-ln-~]"  # CSI that is not SGR ('m')
    r"|\x1b[@-Z\\-_]"  # two-byte escapes (but not CSI '[' handled above)
    r"|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]"  # control characters but \t \n \r ESC
)


def sanitize_terminal(text: str) -> str:
    """Strip escape sequences that could act on the developer's terminal; keep colours."""
    if "\x1b" not in text and not any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return text
    return _UNSAFE_ESCAPES.sub("", text)


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    output: str
    duration_s: float
    timed_out: bool = False
    truncated: bool = False
    killed_for_output: bool = False


class _HeadTail:
    """Keep the first and last ``keep // 2`` characters of a stream."""

    def __init__(self, keep: int) -> None:
        self.half = max(keep // 2, 1)
        self.head: list[str] = []
        self.head_len = 0
        self.tail: deque[str] = deque()
        self.tail_len = 0
        self.dropped = 0

    def add(self, text: str) -> None:
        if self.head_len < self.half:
            room = self.half - self.head_len
            self.head.append(text[:room])
            self.head_len += min(room, len(text))
            text = text[room:]
        if not text:
            return
        self.tail.append(text)
        self.tail_len += len(text)
        while self.tail_len > self.half:
            excess = self.tail_len - self.half
            first = self.tail[0]
            if len(first) <= excess:
                self.tail.popleft()
                self.tail_len -= len(first)
                self.dropped += len(first)
            else:
                self.tail[0] = first[excess:]
                self.tail_len -= excess
                self.dropped += excess

    def text(self) -> str:
        head = "".join(self.head)
        tail = "".join(self.tail)
        if self.dropped:
            return f"{head}\n[... {self.dropped} characters cut ...]\n{tail}"
        return head + tail


def _kill_group(process: Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    on_output: OutputCallback | None = None,
    keep: int = DEFAULT_KEEP,
    hard_limit: int = DEFAULT_HARD_LIMIT,
) -> RunResult:
    """Run ``argv``; stream sanitized output to ``on_output``; never raise for the command's sake."""
    started = time.perf_counter()
    kept = _HeadTail(keep)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    timed_out = killed_for_output = False
    read_total = 0
    try:
        process = await anyio.open_process(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return RunResult(None, f"could not start {argv[0]}: {exc}", time.perf_counter() - started)

    async def pump() -> None:
        nonlocal read_total, killed_for_output
        assert process.stdout is not None
        async for chunk in process.stdout:
            read_total += len(chunk)
            if read_total > hard_limit:
                killed_for_output = True
                _kill_group(process, signal.SIGKILL)
                break
            text = decoder.decode(chunk)
            if text:
                kept.add(text)
                if on_output is not None:
                    await on_output(sanitize_terminal(text))

    pumped = anyio.Event()

    async def pump_all() -> None:
        try:
            await pump()
        finally:
            pumped.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_all)
            with anyio.move_on_after(timeout) as scope:
                await process.wait()
            if scope.cancelled_caught:
                timed_out = not killed_for_output
                _kill_group(process, signal.SIGTERM)
                with anyio.move_on_after(_KILL_GRACE_S) as grace:
                    await process.wait()
                if grace.cancelled_caught:
                    _kill_group(process, signal.SIGKILL)
            # No process of the group outlives its command; then drain what is left in
            # the pipe. A process that left the group may still hold it open: stop
            # reading after a short grace instead of waiting for it.
            _kill_group(process, signal.SIGKILL)
            with anyio.move_on_after(_DRAIN_GRACE_S):
                await pumped.wait()
            tg.cancel_scope.cancel()
    finally:
        _kill_group(process, signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
    tail = decoder.decode(b"", final=True)
    if tail:
        kept.add(tail)
    output = sanitize_terminal(kept.text())
    if timed_out:
        output += f"\n[codexloop: stopped after the {timeout:g} s time limit; the process tree was killed]"
    if killed_for_output:
        output += f"\n[codexloop: killed after {hard_limit} bytes of output]"
    return RunResult(
        exit_code=None if (timed_out or killed_for_output) else process.returncode,
        output=output,
        duration_s=time.perf_counter() - started,
        timed_out=timed_out,
        truncated=kept.dropped > 0,
        killed_for_output=killed_for_output,
    )
