"""What a session needs to go on after it stopped, ran out of budget, was interrupted or
crashed (``codexloop resume``): its *record*, a JSON file beside its trace.

The loop writes the record when the conversation starts, after every model turn and after
every message of the engine, and once more when the session ends (its status). Each write
replaces the file whole (a temporary file renamed over it), so a session killed with SIGKILL
leaves the record of its last finished turn: what is lost is the turn in flight, whose
changes stay in the worktree, where the resumed session's first test run sees them.

The record holds the session's choices (test command, guard, gates, budgets, model,
endpoint — never the API key), the conversation as the model last saw it, the iterations
done, the tokens and seconds spent, and which guard tests passed at the start. The worktree
and the preview branch are the session's code: a resumed session goes on in them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from codexloop.core.config import Config, Settings
from codexloop.core.errors import CodexloopError
from codexloop.core.sandbox import Sandbox
from codexloop.core.trace import traces_dir

RECORD_VERSION = 1
RECORD_SUFFIX = ".session.json"
RUNNING = "running"

# The session's choices a resume takes again (unless its command line says otherwise), and
# what JSON type each may hold: a damaged or hand-edited record is refused, never half used.
# A list is a tuple again in the settings; ``hints`` is the attempt's own hint.
_NUMBER = (int, float)
_SETTINGS: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(
        ("task", "test_cmd", "model", "base_url", "api", "reasoning", "edit_format", "guard"),
        (str,),
    ),
    **dict.fromkeys(
        (
            "max_iterations",
            "max_tool_calls",
            "max_processes",
            "context_tokens",
            "max_memory",
            "tmp_size",
            "max_tokens",
        ),
        (int,),
    ),
    **dict.fromkeys(
        ("command_timeout", "test_timeout", "request_timeout", "max_time", "max_cost"), _NUMBER
    ),
    **dict.fromkeys(("allow_network", "warm"), (bool,)),
    **dict.fromkeys(("share", "gates", "hints"), (list,)),
}
_KEPT = tuple(key for key in _SETTINGS if key != "hints")  # taken from the config as they are
_TUPLES = frozenset(key for key, kinds in _SETTINGS.items() if kinds == (list,))


class ResumeError(CodexloopError):
    """No session to resume, or one that cannot be: the message says which and why."""


@dataclass
class SessionRecord:
    name: str  # the session's name: its branch is codexloop/<name>
    repo: str
    branch: str
    base: str  # the snapshot the session started from
    targets: list[str]
    settings: dict[str, Any]  # the session's choices (``_KEPT``), JSON-ready
    status: str = RUNNING  # running (or crashed), passed, failed, stopped
    reason: str = ""  # why it ended
    pid: int = 0  # the process running it (a resume refuses while it lives)
    iterations: int = 0  # test runs done (the baseline not counted)
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0  # wall time spent, for --max-time
    conversation: dict[str, Any] | None = None  # :meth:`Conversation.to_data`
    guard_passed: list[str] | None = None  # the guard's tests passing at the start
    guard_classes: list[str] | None = None  # the classnames of all its tests (to protect)
    trace: str = ""
    updated: float = field(default_factory=time.time)

    @property
    def path(self) -> Path:
        return record_path(self.name)

    def settings_for(self, given: Settings) -> Settings:
        """The session's settings, with what ``given`` (the resume's command line) says on
        top; targets and repository are the session's own."""
        kept: dict[str, Any] = {}
        for key, value in self.settings.items():
            if key in _SETTINGS:
                kept[key] = tuple(value) if key in _TUPLES and value is not None else value
        for spec in dataclasses.fields(Settings):
            value = getattr(given, spec.name)
            if spec.name not in ("targets", "repo", "continue_from") and value is not None:
                kept[spec.name] = value
        kept.update(attempts=1, pick=None, jobs=None, continue_from=None)
        return Settings(targets=tuple(self.targets), repo=Path(self.repo), **kept)


