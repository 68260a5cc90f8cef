"""Warm pytest runs: a long-lived process that forks a fresh child per run.

Runs inside the sandbox with the project's own interpreter, as a standalone script (it
imports nothing of codexloop, which the project's interpreter may not have). It imports
pytest and the third-party modules the tests use once; every run is a fork, so the
project's own modules are always imported fresh and no state leaks between runs.

Reachable by the engine alone: there is no socket in the file system. The engine starts the
server holding one end of a socket pair (an inherited descriptor, its number the first
argument): the control connection. Per run the engine makes a fresh socket pair and passes
one end over the control connection (one byte carrying the descriptor, SCM_RIGHTS): the run
connection. On it the engine writes one JSON line ``{"args": [...], "env": {...}, "cwd":
...}``; the server answers with frames ``O<len:4><bytes>`` (output) and finally ``X<code:4>``
(exit status; 255 when the child died of a signal). The engine closing its end of the run
connection early kills the run. The forked run holds neither connection (its output goes
through a pipe), and the server is not dumpable, so code under test cannot take the control
connection with ptrace rights (``pidfd_getfd``) either.

Lifetime: the server's stdin is a pipe whose write end only the engine holds. End of file
there (or on the control connection) means the engine is gone (stopped, crashed, killed, its
terminal closed): the server kills the current run's process group and exits. SIGTERM (and
SIGHUP) do the same.
"""

from __future__ import annotations

import contextlib
import gc
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
# Modules to import at the start (the pytest plugins every run loads), names the engine gives.
PRELOAD: list[str] = []
# The process group of the run in progress (its forked child is the group's leader).
CURRENT_RUN: list[int] = []
# The engine's lifeline (stdin), when it is a pipe; -1 when there is none to watch.
LIFELINE = -1
# prctl(2) options, and the C library that has it (loaded once, by the server: every fork
# inherits it).
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
LIBC: list = []


