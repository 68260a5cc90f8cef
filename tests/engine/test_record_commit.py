"""An iteration's commit, written by the recorder itself (one git process: ``update-ref``): the
same commit git would write — its identity, parent, tree and message — HEAD moved by someone
else noticed, and the worktree's index brought up to date before a command reads it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import run_git

from codexloop.core import gitops, record


def _worktree(make_repo, files: dict[str, str]) -> Path:
    repo = make_repo(files)
    worktree = repo.parent / "wt"
    run_git(repo, "worktree", "add", "-q", "-b", "preview", str(worktree))
    return worktree


def test_the_commit_is_the_one_git_would_write(make_repo) -> None:
    worktree = _worktree(make_repo, {"calc.py": "a - b\n"})
    base = run_git(worktree, "rev-parse", "HEAD").strip()
    recorder = record.recorder(worktree, fresh_checkout=True)
    (worktree / "calc.py").write_text("a + b\n")
    sha = recorder.commit_scan(recorder.scan(), "codexloop iteration 1: red (1 failed)")
    assert sha is not None
    # git reads it back as a well-formed commit: fsck finds nothing, the fields are git's own.
    subprocess.run(["git", "fsck", "--strict", "--no-progress"], cwd=worktree, check=True)
    assert run_git(worktree, "rev-parse", "HEAD").strip() == sha
    assert run_git(worktree, "rev-parse", f"{sha}^").strip() == base
    assert run_git(worktree, "show", f"{sha}:calc.py") == "a + b\n"
    assert run_git(worktree, "log", "-1", "--format=%s", sha).strip() == (
        "codexloop iteration 1: red (1 failed)"
    )
    # The identity is the one `git commit-tree` gives, in the same environment.
    theirs = gitops.commit_tree(recorder.gitdir, f"{sha}^{{tree}}", base, "x", recorder._env())
    who = "--format=%an <%ae>|%cn <%ce>"
    assert run_git(worktree, "log", "-1", who, sha) == run_git(worktree, "log", "-1", who, theirs)
    # The reflog says what moved the branch.
    assert "commit: codexloop iteration 1" in run_git(worktree, "reflog", "-1", "preview")


def test_a_command_reads_an_index_that_follows_the_last_commit(make_repo) -> None:
    worktree = _worktree(make_repo, {"calc.py": "a - b\n"})
    recorder = record.recorder(worktree, fresh_checkout=True)
    (worktree / "calc.py").write_text("a + b\n")
    recorder.commit_scan(recorder.scan(), "iteration 1")
    recorder.refresh_index()  # what Sandbox.run does before a command of the model's
    assert run_git(worktree, "status", "--porcelain") == ""
    recorder.refresh_index()  # nothing behind: no process, nothing changes
    assert run_git(worktree, "status", "--porcelain") == ""


def test_a_branch_moved_by_someone_else_is_the_parent(make_repo) -> None:
    """The model's own `git commit` in the sandbox moves HEAD: the next commit builds on it."""
    worktree = _worktree(make_repo, {"calc.py": "a - b\n"})
    recorder = record.recorder(worktree, fresh_checkout=True)
    (worktree / "calc.py").write_text("a + b\n")
    first = recorder.commit_scan(recorder.scan(), "iteration 1")
    recorder.refresh_index()
    (worktree / "notes.txt").write_text("mine\n")
    run_git(worktree, "add", "notes.txt")
    run_git(worktree, "commit", "-qm", "the model's own commit")
    theirs = run_git(worktree, "rev-parse", "HEAD").strip()
    assert theirs != first
    (worktree / "calc.py").write_text("a * b\n")
    second = recorder.commit_scan(recorder.scan(), "iteration 2")
    assert run_git(worktree, "rev-parse", f"{second}^").strip() == theirs
    # The same tree as HEAD's: no commit.
    assert recorder.commit_scan(recorder.scan(), "iteration 3") is None
