"""Warm test runs: keep a pytest process in the sandbox and fork a fresh child per run.

A re-run of one test then pays neither interpreter start-up nor heavy third-party
imports again. Correctness first: the project's own modules are imported fresh in
every child; a change to the test configuration (any conftest.py, pytest.ini, tox.ini,
setup.cfg, pyproject.toml) or to the installed packages restarts the server; results
are the same as a cold run (a test compares them).

Over 400 lines: the warm server's protocol, its fingerprint and its fallback to a cold run
must agree exactly (a warm result is trusted only as a cold one would be).
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import inspect
import json
import os
import shlex
import signal
import socket
import stat
import struct
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path, PurePath

import anyio
from anyio.abc import Process

from codexloop.core import ahead, interpreter, safefs, sockets
from codexloop.core.limits import RUN_MARK, PidsGroup, kill_marked, limit_notes
from codexloop.core.process import (
    DEFAULT_HARD_LIMIT,
    DEFAULT_KEEP,
    LiveCap,
    OutputCallback,
    RunResult,
    _HeadTail,
    sanitize_terminal,
)
from codexloop.core.sandbox import Sandbox

SERVER_SCRIPT = Path(__file__).with_name("warm_server.py")
CONFIG_NAMES = ("conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml")
START_TIMEOUT_S = 30.0
MAX_CONFIG_BYTES = 4 << 20  # a configuration file bigger than this is fingerprinted by size
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class WarmError(Exception):
    """The warm server could not start or answer; the caller runs cold instead."""


def site_packages(python: str) -> list[Path]:
    """The interpreter's package folders (their mtimes change when packages are installed)."""
    code = "import json, site, sysconfig; print(json.dumps([sysconfig.get_paths()['purelib'], *site.getsitepackages()]))"
    folders = interpreter.ask_json(python, code)
    if not isinstance(folders, list):
        return []
    return [Path(p) for p in dict.fromkeys(folders) if isinstance(p, str) and Path(p).is_dir()]


def read_config(root: Path, rel: str, limit: int = MAX_CONFIG_BYTES) -> bytes | None:
    """A configuration file's bytes, read component by component without following a symlink;
    None for anything but a regular file (a FIFO, a socket, a device, a link, a folder).

    Never blocks (a FIFO is opened non-blocking and refused) and never reads more than
    ``limit`` bytes (a bigger file stands for its size and mtime).
    """
    parts = PurePath(rel).parts
    if not parts or any(p in ("..", "/") for p in parts):
        return None
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        inner = os.open(parts[-1], os.O_RDONLY | _OPEN_FLAGS, dir_fd=fd)
        os.close(fd)
        fd = inner
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > limit:
            return f"\0big:{info.st_size}:{info.st_mtime_ns}".encode()
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _kill_marks(marker: str) -> int:
    """Kill the server's processes and its runs' (blocking): how many runs' processes."""
    kill_marked(marker)
    return kill_marked(_run_mark(marker))


def _run_mark(marker: str) -> str:
    return f"{marker}-run"


def write_fresh(folder: Path, name: str, data: bytes) -> Path:
    """Write ``folder/name`` as a new regular file, whatever the model left there: a symlink
    is removed (never followed), a folder too; the file is created exclusively."""
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for _attempt in range(5):
            try:
                info = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISDIR(info.st_mode):
                    safefs.remove_at(dir_fd, name)  # never follows a link, any depth
                else:
                    os.unlink(name, dir_fd=dir_fd)
            try:
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dir_fd,
                )
            except FileExistsError:
                continue  # planted again in between: remove it again
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            return folder / name
        raise OSError(errno.EEXIST, f"{folder / name} keeps being replaced")
    finally:
        os.close(dir_fd)


def _kill_all_but(group: PidsGroup, keep: int) -> int:
    killed = 0
    for pid in group.pids():
        if pid != keep:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def _can_pass_sockets() -> bool:
    """Whether this anyio starts a process with an extra descriptor (anyio 4.10 or later)."""
    return "pass_fds" in inspect.signature(anyio.open_process).parameters


