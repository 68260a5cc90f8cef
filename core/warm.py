"""Warm test runs: keep a pytest process in the sandbox and fork a fresh child per run.

A re-run of one test then pays neither interpreter start-up nor heavy third-party
imports again. Correctness first: the project's own modules are imported fresh in
every child; a change to the test configuration (any conftest.py, pytest.ini, tox.ini,
setup.cfg, pyproject.toml) or to the installed packages restarts the server; results
are the same as a cold run (a test compares them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path, PurePath

import anyio
from anyio.abc import Process
from codexloop.core.limits import PidsGroup, limit_notes
from codexloop.core.process import (
    DEFAULT_KEEP,
    OutputCallback,
    RunResult,
    _HeadTail,
    sanitize_terminal,
)
from codexloop.core.sandbox import Sandbox

SERVER_SCRIPT = Path(__file__).with_name("warm_server.py")
CONFIG_NAMES = ("conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml")
START_TIMEOUT_S = 30.0


class WarmError(Exception):
    """The warm server could not start or answer; the caller runs cold instead."""


def site_packages(python: str) -> list[Path]:
    """The interpreter's package folders (their mtimes change when packages are installed)."""
    code = "import json, site, sysconfig; print(json.dumps([sysconfig.get_paths()['purelib'], *site.getsitepackages()]))"
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(p) for p in dict.fromkeys(json.loads(out)) if Path(p).is_dir()]


class WarmRunner:
    """One warm pytest server for one sandbox."""

    def __init__(self, sandbox: Sandbox, python: str) -> None:
        self.sandbox = sandbox
        self.python = python
        self.process: Process | None = None
        self.socket_path = sandbox.tmp / "warm.sock"
        self.fingerprint: str | None = None
        self._site: list[Path] | None = None
        self._known_config: list[str] | None = None
        self.starts = 0
        self.group: PidsGroup | None = None

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
            try:
                digest.update((root / rel).read_bytes())
            except OSError:
                digest.update(b"\0missing")
        if self._site is None:
            self._site = site_packages(self.python)
        for folder in self._site:
            digest.update(f"{folder}:{folder.stat().st_mtime_ns}".encode())
        return digest.hexdigest()

    async def _start(self) -> None:
        await self.stop()
        script = self.sandbox.tmp / "codexloop_warm_server.py"
        shutil.copyfile(SERVER_SCRIPT, script)  # visible inside the sandbox whatever the install
        self.socket_path.unlink(missing_ok=True)
        command = (
            f"exec {shlex.quote(self.python)} {shlex.quote(str(script))} "
            f"{shlex.quote(str(self.socket_path))} {shlex.quote(str(self.sandbox.worktree))}"
        )
        argv, env = self.sandbox.command_argv(command)
        self.group = self.sandbox.process_group()  # the server and every run it forks
        if self.group is not None:
            argv = self.group.join(argv)
        self.process = await anyio.open_process(
            argv,
            cwd=self.sandbox.worktree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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

    async def stop(self) -> None:
        process, self.process = self.process, None
        group, self.group = self.group, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, 9)
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
            if group is not None:
                await group.close(settle_s=0)

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
        fingerprint = await anyio.to_thread.run_sync(self._fingerprint, changed)
        if (
            self.process is None
            or self.process.returncode is not None
            or fingerprint != self.fingerprint
        ):
            await self._start()
            self.fingerprint = fingerprint
        started = time.perf_counter()
        if self.group is not None:
            self.group.mark()
        env = {**self.sandbox.environment(extra_env)}
        request = {"args": args, "env": env, "cwd": str(self.sandbox.worktree)}
        kept = _HeadTail(DEFAULT_KEEP)
        code: int | None = None
        timed_out = False
        try:
            stream = await anyio.connect_unix(str(self.socket_path))
        except OSError as exc:
            await self.stop()
            raise WarmError(f"cannot reach the warm pytest server: {exc}") from exc
        async with stream:
            await stream.send((json.dumps(request) + "\n").encode())
            buffer = b""
            with anyio.move_on_after(timeout) as scope:
                while code is None:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
                    while len(buffer) >= 5:
                        kind, size = buffer[:1], struct.unpack(">I", buffer[1:5])[0]
                        if kind == b"X":
                            code = struct.unpack(">i", buffer[1:5])[0]
                            buffer = buffer[5:]
                            break
                        if len(buffer) < 5 + size:
                            break
                        text = buffer[5 : 5 + size].decode("utf-8", errors="replace")
                        buffer = buffer[5 + size :]
                        kept.add(text)
                        if on_output is not None:
                            await on_output(sanitize_terminal(text))
            timed_out = scope.cancelled_caught  # closing the connection kills the run
        output = sanitize_terminal(kept.text()) + limit_notes(self.group, 0)
        if timed_out:
            output += f"\n[codexloop: stopped after the {timeout:g} s time limit; the process tree was killed]"
        elif code is None:
            await self.stop()
            raise WarmError("the warm pytest server went away during a run")
        return RunResult(
            None if timed_out else code,
            output,
            time.perf_counter() - started,
            timed_out,
            kept.dropped > 0,
        )
