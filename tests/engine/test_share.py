"""Checkout paths git does not carry (node_modules, built files) shared read-only with the sandbox."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import run_git
from loophelpers import KATA, TARGET

from codexloop.core import gitops
from codexloop.core.config import ConfigError, Settings, load_config
from codexloop.core.sandbox import Sandbox, find_python

pytestmark = pytest.mark.anyio

DEP = "module.exports = 42;\n"


@pytest.fixture
def js_repo(make_repo) -> Path:
    repo = make_repo({**KATA, ".gitignore": "node_modules/\nbuild/\n"})
    (repo / "node_modules" / "dep").mkdir(parents=True)
    (repo / "node_modules" / "dep" / "index.js").write_text(DEP)
    (repo / "build").mkdir()
    (repo / "build" / "gen.py").write_text("GENERATED = True\n")  # built in place, ignored
    return repo


def branch_files(box: Sandbox) -> list[str]:
    return run_git(box.repo, "ls-tree", "-r", "--name-only", box.branch).split()


def untouched(repo: Path) -> bool:
    return (repo / "node_modules" / "dep" / "index.js").read_text() == DEP and sorted(
        os.listdir(repo / "node_modules" / "dep")
    ) == ["index.js"]


@pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (CI installs it)",
)
async def test_node_modules_is_shared_read_only_under_bubblewrap(js_repo: Path) -> None:
    box = Sandbox.create(js_repo, "shared")
    try:
        assert box.isolate([find_python(js_repo)], [], network=False).level == "full"
        assert [t.name for _s, t in box.shared] == ["node_modules"]  # the default
        seen = await box.run("cat node_modules/dep/index.js", timeout=30)
        assert seen.output == DEP
        wrote = await box.run(
            "echo x > node_modules/dep/evil.js; rm node_modules/dep/index.js", timeout=30
        )
        assert "Read-only file system" in wrote.output
        (box.worktree / "calc.py").write_text("def add(a, b):\n    return a + b\n")
        box.commit("an iteration")
        assert not any(f.startswith("node_modules") for f in branch_files(box))
        assert "node_modules" not in " ".join(box.changed_paths())
    finally:
        box.remove(delete_branch=True)
    assert untouched(js_repo)


async def test_without_bubblewrap_a_shared_path_is_a_symlink_and_removal_keeps_it(
    js_repo: Path, no_bwrap: Path
) -> None:
    box = Sandbox.create(js_repo, "linked")
    try:
        isolation = box.isolate(
            [find_python(js_repo)], [], network=False, shared=("node_modules", "build")
        )
        assert isolation.level == "none"
        assert (box.worktree / "node_modules").is_symlink()
        assert (await box.run("cat node_modules/dep/index.js", timeout=30)).output == DEP
        assert (await box.run("cat build/gen.py", timeout=30)).output == "GENERATED = True\n"
        box.commit("an iteration")
        files = branch_files(box)
        assert not any(f.startswith(("node_modules", "build")) for f in files)
        assert box.changed_paths() == []
    finally:
        box.remove(delete_branch=True)
    # Removing the worktree removed the links, never what they point to.
    assert untouched(js_repo) and (js_repo / "build" / "gen.py").exists()


async def test_nothing_is_shared_when_the_project_has_nothing_to_share(make_repo) -> None:
    repo = make_repo(KATA)
    box = Sandbox.create(repo, "plain")
    try:
        box.isolate([find_python(repo)], [], network=False)
        assert box.shared == ()
        assert gitops.is_ignored(repo, "node_modules") is False
    finally:
        box.remove(delete_branch=True)


@pytest.mark.parametrize(
    ("share", "needle"),
    [
        (("../elsewhere",), "must be a path inside the repository"),
        (("/etc",), "must be a path inside the repository"),
        (("missing_dir",), "no such file or folder"),
        ((".git",), "cannot be shared"),
    ],
)
def test_bad_share_entries_are_configuration_errors(
    js_repo: Path, share: tuple[str, ...], needle: str
) -> None:
    settings = Settings(targets=(TARGET,), repo=js_repo, share=share)
    with pytest.raises(ConfigError, match=needle):
        load_config(settings, env={"OPENAI_API_KEY": "k"}, cwd=js_repo)


def test_share_from_the_file_config(js_repo: Path) -> None:
    (js_repo / "pyproject.toml").write_text(
        '[tool.codexloop]\nshare = ["build", "node_modules/dep"]\n'
    )
    config = load_config(
        Settings(targets=(TARGET,), repo=js_repo), env={"OPENAI_API_KEY": "k"}, cwd=js_repo
    )
    assert config.share == ("build", "node_modules/dep")
