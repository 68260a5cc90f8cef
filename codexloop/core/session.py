"""A session's set-up: the sandbox, the exam, isolation, where the exam runs, the tools and
the trace — everything the loop needs before its first iteration, and the events that say
how the session was set up (``loop_started`` and its notices)."""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import anyio

from codexloop.core import ahead, gitops, isolation, limits, plugins, warm
from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.exam import Exam, command_files
from codexloop.core.exam_run import ExamRunner
from codexloop.core.isolation import Isolation
from codexloop.core.process import RunResult
from codexloop.core.sandbox import Sandbox, find_python
from codexloop.core.testrun import default_command
from codexloop.core.timings import Timings
from codexloop.core.tools import Tools
from codexloop.core.trace import TraceWriter, traces_dir
from codexloop.core.warm import WarmRunner


@dataclass
class Session:
    sandbox: Sandbox
    exam: Exam
    python: str
    test_command: str
    tools: Tools
    runner: ExamRunner
    trace: TraceWriter | None
    isolation: Isolation


def ask_ahead(config: Config) -> None:
    """Start the questions :func:`open_session` asks the project's interpreter (its path,
    what it has installed, its package folders) and the system (can a pids cgroup be made),
    beside the snapshot and the worktree."""
    python = find_python(config.repo)
    ahead.start(limits.pids_cgroup, config.max_processes)
    ahead.start(isolation.sys_path, python)
    ahead.start(plugins.installed, python)
    if _warm_runs(config):
        ahead.start(warm.site_packages, python)


def _warm_runs(config: Config) -> bool:
    """Test runs go to a warm server: the default pytest command, warm runs not turned off."""
    return config.warm and config.test_cmd is None


async def create_sandbox(config: Config, name: str, base: str | None) -> Sandbox:
    """The snapshot and the worktree on the preview branch (the part that can fail first)."""
    return await anyio.to_thread.run_sync(
        partial(Sandbox.create, config.repo, name, base, continue_from=config.continue_from)
    )


async def open_session(
    config: Config,
    sandbox: Sandbox,
    *,
    name: str,
    from_checkout: bool,
    write_trace: bool,
    trace_name: str | None = None,
    timings: Timings,
    emit: ev.Emit,
    set_state: Callable[[ev.State], Awaitable[None]],
    run_model_command: Callable[[str], Awaitable[RunResult]],
) -> Session:
    """Set the session up in ``sandbox`` (:func:`announce` says how)."""
    exam = Exam(
        config.repo,
        sandbox.base,
        config.target_files,
        from_checkout=from_checkout,
        command_files=tuple(
            dict.fromkeys(
                rel
                for command in (config.test_cmd, *config.gates)
                for rel in command_files(config.repo, command)
            )
        ),
        gated=bool(config.gates),
    )
    python = find_python(config.repo)
    test_command = config.test_cmd or default_command(python, config.targets)
    with timings.timed("isolation probe"):
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
    place = await anyio.to_thread.run_sync(sandbox.exam_place)
    plugin_args, plugin_modules = await _plugins(exam, test_command)
    warm_runner = None
    if _warm_runs(config):
        warm_runner = WarmRunner(place, python, preload=plugin_modules)  # type: ignore[arg-type]
    runner = ExamRunner(
        sandbox,
        place,
        emit=emit,
        set_state=set_state,
        timings=timings,
        plugin_args=plugin_args,
        custom_command=config.test_cmd is not None,
        test_timeout=config.test_timeout,
        warm=warm_runner,
    )
    tools = Tools(
        sandbox.worktree,
        exam,
        run_model_command,
        network_off=isolation.active and not config.allow_network,
        max_memory_gib=config.max_memory,
    )
    trace = _open_trace(config, sandbox, trace_name or name) if write_trace else None
    return Session(sandbox, exam, python, test_command, tools, runner, trace, isolation)


async def announce(
    session: Session, config: Config, api: str, emit: ev.Emit, *, resumed: int | None = None
) -> None:
    """``loop_started``, and notices of what the session could not have (``resumed``: the
    iterations a resumed session had done)."""
    sandbox, isolation, trace = session.sandbox, session.isolation, session.trace
    await emit(
        ev.LoopStarted(
            branch=sandbox.branch,
            worktree=str(sandbox.worktree),
            base=sandbox.base,
            targets=config.targets,
            test_command=session.test_command,
            model=config.model,
            max_iterations=config.max_iterations,
            isolation=isolation.level,
            isolation_reason=isolation.reason,
            max_processes=sandbox.limit.maximum,
            process_limit=sandbox.limit.reason,
            max_memory_gib=config.max_memory or None,
            continued_from=config.continue_from or "",
            resumed=resumed is not None,
            iterations_done=resumed or 0,
            shared=tuple(t.relative_to(sandbox.worktree).as_posix() for _s, t in sandbox.shared),
            network=config.allow_network,
            api=api,
            trace=str(trace.path) if trace else "",
            bwrap=isolation.binary.describe() if isolation.binary else "",
            tmp_size_mib=(
                config.tmp_size or None
                if isolation.binary is not None and isolation.binary.size
                else None
            ),
        )
    )
    left_out = left_out_notice(sandbox.left_out)
    if left_out is not None:
        await emit(left_out)
    if not isolation.active:
        await emit(ev.Notice("warning", f"no process isolation: {isolation.reason}"))
    elif sandbox.limit.maximum is None:
        await emit(ev.Notice("info", sandbox.limit.reason))


def left_out_notice(left_out: Sequence[tuple[str, int]]) -> ev.Notice | None:
    """What the snapshot left out (big untracked files), said once per session."""
    if not left_out:
        return None
    listed = ", ".join(f"{rel} ({size / 2**20:.0f} MB)" for rel, size in left_out)
    return ev.Notice(
        "warning",
        f"left out of the sandbox (untracked and over {gitops.MAX_UNTRACKED_BYTES >> 20} MB; "
        f"add them to .gitignore or commit them): {listed}",
    )


async def _plugins(exam: Exam, test_command: str) -> tuple[str, tuple[str, ...]]:
    """``-p`` for each pytest plugin installed now (plugins load from what was installed at
    the start, never from what the model adds later), and the plugins' modules (which the
    warm server imports once, at its start)."""
    installed = await anyio.to_thread.run_sync(exam.installed)
    words = shlex.split(test_command) if test_command else []
    named = plugins.pytest_plugin_args(installed.plugins, disabled=plugins.disabled_plugins(words))
    # Named one by one, a plugin another one imported first cannot be assertion-rewritten;
    # pytest says so on every run, which is noise here (autoloading would not rewrite it either).
    if named:
        named += ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    chosen = set(named[1::2])
    modules = tuple(
        dict.fromkeys(p.value.split(":")[0] for p in installed.plugins if p.name in chosen)
    )
    return shlex.join(named), modules


def _open_trace(config: Config, sandbox: Sandbox, name: str) -> TraceWriter:
    return TraceWriter(
        traces_dir() / f"{name}.jsonl",
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
