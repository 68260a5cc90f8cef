"""A sandbox that fails to be made leaves nothing behind: when a step after the worktree was
created fails, the worktree, its ``codexloop/<name>`` branch and the temp folder it made are
removed before the error goes on to the caller (the same error, so its cause is still shown)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_git

from codexloop.core import record
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
