"""The loop: model works, engine runs the exam, failure goes back, until green.

One iteration = one test run. The model may call any number of tools (capped per
iteration) until it answers without tool calls; then the engine restores the
exam in the sandbox, runs the test command and records the sandbox's state on the
preview branch. A run before the first model turn (iteration 0, the baseline)
shows the model the real failure and does not count against the budget.

Front ends consume :mod:`codexloop.core.events` from a memory stream and send
:class:`~codexloop.core.events.Command` objects the other way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import secrets
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import openai
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from codexloop.core import events as ev
from codexloop.core import gitops, plugins, record, safefs
from codexloop.core.config import Config
from codexloop.core.context import (
    CHARS_PER_TOKEN,
    MIN_CONTEXT_TOKENS,
    conversation_size,
    fit,
    shorten_tool_result,
)
from codexloop.core.diff import revert_hunk
from codexloop.core.exam import MAX_EXAM_BYTES, Exam, ExamError, command_files, syntax_error
from codexloop.core.gitops import ApplyResult
from codexloop.core.model import (
    BACKOFF_S,
    CUT_FINISH,
    MAX_TURN_CHARS,
    AutoModel,
    ContextOverflow,
    ModelError,
    Turn,
    choose_protocol,
    context_window,
    is_openai_endpoint,
    make_client,
    tool_message,
)
from codexloop.core.process import OutputCallback, RunResult
from codexloop.core.sandbox import ExamPlace, Sandbox, find_python, session_name
from codexloop.core.testrun import (
    Canary,
    Verdict,
    default_args,
    default_command,
    judge,
    junit_env,
    uncollected,
)
from codexloop.core.tools import TOOL_SCHEMAS, Tools
from codexloop.core.trace import TraceWriter, traces_dir
from codexloop.core.warm import WarmError, WarmRunner

_STREAMED = (ev.ModelText, ev.ModelReasoning, ev.TestOutput, ev.CommandOutput)
_JUNIT_NOTE = re.compile(r"-* ?generated xml file: \S+ ?-*\n?")
EXAM_CHARS = 12_000
OLD_TOOL_RESULT_CHARS = 600
PROJECT_FILES_LISTED = 200  # in the first message; the model lists the rest itself
FEEDBACK_HUNK_LINES = 200  # of a rejected hunk quoted back to the model
MAX_CONTEXT_SHRINKS = 2  # a refused request is shortened and sent again at most this often

SYSTEM_PROMPT = """\
You are a coding agent working inside a sandboxed copy of a software project (a git worktree).
Your goal: make the target tests pass. The tests are the specification.

Rules:
- The target test files and the test setup (conftest.py, pytest.ini, tox.ini, setup.cfg, the
  [tool.pytest] section of pyproject.toml, JavaScript test-runner configs, the scripts of
  package.json, and any file the test command runs) are protected: you cannot change them, and
  the engine restores them before every test run. Change the code under test instead.
- Use the tools to read, search and edit files. Paths are relative to the project root.
- run_command runs in the sandbox: time-limited, no network unless the developer allowed it,
  nothing installed outside the project. Use it to explore or try things; the engine runs
  the target tests itself.
- When you think the code is fixed, reply with a short summary and no tool call: the engine then
  runs the tests and tells you the result.
