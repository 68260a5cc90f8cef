"""A headless session's snapshot and worktree, started ahead in a thread while the engine
imports: the session takes that very sandbox; one no session took is removed without a
trace; a failure is the session's, raised where it takes its sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from loophelpers import KATA

from codexloop.core import gitops
from codexloop.core.sandbox import (
    create_ahead,
    create_new,
    discard_unclaimed,
    repo_key,
    state_home,
)


def _branches(repo: Path) -> list[str]:
    return [branch.name for branch in gitops.preview_branches(repo)]


def test_the_session_takes_the_sandbox_started_ahead(make_repo) -> None:
    repo = make_repo(KATA)
    create_ahead(repo, "early")
    box = create_new(repo, "early")
    assert (box.name, box.branch) == ("early", "codexloop/early")
    assert _branches(repo) == ["codexloop/early"]  # made once, not twice
    discard_unclaimed()  # taken: not the leftovers' to remove
    assert _branches(repo) == ["codexloop/early"] and box.worktree.is_dir()
    assert (box.worktree / "calc.py").read_text() == KATA["calc.py"]


def test_a_sandbox_no_session_took_is_removed(make_repo) -> None:
    repo = make_repo(KATA)
    create_ahead(repo, "unclaimed")
    discard_unclaimed()
    assert _branches(repo) == []
    home = state_home()
    assert not (home / "worktrees" / repo_key(repo) / "unclaimed").exists()
    assert not (home / "tmp" / "unclaimed").exists()
    assert not (home / "excludes" / "unclaimed").exists()
    assert gitops.git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_other_arguments_are_made_now_and_the_one_started_ahead_removed(make_repo) -> None:
    repo = make_repo(KATA)
    create_ahead(repo, "first")
    box = create_new(repo, "second")
    assert box.name == "second"
    discard_unclaimed()
    assert _branches(repo) == ["codexloop/second"]


def test_a_failure_ahead_is_raised_where_the_session_takes_it(make_repo) -> None:
    repo = make_repo(KATA)
    with pytest.raises(gitops.GitError) as made_now:
        create_new(repo, "now", "codexloop/missing")
    create_ahead(repo, "later", "codexloop/missing")
    with pytest.raises(gitops.GitError) as taken:
        create_new(repo, "later", "codexloop/missing")
    assert type(taken.value) is type(made_now.value)
    discard_unclaimed()
    assert _branches(repo) == []
