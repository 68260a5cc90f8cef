"""Warm pytest runs: a long-lived process that forks a fresh child per run.

Runs inside the sandbox with the project's own interpreter, as a standalone script (it
imports nothing of codexloop, which the project's interpreter may not have). It imports
pytest and the third-party modules the tests use once; every run is a fork, so the
project's own modules are always imported fresh and no state leaks between runs.

Protocol on a Unix socket, one request per connection: the client sends one JSON line
``{"args": [...], "env": {...}}``; the server answers with frames ``O<len:4><bytes>``
(output) and finally ``X<code:4>`` (exit status; 255 when the child died of a signal).
The client closing the connection early kills the run.

Lifetime: the server's stdin is a pipe whose write end only the engine holds. End of file
there means the engine is gone (stopped, crashed, killed, its terminal closed): the server
kills the current run's process group and exits. SIGTERM (and SIGHUP) do the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import stat
import struct
import sys

# In a pid namespace of its own (bubblewrap with a fresh /proc): leftovers of a run are swept.
PRIVATE_PIDS = False
# Modules under these roots are the project's: never imported by the server itself.
PROJECT_ROOTS: list[str] = []
# pytest plugins (entry points): pytest imports them itself, and warns if they come preloaded.
PLUGIN_PACKAGES: set[str] = set()
# The process group of the run in progress (its forked child is the group's leader).
CURRENT_RUN: list[int] = []
# The engine's lifeline (stdin), when it is a pipe; -1 when there is none to watch.
LIFELINE = -1


def _die(*_args: object) -> None:
    """The engine is gone or asks us to go: no run outlives the server."""
    for pid in CURRENT_RUN:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    os._exit(143)


def _lifeline_fd() -> int:
    try:
        return 0 if stat.S_ISFIFO(os.fstat(0).st_mode) else -1
    except OSError:
        return -1


def _check_lifeline() -> None:
    """Called when the lifeline is readable: end of file means the engine is gone."""
    try:
        data = os.read(LIFELINE, 4096)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        _die()


def _plugin_packages() -> set[str]:
    try:
        from importlib.metadata import entry_points

        return {ep.value.split(":")[0].split(".")[0] for ep in entry_points(group="pytest11")}
    except Exception:
        return set()


def _third_party(names: list[str]) -> list[str]:
    """Modules that live outside the project (site-packages, the standard library)."""
    keep = []
    for name in names:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) or ""
        if not path or any(os.path.realpath(path).startswith(root) for root in PROJECT_ROOTS):
            continue
        if name.split(".")[0] in PLUGIN_PACKAGES or name.startswith("_pytest.assertion.rewrite"):
            continue
        keep.append(name)
    return keep


def _outside(name: str) -> bool:
    """Whether ``name``'s top-level package resolves outside the project, by where Python
    would really load it from (its spec, not the ``__file__`` a module claims). Finding a
    top-level spec imports nothing; a package's submodules come from its own folders."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name.split(".")[0])
    except Exception:
        return False
    if spec is None:
        return False
    for place in [spec.origin or "", *(spec.submodule_search_locations or [])]:
        if not os.path.isabs(place):
            continue  # "built-in", "frozen"
        if any(os.path.realpath(place).startswith(root) for root in PROJECT_ROOTS):
            return False
    return True


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _sweep_leftovers() -> None:
    """In a private pid namespace every process but this server and its ancestors is what a
    run left behind (a daemon, a setsid escapee): none may see the next run."""
    keep: set[int] = set()
    pid = os.getpid()
    while pid > 0 and pid not in keep:
        keep.add(pid)
        pid = _ppid(pid)
    for _ in range(3):  # a leftover may fork while we look
        found = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) not in keep]
        if not found:
            return
        for victim in found:
            with contextlib.suppress(OSError):
                os.kill(victim, signal.SIGKILL)


