"""The model worker's process (:mod:`codexloop.core.model_worker`), from the engine's side:
started once per engine process, replaced when it died, handed a socket per request.

Standard library only, and small: :func:`start` is called first thing in a session's start,
before the engine's own imports, so that the worker's import of the client runs beside them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading


class _Worker:
    """The worker process and the control socket it takes request sockets from."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        with self._lock:
            self._running()

    def _running(self) -> socket.socket:
        if self._process is not None and self._control is not None:
            if self._process.poll() is None:
                return self._control
            self._control.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                # -P: nothing of the current folder (the developer's project) is importable
                [sys.executable, "-P", "-m", "codexloop.core.model_worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
            )
        finally:
            theirs.close()
        ours.settimeout(1.0)  # a worker that stopped reading is replaced, not waited on
        self._control = ours
        return ours

    def connect(self) -> socket.socket:
        """A fresh request socket, its other end handed to the worker."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                try:
                    socket.send_fds(self._running(), [b"r"], [theirs.fileno()])
                except OSError:  # it stopped, or stopped reading: a new one takes the request
                    self._replace()
                    socket.send_fds(self._running(), [b"r"], [theirs.fileno()])
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return mine

    def replace(self, pid: int | None = None) -> None:
        """The worker killed (``pid``: only if it is still that one); the next request starts
        a new one."""
        with self._lock:
            if pid is None or self.pid == pid:
                self._replace()

    def _replace(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._control is not None:
            self._control.close()
        self._process, self._control = None, None


_worker = _Worker()


def start() -> None:
    """Start the worker now (it imports the client beside whatever comes next)."""
    _worker.start()


def connect() -> socket.socket:
    """A fresh request socket whose other end the worker holds (started if it is not)."""
    return _worker.connect()


def replace(pid: int | None) -> None:
    """Kill a worker that stopped answering (if ``pid`` is still the worker)."""
    _worker.replace(pid)


def worker_pid() -> int | None:
    """The worker's process id, once started."""
    return _worker.pid
