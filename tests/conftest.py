"""Shared fixtures: a scripted OpenAI-compatible server and real git repositories."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_openai import ScriptedOpenAI


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep worktrees, traces and config of every test inside its own temporary folder."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEXLOOP_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A real local Ray cluster for this test process (tests/ray; skipped without Ray)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def actors_kept(ray_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Idle actors wait for the next session as long as the test needs (not the 5 s a slow
    machine can spend between two sessions), and go when it ends: they hold the cluster's CPUs."""
    from codexloop.core import ray_executor

    def let_go() -> None:
        with ray_executor._kept_lock:
            idle = list(ray_executor._idle)
            ray_executor._idle.clear()
        for actor in idle:
            ray_cluster.kill(actor)

    let_go()  # those of an earlier test: each test starts with none
    monkeypatch.setattr(ray_executor, "IDLE_S", 600.0)
    monkeypatch.setattr(ray_executor, "PREWARM_IDLE_S", 600.0)
    try:
        yield ray_executor._idle
    finally:
        let_go()


@pytest.fixture
def scripted_openai() -> Iterator[ScriptedOpenAI]:
    server = ScriptedOpenAI()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def no_bwrap(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with every program of the machine but bubblewrap, and only a system bwrap
    allowed (not the bundled one): the degraded path."""
    bin_dir = tmp_path_factory.mktemp("bin-without-bwrap")
    for entry in os.environ["PATH"].split(os.pathsep):
        folder = Path(entry)
        # os.path.isdir: Path.is_dir raises for a folder the user may not read (root's PATH
        # inherited by a normal user, as the hostile suites are also run).
        if not os.path.isdir(folder) or not os.access(folder, os.R_OK | os.X_OK):
            continue
        for program in folder.iterdir():
            target = bin_dir / program.name
            if program.name != "bwrap" and not target.exists() and os.access(program, os.X_OK):
                target.symlink_to(program)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("CODEXLOOP_BWRAP", "system")
    return bin_dir


def run_git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Build a real git repository from {relative path: text}, committed once."""

    def build(files: dict[str, str], *, name: str = "repo", commit: bool = True) -> Path:
        repo = tmp_path / name
        repo.mkdir()
        run_git(repo, "init", "-q", "-b", "main")
        for rel, text in files.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if commit:
            run_git(repo, "add", "-A")
            run_git(repo, "commit", "-q", "-m", "initial")
        return repo

    return build