class WarmRunner:
    """One warm pytest server for one sandbox."""

    def __init__(self, sandbox: Sandbox, python: str, *, preload: tuple[str, ...] = ()) -> None:
        """``preload``: modules the server imports at its start (the pytest plugins every run
        loads), where they resolve outside the project."""
        self.sandbox = sandbox
        self.python = python
        self.preload = preload
        self.process: Process | None = None
        self.fingerprint: str | None = None
        self._site: list[Path] | None = None
        self._known_config: list[str] | None = None
        self.starts = 0
        self.group: PidsGroup | None = None
        self.marker: str | None = None  # the server's run mark, without isolation
        self._private_pids = False  # the server sweeps its own pid namespace after each run
        self._lifeline: int | None = None  # write end of the server's stdin pipe
        # The engine's end of the control connection: the server's only way in (see
        # warm_server). No socket in the file system: nothing else in the sandbox reaches it.
        self._control: socket.socket | None = None
        self._starting = anyio.Lock()  # one start at a time: prepare()'s, or a run's

    def _config_files(self) -> list[str]:
        """Every test-configuration file of the worktree (a walk: done once per session)."""
        root = self.sandbox.worktree
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".") and d not in ("__pycache__", "node_modules")
            ]
            found += [
                str(Path(dirpath, name).relative_to(root))
                for name in filenames
                if name in CONFIG_NAMES
            ]
        return found

    def _fingerprint(self, changed: Iterable[str] | None = None) -> str:
        """What the server's state depends on: test configuration and installed packages.

        ``changed``: the paths the sandbox changed since its base. With them, the files found
        by one walk at the start plus the changed ones are read, not the whole tree again.
        """
        if changed is None or self._known_config is None:
            self._known_config = self._config_files()
        paths = set(self._known_config)
        if changed is not None:
            paths |= {p for p in changed if PurePath(p).name in CONFIG_NAMES}
        digest = hashlib.sha256()
        root = self.sandbox.worktree
        for rel in sorted(paths):
            digest.update(rel.encode() + b"\0")
            data = read_config(root, rel)
            if data is None:  # not a regular file: a link counts by where it points
                try:
                    data = b"\0link:" + os.fsencode(os.readlink(root / rel))
                except OSError:
                    data = b"\0missing"
            digest.update(data)
        if self._site is None:
            self._site = ahead.take(site_packages, self.python)
        for folder in self._site:
            digest.update(f"{folder}:{folder.stat().st_mtime_ns}".encode())
        return digest.hexdigest()

    async def _start(self) -> None:
        await self.stop()
        if not _can_pass_sockets():
            raise WarmError("warm test runs need anyio 4.10 or later (pip install -U anyio)")
        # Visible inside the sandbox whatever the install; written fresh, never through a link.
        script = await anyio.to_thread.run_sync(
            write_fresh, self.sandbox.tmp, "codexloop_warm_server.py", SERVER_SCRIPT.read_bytes()
        )
        # The control connection: one end stays here, the other is the server's by inheritance
        # (bubblewrap passes inherited descriptors on to the command, and its own processes
        # close them). Both are non-inheritable: no other child of the engine gets them.
        control, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = (
            f"exec {shlex.quote(self.python)} {shlex.quote(str(script))} "
            f"{server_end.fileno()} {shlex.quote(str(self.sandbox.worktree))}"
        )
        self.group = self.sandbox.process_group()  # the server and every run it forks
        # Neither a pid namespace nor a cgroup: mark the server's environment and its runs'
        # (like Sandbox.run), so what a run leaves behind can be found and killed.
        self.marker = (
            None if self.sandbox.isolation.active or self.group is not None else uuid.uuid4().hex
        )
        private_pids = self.sandbox.isolation.active and self.sandbox.isolation.fresh_proc
        self._private_pids = private_pids
        argv, env = self.sandbox.command_argv(
            command,
            {
                **({RUN_MARK: self.marker} if self.marker else {}),
                **({"CODEXLOOP_PRIVATE_PIDS": "1"} if private_pids else {}),
                **({"CODEXLOOP_PRELOAD": ",".join(self.preload)} if self.preload else {}),
            },
        )
        if self.group is not None:
            argv = self.group.join(argv)
        # The lifeline: the server's stdin is a pipe whose only write end the engine holds.
        # When the engine goes (stop, a crash, SIGKILL, a closed terminal) the server reads
        # EOF, kills its run's process group and exits; nothing else has to notice.
        lifeline_r, lifeline_w = os.pipe()  # both non-inheritable: no other child gets them
        try:
            self.process = await anyio.open_process(
                argv,
                cwd=self.sandbox.worktree,
                env=env,
                stdin=lifeline_r,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(server_end.fileno(),),
            )
        except BaseException:
            os.close(lifeline_w)
            control.close()
            raise
        finally:
            os.close(lifeline_r)
            server_end.close()
        self._lifeline = lifeline_w
        control.setblocking(False)  # a server that stops reading is an error, not a hang
        self._control = control
        self.starts += 1
        assert self.process.stdout is not None
        seen = b""
        with anyio.move_on_after(START_TIMEOUT_S):
            async for chunk in self.process.stdout:
                seen += chunk
                if b"ready" in seen:
                    return
        await self.stop()
        raise WarmError(
            f"the warm pytest server did not start: {seen.decode(errors='replace')[-500:]}"
        )

    async def prepare(self) -> None:
        """Start the server now, beside what the engine does before the first run (restoring
        the exam, recording the candidate): its start is another process's work. A failure,
        whatever it is, is left to that run to meet, and say (it starts the server again)."""
        with contextlib.suppress(Exception):
            await self._started(None)

    async def _started(self, changed: Iterable[str] | None) -> None:
        """The server up, and started afresh if it died or what it depends on changed."""
        async with self._starting:
            fingerprint = await anyio.to_thread.run_sync(self._fingerprint, changed)
            if (
                self.process is None
                or self.process.returncode is not None
                or fingerprint != self.fingerprint
            ):
                await self._start()
                self.fingerprint = fingerprint

    async def _open_run(self) -> socket.socket:
        """A fresh run connection: one end passed to the server over the control connection,
        the other returned (non-blocking: read with :mod:`codexloop.core.sockets`, a run cut
        by its time limit has no read in flight). Closing it early kills the run."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            assert self._control is not None
            socket.send_fds(self._control, [b"R"], [theirs.fileno()])
        except OSError as exc:  # the server is gone, or stopped reading
            ours.close()
            await self.stop()
            raise WarmError(f"cannot reach the warm pytest server: {exc}") from exc
        finally:
            theirs.close()  # the server's now, and only the server's
        ours.setblocking(False)
        return ours

    async def stop(self) -> None:
        process, self.process = self.process, None
        group, self.group = self.group, None
        lifeline, self._lifeline = self._lifeline, None
        control, self._control = self._control, None
        marker, self.marker = self.marker, None
        if lifeline is not None:
            os.close(lifeline)
        if control is not None:
            control.close()
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, 9)
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
            if group is not None:
                await group.close(settle_s=0)
            if marker is not None:
                await anyio.to_thread.run_sync(_kill_marks, marker)

    async def run(
        self,
        args: list[str],
        *,
        extra_env: dict[str, str],
        timeout: float,
        on_output: OutputCallback | None = None,
        changed: Iterable[str] | None = None,
    ) -> RunResult:
        """One pytest run in a fresh fork of the warm server.

        ``changed``: the sandbox's changed paths, when the caller has them (saves a walk).
        """
        await self._started(changed)
        started = time.perf_counter()
        if self.group is not None:
            self.group.mark()
        run_env = dict(extra_env)
        if self.marker is not None:
            run_env[RUN_MARK] = _run_mark(self.marker)
        env = {**self.sandbox.environment(run_env)}
        request = {"args": args, "env": env, "cwd": str(self.sandbox.worktree)}
        kept = _HeadTail(DEFAULT_KEEP)
        live = LiveCap(on_output)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        code: int | None = None
        timed_out = killed_for_output = False
        read_total = 0
        connection = await self._open_run()
        with connection:
            buffer = b""
            with anyio.move_on_after(timeout) as scope:
                with contextlib.suppress(OSError):  # a server gone says so below (no code)
                    await sockets.send_all(connection, (json.dumps(request) + "\n").encode())
                while code is None and not killed_for_output:
                    chunk = await sockets.receive(connection)
                    if not chunk:
                        break
                    buffer += chunk
                    while len(buffer) >= 5:
                        kind, size = buffer[:1], struct.unpack(">I", buffer[1:5])[0]
                        if kind == b"X":
                            code = struct.unpack(">i", buffer[1:5])[0]
                            buffer = buffer[5:]
                            break
                        if len(buffer) < 5 + size:
                            break
                        read_total += size
                        if read_total > DEFAULT_HARD_LIMIT:
                            killed_for_output = True  # closing the connection kills the run
                            break
                        text = decoder.decode(buffer[5 : 5 + size])
                        buffer = buffer[5 + size :]
                        kept.add(text)
                        await live.feed(text)
            timed_out = scope.cancelled_caught  # closing the connection kills the run
        rest = decoder.decode(b"", final=True)
        if rest:
            kept.add(rest)
            await live.feed(rest)
        await live.finish()
        survivors = 0
        if self.marker is not None:  # what the run left behind (setsid, daemons)
            survivors = await anyio.to_thread.run_sync(kill_marked, _run_mark(self.marker))
        elif self.group is not None and not self._private_pids and self.process is not None:
            # A cgroup but no pid namespace: the server shares its group with what its runs
            # leave behind; everything in it but the server is a leftover.
            survivors = _kill_all_but(self.group, self.process.pid)
        text = kept.text()
        notes = limit_notes(self.group, survivors, limit=self.sandbox.limit, output=text)
        output = sanitize_terminal(text) + notes
        if timed_out:
            output += f"\n[codexloop: stopped after the {timeout:g} s time limit; the process tree was killed]"
            # The run shares the server's pid namespace and user: it may have stopped the
            # server itself (SIGSTOP), and every later run would time out too. A fresh server
            # serves the next run.
            await self.stop()
        elif killed_for_output:
            output += f"\n[codexloop: killed after {DEFAULT_HARD_LIMIT} bytes of output]"
        elif code is None:
            await self.stop()
            raise WarmError("the warm pytest server went away during a run")
        return RunResult(
            None if (timed_out or killed_for_output) else code,
            output,
            time.perf_counter() - started,
            timed_out,
            kept.dropped > 0,
            killed_for_output,
        )