def record_path(name: str) -> Path:
    return traces_dir() / f"{name}{RECORD_SUFFIX}"


def settings_of(config: Config) -> dict[str, Any]:
    """What of ``config`` a resume takes again, as JSON-ready data."""
    kept: dict[str, Any] = {}
    for key in _KEPT:
        value = getattr(config, key)
        kept[key] = list(value) if isinstance(value, tuple) else value
    kept["hints"] = [config.hint] if config.hint else []
    return kept


def save(record: SessionRecord) -> None:
    """Write ``record`` whole, in place of the last one (never half of it). Readable by its
    owner only: it holds the conversation."""
    record.updated = time.time()
    path = record.path
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # The fields as they are (asdict would deep-copy the whole conversation first).
    fields = {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}
    data = json.dumps({"version": RECORD_VERSION, **fields}, default=_plain)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _plain(value: object) -> object:
    """What JSON cannot hold as it is (a reasoning item of the Responses API)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    return str(value)


# What each field of a record may hold (JSON types; None where the field allows it).
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), False),
    "repo": ((str,), False),
    "branch": ((str,), False),
    "base": ((str,), False),
    "targets": ((list,), False),
    "settings": ((dict,), False),
    "status": ((str,), False),
    "reason": ((str,), False),
    "pid": ((int,), False),
    "iterations": ((int,), False),
    "tokens_in": ((int,), False),
    "tokens_out": ((int,), False),
    "seconds": (_NUMBER, False),
    "conversation": ((dict,), True),
    "guard_passed": ((list,), True),
    "guard_classes": ((list,), True),
    "trace": ((str,), False),
    "updated": (_NUMBER, False),
}
_STATUSES = (RUNNING, "passed", "failed", "stopped")
_OPTIONAL = frozenset({"guard_classes"})  # fields a record of this version may lack


def _fits(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:  # JSON true is no number here
        return False
    if not isinstance(value, kinds):
        return False
    return not isinstance(value, list) or all(isinstance(v, str) for v in value)


def _wrong(data: dict[str, Any]) -> str | None:
    """What of ``data`` (a record as read) a session record cannot hold, or None."""
    for key, (kinds, nullable) in _FIELDS.items():
        if key not in data:
            if key in _OPTIONAL:
                continue  # a field added since: its default stands
            return f"it has no {key}"
        value = data[key]
        if not ((value is None and nullable) or _fits(value, kinds)):
            return f"its {key} is {type(value).__name__}"
    for key in ("pid", "iterations", "tokens_in", "tokens_out", "seconds"):
        if data[key] < 0:
            return f"its {key} is negative"
    if data["status"] not in _STATUSES or not data["targets"]:
        return "its status or targets are not a session's"
    for key, value in data["settings"].items():
        allowed = _SETTINGS.get(key)
        if allowed is not None and value is not None and not _fits(value, allowed):
            return f"its setting {key} is {type(value).__name__}"
    return None


def load(path: Path) -> SessionRecord:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResumeError(f"cannot read the session record {path}: {exc}") from None
    if not isinstance(data, dict) or data.pop("version", None) != RECORD_VERSION:
        raise ResumeError(f"{path} is not a session record this version of codexloop reads")
    wrong = _wrong(data)
    if wrong is not None:
        raise ResumeError(f"{path} is not a whole session record: {wrong}")
    return SessionRecord(**{k: data[k] for k in _FIELDS if k in data})


def forget(name: str) -> None:
    """The record of a session whose branch is gone (it made nothing, or was cleaned)."""
    for path in (record_path(name), _lock_path(name)):
        with contextlib.suppress(OSError):
            path.unlink()


def _lock_path(name: str) -> Path:
    path = record_path(name)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def claim(record: SessionRecord) -> Iterator[None]:
    """Hold session ``record`` for one resume while it runs: a second ``codexloop resume`` of
    it is refused, even before the first has written its record (its process number). The
    lock goes with the process, however it ends."""
    path = _lock_path(record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ResumeError(
                f"{record.branch} is being resumed by another codexloop (wait for it to end)"
            ) from None
        yield
    finally:
        os.close(fd)


def records(repo: Path) -> list[SessionRecord]:
    """The records of sessions of ``repo``, newest first (unreadable ones left out)."""
    found = []
    root = traces_dir()
    if not root.is_dir():
        return []
    for path in root.rglob(f"*{RECORD_SUFFIX}"):
        with contextlib.suppress(ResumeError):
            record = load(path)
            if Path(record.repo) == repo and record.path == path:
                found.append(record)
    found.sort(key=lambda r: r.updated, reverse=True)
    return found


def resumable(record: SessionRecord, branches: set[str]) -> str | None:
    """Why ``record``'s session cannot be resumed, or None when it can."""
    if record.branch not in branches:
        return f"its preview branch {record.branch} is gone"
    if record.status == "passed":
        return (
            f"it went green; review {record.branch} in the app, or build on it with "
            f"codexloop --continue {record.branch}"
        )
    if record.status == RUNNING and _alive(record.pid):
        return f"it is running (process {record.pid})"
    return None