def _child(conn: socket.socket, request: dict, report_fd: int, done_fd: int) -> None:
    """In the forked child: run pytest with output on a pipe, report modules, exit."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the run reads nothing of ours (and holds no lifeline)
    os.close(devnull)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the run itself, so that its output pipe closes when it ends
        os.close(read_end)
        os.close(done_fd)  # held by this process alone: its end wakes the server at once
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.environ.clear()
        os.environ.update(request.get("env", {}))
        os.chdir(request.get("cwd", os.getcwd()))
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        import importlib

        importlib.invalidate_caches()  # files the model created since the last run
        import pytest

        code = pytest.main(list(request["args"]))
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(report_fd, (json.dumps(_third_party(list(sys.modules))) + "\n").encode())
        os._exit(int(code))
    os.close(write_end)
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        conn.sendall(b"O" + struct.pack(">I", len(chunk)) + chunk)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    # The server sends the exit status, once it has swept what the run left behind: the
    # engine must not see the result while a leftover of the run still runs.
    os._exit(code if 0 <= code < 255 else 255)


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def serve(path: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound by a relative name: a socket path is limited to ~108 bytes, and the session's
    # folder can be deeper than that (a long home or cache path, a long session name).
    here = os.getcwd()
    os.chdir(os.path.dirname(path) or ".")
    try:
        server.bind(os.path.basename(path))
    finally:
        os.chdir(here)
    server.listen(4)
    import pytest  # noqa: F401  (warm: the runner itself)

    print("ready", flush=True)
    # Nobody reads our output after this: imports that print must not fill a pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)

    report_r, report_w = os.pipe()
    os.set_blocking(report_r, False)
    pending = b""
    watched = [server] + ([LIFELINE] if LIFELINE >= 0 else [])
    while True:
        ready, _, _ = select.select(watched, [], [])
        if LIFELINE in ready:
            _check_lifeline()
        if server not in ready:
            continue
        conn, _ = server.accept()
        line = b""
        while not line.endswith(b"\n"):
            part = conn.recv(65536)
            if not part:
                break
            line += part
        if not line:
            conn.close()
            continue
        request = json.loads(line)
        if request.get("command") == "quit":
            conn.close()
            return
        # No SIGTERM between the fork and knowing the run's pid: it would miss the run.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})
        done_r, done_w = os.pipe()  # EOF when the child has ended: no polling delay
        pid = os.fork()
        if pid == 0:
            server.close()
            os.close(done_r)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP})
            _child(conn, request, report_w, done_w)
        os.close(done_w)
        CURRENT_RUN[:] = [pid]
        code: int | None = None
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP})
        # Parent: drain the module report (a full pipe would block the run) and watch the
        # client: if it goes away, kill the run's whole group. And the engine: if it goes, too.
        while True:
            done_pid, status = os.waitpid(pid, os.WNOHANG)
            if done_pid:
                code = os.waitstatus_to_exitcode(status)
                break
            ready, _, _ = select.select(
                [conn.fileno(), report_r, done_r] + ([LIFELINE] if LIFELINE >= 0 else []),
                [],
                [],
                0.05,
            )
            if LIFELINE in ready:
                _check_lifeline()
            if report_r in ready:
                pending += _drain(report_r)
            if conn.fileno() in ready and not conn.recv(1, socket.MSG_PEEK):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
        os.close(done_r)
        CURRENT_RUN.clear()
        pending += _drain(report_r)
        if PRIVATE_PIDS:
            _sweep_leftovers()
        if code is not None:
            with contextlib.suppress(OSError):
                conn.sendall(b"X" + struct.pack(">i", code if 0 <= code < 255 else 255))
        conn.close()
        # Import what the last run used from outside the project: the next fork has it warm.
        # The list comes from the run (code under test can write anything there): a name is
        # imported only when the module it resolves to lives outside the project.
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            try:
                names = json.loads(raw)
            except ValueError:
                continue
            for name in names if isinstance(names, list) else ():
                if isinstance(name, str) and name not in sys.modules and _outside(name):
                    with contextlib.suppress(Exception):
                        __import__(name)


if __name__ == "__main__":
    PRIVATE_PIDS = os.environ.pop("CODEXLOOP_PRIVATE_PIDS", "") == "1"
    PROJECT_ROOTS.extend(os.path.realpath(p) + os.sep for p in sys.argv[2:])
    PLUGIN_PACKAGES.update(_plugin_packages())
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _die)
    signal.signal(signal.SIGHUP, _die)
    LIFELINE = _lifeline_fd()
    if LIFELINE >= 0:
        os.set_blocking(LIFELINE, False)
        _check_lifeline()  # the engine may be gone already
    serve(sys.argv[1])
