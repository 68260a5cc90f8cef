"""What becomes of a green result: flags on what it touches of test machinery, then, with
``--accept``, the change brought into the developer's working tree (three-way); or, from a
review, the hunks the developer accepted (:func:`apply_hunks`). Either way one ``applied``
event says what happened to the working tree."""

from __future__ import annotations

from collections.abc import Collection
from functools import partial
from pathlib import Path

import anyio

from codexloop.core import diff, gitops
from codexloop.core import events as ev
from codexloop.core.gitops import ApplyResult
from codexloop.core.sandbox import Sandbox
from codexloop.core.words import counted


async def flag(
    repo: Path, sandbox: Sandbox, head: str, target_files: tuple[str, ...], emit: ev.Emit
) -> list[ev.Flagged]:
    """Flag what the green change touches of test machinery (one ``flagged`` event each)."""
    from codexloop.core import flags  # a large module, needed only once a session is green

    try:
        found = await anyio.to_thread.run_sync(
            flags.for_commit, repo, sandbox.base, head, target_files
        )
    except (gitops.GitError, OSError) as exc:  # not checked: shown as a flag, never trusted
        found = [flags.Flag("", 0, f"the change could not be checked ({exc})")]
    flagged = [ev.Flagged(f.path, f.line, f.reason) for f in found]
    for event in flagged:
        await emit(event)
    return flagged


async def apply(
    repo: Path,
    sandbox: Sandbox,
    head: str,
    target_files: tuple[str, ...],
    emit: ev.Emit,
    *,
    flagged: list[ev.Flagged],
    accept_flagged: bool,
) -> ApplyResult | None:
    """``--accept all``: bring the change into the working tree, three-way; a flagged change
    only with ``--accept flagged``. None when nothing was tried."""
    if flagged and not accept_flagged:
        await emit(
            ev.Notice(
                "error",
                f"nothing applied: the change touches test machinery ({counted(len(flagged), 'flag')}); "
                f"review branch {sandbox.branch}, or use --accept flagged to apply it",
            )
        )
        return None
    result = await anyio.to_thread.run_sync(
        partial(
            gitops.apply_changes,
            repo,
            sandbox.base,
            head,
            leave_out=target_files,  # the exam is yours, never written
        )
    )
    await emit(answer(result))
    if not result.ok:
        await emit(
            ev.Notice(
                "error",
                "nothing applied: the change conflicts with your working tree "
                f"(see branch {sandbox.branch})",
            )
        )
    return result


async def apply_hunks(
    repo: Path, base: str, head: str, hunks: Collection[tuple[str, int]], emit: ev.Emit
) -> ev.Applied:
    """A review's accepted hunks of ``head`` into the working tree, three-way, all or nothing;
    what happened (also emitted). A failure of git or of a file is the answer's ``error``."""
    try:
        result = await anyio.to_thread.run_sync(diff.apply_selected, repo, base, head, hunks)
    except (gitops.GitError, OSError) as exc:
        applied = ev.Applied((), (), error=str(exc) or type(exc).__name__)
    else:
        applied = answer(result)
    await emit(applied)
    return applied


def answer(result: ApplyResult) -> ev.Applied:
    return ev.Applied(
        tuple(result.written),
        tuple(result.deleted),
        tuple(f"{c.path}: {c.reason}" for c in result.conflicts),
    )