def _alive(pid: int) -> bool:
    """Is ``pid`` a codexloop that lives (a crashed one's number may have been reused)?"""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell: it lives
    return b"codexloop" in command


def trace_name(name: str) -> str:
    """The trace of a resumed session's part: ``<name>.resumed-2`` and on, beside the first."""
    number = 2
    while (traces_dir() / f"{name}.resumed-{number}.jsonl").exists():
        number += 1
    return f"{name}.resumed-{number}"


async def reopen_sandbox(record: SessionRecord) -> Sandbox:
    """The session's sandbox as it left it (:meth:`Sandbox.reopen`)."""
    return await anyio.to_thread.run_sync(
        partial(Sandbox.reopen, Path(record.repo), record.name, record.branch, record.base)
    )


def find(repo: Path, wanted: str | None) -> SessionRecord:
    """The session to resume: the one of preview branch ``wanted`` (``codexloop/<name>`` or
    ``<name>``), or the latest one of ``repo`` that can be resumed."""
    from codexloop.core import gitops

    branches = {b.name for b in gitops.preview_branches(repo)}
    found = records(repo)
    if wanted is not None:
        name = wanted.removeprefix(gitops.PREVIEW_PREFIX)
        record = next((r for r in found if r.name == name), None)
        if record is None:
            _unreadable_or_elsewhere(name, repo)
            if f"{gitops.PREVIEW_PREFIX}{name}" in branches:
                raise ResumeError(
                    f"{gitops.PREVIEW_PREFIX}{name} has no session record to resume from "
                    f"(it was made by an older codexloop, or by a replay or the demo); "
                    f"start a new session on its work with codexloop --continue "
                    f"{gitops.PREVIEW_PREFIX}{name}"
                )
            raise ResumeError(
                f"no session named {wanted} in {repo} (codexloop branches lists them)"
            )
        why = resumable(record, branches)
        if why is not None:
            raise ResumeError(f"{record.branch} cannot be resumed: {why}")
        return record
    for record in found:
        if resumable(record, branches) is None:
            return record
    raise ResumeError(
        f"no session of {repo} to resume (codexloop branches says which can be resumed)"
    )


def _unreadable_or_elsewhere(name: str, repo: Path) -> None:
    """Say why the record of session ``name`` is not one of ``repo``'s: it cannot be read (which
    file, what is wrong), or it is a session of another repository."""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts:
        return
    path = record_path(name)
    if not path.is_file():
        return
    record = load(path)  # a ResumeError that names the file and what is wrong with it
    if Path(record.repo) != repo and record.path == path:
        raise ResumeError(
            f"{record.branch} is a session of {record.repo}, not of {repo}: "
            f"resume it there (codexloop resume --repo {record.repo} {record.branch})"
        )
