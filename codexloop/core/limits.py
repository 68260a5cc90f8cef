"""A process-count limit for sandboxed commands, where the system allows one, and what
becomes of the processes a command leaves behind.

Two ways, tried in this order at start-up:

``cgroup``
    A pids cgroup per command, where a cgroup v1 ``pids`` hierarchy is writable (root
    on hosts that still mount v1). ``pids.max`` bounds the tasks (processes and
    threads); after the command every task still in the group is killed and the group
    removed, so nothing outlives a command even if it left the process group and the
    pid namespace. (cgroup v2 is not used: a process may not start children in
    sub-groups of a cgroup it sits in itself once ``pids`` is enabled there — the
    thread-root rule — so v2 would need a cgroup manager round trip per command.)
``rlimit``
    ``ulimit -u`` inside the sandbox's own user namespace. Since Linux 5.14 the kernel
    counts ``RLIMIT_NPROC`` per user namespace, so only the sandbox's processes count
    (before that, and outside a user namespace, it would count every process of the
    user and starve their desktop). Not enforced for root.

Otherwise ``none``, with the reason, which the loop reports.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio

from codexloop.core import ahead
from codexloop.core.words import counted

Method = Literal["cgroup", "rlimit", "none"]

DEFAULT_MAX_PROCESSES = 1024
MIN_MAX_PROCESSES = 16

_PREFIX = "codexloop-"
_JOIN = (
    '{ echo $$ > "$0"; } 2>/dev/null'
    ' || { echo "codexloop: cannot enter the pids cgroup $0" >&2; exit 125; }; exec "$@"'
)
_counter = itertools.count(1)


def find_pids_cgroup(mountinfo: str, self_cgroup: str) -> Path | None:
    """The folder of this process in a mounted cgroup v1 ``pids`` hierarchy, if any.

    ``mountinfo`` is ``/proc/self/mountinfo``, ``self_cgroup`` is ``/proc/self/cgroup``.
    """
    ours = None
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and "pids" in parts[1].split(","):
            ours = parts[2]
    if ours is None:
        return None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3 or after[0] != "cgroup" or "pids" not in after[2].split(","):
            continue
        relative = _relative(ours, _unescape(fields[3]))
        if relative is not None:
            return Path(_unescape(fields[4]), relative)
    return None


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _relative(path: str, root: str) -> str | None:
    """``path`` (as /proc/self/cgroup names it) relative to a mount of the hierarchy's ``root``."""
    if root == "/":
        return path.lstrip("/")
    if path == root or path.startswith(root.rstrip("/") + "/"):
        return path[len(root) :].lstrip("/")
    return None  # our cgroup is not visible through this mount


def kernel_counts_nproc_per_namespace(release: str | None = None) -> bool:
    """Linux 5.14 moved RLIMIT_NPROC onto per-user-namespace counts ("ucounts")."""
    match = re.match(r"(\d+)\.(\d+)", release or platform.release())
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) >= (5, 14)


@dataclass(frozen=True)
class ProcessLimit:
    method: Method
    maximum: int | None
    reason: str
    cgroup: Path | None = None  # the folder per-command groups are made in

    def shell_prefix(self) -> str:
        """What the sandbox's shell runs before the command."""
        if self.method == "rlimit":
            return f"ulimit -u {self.maximum} 2>/dev/null; "
        return ""

    def group(self) -> PidsGroup | None:
        """A fresh pids cgroup for one command (or one warm server), when the method is cgroup."""
        if self.method != "cgroup" or self.cgroup is None or self.maximum is None:
            return None
        return PidsGroup.create(self.cgroup, self.maximum)