def _prctl(option: int, value: int) -> bool:
    """prctl(2) on Linux (False elsewhere, or when it fails)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if not LIBC:
            import ctypes

            LIBC.append(ctypes.CDLL(None, use_errno=True))
        return bool(LIBC[0].prctl(option, value, 0, 0, 0) == 0)
    except Exception:
        return False


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
        if _in_project(place):
            return False
    return True


# Modules whose import acts (runs a program, opens a browser, prints), whatever their folder.
_ACTING = frozenset({"__main__", "this", "antigravity", "idlelib", "turtledemo", "__phello__"})


def _in_project(place: str) -> bool:
    """Whether ``place`` (a path entry, a module's file or folder) lies in the project, by its
    name or by where it really leads: a link the run made in the run tree (``src`` → its
    temp folder) leads out of the project, but what is named through it is the run's."""
    named, real = os.path.abspath(place) + os.sep, os.path.realpath(place) + os.sep
    return any(named.startswith(root) or real.startswith(root) for root in PROJECT_ROOTS)


def _import_outside(name: str) -> None:
    """Import ``name`` (a run reported it, or the engine named it) if it lives outside the
    project, where nothing of the project can be reached while it is imported: the project's
    folders (and any relative entry) off ``sys.path``, the working directory ``/``, no
    arguments. A run writes the run tree, which is the server's working directory and on its
    path: an import that looked there (a ``pkgutil`` namespace package spanning it, a
    ``__main__`` module that imports what ``sys.argv`` names) would bring the run's code into
    the server and every later fork. Names with a ``__main__`` part or of modules that act
    when imported are never imported."""
    parts = name.split(".")
    if (
        name in sys.modules
        or not all(part.isidentifier() for part in parts)
        or "__main__" in parts
        or parts[0] in _ACTING
        # Where a run would load it from, the project first on the path: an editable
        # install's folder (the developer's checkout) is shadowed by the project there.
        or not _outside(name)
    ):
        return
    saved_path, saved_argv, saved_cwd = list(sys.path), list(sys.argv), os.getcwd()
    sys.path[:] = [entry for entry in saved_path if os.path.isabs(entry) and not _in_project(entry)]
    sys.argv[:] = saved_argv[:1]
    try:
        os.chdir("/")
        if _outside(name):  # and still outside with the project's folders off the path
            __import__(name)
    except (Exception, SystemExit):
        pass
    finally:
        sys.path[:] = saved_path
        sys.argv[:] = saved_argv
        with contextlib.suppress(OSError):
            os.chdir(saved_cwd)


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


def _child(conn: socket.socket, request: dict, report_fd: int, done_fd: int, server: int) -> None:
    """In the forked child: run pytest with output on a pipe, report modules, exit."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # goes with the server, whatever kills it
    if os.getppid() != server:
        os._exit(255)  # the server went before we could say so
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the run reads nothing of ours (and holds no lifeline)
    os.close(devnull)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the run itself, so that its output pipe closes when it ends
        os.close(read_end)
        os.close(done_fd)  # held by this process alone: its end wakes the server at once
        conn.close()  # the run's frames are the server's to write, not the code under test's
        _prctl(PR_SET_DUMPABLE, 1)  # an ordinary process, as in a cold run (the server is not)
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

        known = set(sys.modules)
        code = pytest.main(list(request["args"]))
        sys.stdout.flush()
        sys.stderr.flush()
        # What the run imported that the server has not: the server keeps those that live
        # outside the project (it checks; this list is the code under test's to write).
        new = [name for name in sys.modules if name not in known]
        os.write(report_fd, (json.dumps(new) + "\n").encode())
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


def _prime() -> None:
    """Caches a run fills again and again, filled once here: the file-to-module map of
    ``inspect`` (pytest looks up a failing test's source through it, a walk of every loaded
    module's path), and the compiled rules of the lexers pytest colours failures with, once a
    run has loaded them."""
    import inspect

    with contextlib.suppress(Exception):
        inspect.getmodule(compile("", "<warm-server>", "exec"))
    for module, name in (
        ("pygments.lexers.python", "PythonLexer"),
        ("pygments.lexers.diff", "DiffLexer"),
    ):
        lexer = getattr(sys.modules.get(module), name, None)
        if lexer is not None:
            with contextlib.suppress(Exception):
                lexer()


def _freeze() -> None:
    """Everything the server holds out of the collector's reach before the next fork: a run's
    collections (pytest collects five times at its end) then walk the run's own objects, not
    the server's imports, and do not copy the server's memory page by page."""
    gc.collect()
    gc.freeze()


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


def _next_run(control: socket.socket) -> socket.socket | None:
    """The run connection the engine passed on the control connection (None: nothing usable).
    End of file there means the engine is gone."""
    try:
        message, fds, flags, _ = socket.recv_fds(control, 1, 4)
    except OSError:
        message, fds, flags = b"", [], 0
    if not message and not fds:
        _die()
    if flags & getattr(socket, "MSG_CTRUNC", 0) or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    return socket.socket(fileno=fds[0])


def _read_request(conn: socket.socket) -> dict | None:
    """The run's request: one JSON line the engine writes first on the run connection."""
    line = b""
    while b"\n" not in line:
        try:
            part = conn.recv(65536)
        except OSError:
            return None
        if not part:
            return None
        line += part
    try:
        request = json.loads(line.split(b"\n", 1)[0])
    except ValueError:
        return None
    return request if isinstance(request, dict) else None


def _peek(conn: socket.socket) -> bytes:
    """What waits on the run connection, without taking it (empty: the engine closed it)."""
    try:
        return conn.recv(1, socket.MSG_PEEK)
    except OSError:
        return b""


def serve(control_fd: int) -> None:
    control = socket.socket(fileno=control_fd)
    control.set_inheritable(False)  # no program a run starts gets it
    import pytest  # noqa: F401  (warm: the runner itself)

    for name in PRELOAD:  # the plugins every run loads, where they are not the project's
        _import_outside(name)
    _prime()
    _freeze()
    print("ready", flush=True)
    # Nobody reads our output after this: imports that print must not fill a pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)

    report_r, report_w = os.pipe()
    os.set_blocking(report_r, False)
    pending = b""
    watched = [control] + ([LIFELINE] if LIFELINE >= 0 else [])
    while True:
        ready, _, _ = select.select(watched, [], [])
        if LIFELINE in ready:
            _check_lifeline()
        if control not in ready:
            continue
        conn = _next_run(control)
        if conn is None:
            continue
        request = _read_request(conn)
        if request is None or not isinstance(request.get("args"), list):
            conn.close()
            continue
        # No SIGTERM between the fork and knowing the run's pid: it would miss the run.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})
        done_r, done_w = os.pipe()  # EOF when the child has ended: no polling delay
        server = os.getpid()
        pid = os.fork()
        if pid == 0:
            # Before any code of the run: the control connection and the server's own ends
            # of its pipes are not the run's.
            control.close()
            os.close(done_r)
            os.close(report_r)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP})
            _child(conn, request, report_w, done_w, server)
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
            if conn.fileno() in ready and not _peek(conn):
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
        # Import what the last run used from outside the project (site-packages, the standard
        # library, pytest's plugins among them): the next fork has it warm. Preloaded, a plugin
        # cannot be assertion-rewritten; the engine's runs name every plugin with ``-p`` and
        # silence that warning (autoloading would not rewrite one another plugin imported
        # first either). The list comes from the run (code under test can write anything
        # there): a name is imported only when the module it resolves to lives outside the
        # project.
        before = len(sys.modules)
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            try:
                names = json.loads(raw)
            except ValueError:
                continue
            for name in names if isinstance(names, list) else ():
                if isinstance(name, str):
                    _import_outside(name)
        if len(sys.modules) != before:
            _prime()
            _freeze()


if __name__ == "__main__":
    # First of all: no process of the sandbox (the runs are ours, same user) may take our
    # descriptors or memory with ptrace rights (pidfd_getfd, /proc/PID/mem); without
    # capabilities only a dumpable process allows that.
    _prctl(PR_SET_DUMPABLE, 0)
    # sys.path[0] is this script's folder, the sandbox's temp folder, which runs can write: a
    # module planted there would be found by every later run, and imported into the server
    # itself once a run reported it. Like ``python -m pytest``, the working directory (the
    # run tree, the project) comes first instead.
    if sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.path.dirname(
        os.path.realpath(__file__)
    ):
        sys.path[0] = os.getcwd()
    PRIVATE_PIDS = os.environ.pop("CODEXLOOP_PRIVATE_PIDS", "") == "1"
    PRELOAD.extend(os.environ.pop("CODEXLOOP_PRELOAD", "").split(","))
    PROJECT_ROOTS.extend(
        dict.fromkeys(
            root + os.sep
            for p in sys.argv[2:]
            for root in (os.path.abspath(p), os.path.realpath(p))
        )
    )
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _die)
    signal.signal(signal.SIGHUP, _die)
    LIFELINE = _lifeline_fd()
    if LIFELINE >= 0:
        os.set_blocking(LIFELINE, False)
        _check_lifeline()  # the engine may be gone already
    serve(int(sys.argv[1]))
