"""What a session leaves behind: kept when it holds work, removed when it made nothing.

A session's preview branch and worktree are how its work is kept. A green session that
recorded nothing beyond its base (the exam was green at once), a replay (its branch repeats a
recorded one) and the demo's throwaway kata keep nothing worth a branch: they are removed
here, with whatever the session kept beside them (scratch, exclude file). A session stopped
or failed keeps its branch, even empty: it is where ``--continue`` starts again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from codexloop.core.gitops import PreviewBranch
    from codexloop.core.loop import Loop
    from codexloop.core.race import Race


def made_nothing(loop: Loop) -> bool:
    """Did the session record nothing on its preview branch beyond its base?"""
    from codexloop.core.gitops import GitError

    sandbox = loop.sandbox
    if sandbox is None:
        return False
    try:
        return sandbox.head() == sandbox.base
    except (GitError, OSError):  # cannot tell: keep it
        return False


def discard_session(loop: Loop | Race, *, always: bool = False) -> str | None:
    """Remove the session's worktree and preview branch if it made nothing (or ``always``);
    of a race, every attempt's that made nothing. The branches removed (comma-separated), or
    None. Never raises: a leftover is not worth a failed exit."""
    from codexloop.core.gitops import GitError
    from codexloop.core.race import Race
    from codexloop.core.resume import forget

    removed = []
    for one in loop.loops if isinstance(loop, Race) else [loop]:
        sandbox = one.sandbox
        if sandbox is None or not (always or made_nothing(one)):
            continue
        try:
            sandbox.remove(delete_branch=True)
        except (GitError, OSError):
            continue
        forget(sandbox.name)
        removed.append(sandbox.branch)
    if isinstance(loop, Race) and all(
        one.sandbox is None or one.sandbox.branch in removed for one in loop.loops
    ):
        _forget_race(loop)
    return ", ".join(removed) or None


def _forget_race(race: Race) -> None:
    """A race none of whose attempts is kept: the folders holding its attempts' go too."""
    from codexloop.core.sandbox import forget_session, repo_key, state_home

    forget_session(race.name)
    with contextlib.suppress(OSError):
        os.rmdir(state_home() / "worktrees" / repo_key(race.config.repo) / race.name)


def remove_preview_branch(repo: Path, branch: PreviewBranch) -> int:
    """Remove ``branch``, its worktree and what its session kept; kill what a crashed session
    left running first. The number of processes killed."""
    from codexloop.core import gitops
    from codexloop.core.process import kill_session
    from codexloop.core.resume import forget
    from codexloop.core.sandbox import forget_session, session_folders

    session = branch.name.removeprefix(gitops.PREVIEW_PREFIX)
    killed = kill_session(session_folders(session, branch.worktree))
    if branch.worktree is not None:
        gitops.remove_worktree(repo, branch.worktree, branch.name)
    else:
        gitops.git(repo, "branch", "-D", branch.name)
    forget_session(session)
    forget(session)
    return killed


def remove_kata(root: Path, repo: Path) -> None:
    """The demo's throwaway repository (``root`` holds it) with every session made on it."""
    from codexloop.core import gitops, safefs
    from codexloop.core.sandbox import repo_key, state_home

    with contextlib.suppress(gitops.GitError, OSError):
        for branch in gitops.preview_branches(repo):
            remove_preview_branch(repo, branch)
    with contextlib.suppress(OSError):  # the kata's folder of worktrees, once empty
        os.rmdir(state_home() / "worktrees" / repo_key(repo))
    with contextlib.suppress(OSError):
        safefs.remove_tree(root)
