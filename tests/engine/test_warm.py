"""Warm runs agree with cold runs: same verdicts, same messages, nothing leaks between runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
from functools import partial
from pathlib import Path

import anyio
import pytest

from codexloop.core import plugins
from codexloop.core.exam import Exam
from codexloop.core.sandbox import Sandbox, find_python
from codexloop.core.testrun import default_args, default_command, judge, junit_env
from codexloop.core.warm import SERVER_SCRIPT, WarmRunner

pytestmark = pytest.mark.anyio

FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "tests/test_calc.py": (
        "import json\n\nfrom calc import add\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5, 'addition is broken'\n\n\n"
        "def test_global_state_is_fresh():\n"
        "    # json is preloaded in the warm server; a mutation must not survive the run\n"
        "    assert not hasattr(json, 'poked')\n    json.poked = True\n"
    ),
}
TARGETS = ("tests/test_calc.py",)


@pytest.fixture
async def runner(make_repo):
    repo = make_repo(FILES)
    box = Sandbox.create(repo, "warm")
    python = find_python(repo)
    exam = Exam(repo, box.base, TARGETS)
    box.isolate([python], exam.protected_files(), network=False)
    warm = WarmRunner(box, python)
    yield warm
    await warm.stop()
    box.remove(delete_branch=True)


async def both(warm: WarmRunner, name: str):
    box = warm.sandbox
    junit_cold, junit_warm = box.tmp / f"{name}-cold.xml", box.tmp / f"{name}-warm.xml"
    cold = await box.run(
        default_command(warm.python, TARGETS), timeout=60, extra_env=junit_env(junit_cold)
    )
    hot = await warm.run(default_args(TARGETS), extra_env=junit_env(junit_warm), timeout=60)
    return judge(TARGETS, cold, junit_cold), judge(TARGETS, hot, junit_warm), hot


def messages(verdict) -> list[tuple[str, str, str]]:
    return [(c.label, c.outcome, c.message) for c in verdict.cases]


async def test_warm_and_cold_agree_red_then_green(runner: WarmRunner) -> None:
    cold, warm, run = await both(runner, "red")
    assert not cold.passed and not warm.passed
    assert messages(cold) == messages(warm)
    assert "addition is broken" in warm.digest
    assert "test_add" in run.output  # the output streamed back
    (runner.sandbox.worktree / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    cold, warm, _ = await both(runner, "green")  # the project module is imported fresh
    assert cold.passed and warm.passed
    assert messages(cold) == messages(warm)
    assert runner.starts == 1


async def test_no_state_leaks_between_runs_and_new_modules_are_found(runner: WarmRunner) -> None:
    box = runner.sandbox
    (box.worktree / "calc.py").write_text(
        "from helpers import plus\n\n\ndef add(a, b):\n    return plus(a, b)\n"
    )
    (box.worktree / "helpers.py").write_text(
        "def plus(a, b):\n    return a + b\n"
    )  # created between runs
    for round_ in range(3):
        junit = box.tmp / f"leak-{round_}.xml"
        run = await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60)
        verdict = judge(TARGETS, run, junit)
        assert verdict.passed, verdict.digest
    assert runner.starts == 1


@pytest.mark.parametrize("at_start", [False, True], ids=["learned", "at-start"])
async def test_plugins_and_libraries_are_imported_once_by_the_server_not_by_every_run(
    make_repo, no_bwrap, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_start: bool
) -> None:
    """A pytest plugin and a library from outside the project, used by the first run, come
    preloaded from the server in the next ones (the module's importer is the server, not
    the run), with no warning that the plugin could not be assertion-rewritten. Named at the
    server's start (the session's plugins), the plugin is there for the first run already;
    a module of the same name in the project is never preloaded."""
    outside = tmp_path / "site"
    outside.mkdir()
    (outside / "ext_plugin.py").write_text("import os\n\nPID = os.getpid()\n")
    (outside / "ext_lib.py").write_text("import os\n\nPID = os.getpid()\n")
    dist = outside / "ext_plugin-1.0.dist-info"  # installed as a pytest plugin (entry point)
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ext-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\next = ext_plugin\n")
    where = (
        "import os\nimport sys\n\nimport ext_lib\n\n\n"
        "def test_preloaded():\n"
        "    importers = {n: sys.modules[n].PID for n in ('ext_plugin', 'ext_lib')}\n"
        "    assert os.getpid() not in importers.values(), importers\n\n\n"
        "def test_plugin_preloaded():\n"
        "    assert sys.modules['ext_plugin'].PID != os.getpid()\n\n\n"
        "def test_project_module_fresh():\n"
        "    import mine\n\n    assert mine.PID == os.getpid()\n"
    )
    repo = make_repo(
        {
            "calc.py": "X = 1\n",
            "mine.py": "import os\n\nPID = os.getpid()\n",
            "tests/test_where.py": where,
        }
    )
    box = Sandbox.create(repo, "preload")
    python = find_python(repo)
    box.isolate([python], [], network=False)
    environment = box.environment

    def with_site(extra: dict[str, str] | None = None) -> dict[str, str]:
        env = environment(extra)  # as if installed: on the path of the server and its runs
        return {**env, "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{outside}"}

    monkeypatch.setattr(box, "environment", with_site)
    warm = WarmRunner(box, python, preload=("ext_plugin", "mine") if at_start else ())
    targets = ("tests/test_where.py",)
    try:
        verdicts, outputs = [], []
        first_cases: list[tuple[str, str]] = []
        for round_ in range(3):
            junit = box.tmp / f"preload-{round_}.xml"
            env = {**junit_env(junit), **plugins.PLUGIN_ENV}  # as the engine runs: named, -p
            env["PYTEST_ADDOPTS"] += " -p ext_plugin -W ignore::pytest.PytestAssertRewriteWarning"
            run = await warm.run(default_args(targets), extra_env=env, timeout=60)
            verdict = judge(targets, run, junit)
            verdicts.append(verdict.passed)
            outputs.append(run.output)
            first_cases = first_cases or [(c.name, c.outcome) for c in verdict.cases]
        # The first run imports both itself; the server then preloads them for the others.
        assert verdicts == [False, True, True], outputs
        plugin_first = "passed" if at_start else "failed"
        assert first_cases == [
            ("test_preloaded", "failed"),
            ("test_plugin_preloaded", plugin_first),
            ("test_project_module_fresh", "passed"),
        ]
        assert not any("rewritten" in out for out in outputs), outputs
        assert warm.starts == 1
    finally:
        await warm.stop()
        box.remove(delete_branch=True)


async def test_a_conftest_change_restarts_the_server(runner: WarmRunner) -> None:
    box = runner.sandbox
    junit = box.tmp / "a.xml"
    await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60)
    (box.worktree / "tests" / "conftest.py").write_text("import pytest\n")
    await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60)
    assert runner.starts == 2
    await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60)
    assert runner.starts == 2


async def test_changed_paths_spare_the_walk_and_still_see_a_new_conftest(
    runner: WarmRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = runner.sandbox
    junit = box.tmp / "c.xml"
    await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60, changed=[])
    walks = 0
    original = runner._config_files

    def counted() -> list[str]:
        nonlocal walks
        walks += 1
        return original()

    monkeypatch.setattr(runner, "_config_files", counted)
    (box.worktree / "tests" / "conftest.py").write_text("import pytest\n")
    changed = ["tests/conftest.py"]
    await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60, changed=changed)
    assert runner.starts == 2  # the new conftest.py restarted the server
    await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60, changed=changed)
    assert runner.starts == 2
    assert walks == 0  # the tree was walked once, at the first run only


async def test_a_hanging_warm_run_is_killed_at_its_timeout(runner: WarmRunner) -> None:
    box = runner.sandbox
    (box.worktree / "calc.py").write_text("import time\n\n\ndef add(a, b):\n    time.sleep(300)\n")
    junit = box.tmp / "hang.xml"
    run = await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=1)
    assert run.timed_out and "time limit" in run.output
    # A fresh server serves the next run (the run may have stopped the old one: see
    # test_warm_reach).
    (box.worktree / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    run = await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60)
    assert judge(TARGETS, run, junit).passed
    assert runner.starts == 2


async def test_closing_the_run_connection_kills_the_run(runner: WarmRunner) -> None:
    """The engine's end of the run connection is the run's life: once the engine lets go
    (a timeout, a cancelled loop), the run's processes are killed, not left running."""
    box = runner.sandbox
    lock, up = box.worktree / "held.lock", box.worktree / "held.up"
    (box.worktree / "calc.py").write_text(
        "import fcntl, time\n"
        f"_held = open({str(lock)!r}, 'w')\n"
        "fcntl.flock(_held, fcntl.LOCK_EX)\n"
        f"open({str(up)!r}, 'w').close()\n"
        "time.sleep(300)\n"
    )
    junit = box.tmp / "held.xml"
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            partial(runner.run, default_args(TARGETS), extra_env=junit_env(junit), timeout=300)
        )
        with anyio.fail_after(60):
            while not up.exists():  # the run holds the lock
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()  # the engine lets go of the run connection
    fd = os.open(lock, os.O_RDWR)
    try:
        with anyio.fail_after(20):  # the lock is free once the run's process is gone
            await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX, abandon_on_cancel=True)
    finally:
        os.close(fd)


