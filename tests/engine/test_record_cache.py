"""The recorder's stat cache never hides a change (found by the app's review test on a loaded
machine): it is seeded only right after the checkout, and a second caller with another exclude
file gets the same recorder, not a new one seeded from a worktree the model already changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import run_git

from codexloop.core import record
from codexloop.core.sandbox import Sandbox


def _age(path: Path, seconds: float = 5.0) -> None:
    """Make ``path`` look written long ago (its ctime cannot be set back: wait instead)."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_recorder_made_after_a_change_still_sees_it(make_repo) -> None:
    repo = make_repo({"f.txt": "one\n"})
    worktree = repo.parent / "wt"
    run_git(repo, "worktree", "add", "-q", "-b", "side", str(worktree))
    record.forget(worktree)
    (worktree / "f.txt").write_text("two\n")  # same size, changed before the recorder exists
    _age(worktree / "f.txt")
    time.sleep(0.3)  # past the racy window: a seed now would trust the stat data
    head = record.commit_all(worktree, "model")
    assert head is not None
    assert run_git(worktree, "show", f"{head}:f.txt") == "two\n"


def test_another_exclude_file_does_not_reseed_over_the_models_change(make_repo, tmp_path) -> None:
    repo = make_repo({"f.txt": "one\n"})
    box = Sandbox.create(repo, "reseed")
    try:
        time.sleep(0.3)
        (box.worktree / "f.txt").write_text("two\n")
        _age(box.worktree / "f.txt")
        time.sleep(0.3)
        other = tmp_path / "exclude"
        other.write_text("/ignored-by-the-app\n")
        record.recorder(box.worktree, other)  # a front end's diff with another exclude file
        assert "f.txt" in box.changed_paths()
        scan = box.scan()
        assert scan.entries["f.txt"].sha != box.recorder.tracked["f.txt"].sha
    finally:
        box.remove(delete_branch=True)
