"""The loop: model works, engine runs the exam, failure goes back, until green.

It reads as run → iterate → work → turn. One iteration = one test run. The model may call any
number of tools (capped per iteration) until it answers without tool calls; then the engine
restores the exam in the sandbox, runs the test command on the recorded candidate and commits
it on the preview branch. A run before the first model turn (iteration 0, the baseline) shows
the model the real failure and does not count against the budget.

Over 400 lines because it holds the loop's own steps and nothing else — the session's life
(run), the iterations, the model's work between two runs and the developer's answers (review,
budget, feedback); every part those steps use lives beside it: the session's set-up (:mod:`~codexloop.core.session`), the
developer's controls (:mod:`~codexloop.core.controls`), the conversation
(:mod:`~codexloop.core.conversation`), every text the model reads
(:mod:`~codexloop.core.prompts`), the exam between checkout and sandbox
(:mod:`~codexloop.core.exam_sync`), one test run (:mod:`~codexloop.core.exam_run`) and what
becomes of a green result (:mod:`~codexloop.core.outcome`). Front ends consume
:mod:`codexloop.core.events` from a memory stream and send
:class:`~codexloop.core.events.Command` objects the other way.

Over 400 lines: ``run → iterate → work → turn`` in one place, the order a newcomer reads;
everything each step needs lives in the modules it names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from codexloop.core import briefing, gitops, outcome, prompts, resume, setbacks, spend
from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.controls import Controls, Stopped
from codexloop.core.conversation import Conversation
from codexloop.core.diff import revert_rejected
from codexloop.core.exam import ExamError, syntax_error
from codexloop.core.exam_sync import ExamSync
from codexloop.core.gitops import ApplyResult
from codexloop.core.model import (
    BACKOFF_S,
    CUT_FINISH,
    MAX_TURN_CHARS,
    REPEAT_FINISH,
    AutoModel,
    EndpointCheck,
    ModelError,
    choose_protocol,
    make_client,
)
from codexloop.core.process import RunResult
from codexloop.core.sandbox import Sandbox, session_name
from codexloop.core.session import Session, announce, ask_ahead, create_sandbox, open_session
from codexloop.core.setbacks import Setbacks
from codexloop.core.testrun import Case, Verdict, default_command, runs_the_exam
from codexloop.core.textcalls import Work, answers_of
from codexloop.core.timings import Timings
from codexloop.core.tools import TOOL_SCHEMAS
from codexloop.core.turns import Turns
from codexloop.core.words import counted

if TYPE_CHECKING:
    from codexloop.core.model_host import ModelClient

_FINAL_STATES: dict[ev.FinalStatus, ev.State] = {
    "passed": "green",
    "failed": "red",
    "stopped": "stopped",
}


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
    outcomes: tuple[bool, ...] = ()  # each test run passed or not, the baseline first
    flagged: tuple[ev.Flagged, ...] = ()  # what the green change touches of test machinery
    applied: ApplyResult | None = None  # what --accept brought into the working tree
    timings: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    green: str | None = None  # the commit that was tested green (what --accept applies)


@dataclass
class SharedBaseline:
    """The baseline of a race's attempts, run once (they start from one snapshot)."""

    lock: anyio.Lock = dataclasses.field(default_factory=anyio.Lock)
    verdict: Verdict | None = None
    learned: tuple[bool, bool] = (True, False)
    exit_code: int | None = None
    attempt: int = 1
    error: ExamError | None = None