class PidsGroup:
    """One command's pids cgroup: created before it starts, emptied and removed after."""

    def __init__(self, path: Path, maximum: int) -> None:
        self.path = path
        self.maximum = maximum
        self._hits_before = 0
        self._hits_at_close: int | None = None

    @classmethod
    def create(cls, where: Path, maximum: int) -> PidsGroup:
        """Make the group (blocking, a few system calls); raises OSError when refused."""
        path = where / f"{_PREFIX}{os.getpid()}-{next(_counter)}"
        path.mkdir()
        try:
            (path / "pids.max").write_text(str(maximum))
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise
        return cls(path, maximum)

    def join(self, argv: Sequence[str]) -> list[str]:
        """``argv`` entering the group before anything else runs (so no fork escapes it)."""
        return ["/bin/sh", "-c", _JOIN, str(self.path / "cgroup.procs"), *argv]

    def pids(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(word) for word in text.split()]

    def limit_hits(self) -> int:
        """How many forks the limit refused so far."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def mark(self) -> None:
        """Remember the refusals so far; ``hit_since_mark`` tells about new ones."""
        self._hits_before = self.limit_hits()

    def hit_since_mark(self) -> bool:
        hits = self._hits_at_close if self._hits_at_close is not None else self.limit_hits()
        return hits > self._hits_before

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _try_remove(self) -> bool:
        self.kill_all()
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False  # killed tasks leave the group once they are reaped
        return True

    async def close(self, *, settle_s: float = 0.2, grace_s: float = 3.0) -> int:
        """Kill whatever is left in the group, wait until it is empty, remove it.

        Tasks of a finished command leave by themselves within moments (a pid namespace
        is torn down, zombies are reaped); whatever is still there after ``settle_s`` had
        outlived its command and is killed. Returns how many did (0 when all went with it).
        """
        self._hits_at_close = self.limit_hits()
        with anyio.move_on_after(settle_s):
            while self.pids():
                await anyio.sleep(0.005)
        survivors = len(self.pids())
        with anyio.move_on_after(grace_s):
            while not self._try_remove():
                await anyio.sleep(0.01)
        return survivors

    def close_blocking(self, *, grace_s: float = 3.0) -> None:
        deadline = time.monotonic() + grace_s
        while not self._try_remove() and time.monotonic() < deadline:
            time.sleep(0.01)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def remove_stale_groups(where: Path) -> None:
    """Empty groups left by a codexloop that died before cleaning up (best effort)."""
    with contextlib.suppress(OSError):
        for child in where.iterdir():
            match = re.fullmatch(rf"{_PREFIX}(\d+)-\d+", child.name)
            if match and not _alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    child.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cgroup_works(where: Path, maximum: int) -> str | None:
    """None when a group can be made there and a process can enter it; else why not."""
    try:
        group = PidsGroup.create(where, maximum)
    except OSError as exc:
        return f"the pids cgroup {where} is not writable ({exc.strerror})"
    try:
        done = subprocess.run(
            group.join(["true"]), capture_output=True, timeout=10, stdin=subprocess.DEVNULL
        )
        if done.returncode != 0:
            return f"cannot move a process into {group.path}"
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot move a process into {group.path} ({exc})"
    finally:
        group.close_blocking()


def pids_cgroup(maximum: int) -> tuple[Path | None, str]:
    """Where a pids cgroup per command can be made, or None and why not (blocking: a group
    is made and a process moved into it; started ahead, beside the snapshot)."""
    where = find_pids_cgroup(_read("/proc/self/mountinfo"), _read("/proc/self/cgroup"))
    if where is None:
        return None, "no cgroup v1 pids hierarchy is mounted"
    remove_stale_groups(where)
    why_not = _cgroup_works(where, maximum)
    return (where, "") if why_not is None else (None, why_not)


def probe(maximum: int, *, user_namespace: bool) -> ProcessLimit:
    """Pick the best process-count limit this system allows (blocking)."""
    where, no_cgroup = ahead.take(pids_cgroup, maximum)
    if where is not None:
        return ProcessLimit(
            "cgroup",
            maximum,
            f"at most {maximum} processes per command (a pids cgroup per command)",
            where,
        )
    if not user_namespace:
        why = "without a user namespace RLIMIT_NPROC would count every process of your user"
    elif os.geteuid() == 0:
        why = "RLIMIT_NPROC is not enforced for root"
    elif not kernel_counts_nproc_per_namespace():
        why = "before Linux 5.14 RLIMIT_NPROC counts every process of your user"
    else:
        return ProcessLimit(
            "rlimit",
            maximum,
            f"at most {maximum} processes per command (RLIMIT_NPROC in the sandbox's user namespace)",
        )
    return ProcessLimit("none", None, f"no process-count limit: {no_cgroup}, and {why}")


RUN_MARK = "CODEXLOOP_RUN"


def kill_marked(marker: str) -> int:
    """Kill every process whose environment carries this run's mark; how many there were.

    The fallback for commands run without a pid namespace or a cgroup: a process that left
    the process group (``setsid``) still inherits the environment. Blocking (reads /proc).
    """
    needle = f"{RUN_MARK}={marker}".encode()
    killed = 0
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return 0  # no /proc (macOS): the process group is all there is
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except (OSError, ValueError):
            continue  # gone, or not ours to read
    return killed


# What a fork refused for the process limit prints, in the runtimes commands are likely to use
# (EAGAIN: Python's BlockingIOError, bash's "fork: retry", Node's "spawn EAGAIN", ...).
_FORK_REFUSED = re.compile(
    r"Resource temporarily unavailable|\bEAGAIN\b|can't start new thread|[Cc]annot fork"
)


def limit_notes(
    group: PidsGroup | None,
    survivors: int,
    *,
    limit: ProcessLimit | None = None,
    output: str = "",
) -> str:
    """What a command's result says about the process limit and what outlived it. A pids
    cgroup counts the forks it refused; ``RLIMIT_NPROC`` keeps no count, so under ``limit``'s
    ulimit the note comes when the command's ``output`` shows a fork refused."""
    notes = ""
    maximum: int | None
    if group is not None:
        maximum, reached = group.maximum, group.hit_since_mark()
    elif limit is not None and limit.method == "rlimit":
        maximum, reached = limit.maximum, _FORK_REFUSED.search(output) is not None
    else:
        maximum, reached = None, False
    if reached:
        notes += (
            f"\n[codexloop: the sandbox's limit of {maximum} processes was reached; "
            "further forks failed]"
        )
    if survivors:
        notes += f"\n[codexloop: {counted(survivors, 'process', 'processes')} outlived the command and were killed]"
    return notes
