"""Typed events the loop emits, and commands it accepts.

Events are small frozen dataclasses. The same objects feed the app, the headless
JSONL printer and the trace, so every front end can show what any other shows.
Each event class names its wire ``type`` (the ``type`` field of a JSON line).

Over 400 lines: every event and command of the wire, one small dataclass each: the
protocol's single definition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

State = Literal["starting", "thinking", "tool", "testing", "paused", "green", "red", "stopped"]
FinalStatus = Literal["passed", "failed", "stopped"]


@dataclass(frozen=True)
class Event:
    """Base of every event; ``type`` is the wire name. ``attempt``: which of the session's
    attempts it comes from (1 when there is one; ``--attempts N`` races N)."""

    type: ClassVar[str] = "event"
    attempt: int = field(default=1, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data


@dataclass(frozen=True)
class LoopStarted(Event):
    type: ClassVar[str] = "loop_started"
    branch: str
    worktree: str
    base: str
    targets: tuple[str, ...]
    test_command: str
    model: str
    max_iterations: int
    isolation: str = "none"
    isolation_reason: str = ""
    max_processes: int | None = None  # None: no process-count limit could be set
    process_limit: str = ""  # how the limit is enforced, or why there is none
    max_memory_gib: int | None = None  # address space per command; None: no limit
    shared: tuple[str, ...] = ()  # checkout paths shown read-only in the sandbox
    continued_from: str = ""  # the preview branch whose work this session started with
    network: bool = False
    api: str = "chat"
    trace: str = ""
    bwrap: str = ""  # which bubblewrap: "system bwrap 0.8.0 (/usr/bin/bwrap)"; "": none
    tmp_size_mib: int | None = None  # size of each tmpfs in the sandbox; None: unsized
    resumed: bool = False  # codexloop resume: the session goes on where it stopped
    iterations_done: int = 0  # by a resumed session before (its iterations go on from there)


@dataclass(frozen=True)
class StateChanged(Event):
    type: ClassVar[str] = "state"
    state: State


@dataclass(frozen=True)
class IterationStarted(Event):
    type: ClassVar[str] = "iteration_started"
    iteration: int


@dataclass(frozen=True)
class ModelTurnStarted(Event):
    type: ClassVar[str] = "model_turn_started"
    iteration: int


@dataclass(frozen=True)
class ModelText(Event):
    type: ClassVar[str] = "model_text"
    text: str


@dataclass(frozen=True)
class ModelReasoning(Event):
    type: ClassVar[str] = "model_reasoning"
    text: str


@dataclass(frozen=True)
class ToolCall(Event):
    type: ClassVar[str] = "tool_call"
    name: str
    arguments: str
    call_id: str = ""


@dataclass(frozen=True)
class ToolResult(Event):
    type: ClassVar[str] = "tool_result"
    name: str
    ok: bool
    summary: str
    call_id: str = ""
    refused: bool = False


@dataclass(frozen=True)
class CommandOutput(Event):
    """Live output of a model's ``run_command`` (the sandbox terminal)."""

    type: ClassVar[str] = "command_output"
    text: str


@dataclass(frozen=True)
class Usage(Event):
    """Token counts: ``*_total`` for the session, the others for the last model turn."""

    type: ClassVar[str] = "usage"
    input_tokens: int
    output_tokens: int
    input_total: int
    output_total: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_total: float | None = None  # US dollars so far, when the model's prices are set


@dataclass(frozen=True)
class ModelRetry(Event):
    type: ClassVar[str] = "model_retry"
    retry: int  # the how-manieth retry of this request
    reason: str
    delay_s: float


@dataclass(frozen=True)
class SandboxChanged(Event):
    """Files in the sandbox changed (after an edit tool or a command)."""

    type: ClassVar[str] = "sandbox_changed"
    paths: tuple[str, ...]


@dataclass(frozen=True)
class ExamRestored(Event):
    """Protected files the model changed, put back before a test run."""

    type: ClassVar[str] = "exam_restored"
    paths: tuple[str, ...]


@dataclass(frozen=True)
class ExamChanged(Event):
    """The developer changed the exam; the model is told at its next turn."""

    type: ClassVar[str] = "exam_changed"
    paths: tuple[str, ...]
    diff: str


