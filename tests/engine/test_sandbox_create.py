"""A sandbox that fails to be made leaves nothing behind: when a step after the worktree was
created fails, the worktree, its ``codexloop/<name>`` branch and the temp folder it made are
removed before the error goes on to the caller (the same error, so its cause is still shown)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_git

from codexloop.core import record
from codexloop.core.errors import SandboxError
from codexloop.core.sandbox import Sandbox, repo_key, state_home


def _branches(repo: Path) -> list[str]:
    return run_git(repo, "branch", "--list", "codexloop/*", "--format=%(refname:short)").split()


def _worktrees(repo: Path) -> list[str]:
    listing = run_git(repo, "worktree", "list", "--porcelain")
    return [
        line.removeprefix("worktree ")
        for line in listing.splitlines()
        if line.startswith("worktree ")
    ]


def _assert_nothing_left(repo: Path, name: str) -> None:
    assert _branches(repo) == []
    assert _worktrees(repo) == [str(repo)]
    assert not (state_home() / "worktrees" / repo_key(repo) / name).exists()
    assert not (state_home() / "tmp" / name).exists()


def test_a_failing_recorder_leaves_no_worktree_and_no_branch(make_repo, monkeypatch) -> None:
    repo = make_repo({"f.txt": "one\n"})

    def broken(*args: object, **kwargs: object) -> record.Recorder:
        raise OSError("no recorder today")

    with monkeypatch.context() as patch:
        patch.setattr(record, "recorder", broken)
        with pytest.raises(OSError, match="no recorder today"):
            Sandbox.create(repo, "broken")
    _assert_nothing_left(repo, "broken")
    box = Sandbox.create(repo, "broken")  # nothing is in the way of the same name
    try:
        assert (box.worktree / "f.txt").read_text() == "one\n"
    finally:
        box.remove(delete_branch=True)


def test_an_unwritable_exclude_file_leaves_nothing_behind(make_repo) -> None:
    repo = make_repo({"f.txt": "one\n"})
    (state_home() / "exclude").mkdir(parents=True)  # a folder where the file goes
    with pytest.raises(OSError):
        Sandbox.create(repo, "no-exclude")
    _assert_nothing_left(repo, "no-exclude")


def test_a_taken_name_gets_the_next_free_one_and_leaves_the_sandbox_that_has_it(
    make_repo,
) -> None:
    """Two sessions on one test started within the same second: the second is ``name-2``
    (a kept branch without a worktree counts as taken too)."""
    repo = make_repo({"f.txt": "one\n"})
    box = Sandbox.create(repo, "taken")
    run_git(repo, "branch", "codexloop/taken-2", "HEAD")  # a kept branch of an earlier session
    try:
        second = Sandbox.create(repo, "taken")
        try:
            assert second.name == "taken-3" and second.branch == "codexloop/taken-3"
            assert sorted(_branches(repo)) == [
                "codexloop/taken",
                "codexloop/taken-2",
                "codexloop/taken-3",
            ]
        finally:
            second.remove(delete_branch=True)
        assert (box.worktree / "f.txt").read_text() == "one\n"
        assert box.tmp.is_dir()
    finally:
        box.remove(delete_branch=True)


@pytest.mark.parametrize("depth", ["name", "parent"])
def test_a_planted_link_where_the_temp_folder_goes_is_never_taken(
    make_repo, tmp_path, depth
) -> None:
    """Whatever sits where a session's temp folder would go (a link out of the cache, left by
    a command run without isolation), the name is passed over: the temp folder is made, never
    found — also for a race's attempt, whose session folder is one level up."""
    repo = make_repo({"a.py": "x = 1\n"})
    outside = tmp_path / "outside"
    outside.mkdir()
    name = "race-1/a1"
    planted = state_home() / "tmp" / (name if depth == "name" else "race-1")
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(outside, target_is_directory=True)
    if depth == "parent":  # every name of the race would be under it: refused, said
        with pytest.raises(SandboxError, match="not a folder of codexloop's"):
            Sandbox.create(repo, name)
        assert list(outside.iterdir()) == []
        assert run_git(repo, "branch", "--list", "codexloop/*") == ""
        return
    sandbox = Sandbox.create(repo, name)
    try:
        assert sandbox.name != name
        assert sandbox.tmp.is_dir() and not sandbox.tmp.is_symlink()
        assert outside not in sandbox.tmp.resolve().parents and list(outside.iterdir()) == []
    finally:
        sandbox.remove(delete_branch=True)
