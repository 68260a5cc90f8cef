"""An attempt's side on a Ray node (``--ray``): the actor that owns its sandbox there.

:class:`SessionActor` receives the snapshot as a git bundle, clones it into a folder of its own
(named ``codexloop-node-<session>-aK-…``, with the owning process written in it), runs an
ordinary :class:`~codexloop.core.loop.Loop` on it, streams the events back in batches of what
is ready, takes commands as calls that name their session, and at the end returns a bundle of
the preview branch and the trace (:class:`NodeEnd`); the folder goes in every ending, and what a
dead actor left is swept by the next session on the node. The developer's side is
:mod:`codexloop.core.ray_executor`; this module is imported only with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import ray
import ray.exceptions
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from codexloop.core import events as ev
from codexloop.core import gitops, process
from codexloop.core.config import Config
from codexloop.core.exam import ExamError
from codexloop.core.loop import Loop, LoopResult, event_channel

BATCH = 256  # events per item of the stream at most (what is ready goes together)
BUNDLE_REFS = "refs/codexloop-bundle"  # a ref of its own per bundle made, gone once made
NODE_PREFIX = "codexloop-node-"
OWNER = "owner"  # in a node folder: "pid start-time" of the actor process that made it


@dataclass(frozen=True)
class NodeSpec:
    """What an actor needs besides the bundle: the config (without the key), the session's
    name, which attempt, and the snapshot commit to start from."""

    config: Config
    name: str
    attempt: int
    snapshot: str


@dataclass(frozen=True)
class NodeEnd:
    """The last item of an actor's stream: how the loop ended and what comes back."""

    node: str
    result: LoopResult | None = None
    branch_bundle: bytes | None = None  # the preview branch's commits on top of the snapshot
    trace: bytes = b""
    exam_error: str = ""
    error: str = ""  # a failure of the engine on the node (type: message)
    set_up: bool = False  # the session on the node was set up (loop_started was sent)


@ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)
class SessionActor:
    """One attempt on a node: its clone of the snapshot, its sandbox, its loop. Reused by the
    next session: every call names the session (a token) it belongs to."""

    def __init__(self) -> None:
        self._token = ""  # the session running now
        self._commands: ObjectSendStream[ev.Command] | None = None
        self._early: dict[str, list[ev.Command]] = {}  # sent before their session's run
        self._ended: set[str] = set()  # sessions over: what comes for them is dropped
        self._task: asyncio.Future[NodeEnd] | None = None

    async def command(self, token: str, command: ev.Command) -> None:
        if token in self._ended:
            return  # late: its session is over (never the next session's)
        if token != self._token or self._commands is None:
            self._early.setdefault(token, []).append(command)
            return
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._commands.send(command)

    async def ready(self) -> None:
        """Nothing: answering it means the worker has started and imported the engine."""

    async def abandon(self, token: str) -> None:
        """The developer's side gave the session up (cancelled): it ends here too, cleaning
        up as a cancelled local loop does, before the actor is killed."""
        self._ended.add(token)
        self._early.pop(token, None)
        task = self._task
        if token == self._token and task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def run(
        self, snapshot_bundle: bytes, spec: NodeSpec, api_key: str, token: str
    ) -> AsyncIterator[object]:
        """Streams lists of events, then one :class:`NodeEnd`."""
        if token in self._ended:
            return
        send, receive = event_channel()
        commands, inbox = event_channel()
        early = self._early.pop(token, [])
        self._early.clear()  # of sessions that never ran here
        for command in early:
            commands.send_nowait(command)
        self._token, self._commands = token, commands
        task = asyncio.ensure_future(_session_on_node(snapshot_bundle, spec, api_key, send, inbox))
        self._task = task
        try:
            async with receive:
                while True:
                    try:
                        batch = [await receive.receive()]
                    except anyio.EndOfStream:
                        break
                    with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                        while len(batch) < BATCH:
                            batch.append(receive.receive_nowait())
                    yield batch
            end = await task
        finally:
            if not task.done():  # the stream was given up: so is the session
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            self._ended.add(token)  # the next session's commands come after this
            self._token, self._commands, self._task = "", None, None
        yield end


