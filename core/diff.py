"""Diffs of the sandbox against the base snapshot."""

from __future__ import annotations

import tempfile
from pathlib import Path

from codexloop.core import gitops


def sandbox_diff(worktree: Path, base: str, exclude_file: Path | None = None) -> str:
    """Unified diff of the worktree's files (untracked ones included) against ``base``.

    Uses a temporary index, so it never races the engine's commits on the sandbox's own
    index. Blocking: call it from a worker thread.
    """
    with tempfile.TemporaryDirectory(prefix="codexloop-diff-") as tmp:
        env = {**gitops.worktree_env(worktree), "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        args: list[str] = []
        if exclude_file is not None:
            args = ["-c", f"core.excludesFile={exclude_file}"]
        gitops.git(worktree, "read-tree", base, env=env)
        gitops.git(worktree, *args, "add", "-A", env=env)
        return gitops.git(
            worktree, "diff", "--cached", "--no-color", "--find-renames", base, env=env
        )
