"""One run of the exam, from the recorded candidate to the verdict.

The candidate is recorded before it is tested (:mod:`codexloop.core.record`) and the test
command runs on exactly that tree (the run tree, :mod:`codexloop.core.runtree`), never in the
model's worktree, with a fresh temp folder, home and report path, the plugins installed at
the start and the engine's canary (:class:`~codexloop.core.testrun.Canary`). The verdict is
the engine's (:func:`~codexloop.core.testrun.judge`); the events say what happened.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from functools import partial
from pathlib import Path

import anyio

from codexloop.core import events as ev
from codexloop.core import plugins, record, safefs
from codexloop.core.exam import Exam, ExamError
from codexloop.core.process import OutputCallback, RunResult
from codexloop.core.sandbox import ExamPlace, Sandbox, source_roots
from codexloop.core.testrun import Canary, Verdict, default_args, judge, junit_env, uncollected
from codexloop.core.timings import Timings
from codexloop.core.warm import WarmError, WarmRunner

_JUNIT_NOTE = re.compile(r"-* ?generated xml file: \S+ ?-*\n?")


class ExamRunner:
    """Runs the exam for one session; knows what earlier runs taught (a report was written,
    the canary loads) and keeps the candidate the last run tested."""

    def __init__(
        self,
        sandbox: Sandbox,
        place: ExamPlace,
        *,
        emit: ev.Emit,
        set_state: ev.SetState,
        timings: Timings,
        plugin_args: str,
        custom_command: bool,
        test_timeout: float,
        warm: WarmRunner | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.place = place
        self.warm = warm
        self._emit = emit
        self._set_state = set_state
        self._timings = timings
        self._plugin_args = plugin_args  # -p for each plugin installed at the start
        self._custom_command = custom_command
        self._test_timeout = test_timeout
        self.candidate: record.Scan | None = None  # what the last run tested
        self._left_out_seen: set[tuple[str, str]] = set()
        self._canary_on = True  # the engine's own tests in every run (see testrun.Canary)
        self._reported = False  # a run wrote a JUnit report: every later run must too

    def learned(self) -> tuple[bool, bool]:
        """What the baseline taught this runner: canary on, reports written."""
        return self._canary_on, self._reported

    def adopt(self, learned: tuple[bool, bool]) -> None:
        """What another runner's baseline on the same snapshot taught it (a race)."""
        self._canary_on, self._reported = learned

    async def run(
        self,
        iteration: int,
        exam: Exam,
        changed: list[str],
        *,
        targets: tuple[str, ...],
        test_command: str,
        display_env: dict[str, str],
    ) -> tuple[Verdict, RunResult]:
        """Record the candidate, run the test command on it, judge. ``changed``: the
        sandbox's changed paths (from the exam's restore)."""
        sandbox, place = self.sandbox, self.place
        canary = Canary.new() if self._canary_on else None
        with self._timings.timed("record"):
            shadowing, scan, run_tmp = await anyio.to_thread.run_sync(
                _record_candidate, sandbox, place, exam, changed, canary
            )
            if shadowing:
                await self._emit(
                    ev.Notice(
                        "warning",
                        "removed before the test run: "
                        + "; ".join(f"{rel} ({why})" for rel, why in shadowing),
                    )
                )
            await self.note_left_out(scan)
            self.candidate = scan
        await self._set_state("testing")
        await self._emit(ev.TestStarted(iteration, test_command))
        junit = run_tmp / "report" / f"junit-{secrets.token_hex(8)}.xml"
        run_env = {"TMPDIR": str(run_tmp), **junit_env(junit), **display_env}
        run_env["PYTEST_ADDOPTS"] += f" {self._plugin_args}"
        run_env.update(plugins.PLUGIN_ENV)
        if sandbox.isolation.active:
            run_env["HOME"] = str(run_tmp / "home")

        async def on_output(text: str) -> None:
            text = _JUNIT_NOTE.sub("", text)  # our own --junitxml is nobody's business
            if text:
                await self._emit(ev.TestOutput(text))

        execute = partial(self._execute, test_command, targets, run_env, on_output, changed)
        run = await execute(canary)
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
            await self._emit(
                ev.Notice(
                    "warning",
                    "canary tests are off for this session: the test command's pytest "
                    "cannot import the engine's canary plugin (does it set PYTHONPATH?)",
                )
            )
            run = await execute(None)
        with self._timings.timed("verdict"):
            strict = not self._custom_command or self._reported
            verdict = await anyio.to_thread.run_sync(
                partial(judge, targets, run, junit, strict=strict, canary=canary)
            )
            never = uncollected(targets, verdict) if iteration == 0 else None
            if never is not None:  # before any model call: no budget spent on it
                raise ExamError(never)
            if iteration == 0 and canary is not None and verdict.tampered and not verdict.cases:
                # Before any model turn: the project's pytest setup does not report the
                # canary (a plugin that deselects, collect-only): judge without it.
                self._canary_on = False
                await self._emit(
                    ev.Notice("info", f"canary tests are off for this session: {verdict.tampered}")
                )
                verdict = await anyio.to_thread.run_sync(
                    partial(judge, targets, run, junit, strict=strict)
                )
        self._reported = self._reported or verdict.reported
        if verdict.tampered:
            await self._emit(ev.TamperDetected(iteration, verdict.tampered))
        await self._emit(
            ev.TestFinished(
                iteration,
                verdict.passed,
                run.exit_code,
                round(run.duration_s, 3),
                verdict.summary,
                run.timed_out,
            )
        )
        return verdict, run

    async def reset_tree(self) -> None:
        """The run tree back to exactly the candidate the exam tested: whatever the exam's
        run (the model's code under test) wrote there is gone before a guard or gate reads
        it."""
        if self.candidate is not None:
            entries = self.candidate.entries
            await anyio.to_thread.run_sync(self.place.tree.reconcile, entries)

    async def run_gate(
        self, command: str, *, timeout: float, display_env: dict[str, str]
    ) -> RunResult:
        """A gate (``--gate``) on the candidate the exam tested, in the run tree like the exam:
        only recorded files (nothing gitignored, no tool caches), a fresh temp folder and home
        (no user configuration a model command wrote), the tree reset first."""
        await self.reset_tree()
        run_tmp = await anyio.to_thread.run_sync(_fresh_run_folder, self.place.tmp)
        run_env = {"TMPDIR": str(run_tmp), **display_env}
        if self.sandbox.isolation.active:
            run_env["HOME"] = str(run_tmp / "home")

        async def on_output(text: str) -> None:
            await self._emit(ev.TestOutput(text))

        await self._emit(ev.TestOutput(f"$ {command}\n"))
        with self._timings.timed("gates"):
            return await self.place.run(
                command, timeout=timeout, on_output=on_output, extra_env=run_env
            )

    async def run_guard(
        self, iteration: int, command: str, *, display_env: dict[str, str]
    ) -> tuple[Verdict, RunResult]:
        """The regression guard (``--guard``) on the tree the exam just ran on: the same run
        tree (reset to the candidate first), report and canary, judged with no targets
        (every case it reports counts)."""
        await self.reset_tree()
        run_tmp = await anyio.to_thread.run_sync(_fresh_run_folder, self.place.tmp)
        junit = run_tmp / "report" / f"junit-{secrets.token_hex(8)}.xml"
        run_env = {"TMPDIR": str(run_tmp), **junit_env(junit), **display_env}
        run_env["PYTEST_ADDOPTS"] += f" {self._plugin_args}"
        run_env.update(plugins.PLUGIN_ENV)
        if self.sandbox.isolation.active:
            run_env["HOME"] = str(run_tmp / "home")
        canary = Canary.new() if self._canary_on else None
        if canary is not None:
            await anyio.to_thread.run_sync(
                (self.place.worktree / canary.filename).write_text, canary.source()
            )
            run_env["PYTEST_ADDOPTS"] += f" {canary.addopts()}"
        await self._emit(ev.TestOutput(f"$ {command}   (the regression guard)\n"))

        async def on_output(text: str) -> None:
            text = _JUNIT_NOTE.sub("", text)
            if text:
                await self._emit(ev.TestOutput(text))

        with self._timings.timed("guard"):
            run = await self.place.run(
                command, timeout=self._test_timeout, on_output=on_output, extra_env=run_env
            )
            verdict = await anyio.to_thread.run_sync(
                partial(judge, (), run, junit, strict=True, canary=canary)
            )
        if verdict.tampered:
            await self._emit(ev.TamperDetected(iteration, verdict.tampered))
        return verdict, run

    async def _execute(
        self,
        test_command: str,
        targets: tuple[str, ...],
        run_env: dict[str, str],
        on_output: OutputCallback,
        changed: list[str],
        canary: Canary | None,
    ) -> RunResult:
        """The test command once, in the run tree: warm when a server is up."""
        env = dict(run_env)
        if canary is not None:
            env["PYTEST_ADDOPTS"] += f" {canary.addopts()}"
        if self.warm is not None:
            try:
                return await self.warm.run(
                    default_args(targets),
                    extra_env=env,
                    timeout=self._test_timeout,
                    on_output=on_output,
                    changed=changed,
                )
            except WarmError as exc:
                self.warm = None
                await self._emit(
                    ev.Notice("warning", f"warm test runs are off for this session: {exc}")
                )
        return await self.place.run(
            test_command, timeout=self._test_timeout, on_output=on_output, extra_env=env
        )

    async def prepare(self) -> None:
        """The warm server started ahead of the first run (see :meth:`WarmRunner.prepare`).
        Not when the project has source roots besides its root (a ``src`` layout): the run
        tree's go on the server's path only once the run tree holds them (its first
        recording), so that run starts the server."""
        worktree = self.sandbox.worktree
        if self.warm is not None and source_roots(worktree) == [worktree]:
            await self.warm.prepare()

    async def note_left_out(self, scan: record.Scan) -> None:
        """Say once which paths the recording leaves out, and why."""
        new = [(rel, why) for rel, why in scan.left_out if (rel, why) not in self._left_out_seen]
        if not new:
            return
        self._left_out_seen.update(new)
        listed = "; ".join(f"{rel}: {why}" for rel, why in new[:20])
        more = f" (and {len(new) - 20} more)" if len(new) > 20 else ""
        await self._emit(ev.Notice("warning", f"left out of the recorded change: {listed}{more}"))

    async def close(self) -> None:
        if self.warm is not None:
            await self.warm.stop()


def _record_candidate(
    sandbox: Sandbox, place: ExamPlace, exam: Exam, changed: list[str], canary: Canary | None
) -> tuple[list[tuple[str, str]], record.Scan, Path]:
    """Blocking, one trip to a worker thread: what a command made that shadows installed
    modules (and plugin metadata) removed, the worktree recorded without it, the run tree
    brought to the recording with the canary's plugin beside it (the run tree's root is on
    PYTHONPATH: ``-p`` finds it), and a fresh folder for the run, its report folder made."""
    shadowing = exam.shadowing_paths(changed)
    if shadowing:
        _remove_all(sandbox, [rel for rel, _why in shadowing])
    scan = sandbox.scan([rel for rel, _why in shadowing])
    place.tree.reconcile(scan.entries)
    if canary is not None:
        (place.worktree / canary.filename).write_text(canary.source())
    folder = _fresh_run_folder(place.tmp)
    (folder / "report").mkdir()
    return shadowing, scan, folder


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