async def _session_on_node(
    snapshot_bundle: bytes,
    spec: NodeSpec,
    api_key: str,
    send: ObjectSendStream[ev.Event],
    inbox: ObjectReceiveStream[ev.Command],
) -> NodeEnd:
    node = socket.gethostname()
    await anyio.to_thread.run_sync(_sweep_node)
    home = Path(tempfile.mkdtemp(prefix=f"{NODE_PREFIX}{_safe(spec.name)}-a{spec.attempt}-"))
    # Everything the session keeps on this node lives in its own folder, gone at the end.
    os.environ["XDG_CACHE_HOME"] = str(home / "cache")
    os.environ["XDG_STATE_HOME"] = str(home / "state")
    loop: Loop | None = None
    try:
        (home / OWNER).write_text(_owner(os.getpid()) or "")
        async with send:
            repo = home / "repo"
            await anyio.to_thread.run_sync(_clone, snapshot_bundle, repo, spec.snapshot)
            config = dataclasses.replace(
                spec.config, repo=repo, api_key=api_key or "codexloop-no-key", ray=None
            )
            loop = Loop(config, name=spec.name, attempt=spec.attempt, snapshot=spec.snapshot)
            try:
                result = await loop.run(send, inbox)
            except ExamError as exc:
                return NodeEnd(node, exam_error=str(exc), set_up=loop.set_up)
        branch_bundle = await anyio.to_thread.run_sync(
            _branch_bytes, repo, result.branch, spec.snapshot
        )
        trace = result.trace.read_bytes() if result.trace and result.trace.is_file() else b""
        return NodeEnd(node, result, branch_bundle, trace, set_up=True)
    except Exception as exc:  # said once, on the developer's side
        return NodeEnd(
            node,
            error=f"{type(exc).__name__}: {exc}",
            set_up=loop is not None and loop.set_up,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_clear_node_folder, home)


def _clear_node_folder(home: Path) -> None:
    """A session's node folder gone, with the git readers this process kept open on it and
    any process still naming it (blocking)."""
    gitops.close_readers()  # one session at a time per actor: all of them are its
    _kill(process.session_processes([home]))
    shutil.rmtree(home, ignore_errors=True)
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME"):
        if os.environ.get(name, "").startswith(str(home)):
            del os.environ[name]


def _sweep_node() -> None:
    """Folders of sessions whose actor died on this node (killed: no clean-up of its own)
    go, with the processes that still name them (blocking)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{NODE_PREFIX}*"):
        try:
            owner = (folder / OWNER).read_text().split()
        except OSError:
            continue  # not one of ours, or one being made
        if len(owner) != 2 or not owner[0].isdigit() or _owner(int(owner[0])) == " ".join(owner):
            continue  # its actor lives
        _kill(process.session_processes([folder]))
        shutil.rmtree(folder, ignore_errors=True)


def _owner(pid: int) -> str | None:
    """``pid start-time`` of a live process (a pid alone may be reused), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            started = handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None
    return f"{pid} {started}"


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]


def _clone(snapshot_bundle: bytes, repo: Path, snapshot: str) -> None:
    """A repository whose checkout is the snapshot: the exam is read from it as from the
    developer's checkout (blocking)."""
    repo.mkdir(parents=True)
    path = repo.parent / "snapshot.bundle"
    path.write_bytes(snapshot_bundle)
    gitops.git(repo, "init", "-q")
    refs = f"{BUNDLE_REFS}/*"
    gitops.git(repo, "fetch", "-q", "--no-tags", str(path), f"{refs}:{refs}")
    gitops.git(repo, "checkout", "-q", "--detach", snapshot)
    path.unlink()


def _branch_bytes(repo: Path, branch: str, snapshot: str) -> bytes | None:
    """The preview branch's commits on top of the snapshot as a bundle; None when it has none."""
    head = gitops.git(repo, "rev-parse", f"refs/heads/{branch}").strip()
    if head == snapshot:
        return None
    with tempfile.TemporaryDirectory(prefix="codexloop-branch-") as tmp:
        path = Path(tmp, "branch.bundle")
        gitops.git(
            repo, "bundle", "create", "-q", str(path), f"refs/heads/{branch}", f"^{snapshot}"
        )
        return path.read_bytes()