- Keep changes small and focused on what the tests require.
"""


@dataclass
class LoopResult:
    status: ev.FinalStatus
    iterations: int
    branch: str
    worktree: Path
    base: str
    head: str | None
    reason: str = ""
    trace: Path | None = None


@dataclass
class _Control:
    paused: bool = False
    resume: anyio.Event = field(default_factory=anyio.Event)
    stop_reason: str | None = None
    steering: list[str] = field(default_factory=list)
    feedback: list[ev.Rejection] = field(default_factory=list)
    finish: bool = False
    more: int = 0  # iterations given after the budget was spent
    wake: anyio.Event = field(default_factory=anyio.Event)
    targets: ev.SetTargets | None = None


class _Stopped(Exception):
    pass


class Loop:
    """One session: a sandbox, a conversation, and iterations until green or the budget ends."""

    def __init__(
        self,
        config: Config,
        *,
        client: openai.AsyncOpenAI | None = None,
        name: str | None = None,
        backoff: tuple[float, ...] = BACKOFF_S,
        write_trace: bool = True,
        accept_all: bool = False,
        accept_flagged: bool = False,
        base: str | None = None,
        review: bool = False,
    ) -> None:
        self.config = config
        self.client = client or make_client(config.base_url, config.api_key)
        self.model = AutoModel(
            self.client,
            config.model,
            prefer=choose_protocol(config.api, config.base_url),
            switchable=config.api == "auto",
            backoff=backoff,
            reasoning=config.reasoning,
        )
        self.name = name or session_name(config.targets)
        self.write_trace = write_trace
        self.sandbox: Sandbox | None = None
        self.trace: TraceWriter | None = None
        self._events: ObjectSendStream[ev.Event] | None = None
        self._control = _Control()
        self._work_scope: anyio.CancelScope | None = None
        self.tokens_in = 0
        self.tokens_out = 0
        self.state: ev.State = "starting"
        self._iteration = 0
        self.accept_all = accept_all
        self.accept_flagged = accept_flagged  # --accept flagged: apply a flagged green too
        self.flagged: list[ev.Flagged] = []  # what the green change touches of test machinery
        self.base = base  # replay: start from this commit, the exam as recorded
        self.test_outcomes: list[bool] = []
        self.review = review  # after green, wait for the developer's review (the app)
        self.warm: WarmRunner | None = None
        self.timings: dict[str, list[float]] = {}  # engine phases, for bench/iteration.py
        self._exam_seen: dict[str, bytes | None] = {}
        self._exam_note: str | None = None
        self._exam_in_sandbox: dict[str, bytes | None] = {}
        self._exam_lock = anyio.Lock()
        self.applied: ApplyResult | None = None
        self.columns: int | None = None  # the front end's terminal width (SetColumns)
        self._context_budget: int | None = None  # characters, once the endpoint refused more
        self._context_noted = False
        self._place: ExamPlace | None = None  # where the exam runs (the run tree)
        self._candidate: record.Scan | None = None  # what the last run tested
        self._left_out_seen: set[tuple[str, str]] = set()
        self._plugin_args = ""  # -p for each plugin installed at the start
        self._green_commit: str | None = None  # the last commit that was tested green
        self._canary_on = True  # the engine's own tests in every run (see testrun.Canary)
        self._reported = False  # a run wrote a JUnit report: every later run must too

    # -- plumbing --------------------------------------------------------------

    async def emit(self, event: ev.Event) -> None:
        if not isinstance(event, _STREAMED):  # streamed text is decoded with "replace"
            event = ev.printable_event(event)
        if self.trace is not None:
            self.trace.write(event)
        if self._events is not None:
            try:
                await self._events.send(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._events = None  # the front end went away; keep the trace going

    async def _set_state(self, state: ev.State) -> None:
        if state != self.state:
            self.state = state
            await self.emit(ev.StateChanged(state))

    async def _read_commands(self, commands: ObjectReceiveStream[ev.Command]) -> None:
        async for command in commands:
            control = self._control
            if isinstance(command, ev.Pause):
                control.paused = True
            elif isinstance(command, ev.Resume):
                control.paused = False
                control.resume.set()
                control.resume = anyio.Event()
            elif isinstance(command, ev.Stop):
                control.stop_reason = command.reason
                control.resume.set()
                if self._work_scope is not None:
                    self._work_scope.cancel()
            elif isinstance(command, ev.Steer) and command.text.strip():
                control.steering.append(command.text.strip())
            elif isinstance(command, ev.Feedback) and command.rejections:
                control.feedback.extend(command.rejections)
                control.wake.set()
            elif isinstance(command, ev.SetTargets) and command.targets:
                control.targets = command
            elif isinstance(command, ev.Finish):
                control.finish = True
                control.wake.set()
            elif isinstance(command, ev.MoreIterations) and command.iterations > 0:
                control.more += command.iterations
                control.wake.set()
            elif isinstance(command, ev.SetColumns) and command.columns > 0:
                self.columns = command.columns

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings.setdefault(phase, []).append(time.perf_counter() - started)

    async def checkpoint(self) -> None:
        """A safe point: honour pause and stop here."""
        control = self._control
        if control.stop_reason is not None:
            raise _Stopped
        if control.paused:
            previous = self.state
            await self._set_state("paused")
            while control.paused and control.stop_reason is None:
                await control.resume.wait()
            if control.stop_reason is not None:
                raise _Stopped
            await self._set_state(previous)

    # -- the session -----------------------------------------------------------

    async def run(
        self,
        events: ObjectSendStream[ev.Event] | None = None,
        commands: ObjectReceiveStream[ev.Command] | None = None,
    ) -> LoopResult:
        self._events = events
        config = self.config
        with self._timed("sandbox setup"):
            sandbox = await anyio.to_thread.run_sync(
                partial(
                    Sandbox.create,
                    config.repo,
                    self.name,
                    self.base,
                    continue_from=config.continue_from,
                )
            )
        self.sandbox = sandbox
        exam = Exam(
            config.repo,
            sandbox.base,
            config.target_files,
            from_checkout=self.base is None,
            command_files=command_files(config.repo, config.test_cmd),
        )
        python = find_python(config.repo)
        self.python = python
        self.test_command = config.test_cmd or default_command(python, config.targets)
        test_command = self.test_command
        with self._timed("isolation probe"):
            isolation = await anyio.to_thread.run_sync(
                lambda: sandbox.isolate(
                    [python],
                    exam.protected_files(),
                    network=config.allow_network,
                    max_processes=config.max_processes,
                    max_memory_gib=config.max_memory,
                    shared=config.share,
                    tmp_size_mib=config.tmp_size,
                )
            )
        self._place = await anyio.to_thread.run_sync(sandbox.exam_place)
        # Plugins load from what was installed now, never from what the model adds later.
        installed = await anyio.to_thread.run_sync(exam.installed)
        words = shlex.split(self.test_command) if self.test_command else []
        named = plugins.pytest_plugin_args(
            installed.plugins, disabled=plugins.disabled_plugins(words)
        )
        # Named one by one, a plugin another one imported first cannot be assertion-rewritten;
        # pytest says so on every run, which is noise here (autoloading would not rewrite
        # it either).
        if named:
            named += ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
        self._plugin_args = shlex.join(named)
        if config.warm and config.test_cmd is None:
            self.warm = WarmRunner(self._place, python)  # type: ignore[arg-type]
        tools = Tools(
            sandbox.worktree,
            exam,
            self._run_model_command,
            network_off=isolation.active and not config.allow_network,
            max_memory_gib=config.max_memory,
        )
        if self.write_trace:
            trace_path = traces_dir() / f"{self.name}.jsonl"
            self.trace = TraceWriter(
                trace_path,
                {
                    "repo": str(config.repo),
                    "base": sandbox.base,
                    "branch": sandbox.branch,
                    "model": config.model,
                    "targets": list(config.targets),
                    "target_files": list(config.target_files),
                    "test_cmd": config.test_cmd,
                    "task": config.task,
                    "max_iterations": config.max_iterations,
                    "max_tool_calls": config.max_tool_calls,
                },
            )
        await self.emit(
            ev.LoopStarted(
                branch=sandbox.branch,
                worktree=str(sandbox.worktree),
                base=sandbox.base,
                targets=config.targets,
                test_command=test_command,
                model=config.model,
                max_iterations=config.max_iterations,
                isolation=isolation.level,
                isolation_reason=isolation.reason,
                max_processes=sandbox.limit.maximum,
                process_limit=sandbox.limit.reason,
                max_memory_gib=config.max_memory or None,
                continued_from=config.continue_from or "",
                shared=tuple(
                    t.relative_to(sandbox.worktree).as_posix() for _s, t in sandbox.shared
                ),
                network=config.allow_network,
                api=self.model.protocol,
                trace=str(self.trace.path) if self.trace else "",
                bwrap=isolation.binary.describe() if isolation.binary else "",
                tmp_size_mib=(
                    config.tmp_size or None
                    if isolation.binary is not None and isolation.binary.size
                    else None
                ),
            )
        )
        if sandbox.left_out:
            listed = ", ".join(f"{rel} ({size / 2**20:.0f} MB)" for rel, size in sandbox.left_out)
            await self.emit(
                ev.Notice(
                    "warning",
                    f"left out of the sandbox (untracked and over "
                    f"{gitops.MAX_UNTRACKED_BYTES >> 20} MB; add them to .gitignore or commit "
                    f"them): {listed}",
                )
            )
        if not isolation.active:
            await self.emit(ev.Notice("warning", f"no process isolation: {isolation.reason}"))
        elif sandbox.limit.maximum is None:
            await self.emit(ev.Notice("info", sandbox.limit.reason))
        status: ev.FinalStatus = "failed"
        reason = ""
        iterations = 0
        unusable: ExamError | None = None  # the exam can never pass: the session ends, exit 2
        try:
            async with anyio.create_task_group() as tg:
                if commands is not None:
                    tg.start_soon(self._read_commands, commands)
                with anyio.CancelScope() as self._work_scope:
                    try:
                        status, iterations, reason = await self._iterate(exam, tools)
                    except _Stopped:
                        status, reason = "stopped", self._control.stop_reason or "stopped"
                    except ExamError as exc:
                        status, reason, unusable = "failed", str(exc), exc
                    except ModelError as exc:
                        status, reason = "failed", f"model error: {exc}"
                        await self.emit(ev.Notice("error", reason))
                    except (gitops.GitError, OSError) as exc:
                        # Whatever the sandbox holds, the session ends cleanly and says why.
                        status, reason = "failed", f"the engine could not go on: {exc}"
                        await self.emit(ev.Notice("error", reason))
                if self._work_scope.cancelled_caught:
                    status, reason = "stopped", self._control.stop_reason or "stopped"
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if self.warm is not None:
                    await self.warm.stop()
                head = await self._final_commit(status)
                await anyio.to_thread.run_sync(sandbox.discard_scratch)
                iterations = max(iterations, self._iteration)
                final_states: dict[ev.FinalStatus, ev.State] = {
                    "passed": "green",
                    "failed": "red",
                    "stopped": "stopped",
                }
                final_state = final_states[status]
                await self._set_state(final_state)
                # What went green is what was tested: the green iteration's commit.
                green = self._green_commit or head
                if status == "passed" and green is not None:
                    await self._apply_all(green)  # flags the change, applies it if asked
                await self.emit(
                    ev.LoopFinished(
                        status, iterations, sandbox.branch, str(sandbox.worktree), reason
                    )
                )
                if self.trace is not None:
                    self.trace.close()
        if unusable is not None:
            raise unusable
        return LoopResult(
            status,
            iterations,
            sandbox.branch,
            sandbox.worktree,
            sandbox.base,
            head,
            reason,
            self.trace.path if self.trace else None,
        )

    async def _commit_candidate(self, message: str) -> str | None:
        """Record the tree that was just tested (not the worktree as it is now)."""
        assert self.sandbox is not None and self._candidate is not None
        return await anyio.to_thread.run_sync(
            self.sandbox.recorder.commit_scan, self._candidate, message
        )

    async def _note_left_out(self, scan: record.Scan) -> None:
        """Say once which paths the recording leaves out, and why."""
        new = [(rel, why) for rel, why in scan.left_out if (rel, why) not in self._left_out_seen]
        if not new:
            return
        self._left_out_seen.update(new)
        listed = "; ".join(f"{rel}: {why}" for rel, why in new[:20])
        more = f" (and {len(new) - 20} more)" if len(new) > 20 else ""
        await self.emit(ev.Notice("warning", f"left out of the recorded change: {listed}{more}"))

    async def _final_commit(self, status: str) -> str | None:
        """The worktree's last state (work after the last test run), on top of the rest.
        A recording that fails is a notice, not a lost session."""
        assert self.sandbox is not None
        sandbox = self.sandbox
        try:
            scan = await anyio.to_thread.run_sync(sandbox.scan)
            await self._note_left_out(scan)
            await anyio.to_thread.run_sync(
                sandbox.recorder.commit_scan, scan, f"codexloop: final state ({status})"
            )
        except (OSError, gitops.GitError) as exc:
            await self.emit(ev.Notice("error", f"the sandbox's last state was not recorded: {exc}"))
        return await anyio.to_thread.run_sync(sandbox.head)

    async def _apply_all(self, head: str) -> None:
        """Flag what the green change touches of test machinery (one ``flagged`` event each),
        then, with ``--accept all``, bring it into the developer's working tree, three-way;
        a flagged change only with ``--accept flagged``."""
        from codexloop.core import flags

        assert self.sandbox is not None
        try:
            found = await anyio.to_thread.run_sync(
                flags.for_commit,
                self.config.repo,
                self.sandbox.base,
                head,
                self.config.target_files,
            )
        except (gitops.GitError, OSError) as exc:  # not checked: shown as a flag, never trusted
            found = [flags.Flag("", 0, f"the change could not be checked ({exc})")]
        self.flagged = [ev.Flagged(f.path, f.line, f.reason) for f in found]
        for event in self.flagged:
            await self.emit(event)
        if not self.accept_all:
            return
        if self.flagged and not self.accept_flagged:
            await self.emit(
                ev.Notice(
                    "error",
                    f"nothing applied: the change touches test machinery ({len(found)} flag(s)); "
                    f"review branch {self.sandbox.branch}, or use --accept flagged to apply it",
                )
            )
            return
        result = await anyio.to_thread.run_sync(
            partial(
                gitops.apply_changes,
                self.config.repo,
                self.sandbox.base,
                head,
                leave_out=self.config.target_files,  # the exam is yours, never written
            )
        )
        self.applied = result
        await self.emit(
            ev.Applied(
                tuple(result.written),
                tuple(result.deleted),
                tuple(f"{c.path}: {c.reason}" for c in result.conflicts),
            )
        )
        if not result.ok:
            await self.emit(
                ev.Notice(
                    "error",
                    "nothing applied: the change conflicts with your working tree "
                    f"(see branch {self.sandbox.branch})",
                )
            )

    async def _iterate(self, exam: Exam, tools: Tools) -> tuple[ev.FinalStatus, int, str]:
        config = self.config
        assert self.sandbox is not None
        broken = await anyio.to_thread.run_sync(
            syntax_error, self.sandbox.worktree, exam.target_files
        )
        if broken is not None:
            raise ExamError(broken)
        baseline = await self._run_tests(0, exam)
        if baseline.passed:
            await self.emit(ev.Notice("info", "the target tests already pass: nothing to do"))
            return "passed", 0, "already green"
        files = await anyio.to_thread.run_sync(exam.snapshot_files)
        await self._fit_to_window()
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": self._first_message(exam, baseline, files)},
        ]
        iteration = 0
        budget_end = config.max_iterations
        while True:
            if iteration >= budget_end:
                more = await self._await_more(iteration) if self.review else 0
                if not more:
                    break
                budget_end = iteration + more
            iteration += 1
            self._iteration = iteration
            started = time.perf_counter()
            tokens_before = (self.tokens_in, self.tokens_out)
            await self.emit(ev.IterationStarted(iteration))
            compact_from = len(messages)
            await self._model_work(iteration, messages, tools)
            await self.checkpoint()
            verdict = await self._run_tests(iteration, exam)
            with self._timed("commit"):
                commit = await self._commit_candidate(
                    f"codexloop iteration {iteration}: {'green' if verdict.passed else 'red'} ({verdict.summary})",
                )
            await self.emit(
                ev.IterationFinished(
                    iteration,
                    verdict.passed,
                    round(time.perf_counter() - started, 3),
                    commit,
                    self.tokens_in - tokens_before[0],
                    self.tokens_out - tokens_before[1],
                )
            )
            if verdict.passed:
                self._green_commit = commit or self._green_commit
                if not self.review or not await self._await_review(iteration, commit):
                    return "passed", iteration, ""
                budget_end = iteration + config.max_iterations  # a fresh budget for the feedback
                continue
            _compact(messages, compact_from)
            await self._sync_exam(exam)
            note = self._take_exam_note()
            digest = verdict.digest + "\n\nFix the code so the tests pass."
            messages.append({"role": "user", "content": f"{note}\n\n{digest}" if note else digest})
        return (
            "failed",
            iteration,
            f"not green after {iteration} iteration{'s' if iteration != 1 else ''}",
        )

    async def _apply_targets(self, exam: Exam) -> None:
        """New targets from the developer, at a safe point: same protection, new test command."""
        change, self._control.targets = self._control.targets, None
        if change is None:
            return
        self.config = dataclasses.replace(
            self.config, targets=change.targets, target_files=change.files
        )
        exam.set_targets(change.files)
        if self.config.test_cmd is None:
            self.test_command = default_command(self.python, change.targets)
        await self.emit(ev.TargetsChanged(change.targets, self.test_command))
        await self._sync_exam(exam)

    async def _await_review(self, iteration: int, commit: str | None) -> bool:
        """Green: wait for the developer. True when rejected hunks send the loop on."""
        control = self._control
        await self._set_state("green")
        await self.emit(ev.ReviewReady(iteration, commit))
        while not control.feedback and not control.finish:
            await control.wake.wait()
            control.wake = anyio.Event()
        return bool(control.feedback)

    async def _fit_to_window(self) -> None:
        """A budget inside the model's context window, when the endpoint says how big it is
        (local servers do; OpenAI's listing does not, so it is not asked)."""
        if is_openai_endpoint(self.config.base_url):
            return
        window = await context_window(self.client, self.config.model)
        if window is None:
            return
        tokens = window * 3 // 4  # the rest for the answer
        if tokens < self.config.context_tokens:
            self._context_budget = max(MIN_CONTEXT_TOKENS, tokens) * CHARS_PER_TOKEN
            await self.emit(
                ev.Notice(
                    "info",
                    f"{self.config.model} has a context window of {window} tokens: the "
                    f"conversation is kept under about {self._context_budget // CHARS_PER_TOKEN}",
                )
            )

    async def _await_more(self, iteration: int) -> int:
        """Red with the budget spent: wait for the developer. More iterations (a count, or a
        fresh budget when rejected hunks came back), or 0 to finish."""
        control = self._control
        await self._set_state("red")
        await self.emit(ev.BudgetSpent(iteration))
        while not control.more and not control.feedback and not control.finish:
            await control.wake.wait()
            control.wake = anyio.Event()
        if control.finish:
            return 0
        more, control.more = control.more, 0
        return more or self.config.max_iterations

    async def _apply_feedback(self, messages: list[dict[str, Any]]) -> None:
        """Revert rejected hunks in the sandbox and tell the model why."""
        rejections, self._control.feedback = self._control.feedback, []
        if not rejections:
            return
        assert self.sandbox is not None
        failed = await anyio.to_thread.run_sync(_revert_all, self.sandbox, rejections)
        await self.emit(
            ev.HunksReverted(
                tuple(dict.fromkeys(r.path for r in rejections if r.path not in failed)),
                tuple(failed),
            )
        )
        await self.emit(ev.SandboxChanged(tuple(r.path for r in rejections)))
        for rejection in rejections:
            text = f"The reviewer rejected this change of {rejection.path}"
            text += f": {rejection.comment}" if rejection.comment else "."
            if rejection.hunk is not None:
                lines = rejection.hunk.lines
                if len(lines) > FEEDBACK_HUNK_LINES:
                    more = len(lines) - FEEDBACK_HUNK_LINES
                    lines = [*lines[:FEEDBACK_HUNK_LINES], f"[... {more} more lines ...]"]
                text += "\n```diff\n" + "\n".join(lines) + "\n```"
            text += (
                "\nIt could not be reverted automatically: undo it yourself."
                if rejection.path in failed
                else "\nIt has been reverted in the sandbox."
            )
            messages.append({"role": "user", "content": text})
            await self.emit(ev.UserMessage(text))

    async def _sync_exam(self, exam: Exam) -> None:
        """Notice a change of the exam in the developer's checkout; the model hears of it next."""
        async with self._exam_lock:
            if not self._exam_seen:
                return  # the model has not seen the exam yet: its first message will show it as it is
            current = await anyio.to_thread.run_sync(
                lambda: {rel: exam.original(rel) for rel in exam.target_files}
            )
            changed = [rel for rel in exam.target_files if current[rel] != self._exam_seen.get(rel)]
            if not changed:
                return
            diff = "".join(_unified(self._exam_seen.get(rel), current[rel], rel) for rel in changed)
            self._exam_seen = current
            if len(diff) > EXAM_CHARS:
                diff = diff[:EXAM_CHARS] + "\n[... cut ...]"
            self._exam_note = (
                "The developer changed the exam (the tests that define success). The change:\n"
                f"{diff}\nThe new version is what the next test run uses."
            )
            await self.emit(ev.ExamChanged(tuple(changed), diff))

    def _take_exam_note(self) -> str | None:
        note, self._exam_note = self._exam_note, None
        return note

    def _first_message(self, exam: Exam, baseline: Verdict, files: list[str]) -> str:
        config = self.config
        parts = []
        if config.task:
            parts.append(f"Task from the developer: {config.task}\n")
        if config.continue_from:
            parts.append(
                f"This sandbox continues the work of an earlier session ({config.continue_from}): "
                "the code already holds its changes.\n"
            )
        parts.append("Target tests (all must pass): " + ", ".join(config.targets))
        parts.append(f"Test command (run by the engine): {self.test_command}\n")
        listing = "\n".join(files[:PROJECT_FILES_LISTED])
        if len(files) > PROJECT_FILES_LISTED:
            listing += f"\n[... {len(files) - PROJECT_FILES_LISTED} more: use list_files]"
        parts.append(f"Project files:\n{listing}\n")
        for rel in config.target_files:
            self._exam_seen[rel] = exam.original(rel)
            source = (self._exam_seen[rel] or b"").decode("utf-8", errors="replace")
            if len(source) > EXAM_CHARS:
                source = source[:EXAM_CHARS] + "\n[... cut ...]"
            parts.append(f"--- {rel} (protected) ---\n{source}")
        parts.append("\nThe tests are red now:\n" + baseline.digest)
        return "\n".join(parts)

    async def _model_work(
        self, iteration: int, messages: list[dict[str, Any]], tools: Tools
    ) -> None:
        """Model turns until one ends without tool calls (or the tool budget is spent)."""
        calls_left = self.config.max_tool_calls
        while True:
            await self.checkpoint()
            await self._apply_targets(tools.exam)
            await self._sync_exam(tools.exam)
            if (note := self._take_exam_note()) is not None:
                messages.append({"role": "user", "content": note})
            for text in self._control.steering:
                messages.append({"role": "user", "content": f"Message from the developer: {text}"})
                await self.emit(ev.UserMessage(text))
            self._control.steering.clear()
            await self._apply_feedback(messages)
            await self._set_state("thinking")
            await self.emit(ev.ModelTurnStarted(iteration))
            turn = await self._model_turn(messages)
            messages.append(turn.message())
            if turn.finish_reason == CUT_FINISH:
                messages.append(
                    {
                        "role": "user",
                        "content": f"Your last answer ran past {MAX_TURN_CHARS} characters and "
                        "was cut off (no tool call of it was run). Keep answers short and make "
                        "changes with the tools.",
                    }
                )
            if not turn.tool_calls:
                return
            for call in turn.tool_calls:
                await self.emit(ev.ToolCall(call.name, call.arguments, call.id))
                if calls_left <= 0:
                    content = (
                        f"not executed: the budget of {self.config.max_tool_calls} tool calls for "
                        "this iteration is spent; the tests run now"
                    )
                    messages.append(tool_message(call.id, content))
                    await self.emit(ev.ToolResult(call.name, False, "tool budget spent", call.id))
                    continue
                calls_left -= 1
                await self._set_state("tool")
                with self._timed(f"tool {call.name}"):
                    outcome = await tools.execute(call.name, call.arguments)
                messages.append(tool_message(call.id, outcome.content))
                await self.emit(
                    ev.ToolResult(call.name, outcome.ok, outcome.summary, call.id, outcome.refused)
                )
                if outcome.changed or call.name == "run_command":
                    await self.emit(ev.SandboxChanged(outcome.changed))
            if calls_left <= 0:
                await self.emit(
                    ev.Notice(
                        "warning",
                        f"tool budget of {self.config.max_tool_calls} calls spent; running the tests",
                    )
                )
                return

    async def _model_turn(self, messages: list[dict[str, Any]]) -> Turn:
        async def on_text(text: str) -> None:
            await self.emit(ev.ModelText(text))

        async def on_reasoning(text: str) -> None:
            await self.emit(ev.ModelReasoning(text))

        async def on_retry(attempt: int, reason: str, delay: float) -> None:
            await self.emit(ev.ModelRetry(attempt, reason, delay))

        async def on_notice(message: str) -> None:
            await self.emit(ev.Notice("warning", message))

        async def on_discard() -> None:
            await self.emit(
                ev.Notice(
                    "warning", "the model's stream broke off; its partial answer is discarded"
                )
            )

        shrinks = 0
        while True:
            budget = self._context_budget or self.config.context_tokens * CHARS_PER_TOKEN
            saved = fit(messages, budget)
            if saved and not self._context_noted:
                self._context_noted = True
                await self.emit(
                    ev.Notice(
                        "info",
                        f"the conversation reached its budget of about {budget // CHARS_PER_TOKEN} "
                        "tokens: older tool results are shortened from now on",
                    )
                )
            try:
                turn = await self.model.turn(
                    messages,
                    TOOL_SCHEMAS,
                    on_text=on_text,
                    on_reasoning=on_reasoning,
                    on_retry=on_retry,
                    on_discard=on_discard,
                    on_notice=on_notice,
                )
                break
            except ContextOverflow as exc:
                if shrinks == MAX_CONTEXT_SHRINKS:
                    raise  # shortened twice and still too long: nothing more to give
                shrinks += 1
                smaller = conversation_size(messages) * 3 // 5
                self._context_budget = max(MIN_CONTEXT_TOKENS * CHARS_PER_TOKEN, smaller)
                self._context_noted = True
                await self.emit(
                    ev.Notice(
                        "warning",
                        f"the conversation did not fit the model's context ({exc}); older tool "
                        f"results shortened to about {self._context_budget // CHARS_PER_TOKEN} "
                        "tokens and asked again",
                    )
                )
        self.tokens_in += turn.input_tokens
        self.tokens_out += turn.output_tokens
        await self.emit(
            ev.Usage(
                turn.input_tokens,
                turn.output_tokens,
                self.tokens_in,
                self.tokens_out,
                turn.cached_tokens,
                turn.reasoning_tokens,
            )
        )
        if turn.finish_reason and turn.finish_reason.startswith("incomplete"):
            await self.emit(
                ev.Notice("warning", f"the model's answer was cut off ({turn.finish_reason})")
            )
        return turn

    async def _run_model_command(self, command: str) -> RunResult:
        assert self.sandbox is not None

        async def on_output(text: str) -> None:
            await self.emit(ev.CommandOutput(text))

        await self.emit(ev.CommandOutput(f"$ {command}\n"))
        return await self.sandbox.run(
            command,
            timeout=self.config.command_timeout,
            on_output=on_output,
            extra_env=self._display_env(),
        )

    def _display_env(self) -> dict[str, str]:
        """``COLUMNS`` of the front end's terminal pane, once it said (pytest formats for it)."""
        return {"COLUMNS": str(self.columns)} if self.columns else {}

    async def _run_tests(self, iteration: int, exam: Exam) -> Verdict:
        await self._apply_targets(exam)
        test_command = self.test_command
        sandbox = self.sandbox
        assert sandbox is not None
        with self._timed("exam check and restore"):
            await self._sync_exam(exam)
            changed = await anyio.to_thread.run_sync(sandbox.changed_paths)
            held = await anyio.to_thread.run_sync(
                _read_targets, sandbox, exam, self._exam_in_sandbox
            )
            restored = await anyio.to_thread.run_sync(exam.restore, sandbox.worktree, changed)
            # What the sandbox holds of the exam now, if the model leaves it alone.
            self._exam_in_sandbox = {rel: held[rel][2] for rel in held}
        # Only what the model did counts as an attempt; the developer's own edits are not one.
        attempts = [p for p in restored if p not in held or held[p][0] != held[p][1]]
        if attempts:
            await self.emit(ev.ExamRestored(tuple(attempts)))
        with self._timed("record"):
            # The candidate is recorded before it is tested, and the exam runs on exactly
            # that tree (the run tree), never in the model's worktree. Modules a command made
            # that shadow installed ones, and plugin metadata, stay out of it.
            shadowing = await anyio.to_thread.run_sync(exam.shadowing_paths, changed)
            if shadowing:
                await anyio.to_thread.run_sync(_remove_all, sandbox, [r for r, _w in shadowing])
                await self.emit(
                    ev.Notice(
                        "warning",
                        "removed before the test run: "
                        + "; ".join(f"{rel} ({why})" for rel, why in shadowing),
                    )
                )
            scan = await anyio.to_thread.run_sync(sandbox.scan, [rel for rel, _why in shadowing])
            await self._note_left_out(scan)
            place = self._place
            assert place is not None
            await anyio.to_thread.run_sync(place.tree.reconcile, scan.entries)
            self._candidate = scan
            run_tmp = await anyio.to_thread.run_sync(_fresh_run_folder, place.tmp)
        await self._set_state("testing")
        await self.emit(ev.TestStarted(iteration, test_command))
        junit = run_tmp / "report" / f"junit-{secrets.token_hex(8)}.xml"
        junit.parent.mkdir()
        run_env = {"TMPDIR": str(run_tmp), **junit_env(junit)}
        run_env["PYTEST_ADDOPTS"] += f" {self._plugin_args}"
        run_env.update(plugins.PLUGIN_ENV)
        if sandbox.isolation.active:
            run_env["HOME"] = str(run_tmp / "home")

        async def on_output(text: str) -> None:
            text = _JUNIT_NOTE.sub("", text)  # our own --junitxml is nobody's business
            if text:
                await self.emit(ev.TestOutput(text))

        canary = Canary.new() if self._canary_on else None
        if canary is not None:  # the run tree's root is on PYTHONPATH: -p finds it
            await anyio.to_thread.run_sync(
                (place.worktree / canary.filename).write_text, canary.source()
            )
        run = await self._run_exam(place, test_command, run_env, on_output, changed, canary)
        if (
            iteration == 0
            and canary is not None
            and f'plugin "{canary.module}"' in run.output
            and not junit.exists()
        ):
            # The developer's command runs pytest where the run tree's root is not on the
            # path (it sets PYTHONPATH itself, a tool that builds its own environment):
            # the canary cannot load there. Said, and the baseline run again without it.
            self._canary_on, canary = False, None
            await self.emit(
                ev.Notice(
                    "warning",
                    "canary tests are off for this session: the test command's pytest "
                    "cannot import the engine's canary plugin (does it set PYTHONPATH?)",
                )
            )
            run = await self._run_exam(place, test_command, run_env, on_output, changed, None)
        with self._timed("verdict"):
            strict = self.config.test_cmd is None or self._reported
            verdict = await anyio.to_thread.run_sync(
                partial(judge, self.config.targets, run, junit, strict=strict, canary=canary)
            )
            never = uncollected(self.config.targets, verdict) if iteration == 0 else None
            if never is not None:  # before any model call: no budget spent on it
                raise ExamError(never)
            if iteration == 0 and canary is not None and verdict.tampered and not verdict.cases:
                # Before any model turn: the project's pytest setup does not collect the
                # canary (python_functions, a plugin that deselects): judge without it.
                self._canary_on = False
                await self.emit(
                    ev.Notice("info", f"canary tests are off for this session: {verdict.tampered}")
                )
                verdict = await anyio.to_thread.run_sync(
                    partial(judge, self.config.targets, run, junit, strict=strict)
                )
        self._reported = self._reported or verdict.reported
        if verdict.tampered:
            await self.emit(ev.TamperDetected(iteration, verdict.tampered))
        self.test_outcomes.append(verdict.passed)
        await self.emit(
            ev.TestFinished(
                iteration,
                verdict.passed,
                run.exit_code,
                round(run.duration_s, 3),
                verdict.summary,
                run.timed_out,
            )
        )
        if not verdict.passed:
            await self._set_state("red")
        return verdict

    async def _run_exam(
        self,
        place: ExamPlace,
        test_command: str,
        run_env: dict[str, str],
        on_output: OutputCallback,
        changed: list[str],
        canary: Canary | None,
    ) -> RunResult:
        """One run of the test command in the run tree: warm when a server is up."""
        env = {**self._display_env(), **run_env}
        if canary is not None:
            env["PYTEST_ADDOPTS"] += f" {canary.addopts()}"
        if self.warm is not None:
            try:
                return await self.warm.run(
                    default_args(self.config.targets),
                    extra_env=env,
                    timeout=self.config.test_timeout,
                    on_output=on_output,
                    changed=changed,
                )
            except WarmError as exc:
                self.warm = None
                await self.emit(
                    ev.Notice("warning", f"warm test runs are off for this session: {exc}")
                )
        return await place.run(
            test_command, timeout=self.config.test_timeout, on_output=on_output, extra_env=env
        )


def _remove_all(sandbox: Sandbox, paths: list[str]) -> None:
    """Remove what a command made that may not be there (never through a link)."""
    for rel in paths:
        with contextlib.suppress(OSError):
            safefs.remove(sandbox.worktree, rel)


def _fresh_run_folder(tmp: Path) -> Path:
    """An empty temp folder for one test run (TMPDIR, HOME, the report): nothing an earlier
    run left there is seen by the next one."""
    folder = tmp / "run"
    safefs.remove_tree(folder)
    (folder / "home").mkdir(parents=True)
    return folder


def _read_targets(
    sandbox: Sandbox, exam: Exam, expected: dict[str, bytes | None]
) -> dict[str, tuple[bytes | None, bytes | None, bytes | None]]:
    """For each target file: what the sandbox holds, what it held when the engine last wrote
    it (the snapshot's version at first), and the developer's version now."""
    held: dict[str, tuple[bytes | None, bytes | None, bytes | None]] = {}
    for rel in exam.target_files:
        # The worktree is the model's: no link followed, regular files only (safefs).
        now = safefs.read_regular(sandbox.worktree, rel, limit=MAX_EXAM_BYTES)
        if rel in expected:
            want = expected[rel]
        else:
            want = gitops.read_blob(sandbox.repo, sandbox.base, rel)
        held[rel] = (now, want, exam.original(rel))
    return held


def _revert_all(sandbox: Sandbox, rejections: list[ev.Rejection]) -> list[str]:
    """Undo rejected hunks (or whole files) in the sandbox; return the paths that failed."""
    failed: list[str] = []
    root = sandbox.worktree
    for rejection in rejections:
        # The worktree is the model's: no link followed at any component, regular files
        # only, writes replace the name (never through a link) (safefs).
        try:
            if rejection.hunk is None:  # a whole file: back to the snapshot's version
                original = gitops.read_blob(sandbox.repo, sandbox.base, rejection.path)
                if original is None:
                    safefs.remove(root, rejection.path)
                else:
                    safefs.write_file(root, rejection.path, original)
                continue
            data = safefs.read_file(root, rejection.path, limit=MAX_EXAM_BYTES)
            reverted = revert_hunk(data.decode("utf-8", "surrogateescape"), rejection.hunk)
            if reverted is None:
                failed.append(rejection.path)
            else:
                safefs.write_file(root, rejection.path, reverted.encode("utf-8", "surrogateescape"))
        except OSError:
            failed.append(rejection.path)
    return failed


def _unified(old: bytes | None, new: bytes | None, rel: str) -> str:
    before = (old or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    after = (new or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"a/{rel}", f"b/{rel}"))


def _compact(messages: list[dict[str, Any]], before: int) -> None:
    """Shorten long tool results of earlier iterations: the conversation stays small."""
    for message in messages[:before]:
        shorten_tool_result(message, OLD_TOOL_RESULT_CHARS, why="")


def event_channel(
    size: float = math.inf,
) -> tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]]:
    """A memory object stream for events or commands."""
    send, receive = anyio.create_memory_object_stream[Any](size)
    return send, receive