@dataclass(frozen=True)
class TargetsChanged(Event):
    type: ClassVar[str] = "targets_changed"
    targets: tuple[str, ...]
    test_command: str


@dataclass(frozen=True)
class TestStarted(Event):
    type: ClassVar[str] = "test_started"
    __test__: ClassVar[bool] = False
    iteration: int
    command: str


@dataclass(frozen=True)
class TestOutput(Event):
    type: ClassVar[str] = "test_output"
    __test__: ClassVar[bool] = False
    text: str


@dataclass(frozen=True)
class TestFinished(Event):
    type: ClassVar[str] = "test_finished"
    __test__: ClassVar[bool] = False
    iteration: int
    passed: bool
    exit_code: int | None
    duration_s: float
    summary: str
    timed_out: bool = False


@dataclass(frozen=True)
class GuardFinished(Event):
    """The regression guard (``--guard``) ran: at the baseline (iteration 0: ``failing`` are
    the tests that already fail, which never count) or after a green run of the targets
    (``broken``: tests that passed at the baseline and fail now; any makes it red)."""

    type: ClassVar[str] = "guard_finished"
    iteration: int
    passed: bool
    summary: str
    duration_s: float
    broken: tuple[str, ...] = ()
    failing: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateFinished(Event):
    """A gate (``--gate CMD``) ran after a green run of the targets; its output came as
    ``test_output``. A gate that fails makes the iteration red."""

    type: ClassVar[str] = "gate_finished"
    iteration: int
    command: str
    passed: bool
    exit_code: int | None
    duration_s: float
    timed_out: bool = False


@dataclass(frozen=True)
class TamperDetected(Event):
    """A run whose canary tests came out wrong (or missing): its verdict was not the
    tests' own, so the run is red."""

    type: ClassVar[str] = "tamper_detected"
    iteration: int
    reason: str


@dataclass(frozen=True)
class IterationFinished(Event):
    type: ClassVar[str] = "iteration_finished"
    iteration: int
    passed: bool
    duration_s: float
    commit: str | None
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class UserMessage(Event):
    """A steering message from the developer, as it joins the conversation."""

    type: ClassVar[str] = "user_message"
    text: str


@dataclass(frozen=True)
class BudgetSpent(Event):
    """Not green within the budget, and waiting: the developer may give more iterations,
    review what there is, or finish (only when the front end asked)."""

    type: ClassVar[str] = "budget_spent"
    iterations: int
    reason: str = ""  # a spend budget (--max-tokens/-time/-cost) and what was used; "": iterations


@dataclass(frozen=True)
class ReviewReady(Event):
    """Green, and waiting for the developer's review (only when the front end asked)."""

    type: ClassVar[str] = "review_ready"
    iteration: int
    commit: str | None


@dataclass(frozen=True)
class HunksReverted(Event):
    """Rejected hunks put back as they were in the sandbox."""

    type: ClassVar[str] = "hunks_reverted"
    paths: tuple[str, ...]
    failed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flagged(Event):
    """A green change touches test machinery (code inside the test process can fake a pass:
    an object equal to everything, patched pytest): shown, and not applied by ``--accept all``.
    ``line`` 0 is the file as a whole (a binary, a metadata folder)."""

    type: ClassVar[str] = "flagged"
    path: str
    line: int
    reason: str


@dataclass(frozen=True)
class Notice(Event):
    type: ClassVar[str] = "notice"
    level: Literal["info", "warning", "error"]
    message: str


@dataclass(frozen=True)
class Applied(Event):
    """What a green change (``--accept``) or a review's accepted hunks (:class:`Apply`) did to
    the developer's working tree: all or nothing, so with a conflict or an error nothing was
    written."""

    type: ClassVar[str] = "applied"
    written: tuple[str, ...]
    deleted: tuple[str, ...]
    conflicts: tuple[str, ...] = field(default=())
    error: str = ""  # why nothing could be tried (git failed, a file unreadable)

    @property
    def ok(self) -> bool:
        return not self.conflicts and not self.error


