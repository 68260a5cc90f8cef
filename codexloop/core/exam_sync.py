"""The exam between the developer's checkout, the sandbox and the model.

The developer may edit the exam while the loop runs: :meth:`ExamSync.check` notices the
change and keeps a note the model reads with its next message. Before every test run,
:meth:`ExamSync.restore` puts the exam back in the sandbox as the developer has it and says
which files the model had changed (the developer's own edits are not an attempt).
"""

from __future__ import annotations

import difflib
from pathlib import PurePosixPath

import anyio

from codexloop.core import events as ev
from codexloop.core import gitops, prompts, safefs
from codexloop.core.exam import IGNORE_FILES, MAX_EXAM_BYTES, Exam
from codexloop.core.sandbox import Sandbox


class ExamSync:
    def __init__(self, emit: ev.Emit) -> None:
        self._emit = emit
        self.changes = 0  # how many times the developer changed the exam so far
        self._seen: dict[str, bytes | None] = {}  # the exam as the model last saw it
        self._in_sandbox: dict[str, bytes | None] = {}  # as the engine last wrote it there
        self._note: str | None = None
        self._lock = anyio.Lock()

    def show(self, exam: Exam) -> list[tuple[str, str]]:
        """The exam as the model first sees it: ``(path, source)`` for each target file."""
        shown = []
        for rel in exam.target_files:
            self._seen[rel] = exam.original(rel)
            shown.append((rel, (self._seen[rel] or b"").decode("utf-8", errors="replace")))
        return shown

    async def check(self, exam: Exam) -> None:
        """Notice a change of the exam in the developer's checkout; the model hears of it next
        (:meth:`take_note`), the front end at once (``exam_changed``)."""
        async with self._lock:
            if not self._seen:
                return  # the model has not seen the exam yet: its first message will show it
            current = await anyio.to_thread.run_sync(
                lambda: {rel: exam.original(rel) for rel in exam.target_files}
            )
            changed = [rel for rel in exam.target_files if current[rel] != self._seen.get(rel)]
            if not changed:
                return
            diff = "".join(_unified(self._seen.get(rel), current[rel], rel) for rel in changed)
            diff = prompts.clipped(diff)
            self._seen = current
            self.changes += 1
            self._note = prompts.EXAM_CHANGED.format(diff=diff)
            await self._emit(ev.ExamChanged(tuple(changed), diff))

    def take_note(self) -> str | None:
        note, self._note = self._note, None
        return note

    async def restore(self, sandbox: Sandbox, exam: Exam) -> list[str]:
        """Put the exam back in the sandbox before a run; the sandbox's changed paths."""
        await self.check(exam)
        changed = await anyio.to_thread.run_sync(sandbox.changed_paths)
        held = await anyio.to_thread.run_sync(_read_targets, sandbox, exam, self._in_sandbox)
        restored = await anyio.to_thread.run_sync(exam.restore, sandbox.worktree, changed)
        if any(PurePosixPath(rel).name in IGNORE_FILES for rel in restored):
            # An ignore file put back: what it hid (a config, a conftest) is seen only now.
            changed = await anyio.to_thread.run_sync(sandbox.changed_paths)
            restored += await anyio.to_thread.run_sync(exam.restore, sandbox.worktree, changed)
        # What the sandbox holds of the exam now, if the model leaves it alone.
        self._in_sandbox = {rel: held[rel][2] for rel in held}
        # Only what the model did counts as an attempt; the developer's own edits are not one.
        attempts = [p for p in restored if p not in held or held[p][0] != held[p][1]]
        if attempts:
            await self._emit(ev.ExamRestored(tuple(attempts)))
        return changed


def _read_targets(
    sandbox: Sandbox, exam: Exam, expected: dict[str, bytes | None]
) -> dict[str, tuple[bytes | None, bytes | None, bytes | None]]:
    """For each target file: what the sandbox holds, what it held when the engine last wrote
    it (the snapshot's version at first), and the developer's version now."""
    held: dict[str, tuple[bytes | None, bytes | None, bytes | None]] = {}
    for rel in exam.target_files:
        # The worktree is the model's: no link followed, regular files only (safefs).
        now = safefs.read_regular(sandbox.worktree, rel, limit=MAX_EXAM_BYTES)
        if rel in expected:
            want = expected[rel]
        else:
            want = gitops.read_blob(sandbox.repo, sandbox.base, rel)
        held[rel] = (now, want, exam.original(rel))
    return held


def _unified(old: bytes | None, new: bytes | None, rel: str) -> str:
    before = (old or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    after = (new or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"a/{rel}", f"b/{rel}"))
