"""Attempts as Ray actors (``--ray``): the same loop, on a node of a cluster.

Imported only when ``--ray`` is given (:mod:`codexloop.core.executor`): the rest of the engine
never needs Ray. One attempt = one :class:`~codexloop.core.ray_node.SessionActor`, which owns
its sandbox on its node (its side: :mod:`codexloop.core.ray_node`; this module is the
developer's side):

- **Out**: the snapshot (base, exam, the developer's uncommitted work as it was snapshotted)
  travels as a git bundle, put in the object store once per snapshot and shared by every
  attempt. The actor clones it into a folder of its own on its node (worktrees, traces and
  scratch there too), and runs an ordinary :class:`~codexloop.core.loop.Loop` with that
  node's isolation.
- **Live**: events come back on a streaming generator, in order, in batches of what is ready;
  commands (pause, steer, stop, …) go to the actor as method calls, run on its event loop.
- **Back**: at the end, a bundle of the preview branch (its commits on top of the snapshot) and
  the attempt's trace. The branch is fetched into the developer's repository as
  ``codexloop/<session>/aK`` and checked out in a local worktree, so the review, ``--accept
  all`` and ``codexloop branches`` work as for an attempt run here.
- **Secrets**: the API key reaches the actor as an argument of the session's call, never
  through a runtime environment (Ray writes those, key included, into world-readable logs on
  every node, where a model's command without bubblewrap reads them, and keeps them in the
  worker's environment), the event stream, the config sent along, or the trace.
- **Nothing outlives the session** on the node: a session cancelled here (a second Ctrl-C)
  is cancelled there first, so its loop cleans up and its folder goes before the actor is
  killed; what a killed actor could not clean (its folder, processes naming it) is swept by
  the next session on that node. Commands carry the session they belong to: one arriving
  late never reaches the next session of a reused actor.
- **Lost**: a node or actor that dies ends that attempt as ``lost``
  (:class:`~codexloop.core.errors.AttemptLost`), never the session.

The front ends see the same events and send the same commands as for a local attempt; an
edit of the exam in the checkout does not reach an attempt already running on a node (said
with a notice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import ray
import ray.exceptions
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from codexloop.core import events as ev
from codexloop.core import gitops, outcome
from codexloop.core.config import Config, ConfigError
from codexloop.core.errors import AttemptLost, CodexloopError
from codexloop.core.exam import ExamError
from codexloop.core.loop import Loop, LoopResult
from codexloop.core.ray_node import BUNDLE_REFS, NodeEnd, NodeSpec, SessionActor
from codexloop.core.sandbox import Sandbox, free_name, state_home
from codexloop.core.session import left_out_notice
from codexloop.core.trace import traces_dir

IDLE_S = 5.0  # how long an actor whose session ended waits for another one
PREWARM_IDLE_S = 30.0  # how long an actor started ahead waits for its session
WAIT_NOTICE_S = 10.0  # an attempt not started by then is said to wait for the cluster
PROBE_S = 5.0  # how long a cluster's address may take to answer a connection
END_GRACE_S = 10.0  # how long a cancelled session on a node may take to clean up

_connect_lock = threading.Lock()
# (repo, snapshot) -> [the bundle in the object store, the sessions using it]: the last
# session to end drops it, and Ray frees it (a batch would otherwise keep every task's).
_bundles: dict[tuple[str, str], list[Any]] = {}
_kept_lock = threading.Lock()
# Actors whose session ended cleanly: the next session takes one instead of starting a worker
# process (a second or more of the node's CPU).
_idle: list[Any] = []
_cached: dict[str, str] = {}  # the job the actors and bundles above belong to
# _kept_lock guards the bundles and the idle actors (sessions take and give from threads).


def connect(address: str) -> None:
    """Join the cluster once per process (blocking). ``auto``: ``RAY_ADDRESS``'s, else one
    running on this machine, else a new local one; any other value is the cluster's address.
    (The key travels with each session's call, never in a runtime environment.)"""
    with _connect_lock:
        if not ray.is_initialized():
            _start(address)
        job = ray.get_runtime_context().get_job_id()
        if _cached.get("job") != job:  # another connection: what was kept belongs to the old
            _idle.clear()
            _bundles.clear()
            _cached["job"] = job


def _start(address: str) -> None:
    _probe(address)
    try:
        ray.init(
            address=None if address == "auto" else address,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"could not reach the Ray cluster at {address}: {exc}") from None


def _probe(address: str) -> None:
    """A cluster address that does not answer is said at once: Ray itself waits minutes
    for it, printing warnings, and cannot be interrupted meanwhile (blocking)."""
    given = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    found = re.fullmatch(r"(?:[a-z]+://)?\[?([^\]/]+?)\]?:(\d+)/?", given.strip())
    if found is None:  # auto, local, or a form Ray resolves itself
        return
    host, port = found.group(1), int(found.group(2))
    try:
        socket.create_connection((host, port), timeout=PROBE_S).close()
    except TimeoutError:
        reason = f"no answer within {PROBE_S:g} s"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    else:
        return
    raise ConfigError(f"could not reach the Ray cluster at {given}: {reason}")


def bundle(repo: Path, snapshot: str) -> Any:
    """The snapshot as a git bundle in the object store, made once while sessions use it
    (blocking); each call is a use, given back with :func:`release`."""
    key = (str(repo), snapshot)
    with _kept_lock:
        if key not in _bundles:
            _bundles[key] = [ray.put(_bundle_bytes(repo, snapshot)), 0]
        _bundles[key][1] += 1
        return _bundles[key][0]


def release(repo: Path, snapshot: str) -> None:
    """A session is done with the snapshot's bundle; the last one drops it."""
    key = (str(repo), snapshot)
    with _kept_lock:
        kept = _bundles.get(key)
        if kept is not None:
            kept[1] -= 1
            if kept[1] <= 0:
                del _bundles[key]


def _bundle_bytes(repo: Path, snapshot: str) -> bytes:
    # A ref of this bundle's own: two sessions bundling the repository at once (two
    # processes) never bundle each other's snapshot, nor delete each other's ref.
    ref = f"{BUNDLE_REFS}/{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(prefix="codexloop-bundle-") as tmp:
        path = Path(tmp, "snapshot.bundle")
        gitops.git(repo, "update-ref", ref, snapshot)
        try:
            gitops.git(repo, "bundle", "create", "-q", str(path), ref)
        finally:
            gitops.git(repo, "update-ref", "-d", ref, check=False)
        return path.read_bytes()


# -- on the developer's machine ------------------------------------------------------------------


class RemoteLoop(Loop):
    """A :class:`Loop` whose work runs in a :class:`SessionActor`: what front ends and races
    use of a loop (``run``, ``sandbox``, ``flagged``, ``test_outcomes``…), here."""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        if config.continue_from is not None:
            raise ConfigError("--continue runs on this machine: leave out --ray to continue")
        super().__init__(config, **kwargs)
        self.actor: Any = None
        self.node = ""
        self._remote_set_up = False
        self._token = uuid.uuid4().hex  # names this session in every call to its actor
        self._left_out: list[tuple[str, int]] = []

    @property
    def set_up(self) -> bool:
        return self._remote_set_up

    async def run(
        self,
        events: ObjectSendStream[ev.Event] | None = None,
        commands: ObjectReceiveStream[ev.Command] | None = None,
    ) -> LoopResult:
        self._events = events
        config = self.config
        started = time.monotonic()
        with self.timings.timed("ray connect"):
            await anyio.to_thread.run_sync(connect, config.ray or "auto")
        self.actor, reused = _take_actor()  # a new one starts while the snapshot travels
        first_event = f"ray to first event ({'reused' if reused else 'new'} actor)"
        snapshot = self.snapshot
        if snapshot is None:  # one session (a race snapshots once for all)
            snapshot = await anyio.to_thread.run_sync(gitops.snapshot, config.repo, self._left_out)
        with self.timings.timed("ray bundle out"):
            packed = await anyio.to_thread.run_sync(bundle, config.repo, snapshot)
        end: NodeEnd | None = None
        held: ev.LoopFinished | None = None
        lost = ""
        try:
            async with self.setup_lock or contextlib.nullcontext():  # names, as a local loop's
                self.name = await anyio.to_thread.run_sync(
                    free_name, config.repo, state_home(), self.name
                )
            spec = NodeSpec(
                dataclasses.replace(config, api_key=""), self.name, self.attempt, snapshot
            )
            end, held, lost = await self._stream(packed, spec, commands, started, first_event)
            if lost and reused and end is None and not self._remote_set_up:
                # An idle actor that died while it waited (its node went, it was killed):
                # nothing of the session ran on it; a new actor takes the session.
                with contextlib.suppress(Exception):
                    ray.kill(self.actor)
                self.actor, first_event = _new_actor(), "ray to first event (new actor)"
                end, held, lost = await self._stream(packed, spec, commands, started, first_event)
        finally:
            del packed
            release(config.repo, snapshot)
            if end is not None and end.result is not None and end.result.status != "stopped":
                _give_back(self.actor)
            else:  # cancelled, stopped, lost or failed: it goes
                if end is None and not lost:  # cancelled: the node cleans up first
                    with (
                        anyio.CancelScope(shield=True),
                        anyio.move_on_after(END_GRACE_S),
                        contextlib.suppress(Exception),
                    ):
                        await self.actor.abandon.remote(self._token)
                with contextlib.suppress(Exception):
                    ray.kill(self.actor)
        if lost:
            await self.emit(ev.Notice("error", f"attempt {self.attempt} is lost: {lost}"))
            raise AttemptLost(lost)
        if end is None:
            raise AttemptLost("the Ray actor's stream ended without its result")
        self.node = end.node
        if end.exam_error:
            if held is not None:
                await self.emit(held)
            raise ExamError(end.exam_error)
        if end.result is None:
            raise CodexloopError(f"on Ray node {end.node}: {end.error}")
        back = time.perf_counter()
        result = await self._bring_back(end, end.result, held, commands)
        self.timings.setdefault("ray bring back", []).append(time.perf_counter() - back)
        return result

    async def _stream(
        self,
        packed: Any,
        spec: NodeSpec,
        commands: ObjectReceiveStream[ev.Command] | None,
        started: float,
        first_event: str,
    ) -> tuple[NodeEnd | None, ev.LoopFinished | None, str]:
        """The session on the actor: its events passed on, the commands sent to it. Its end
        (None when the stream broke off), the held ``loop_finished`` and why it was lost."""
        end: NodeEnd | None = None
        held: ev.LoopFinished | None = None
        lost = ""
        async with anyio.create_task_group() as tg:
            if commands is not None:
                tg.start_soon(self._send_commands, commands)
            tg.start_soon(self._say_waiting)
            try:
                stream = self.actor.run.remote(packed, spec, self.config.api_key, self._token)
                async for ref in stream:
                    item = await ref
                    if not self._remote_set_up and not isinstance(item, NodeEnd):
                        self.timings.setdefault(first_event, []).append(time.monotonic() - started)
                    if isinstance(item, NodeEnd):
                        end = item
                        break
                    for event in item:
                        if isinstance(event, ev.LoopFinished):
                            held = event  # said once the branch is here
                            continue
                        await self._seen(event, started)
            except ray.exceptions.RayActorError as exc:
                lost = f"the Ray actor running it died: {_first_line(exc)}"
            except ray.exceptions.RayError as exc:
                lost = f"Ray lost it: {_first_line(exc)}"
            tg.cancel_scope.cancel()
        return end, held, lost

    async def _say_waiting(self) -> None:
        """An actor the cluster cannot place yet (every CPU taken) is waited for, and said."""
        await anyio.sleep(WAIT_NOTICE_S)
        if not self._remote_set_up:
            await self.emit(
                ev.Notice(
                    "info",
                    f"attempt {self.attempt} waits for the Ray cluster: no CPU free for it yet "
                    f"(ray status shows what runs)",
                )
            )

    async def _seen(self, event: ev.Event, started: float) -> None:
        """An event of the actor's: noted as a local loop would, then passed on."""
        if isinstance(event, ev.LoopStarted):
            self._remote_set_up = True
            await self.emit(event)
            await self.emit(
                ev.Notice(
                    "info",
                    f"attempt {self.attempt} runs on Ray ({time.monotonic() - started:.1f} s to "
                    "start); edits of the exam in your checkout do not reach it",
                )
            )
            left_out = left_out_notice(self._left_out)  # as a session snapshotting here
            if left_out is not None:
                await self.emit(left_out)
            return
        if isinstance(event, ev.IterationStarted):
            self._iteration = event.iteration
        elif isinstance(event, ev.TestFinished):
            self.test_outcomes.append(event.passed)
        elif isinstance(event, ev.Flagged):
            self.flagged.append(event)
        elif isinstance(event, ev.StateChanged):
            self.state = event.state
        await self.emit(event)

    async def _send_commands(self, commands: ObjectReceiveStream[ev.Command]) -> None:
        async for command in commands:
            with contextlib.suppress(ray.exceptions.RayError):
                await self.actor.command.remote(self._token, command)

    async def _bring_back(
        self,
        end: NodeEnd,
        result: LoopResult,
        held: ev.LoopFinished | None,
        commands: ObjectReceiveStream[ev.Command] | None,
    ) -> LoopResult:
        """The branch into the developer's repository, a local worktree on it, the trace;
        then the end as a local loop says it (and, green, the review or ``--accept all``)."""
        config = self.config
        branch = f"codexloop/{self.name}"
        async with self.setup_lock or contextlib.nullcontext():  # a worktree, as at set-up
            self.sandbox = sandbox = await anyio.to_thread.run_sync(
                _fetch, config.repo, self.name, branch, result, end.branch_bundle
            )
        trace = _keep_trace(self.name, end.trace)
        green = result.green
        if result.status == "passed" and green is not None:
            if self.accept_all:
                self.applied = await outcome.apply(
                    config.repo,
                    sandbox,
                    green,
                    config.target_files,
                    self.emit,
                    flagged=self.flagged,
                    accept_flagged=self.accept_flagged,
                )
            elif self.review and commands is not None:
                await self._review_here(result, commands)
        if held is not None:
            await self.emit(
                dataclasses.replace(held, branch=branch, worktree=str(sandbox.worktree))
            )
        return dataclasses.replace(
            result,
            branch=branch,
            worktree=sandbox.worktree,
            trace=trace,
            flagged=tuple(self.flagged),
            applied=self.applied,
        )

    async def _review_here(
        self, result: LoopResult, commands: ObjectReceiveStream[ev.Command]
    ) -> None:
        """Green, in the app: the review of the fetched branch, here; accepted hunks go into
        the checkout. Rejections cannot reach the model any more: they are said, not sent."""
        async with anyio.create_task_group() as tg:
            self._listen(tg, commands, result.base)
            if await self._await_review(result.iterations, result.green):
                self.controls.take_feedback()
                await self.emit(
                    ev.Notice(
                        "warning",
                        "this attempt ran on Ray and is over: rejected hunks cannot go back to "
                        f"its model; continue it here with codexloop --continue {result.branch}",
                    )
                )
            tg.cancel_scope.cancel()


def _take_actor() -> tuple[Any, bool]:
    """An idle actor (True), else a new one (False)."""
    with _kept_lock:
        if _idle:
            return _idle.pop(), True
    return _new_actor(), False


def _new_actor() -> Any:
    return SessionActor.remote()  # type: ignore[attr-defined]


def prewarm(count: int) -> None:
    """Start actors for the ``count`` attempts about to run, beside the work before them (the
    endpoint check, the snapshot, the app's start): a new actor's Python worker and imports
    take a second or more of its node. Unused, they go after ``PREWARM_IDLE_S``."""
    with _kept_lock:
        missing = count - len(_idle)
    for _ in range(max(0, missing)):
        actor = _new_actor()
        actor.ready.remote()
        _give_back(actor, PREWARM_IDLE_S)


def _give_back(actor: Any, idle_s: float | None = None) -> None:
    """A cleanly ended session's actor waits ``IDLE_S`` for the next session (a batch's next
    task), then goes: an idle actor holds its CPU of the cluster, which others may need."""
    idle_s = IDLE_S if idle_s is None else idle_s
    with _kept_lock:
        _idle.append(actor)

    def expire() -> None:
        with _kept_lock:
            if actor not in _idle:
                return  # taken again
            _idle.remove(actor)
        with contextlib.suppress(Exception):
            ray.kill(actor)

    timer = threading.Timer(idle_s, expire)
    timer.daemon = True
    timer.start()


def _fetch(
    repo: Path, name: str, branch: str, result: LoopResult, branch_bundle: bytes | None
) -> Sandbox:
    """The attempt's branch in the developer's repository (its commits from the bundle, or
    the snapshot itself when it made none) and a worktree on it (blocking)."""
    if branch_bundle is None:
        gitops.git(repo, "branch", "-q", branch, result.base)
    else:
        with tempfile.TemporaryDirectory(prefix="codexloop-branch-") as tmp:
            path = Path(tmp, "branch.bundle")
            path.write_bytes(branch_bundle)
            gitops.git(
                repo,
                "-c",
                "transfer.fsckObjects=true",  # no tree with a path git refuses comes in
                "fetch",
                "-q",
                "--no-tags",
                str(path),
                # The ref is the one the node was told to make: nothing else comes in.
                f"refs/heads/{branch}:refs/heads/{branch}",
            )
    return Sandbox.reopen(repo, name, branch, result.base)


def _keep_trace(name: str, data: bytes) -> Path | None:
    if not data:
        return None
    path = traces_dir() / f"{name}.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError:
        return None
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