@dataclass(frozen=True)
class AttemptFinished(Event):
    """One attempt of a race is over (``--attempts N``); its branch stays for reference."""

    type: ClassVar[str] = "attempt_finished"
    status: FinalStatus | Literal["lost"]  # lost: the machine running it went away (--ray)
    iterations: int
    branch: str
    reason: str = ""


@dataclass(frozen=True)
class Winner(Event):
    """The attempt whose result the session keeps, and why it was picked."""

    type: ClassVar[str] = "winner"
    branch: str
    why: str


@dataclass(frozen=True)
class LoopFinished(Event):
    type: ClassVar[str] = "loop_finished"
    status: FinalStatus
    iterations: int
    branch: str
    worktree: str = ""
    reason: str = ""


# Commands: from a front end to the loop.


@dataclass(frozen=True)
class Command:
    """Base of every command. ``attempt``: the one attempt of a race it is for (a steering
    message to one lane); None: every attempt."""

    attempt: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Pause(Command):
    pass


@dataclass(frozen=True)
class Resume(Command):
    pass


@dataclass(frozen=True)
class Stop(Command):
    reason: str = "stopped by the developer"


@dataclass(frozen=True)
class Steer(Command):
    text: str


@dataclass(frozen=True)
class SetColumns(Command):
    """How wide the front end shows command output: test runs and commands format for it."""

    columns: int


@dataclass(frozen=True)
class SetTargets(Command):
    """New targets (checked by the front end, e.g. with config.resolve_targets)."""

    targets: tuple[str, ...]
    files: tuple[str, ...]


@dataclass(frozen=True)
class Rejection:
    """A hunk the reviewer rejected; the comment goes back to the model."""

    path: str
    hunk: Any  # codexloop.core.diff.Hunk
    comment: str = ""


@dataclass(frozen=True)
class Feedback(Command):
    """Rejected hunks: reverted in the sandbox, told to the model, and the loop goes on."""

    rejections: tuple[Rejection, ...]


@dataclass(frozen=True)
class Apply(Command):
    """A review's accepted hunks of ``head`` (a commit of the sandbox's branch) into the
    developer's working tree, three-way; the loop answers with :class:`Applied`. Each hunk is
    ``(path, index)``, index -1 for a file as a whole."""

    head: str
    hunks: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class MoreIterations(Command):
    """After the budget was spent: go on for this many more, the conversation kept."""

    iterations: int


@dataclass(frozen=True)
class Finish(Command):
    """The developer is done reviewing: the session ends as it stands."""


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate (a file name that is not UTF-8, decoded
    with ``surrogateescape``) becomes its ``\\udcXX`` spelling instead of breaking a JSON
    line, a model request or the screen."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def joined(text: str) -> str:
    """``text`` as valid UTF-8, its surrogate pairs made the characters they stand for (a
    server whose strings are UTF-16 may cut an emoji across two deltas, each parsed alone) and
    any lone one spelled as :func:`printable` spells it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pairs = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return printable(pairs)
    return text


def whole_characters(text: str) -> tuple[str, str]:
    """``text`` :func:`joined` but for a high surrogate at its end, held back (the other half
    of its character may come with the next delta): (what can be shown, what is held)."""
    if text and "\ud800" <= text[-1] <= "\udbff":
        return joined(text[:-1]), text[-1]
    return joined(text), ""


E = TypeVar("E", bound=Event)

STREAMED = (ModelText, ModelReasoning, TestOutput, CommandOutput)
"""The events that carry streamed fragments of text: many, small, and buffered or joined
where they are kept (the trace, a lane's story)."""


def printable_event(event: E) -> E:
    """``event`` with every text field :func:`printable` (itself when nothing needed it)."""
    changes: dict[str, Any] = {}
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        if isinstance(value, str):
            clean: Any = printable(value)
        elif isinstance(value, tuple) and any(isinstance(v, str) for v in value):
            clean = tuple(printable(v) if isinstance(v, str) else v for v in value)
        else:
            continue
        if clean != value:
            changes[item.name] = clean
    return dataclasses.replace(event, **changes) if changes else event


Emit = Callable[[Event], Awaitable[None]]
"""How the engine's parts hand an event to the loop (trace and front end)."""
SetState = Callable[[State], Awaitable[None]]
"""How they change the loop's state (a ``state_changed`` event when it changes)."""