def test_the_server_script_imports_nothing_of_codexloop() -> None:
    source = (Path(__file__).parents[2] / "codexloop" / "core" / "warm_server.py").read_text()
    assert "codexloop" not in source.split('"""', 2)[2]


async def test_a_symlink_planted_at_the_server_script_is_replaced_not_followed(
    runner: WarmRunner, tmp_path: Path
) -> None:
    box = runner.sandbox
    victim = tmp_path / "outside.txt"
    victim.write_text("the developer's file\n")
    (box.tmp / "codexloop_warm_server.py").symlink_to(victim)
    junit = box.tmp / "link.xml"
    run = await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60)
    assert "test_add" in run.output  # the server started and ran
    assert victim.read_text() == "the developer's file\n"
    script = box.tmp / "codexloop_warm_server.py"
    assert not script.is_symlink() and script.read_bytes() == SERVER_SCRIPT.read_bytes()


async def test_fifos_named_like_config_files_never_hang_the_fingerprint(
    runner: WarmRunner, tmp_path: Path
) -> None:
    box = runner.sandbox
    fifo = tmp_path / "outside-fifo"
    os.mkfifo(fifo)
    (box.worktree / "sub").mkdir()
    os.mkfifo(box.worktree / "sub" / "conftest.py")
    (box.worktree / "other").mkdir()
    (box.worktree / "other" / "pytest.ini").symlink_to(fifo)
    fifos = [box.worktree / "sub" / "conftest.py", fifo]
    try:
        junit = box.tmp / "fifo.xml"
        with anyio.fail_after(30):
            run = await runner.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=60)
            assert "test_add" in run.output
            changed = ["sub/conftest.py", "other/pytest.ini"]
            await runner.run(
                default_args(TARGETS), extra_env=junit_env(junit), timeout=60, changed=changed
            )
    finally:  # a reader stuck on a FIFO (the bug) is let go, so the suite does not hang
        for path in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert runner.starts == 1


@pytest.mark.anyio
async def test_warm_runs_work_however_deep_the_session_folder(
    make_repo, scripted_openai, tmp_path, monkeypatch
) -> None:
    """A socket path is limited to ~108 bytes; a long home or cache path must not turn warm
    runs off."""
    from loophelpers import KATA, edit, make_config, of_type, run_loop
    from scripted_openai import Reply

    from codexloop.core import events as ev

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    monkeypatch.setenv("XDG_CACHE_HOME", str(deep))
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="ok"))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, warm=True))

    assert result.status == "passed"
    notices = [n.message for n in of_type(events, ev.Notice)]
    assert not [n for n in notices if "warm test runs are off" in n], notices
