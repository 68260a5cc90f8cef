"""Isolation verdicts remembered between sessions of one machine: a second sandbox laid out
like the first starts no bubblewrap to learn what it already knows; anything that could
change the answer asks again, and a failure is never remembered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from loophelpers import KATA, make_config, of_type, run_loop
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core import isolation
from codexloop.core import sandbox as sandbox_module
from codexloop.core.exam import Exam
from codexloop.core.sandbox import Sandbox, find_python

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (CI installs it)",
)


@pytest.fixture
def bwrap_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every bubblewrap process the isolation module starts."""
    started: list[list[str]] = []
    real = subprocess.run

    def counting(argv, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "bwrap" in Path(str(argv[0])).name:
            started.append([str(a) for a in argv])
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(isolation.subprocess, "run", counting)
    isolation._inspect_bwrap.cache_clear()  # the process's own memory of a bwrap
    return started


def _refusing_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bwrap to use: one that says what it supports but cannot set up its namespaces."""
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "bubblewrap 0.11.0"; exit 0; fi\n'
        'if [ "$1" = --help ]; then echo "--cap-drop --size"; exit 0; fi\n'
        'echo "bwrap: No permissions to create new namespace" >&2; exit 1\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv(isolation.BWRAP_ENV, str(fake))


def _isolate(repo: Path, name: str) -> tuple[Sandbox, isolation.Isolation]:
    box = Sandbox.create(repo, name)
    exam = Exam(repo, box.base, ("tests/test_calc.py",))
    return box, box.isolate([find_python(repo)], exam.protected_files(), network=False)


def test_a_second_session_alike_starts_no_bubblewrap_to_learn_it(
    make_repo, bwrap_runs: list[list[str]]
) -> None:
    repo = make_repo(KATA)
    first, said = _isolate(repo, "one")
    assert said.level == "full", said.reason
    assert any("--" in run and run[-1] == "true" for run in bwrap_runs)  # it was probed
    bwrap_runs.clear()
    isolation._inspect_bwrap.cache_clear()
    second, again = _isolate(repo, "two")
    assert bwrap_runs == []
    assert (again.level, again.reason, again.fresh_proc) == (
        said.level,
        said.reason,
        said.fresh_proc,
    )
    assert again.binary == said.binary
    assert second.layout is not None
    done = subprocess.run(  # and what it says holds: its commands run in a pid namespace
        again.wrap(["sh", "-c", "echo $$"], second.layout, second.environment()),
        capture_output=True,
        text=True,
    )
    assert int(done.stdout) <= 3, done.stderr
    for box in (first, second):
        box.remove(delete_branch=True)


def test_what_could_change_the_answer_asks_again(
    make_repo, bwrap_runs: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user-namespace switch turned, a network allowed (other flags), another kernel."""
    repo = make_repo(KATA)
    box, _ = _isolate(repo, "one")
    box.remove(delete_branch=True)
    real_machine = isolation._machine

    def turned() -> dict[str, object]:
        machine = real_machine()
        machine["switches"] = {"/proc/sys/user/max_user_namespaces": "0"}
        return machine

    monkeypatch.setattr(isolation, "_machine", turned)
    bwrap_runs.clear()
    box, _ = _isolate(repo, "two")
    box.remove(delete_branch=True)
    assert [run for run in bwrap_runs if run[-1] == "true"]
    monkeypatch.setattr(isolation, "_machine", real_machine)
    bwrap_runs.clear()
    box = Sandbox.create(repo, "three")
    exam = Exam(repo, box.base, ("tests/test_calc.py",))
    box.isolate([find_python(repo)], exam.protected_files(), network=True)
    box.remove(delete_branch=True)
    assert [run for run in bwrap_runs if run[-1] == "true"]


def test_a_failure_is_asked_again_every_time(
    make_repo, bwrap_runs: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bwrap that cannot set up its namespaces: no isolation, said, and asked again next
    session (its fix may have come meanwhile)."""
    _refusing_bwrap(tmp_path, monkeypatch)
    repo = make_repo(KATA)
    for name in ("one", "two"):
        bwrap_runs.clear()
        isolation._inspect_bwrap.cache_clear()
        box, said = _isolate(repo, name)
        box.remove(delete_branch=True)
        assert said.level == "none"
        assert [run for run in bwrap_runs if run[-1] == "true"], name


@pytest.mark.anyio
async def test_a_stale_or_planted_verdict_never_runs_a_command_unconfined(
    make_repo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A remembered ``full`` that no longer holds (a bwrap that now cannot set up its
    namespaces) makes commands fail to start; none runs outside bubblewrap. A file of garbage
    is ignored, not trusted."""
    _refusing_bwrap(tmp_path, monkeypatch)
    monkeypatch.setattr(isolation, "_verdict_key", lambda *args: "planted")
    probes = sandbox_module.state_home() / "probes.json"
    probes.parent.mkdir(parents=True, exist_ok=True)
    probes.write_text('{"isolation": [1, 2], "bwrap": "garbage"}')
    repo = make_repo(KATA)
    box, said = _isolate(repo, "garbage")
    assert said.level == "none"  # garbage trusted for nothing: probed, and it fails
    box.remove(delete_branch=True)
    probes.write_text(json.dumps({"isolation": {"planted": {"level": "full"}}}))
    box, said = _isolate(repo, "stale")
    assert said.level == "full"  # what was remembered...
    marker = tmp_path / "ran-outside"
    done = await box.run(f"touch {marker}; echo ran", timeout=30)
    assert "ran" not in done.output and not marker.exists()  # ...but nothing ran unconfined
    box.remove(delete_branch=True)


def _key(tmp_path: Path, readonly: tuple[Path, ...], env: dict[str, str]) -> str | None:
    layout = isolation.Layout(tmp_path / "wt", tmp_path / "tmp", readonly=readonly)
    binary = isolation.Bwrap(sys.executable, "0.11.0", "system", size=True)
    return isolation._verdict_key(layout, env, (tmp_path,), binary)


def test_another_project_on_the_same_disks_is_laid_out_alike(
    make_repo, bwrap_runs: list[list[str]]
) -> None:
    """Another repository (its git dir elsewhere on the same file system) with other exam
    files: the verdict of the first holds, no bubblewrap asked."""
    first, said = _isolate(make_repo(KATA, name="first"), "one")
    assert said.level == "full", said.reason
    bwrap_runs.clear()
    isolation._inspect_bwrap.cache_clear()
    other = make_repo({**KATA, "tests/test_more.py": "def test_more():\n    pass\n"}, name="other")
    box = Sandbox.create(other, "two")
    exam = Exam(other, box.base, ("tests/test_calc.py", "tests/test_more.py"))
    again = box.isolate([find_python(other)], exam.protected_files(), network=False)
    assert bwrap_runs == []
    assert again.level == "full"
    for one in (first, box):
        one.remove(delete_branch=True)


def test_what_a_bind_depends_on_is_its_file_system_and_kind(tmp_path: Path) -> None:
    """Paths bound where they exist count by file system and kind; another disk, a file
    for a folder or a path gone is another verdict; an environment value is not."""
    a, b, file = tmp_path / "a", tmp_path / "b", tmp_path / "f"
    a.mkdir()
    b.mkdir()
    file.write_text("")
    env = {"PATH": "/usr/bin", "VIRTUAL_ENV": str(a)}
    key = _key(tmp_path, (a,), env)
    assert key is not None
    assert _key(tmp_path, (b,), {**env, "VIRTUAL_ENV": str(b)}) == key
    assert _key(tmp_path, (a, b), env) == key  # the set of them
    assert _key(tmp_path, (file,), env) != key
    assert _key(tmp_path, (tmp_path / "gone",), env) != key
    assert _key(tmp_path, (a,), {**env, "EXTRA": "1"}) != key
    elsewhere = Path("/proc/self")  # another file system than the temp folder's
    assert os.stat(elsewhere).st_dev != os.stat(a).st_dev
    assert _key(tmp_path, (elsewhere,), env) != key


@pytest.mark.anyio
async def test_the_model_cannot_rewrite_what_later_sessions_trust(
    make_repo, scripted_openai
) -> None:
    """What a later session takes without asking (interpreter answers, isolation verdicts)
    is out of the model's reach by every route: a command, the code under test, a link in
    the worktree written through with the file tool."""
    repo = make_repo(KATA)
    home = sandbox_module.state_home()
    targets = [home / "interpreters.json", home / "probes.json"]
    overwrite = "; ".join(f"echo planted > {t} 2>/dev/null" for t in targets)
    code_under_test = (
        "import contextlib\n"
        + "".join(
            f"with contextlib.suppress(OSError):\n    open({str(t)!r}, 'w').write('planted')\n"
            for t in targets
        )
        + "def add(a, b):\n    return a + b\n"
    )
    scripted_openai.add(
        Reply(tool_calls=[Call("run_command", {"command": f"true; {overwrite}; true"})]),
        Reply(tool_calls=[Call("run_command", {"command": f"ln -s {targets[0]} link.json"})]),
        Reply(tool_calls=[Call("write_file", {"path": "link.json", "content": "planted"})]),
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": code_under_test})]),
        Reply(text="Done."),
    )
    config = make_config(repo, scripted_openai.base_url, max_iterations=1)
    result, events = await run_loop(config)
    [started] = of_type(events, ev.LoopStarted)
    assert started.isolation == "full", started.isolation_reason
    assert result.status == "passed"  # the code under test ran, its writes tried
    for target in targets:
        assert target.is_file(), target  # written by the engine at the start
        assert "planted" not in target.read_text(), target
