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
LIVE_HEAD = 256 << 10  # characters streamed live per command before the cut
LIVE_TAIL = 64 << 10  # characters streamed at the end of a cut command
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


_NEEDS_SANITIZING = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
)  # ESC and the controls but \t \n \r


_SGR = re.compile(r"\x1b\[[0-?]*[ -/]*m")


def plain_text(text: str) -> str:
    """``text`` as a model should read it: no escape sequence at all (colours included), no
    control character but tab and newline."""
    if _NEEDS_SANITIZING.search(text) is None:
        return text
    text = _SGR.sub("", _UNSAFE_ESCAPES.sub("", text.replace("\r\n", "\n")))
    return text.replace("\x1b", "").replace("\r", "")


def sanitize_terminal(text: str) -> str:
    """Strip escape sequences that could act on the developer's terminal; keep colours."""
    if _NEEDS_SANITIZING.search(text) is None:
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


class _Tail:
    """The last ``size`` characters of a stream, and how many went before them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: deque[str] = deque()
        self.length = 0
        self.dropped = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)
        while self.length > self.size:
            excess = self.length - self.size
            first = self.parts[0]
            if len(first) <= excess:
                self.parts.popleft()
                self.length -= len(first)
                self.dropped += len(first)
            else:
                self.parts[0] = first[excess:]
                self.length -= excess
                self.dropped += excess

    def text(self) -> str:
        return "".join(self.parts)


class _HeadTail:
    """Keep the first and last ``keep // 2`` characters of a stream."""

    def __init__(self, keep: int) -> None:
        self.half = max(keep // 2, 1)
        self.head: list[str] = []
        self.head_len = 0
        self.tail = _Tail(self.half)

    @property
    def dropped(self) -> int:
        return self.tail.dropped

    def add(self, text: str) -> None:
        if self.head_len < self.half:
            room = self.half - self.head_len
            self.head.append(text[:room])
            self.head_len += min(room, len(text))
            text = text[room:]
        if text:
            self.tail.add(text)

    def text(self) -> str:
        head = "".join(self.head)
        tail = self.tail.text()
        if self.dropped:
            return f"{head}\n[... {self.dropped} characters cut ...]\n{tail}"
        return head + tail


class LiveCap:
    """What a command streams live: its first ``head`` characters, then one marker, and when
    it ends its last ``tail`` characters after the count of what was left out.

    The same cut as the model's (:class:`_HeadTail`), smaller: a flood of one command never
    floods the events, the trace or the app; ordinary output (a long test report) is whole.
    """

    def __init__(
        self, on_output: OutputCallback | None, head: int = LIVE_HEAD, tail: int = LIVE_TAIL
    ) -> None:
        self.on_output = on_output
        self.room = head
        self.head = head
        self.tail = _Tail(tail)
        self.cut = False

    async def feed(self, text: str) -> None:
        """Stream ``text`` (sanitized), or keep it for the end once the head is spent."""
        if self.on_output is None or not text:
            return
        if self.room > 0:
            shown, text = text[: self.room], text[self.room :]
            self.room -= len(shown)
            await self.on_output(sanitize_terminal(shown))
        if not text:
            return
        if not self.cut:
            self.cut = True
            await self.on_output(
                f"\n[codexloop: more than {self.head} characters of output: the rest is left "
                "out of the live view; its end follows when the command ends]\n"
            )
        self.tail.add(text)

    async def finish(self) -> None:
        """The command ended: stream the count left out and the end of the output."""
        if self.on_output is None or not self.cut:
            return
        tail = sanitize_terminal(self.tail.text())
        await self.on_output(f"[... {self.tail.dropped} characters cut ...]\n{tail}")


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
    live = LiveCap(on_output)
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
                    await live.feed(text)

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
        await live.feed(tail)
    await live.finish()
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


def session_processes(folders: Sequence[Path]) -> list[int]:
    """The processes of a session: those whose environment or command line names one of its
    folders (its scratch folder: every sandboxed command gets ``TMPDIR`` there; its worktree;
    the warm server's script and bubblewrap's binds name them). This process and its
    ancestors are never among them.

    Finds what a crashed session left running (``codexloop clean``). Blocking (reads /proc);
    empty where there is no /proc.
    """
    needles = [os.fsencode(str(folder)) for folder in folders]
    spared = _ancestors()
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit() or int(name) in spared:
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{name}/{part}", "rb") as handle:
                    data = handle.read()
            except OSError:
                continue  # gone, or not ours to read
            if any(_names(data, needle) for needle in needles):
                found.append(int(name))
                break
    return found


def _names(data: bytes, folder: bytes) -> bool:
    """Whether ``data`` names ``folder`` or a path inside it (not merely a longer name)."""
    return folder + b"/" in data or folder + b"\0" in data or data.endswith(folder)


def _ancestors() -> set[int]:
    pids = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                pid = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        pids.add(pid)
    return pids


def kill_session(folders: Sequence[Path]) -> int:
    """Kill every process of a session (see :func:`session_processes`); how many there were."""
    killed: set[int] = set()
    for _round in range(3):  # a dying process may have forked just before
        found = [pid for pid in session_processes(folders) if pid not in killed]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
    return len(killed)