class Loop:
    """One session: a sandbox, a conversation, and iterations until green or the budget ends."""

    def __init__(
        self,
        config: Config,
        *,
        client: ModelClient | None = None,
        name: str | None = None,
        backoff: tuple[float, ...] = BACKOFF_S,
        write_trace: bool = True,
        accept_all: bool = False,
        accept_flagged: bool = False,
        base: str | None = None,
        review: bool = False,
        attempt: int = 1,
        snapshot: str | None = None,
        test_slots: anyio.CapacityLimiter | None = None,
        resumed: resume.SessionRecord | None = None,
    ) -> None:
        """``attempt``: which attempt of a race this is (its model and hint, the ``attempt``
        of its events); ``snapshot``: the race's snapshot of the checkout to start from (the
        exam still comes from the checkout); ``test_slots``: bounds test runs across a race;
        ``resumed``: an earlier session's record, to go on with it (``codexloop resume``)."""
        config = config.for_attempt(attempt)
        self.config = config
        self.attempt = attempt
        self.snapshot = snapshot
        self.test_slots = test_slots
        self.shared_baseline: SharedBaseline | None = None  # a race's one baseline run
        # A race's sandboxes are made one at a time: concurrent `git worktree add` on one
        # repository can fail on git's own lock files.
        self.setup_lock: anyio.Lock | None = None
        self.setbacks: Setbacks | None = None  # the best state so far, to undo a setback
        self.code_paths: tuple[str, ...] = ()  # the project files the exam imports
        self.guard_passed: frozenset[str] | None = None  # passing at the baseline (--guard)
        self.guard_classes: tuple[str, ...] = ()  # the classnames of all the guard's tests
        self._spend_scale = 1  # the spend budgets given so far (the app's "more" adds one)
        self._last_run: RunResult | None = None
        self._started = time.monotonic()  # for --max-time (set again when the run starts)
        self.client = client or make_client(config.base_url, config.api_key, config.request_timeout)
        self.model = AutoModel(
            self.client,
            config.model,
            prefer=choose_protocol(config.api, config.base_url),
            switchable=config.api == "auto",
            backoff=backoff,
            reasoning=config.reasoning,
        )
        self.resumed = resumed
        self.name = resumed.name if resumed else name or session_name(config.targets)
        self.conversation: Conversation | None = None
        self._tested = resumed.iterations if resumed else 0  # iterations whose tests ran
        self._record_failed = False
        self.write_trace = write_trace
        self.accept_all = accept_all
        self.accept_flagged = accept_flagged  # --accept flagged: apply a flagged green too
        self.base = base  # replay: start from this commit, the exam as recorded
        self.review = review  # after green, wait for the developer's review (the app)
        self.sandbox: Sandbox | None = None
        self.session: Session | None = None
        self.controls = Controls(on_stop=self._cancel_work)
        self.timings = Timings()  # engine phases, for bench/iteration.py
        self.exam_sync = ExamSync(self.emit)
        self.state: ev.State = "starting"
        self.turns = Turns(
            self.model,
            self.client,
            model_name=config.model,
            base_url=config.base_url,
            context_tokens=config.context_tokens,
            emit=self.emit,
            tools=[] if config.edit_format == "text" else TOOL_SCHEMAS,  # text: none is sent
            cost=partial(spend.cost, config),
        )
        if resumed is not None:  # the spend so far counts against the budgets
            self.turns.tokens_in, self.turns.tokens_out = resumed.tokens_in, resumed.tokens_out
        self.test_outcomes: list[bool] = []
        self.flagged: list[ev.Flagged] = []
        self.applied: ApplyResult | None = None
        self.test_command = ""
        self._events: ObjectSendStream[ev.Event] | None = None
        self._work_scope: anyio.CancelScope | None = None
        self._beside: anyio.abc.TaskGroup | None = None  # work started beside the loop's own
        self._iteration = 0
        self._green_commit: str | None = None  # the last commit that was tested green
        # The endpoint's check, when a front end started it beside the set-up: awaited before
        # the first request to the endpoint.
        self.endpoint: EndpointCheck | None = None

    @property
    def set_up(self) -> bool:
        """Its session was set up (a failure before that is a set-up failure)."""
        return self.session is not None

    @property
    def columns(self) -> int | None:
        """The front end's terminal width (``SetColumns``): pytest formats for it."""
        return self.controls.columns

    # -- plumbing --------------------------------------------------------------

    async def emit(self, event: ev.Event) -> None:
        if not isinstance(event, ev.STREAMED):  # streamed text is decoded with "replace"
            event = ev.printable_event(event)
        if self.attempt != 1:
            event = dataclasses.replace(event, attempt=self.attempt)
        trace = self.session.trace if self.session else None
        if trace is not None:
            trace.write(event)
        if self._events is not None:
            try:
                await self._events.send(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._events = None  # the front end went away; keep the trace going

    async def _set_state(self, state: ev.State) -> None:
        if state != self.state:
            self.state = state
            await self.emit(ev.StateChanged(state))

    def _cancel_work(self) -> None:
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def checkpoint(self) -> None:
        """A safe point: honour pause and stop here."""
        previous = self.state

        async def show(paused: bool) -> None:
            await self._set_state("paused" if paused else previous)

        await self.controls.checkpoint(show)
        turns = self.turns
        seconds = time.monotonic() - self._started
        why = spend.spent(
            self.config, turns.tokens_in, turns.tokens_out, seconds, self._spend_scale
        )
        if why is None:
            return
        if not self.review:
            raise spend.SpendExhausted(why)
        await self._await_spend(why, previous)

    async def _await_spend(self, why: str, previous: ev.State) -> None:
        """A spend budget ran out with the developer watching: wait, paused, as for a spent
        iteration budget. More gives as much again of every budget (the time spent waiting
        does not count); finishing ends the session, red, with the reason."""
        controls = self.controls
        waited = time.monotonic()
        await self._set_state("paused")
        await self.emit(ev.BudgetSpent(self._iteration, reason=why))
        await controls.wait_for(lambda: bool(controls.more or controls.feedback or controls.finish))
        if controls.finish:
            raise spend.SpendExhausted(why)
        controls.take_more()
        self._spend_scale += 1
        self._started += time.monotonic() - waited
        await self._set_state(previous)

    def _display_env(self) -> dict[str, str]:
        return {"COLUMNS": str(self.columns)} if self.columns else {}

    # -- the session -----------------------------------------------------------

    async def run(
        self,
        events: ObjectSendStream[ev.Event] | None = None,
        commands: ObjectReceiveStream[ev.Command] | None = None,
    ) -> LoopResult:
        self._events = events
        self._started = time.monotonic() - (self.resumed.seconds if self.resumed else 0.0)
        config = self.config
        ask_ahead(config)
        self.client.prepare(self.model.protocol)  # the worker makes it beside the set-up
        with self.timings.timed("sandbox setup"):
            async with self.setup_lock or contextlib.nullcontext():  # a race: one at a time
                if self.resumed is not None:
                    self.sandbox = sandbox = await resume.reopen_sandbox(self.resumed)
                else:
                    self.sandbox = sandbox = await create_sandbox(
                        config, self.name, self.base or self.snapshot
                    )
        self.name = sandbox.name  # another session may have had the name (same test, same second)
        session = await open_session(
            config,
            sandbox,
            name=self.name,
            from_checkout=self.base is None,
            write_trace=self.write_trace,
            trace_name=resume.trace_name(self.name) if self.resumed else self.name,
            timings=self.timings,
            emit=self.emit,
            set_state=self._set_state,
            run_model_command=self._run_model_command,
        )
        self.session, self.test_command = session, session.test_command
        await announce(
            session,
            config,
            self.model.protocol,
            self.emit,
            resumed=self.resumed.iterations if self.resumed else None,
        )
        status: ev.FinalStatus = "failed"
        reason = ""
        iterations = 0
        unusable: ExamError | None = None  # the exam can never pass: the session ends, exit 2
        try:
            async with anyio.create_task_group() as tg:
                self._beside = tg
                if commands is not None:
                    self._listen(tg, commands, sandbox.base)
                with anyio.CancelScope() as self._work_scope:
                    try:
                        status, iterations, reason = await self._iterate(session)
                    except Stopped:
                        status, reason = "stopped", self.controls.stop_reason or "stopped"
                    except spend.SpendExhausted as exc:
                        status, reason = "failed", str(exc)
                        await self.emit(ev.Notice("warning", f"{exc}: the session ends here"))
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
                    status, reason = "stopped", self.controls.stop_reason or "stopped"
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                head = await self._close(session, status)
                iterations = max(iterations, self._iteration)
                await self._set_state(_FINAL_STATES[status])
                # What went green is what was tested: the green iteration's commit.
                green = self._green_commit or head
                if status == "passed" and green is not None:
                    await self._settle(session, green)
                await self.emit(
                    ev.LoopFinished(
                        status, iterations, sandbox.branch, str(sandbox.worktree), reason
                    )
                )
                await self._keep(status, reason)
                if session.trace is not None:
                    session.trace.close()
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
            session.trace.path if session.trace else None,
            tuple(self.test_outcomes),
            tuple(self.flagged),
            self.applied,
            dict(self.timings),
            green if status == "passed" else None,
        )

    async def _close(self, session: Session, status: str) -> str | None:
        """Stop the warm server, record the worktree's last state (work after the last test
        run) on top of the rest, drop the scratch folder; the branch's head."""
        sandbox = session.sandbox
        await session.runner.close()
        try:
            scan = await anyio.to_thread.run_sync(sandbox.scan)
            await session.runner.note_left_out(scan)
            await anyio.to_thread.run_sync(
                sandbox.recorder.commit_scan, scan, f"codexloop: final state ({status})"
            )
            await anyio.to_thread.run_sync(sandbox.recorder.refresh_index)
        except (OSError, gitops.GitError) as exc:  # a notice, not a lost session
            await self.emit(ev.Notice("error", f"the sandbox's last state was not recorded: {exc}"))
        head = await anyio.to_thread.run_sync(sandbox.head)
        await anyio.to_thread.run_sync(sandbox.discard_scratch)
        return head

    async def _settle(self, session: Session, head: str) -> None:
        """A green result: flagged, and applied with ``--accept``."""
        args = (self.config.repo, session.sandbox, head, self.config.target_files, self.emit)
        self.flagged = await outcome.flag(*args)
        if self.accept_all:
            self.applied = await outcome.apply(
                *args, flagged=self.flagged, accept_flagged=self.accept_flagged
            )

    def _listen(
        self, tg: anyio.abc.TaskGroup, commands: ObjectReceiveStream[ev.Command], base: str
    ) -> None:
        """Read the developer's commands in ``tg``; a review's accepted hunks are applied at
        once, beside the work."""

        def apply_hunks(command: ev.Apply) -> None:
            tg.start_soon(self._apply_hunks, base, command)

        self.controls.on_apply = apply_hunks
        tg.start_soon(self.controls.read, commands)

    async def _apply_hunks(self, base: str, command: ev.Apply) -> None:
        """A review's accepted hunks into the working tree; answered with ``applied`` (which
        the loop's end waits for: the answer comes before ``loop_finished``)."""
        with anyio.CancelScope(shield=True):
            await outcome.apply_hunks(
                self.config.repo, base, command.head, command.hunks, self.emit
            )

    # -- iterations --------------------------------------------------------------

    async def _iterate(self, session: Session) -> tuple[ev.FinalStatus, int, str]:
        config, exam = self.config, session.exam
        broken = await anyio.to_thread.run_sync(
            syntax_error, session.sandbox.worktree, exam.target_files
        )
        if broken is not None:
            raise ExamError(broken)
        baseline = await self._baseline(session)
        done = self.resumed.iterations if self.resumed else 0
        if baseline.passed:
            await self.emit(ev.Notice("info", "the target tests already pass: nothing to do"))
            return "passed", done, "already green"
        kept_guard = self.resumed.guard_passed if self.resumed else None
        if kept_guard is not None:  # the verdict of the start, its tests protected again
            assert self.resumed is not None
            self.guard_passed = frozenset(kept_guard)
            self.guard_classes = tuple(
                self.resumed.guard_classes or [label.partition("::")[0] for label in kept_guard]
            )
            await anyio.to_thread.run_sync(exam.guard, list(self.guard_classes))
        elif config.guard:
            await self._guard_baseline(session)
            if self.resumed is not None:
                await self.emit(
                    ev.Notice(
                        "warning",
                        "the guard's starting run was on the code as the session left it: a "
                        "test the earlier iterations broke counts as failing from the start",
                    )
                )
        start = await anyio.to_thread.run_sync(session.sandbox.head)
        self.setbacks = Setbacks(self.exam_sync.changes, config.targets, start, baseline)
        judge, tools = self.setbacks, session.tools
        tools.veto = lambda rel, new: judge.undoings.veto(
            rel, new, lambda name: setbacks.has_module(tools.python_files(), name)
        )
        files = await anyio.to_thread.run_sync(exam.snapshot_files)
        if self.endpoint is not None:
            await self.endpoint.passed()  # nothing goes to the endpoint before it passed
        await self.turns.fit_to_window()
        worktree = session.sandbox.worktree
        modules = await anyio.to_thread.run_sync(
            lambda: briefing.imported_modules(
                worktree,
                exam.target_files,
                files,
                exam.import_roots(),
                budget=min(briefing.BUDGET_CHARS, self.turns.budget_chars // 4),
            )
        )
        self.code_paths = prompts.code_paths(modules)
        roots = (worktree, session.runner.place.worktree)
        system = prompts.system(config.edit_format, TOOL_SCHEMAS)
        shown = self.exam_sync.show(exam)  # what the model sees of the exam, from its start
        kept = self.resumed.conversation if self.resumed else None
        conversation: Conversation | None = None
        if kept is not None:
            try:
                conversation = Conversation.restored(kept, roots=roots, system=system)
            except (KeyError, TypeError, ValueError):
                await self.emit(
                    ev.Notice("warning", "the kept conversation could not be read: it starts anew")
                )
            else:
                conversation.say(prompts.resumed(baseline.digest, self.code_paths))
        if conversation is None:
            conversation = Conversation(
                prompts.first_message(
                    task=config.task,
                    continue_from=config.continue_from,
                    targets=config.targets,
                    test_command=prompts.plain_command(config.targets, config.test_cmd),
                    files=files,
                    exam=shown,
                    digest=baseline.digest,
                    modules=modules,
                    hint=config.hint,
                ),
                roots=roots,
                system=system,
            )
        self.conversation = conversation
        iteration = done
        budget_end = await self._resumed_budgets(done)
        await self._keep()
        while True:
            if iteration >= budget_end:
                more = await self._await_more(iteration) if self.review else 0
                if not more:
                    break
                budget_end = iteration + more
            iteration += 1
            self._iteration = iteration
            started = time.perf_counter()
            tokens_before = (self.turns.tokens_in, self.turns.tokens_out)
            await self.emit(ev.IterationStarted(iteration))
            conversation.start_iteration()
            await self._work(session, iteration, conversation)
            await self.checkpoint()
            verdict = await self._run_tests(session, iteration)
            self._tested = iteration
            with self.timings.timed("commit"):
                commit = await self._commit_candidate(session, iteration, verdict)
            await self.emit(
                ev.IterationFinished(
                    iteration,
                    verdict.passed,
                    round(time.perf_counter() - started, 3),
                    commit,
                    self.turns.tokens_in - tokens_before[0],
                    self.turns.tokens_out - tokens_before[1],
                )
            )
            if verdict.passed:
                self._green_commit = commit or self._green_commit
                await self._keep()
                if not self.review or not await self._await_review(iteration, commit):
                    return "passed", iteration, ""
                budget_end = iteration + config.max_iterations  # a fresh budget for the feedback
                continue
            conversation.compact()
            await self.exam_sync.check(exam)
            digest = await self._after_red(session, iteration, verdict, commit, conversation)
            note = self.exam_sync.take_note()
            conversation.say(f"{note}\n\n{digest}" if note else digest)
            await self._keep()
        return (
            "failed",
            iteration,
            f"not green after {iteration} iteration{'s' if iteration != 1 else ''}",
        )

    async def _resumed_budgets(self, done: int) -> int:
        """Where the iteration budget ends; a resumed session has what is left of each
        budget, or as much again of one it had spent (its reason to stop), said in a notice."""
        config = self.config
        budget_end = config.max_iterations
        if self.resumed is None:
            return budget_end
        again = []
        if done >= budget_end:
            budget_end = done + config.max_iterations
            again.append(counted(config.max_iterations, "more iteration"))
        seconds = time.monotonic() - self._started
        turns = self.turns
        while spend.spent(config, turns.tokens_in, turns.tokens_out, seconds, self._spend_scale):
            self._spend_scale += 1
            if self._spend_scale > 1_000:
                break
        if self._spend_scale > 1:
            again.append("the spent budgets as much again")
        left = budget_end - done
        await self.emit(
            ev.Notice(
                "info",
                f"resumed after {counted(done, 'iteration')}"
                + (f": {' and '.join(again)}" if again else f", {left} left of the budget"),
            )
        )
        return budget_end

    async def _keep(self, status: str = resume.RUNNING, reason: str = "") -> None:
        """Write the session's record (:mod:`~codexloop.core.resume`): after every model
        turn, every engine message, and at the end. A record that cannot be written is said
        once; the session goes on."""
        sandbox, session = self.sandbox, self.session
        if not self.write_trace or sandbox is None or session is None:
            return
        conversation = self.conversation
        kept = conversation.to_data() if conversation else None
        if kept is None and self.resumed is not None:
            kept = self.resumed.conversation
        record = resume.SessionRecord(
            name=self.name,
            repo=str(self.config.repo),
            branch=sandbox.branch,
            base=sandbox.base,
            targets=list(self.config.targets),
            settings=resume.settings_of(self.config),
            status=status,
            reason=reason,
            pid=os.getpid(),
            iterations=self._tested,
            tokens_in=self.turns.tokens_in,
            tokens_out=self.turns.tokens_out,
            seconds=round(time.monotonic() - self._started, 3),
            conversation=kept,
            guard_passed=sorted(self.guard_passed) if self.guard_passed is not None else None,
            guard_classes=list(self.guard_classes) if self.guard_passed is not None else None,
            trace=str(session.trace.path) if session.trace else "",
        )
        try:
            with self.timings.timed("session record"):
                await anyio.to_thread.run_sync(resume.save, record)
        except (OSError, TypeError, ValueError) as exc:
            if not self._record_failed:
                self._record_failed = True
                await self.emit(ev.Notice("warning", f"the session record was not written: {exc}"))

    async def _commit_candidate(
        self, session: Session, iteration: int, verdict: Verdict
    ) -> str | None:
        """Record the tree that was just tested (not the worktree as it is now)."""
        scan = session.runner.candidate
        assert scan is not None
        outcome_word = "green" if verdict.passed else "red"
        message = f"codexloop iteration {iteration}: {outcome_word} ({verdict.summary})"
        return await anyio.to_thread.run_sync(session.sandbox.recorder.commit_scan, scan, message)

    async def _run_tests(self, session: Session, iteration: int) -> Verdict:
        await self._apply_targets(session)
        if iteration == 0 and self._beside is not None:
            # The warm server starts beside the restore and the recording (not in a task group
            # of this call's own: the run's errors, an exam that can never pass, stay unwrapped).
            self._beside.start_soon(session.runner.prepare)
        with self.timings.timed("exam check and restore"):
            changed = await self.exam_sync.restore(session.sandbox, session.exam)
        async with self.test_slots or contextlib.nullcontext():  # a race: a slot of --jobs
            verdict, self._last_run = await session.runner.run(
                iteration,
                session.exam,
                changed,
                targets=self.config.targets,
                test_command=self.test_command,
                display_env=self._display_env(),
            )
        if verdict.passed and iteration > 0 and self.guard_passed is not None:
            verdict = await self._run_guard(session, iteration, verdict)
        if verdict.passed and self.config.gates:
            verdict = await self._run_gates(session, iteration, verdict)
        self.test_outcomes.append(verdict.passed)
        if not verdict.passed:
            await self._set_state("red")
        return verdict

    def _guard_command(self, session: Session) -> str:
        guard = self.config.guard or ""
        return default_command(session.python, ()) if guard == "auto" else guard

    async def _guard_baseline(self, session: Session) -> None:
        """The regression guard on the code as it stands: the tests it reports failing now
        never count against the model, and the files of all its tests become part of the
        exam (weakening one would pass the guard)."""
        verdict, run = await session.runner.run_guard(
            0, self._guard_command(session), display_env=self._display_env()
        )
        if not verdict.reported or verdict.tampered:
            raise ExamError(
                f"the regression guard ({self.config.guard}) gave no test report at the start "
                f"({verdict.summary}): give it a pytest command"
            )
        failing = tuple(c.label for c in verdict.cases if c.outcome in ("failed", "error"))
        self.guard_passed = frozenset(c.label for c in verdict.cases if c.outcome == "passed")
        exam = session.exam
        self.guard_classes = tuple(dict.fromkeys(c.classname for c in verdict.cases))
        await anyio.to_thread.run_sync(exam.guard, list(self.guard_classes))
        await self.emit(
            ev.GuardFinished(0, True, verdict.summary, round(run.duration_s, 3), failing=failing)
        )

    async def _run_guard(self, session: Session, iteration: int, green: Verdict) -> Verdict:
        """The regression guard after a green run of the targets: a test it reports failing
        that passed at the baseline and now fails, is skipped or is gone makes the iteration
        red, and the model reads which."""
        assert self.guard_passed is not None
        verdict, run = await session.runner.run_guard(
            iteration, self._guard_command(session), display_env=self._display_env()
        )
        # Broken: passed at the baseline, and now failed, skipped, or not reported at all.
        now = {c.label: c for c in verdict.cases}
        broken_cases = [
            now.get(label) or Case("", label, "missing", "not run any more")
            for label in sorted(self.guard_passed)
            if label not in now or now[label].outcome != "passed"
        ]
        broken_cases = [
            c if c.outcome != "skipped" else dataclasses.replace(c, message=f"skipped: {c.message}")
            for c in broken_cases
        ]
        problem = verdict.tampered or (None if verdict.reported else "it gave no test report")
        broken = tuple(c.label for c in broken_cases)
        passed = not broken and problem is None
        await self.emit(
            ev.GuardFinished(
                iteration, passed, verdict.summary, round(run.duration_s, 3), broken=broken
            )
        )
        if passed:
            return green
        return Verdict(
            False,
            f"{green.summary}; the regression guard: " + (problem or f"{len(broken)} broken"),
            prompts.guard_red(
                [(c.label, c.message, c.detail) for c in broken_cases],
                problem,
                run.output,
                self._guard_command(session) if self.config.guard != "auto" else "the whole suite",
            ),
            green.cases,
        )

    async def _run_gates(self, session: Session, iteration: int, green: Verdict) -> Verdict:
        """The gates, in order, once the targets are green: each runs on the tested candidate in
        the run tree, as the exam does (same isolation; the command time limit), and passes
        with exit code 0. The first that fails makes the iteration red: the model reads its
        output."""
        for command in self.config.gates:
            run = await session.runner.run_gate(
                command, timeout=self.config.command_timeout, display_env=self._display_env()
            )
            passed = run.exit_code == 0 and not run.timed_out
            await self.emit(
                ev.GateFinished(
                    iteration,
                    command,
                    passed,
                    run.exit_code,
                    round(run.duration_s, 3),
                    run.timed_out,
                )
            )
            if not passed:
                return Verdict(
                    False,
                    f"{green.summary}; gate failed: {command}",
                    prompts.gate_red(command, run.exit_code, run.timed_out, run.output),
                    green.cases,
                )
        return green

    async def _after_red(
        self,
        session: Session,
        iteration: int,
        verdict: Verdict,
        commit: str | None,
        conversation: Conversation,
    ) -> str:
        """What the model hears of a red run; a setback (fewer target tests ran than in the
        best state so far) is undone first (:mod:`~codexloop.core.setbacks`). A model that
        acts through text starts the next iteration afresh: the conversation goes back to its
        first message, and the red message shows the files its changes touched as they are."""
        sandbox = session.sandbox
        tested: str = commit if commit else await anyio.to_thread.run_sync(sandbox.head)
        best = (
            self.setbacks.judge(
                iteration, verdict, tested, self.exam_sync.changes, self.config.targets
            )
            if self.setbacks
            else None
        )
        answers = answers_of(conversation)
        if best is None or best.commit == tested:
            if not answers.by_text:
                return prompts.red(verdict.digest, self.code_paths)
            conversation.forget_iterations()
            shown = await self._now(session, answers.touched)
            return prompts.red(verdict.digest, self.code_paths, shown)
        assert self.setbacks is not None
        protected = session.exam.protected_files()
        undone = await anyio.to_thread.run_sync(
            setbacks.undo, self.config.repo, sandbox.worktree, best.commit, tested, protected
        )
        paths = list(undone)
        cause = setbacks.cause(verdict.digest)
        self.setbacks.undoings.remember(setbacks.Undone(iteration, cause), undone)
        when = (
            "they were at the start"
            if best.iteration == 0
            else (f"they were after iteration {best.iteration}")
        )
        ran, before = setbacks.progress(self.config.targets, verdict)[1], best.progress[1]
        caused = f"; {cause}" if cause else ""
        await self.emit(
            ev.Notice(
                "warning",
                f"iteration {iteration} stopped the target tests from running ({ran} ran, "
                f"{before} before{caused}): {', '.join(paths) or 'nothing'} put back as {when}",
            )
        )
        if paths:
            await self.emit(ev.SandboxChanged(tuple(paths)))
        now: list[tuple[str, str]] = []
        if answers.by_text:  # afresh, as after a red run, shown the files put back
            conversation.forget_iterations()
            now = await self._now(session, [*answers.touched, *paths])
        return prompts.setback(
            ran=ran,
            before=before,
            paths=paths,
            when=when,
            cause=cause,
            module=setbacks.missing_module(cause),
            digest=verdict.digest,
            now=now,
        )

    @staticmethod
    async def _now(session: Session, paths: Iterable[str]) -> list[tuple[str, str]]:
        """The files of ``paths`` as they are now (protected and unreadable ones left out)."""
        tools = session.tools
        touched = list(dict.fromkeys(paths))
        return await anyio.to_thread.run_sync(
            lambda: [
                (path, text)
                for path in touched
                if not tools.protected(path) and (text := tools.read_text(path)) is not None
            ]
        )

    async def _baseline(self, session: Session) -> Verdict:
        """The exam on the code as it stands. The attempts of a race share one baseline run:
        same snapshot, same exam, same verdict; the others wait for it and show it as theirs."""
        shared = self.shared_baseline
        if shared is None:
            return await self._run_tests(session, 0)
        async with shared.lock:
            if shared.error is not None:
                raise shared.error
            if shared.verdict is None:
                try:
                    verdict = await self._run_tests(session, 0)
                except ExamError as exc:
                    shared.error = exc
                    raise
                shared.verdict, shared.learned = verdict, session.runner.learned()
                shared.exit_code = self._last_run.exit_code if self._last_run else None
                shared.attempt = self.attempt
                return verdict
        verdict = shared.verdict
        session.runner.adopt(shared.learned)
        self.test_outcomes.append(verdict.passed)
        await self.emit(ev.TestStarted(0, self.test_command))
        await self.emit(ev.TestOutput(f"(the baseline run of attempt {shared.attempt})\n"))
        await self.emit(ev.TestFinished(0, verdict.passed, shared.exit_code, 0.0, verdict.summary))
        if not verdict.passed:
            await self._set_state("red")
        return verdict

    async def _apply_targets(self, session: Session) -> None:
        """New targets from the developer, at a safe point: same protection, new test command."""
        change = self.controls.take_targets()
        if change is None:
            return
        self.config = dataclasses.replace(
            self.config, targets=change.targets, target_files=change.files
        )
        session.exam.set_targets(change.files)
        if self.config.test_cmd is None:
            self.test_command = default_command(session.python, change.targets)
        await self.emit(ev.TargetsChanged(change.targets, self.test_command))
        await self.exam_sync.check(session.exam)

    # -- the developer's answers ---------------------------------------------------

    async def _await_review(self, iteration: int, commit: str | None) -> bool:
        """Green: wait for the developer. True when rejected hunks send the loop on."""
        controls = self.controls
        await self._set_state("green")
        await self.emit(ev.ReviewReady(iteration, commit))
        await controls.wait_for(lambda: bool(controls.feedback) or controls.finish)
        return bool(controls.feedback)

    async def _await_more(self, iteration: int) -> int:
        """Red with the budget spent: wait for the developer. More iterations (a count, or a
        fresh budget when rejected hunks came back), or 0 to finish."""
        controls = self.controls
        await self._set_state("red")
        await self.emit(ev.BudgetSpent(iteration))
        await controls.wait_for(lambda: bool(controls.more or controls.feedback or controls.finish))
        if controls.finish:
            return 0
        return controls.take_more() or self.config.max_iterations

    async def _apply_feedback(self, session: Session, conversation: Conversation) -> bool:
        """Revert rejected hunks in the sandbox and tell the model why; True if there were."""
        rejections = self.controls.take_feedback()
        if not rejections:
            return False
        sandbox = session.sandbox
        failed = await anyio.to_thread.run_sync(
            revert_rejected, sandbox.repo, sandbox.base, sandbox.worktree, rejections
        )
        await self.emit(
            ev.HunksReverted(
                tuple(dict.fromkeys(r.path for r in rejections if r.path not in failed)),
                tuple(failed),
            )
        )
        await self.emit(ev.SandboxChanged(tuple(r.path for r in rejections)))
        for rejection in rejections:
            text = prompts.rejection(
                rejection.path,
                rejection.comment,
                rejection.hunk.lines if rejection.hunk is not None else None,
                reverted=rejection.path not in failed,
            )
            conversation.say(text)
            await self.emit(ev.UserMessage(text))
        return True

    # -- the model's work ----------------------------------------------------------

    async def _work(self, session: Session, iteration: int, conversation: Conversation) -> None:
        """Model turns until the model is done: an answer with nothing more to run (no tool
        call; or edits written as text, applied), the tool budget spent, or an answer that
        changes nothing given three times (the rules: :mod:`~codexloop.core.textcalls`)."""
        work = Work(
            session.tools,
            conversation,
            edit_format=self.config.edit_format,
            limit=self.config.max_tool_calls,
            emit=self.emit,
            set_state=self._set_state,
            timings=self.timings,
            runs_the_exam=lambda command: runs_the_exam(
                command, self.config.targets, self.config.test_cmd
            ),
            code_paths=self.code_paths,
        )
        while True:
            await self.checkpoint()
            await self._apply_targets(session)
            await self.exam_sync.check(session.exam)
            if (note := self.exam_sync.take_note()) is not None:
                conversation.say(note)
            for text in self.controls.take_steering():
                conversation.say(prompts.STEERING.format(text=text))
                await self.emit(ev.UserMessage(text))
            if await self._apply_feedback(session, conversation):
                work.changed = True  # the reviewer's rejections changed the sandbox
            await self._set_state("thinking")
            await self.emit(ev.ModelTurnStarted(iteration))
            turn = await self.turns.take(conversation, wider=work.answers.repeating)
            conversation.answer(turn)
            if turn.finish_reason == CUT_FINISH:
                conversation.say(prompts.ANSWER_CUT.format(limit=MAX_TURN_CHARS))
            elif turn.finish_reason == REPEAT_FINISH:
                conversation.say(prompts.ANSWER_REPEATED)
            done = await work.act(turn)
            await self._keep()
            if done:
                return

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


def event_channel(
    size: float = math.inf,
) -> tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]]:
    """A memory object stream for events or commands."""
    send, receive = anyio.create_memory_object_stream[Any](size)
    return send, receive
