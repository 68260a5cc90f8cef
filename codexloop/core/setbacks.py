"""Setbacks: an iteration after which fewer of the target tests even run is undone.

A red run is still progress when the tests ran and failed differently; it is a setback when
the change stopped them from running at all — a module overwritten with the test's text, an
import broken, a syntax error. Small models do that (Qwen2.5-Coder-1.5B wrote the test file's
content over the module under test in its first iteration, and every later iteration started
from the wreck). The engine then puts the files the change touched back as they were in the
best state so far (the snapshot, or the iteration where the most target tests passed and ran),
and tells the model what its change caused and what was put back. Protected files are never
touched here: the exam is restored before every run anyway.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from codexloop.core import diff, gitops
from codexloop.core import events as ev
from codexloop.core.testrun import Verdict, cases_for_target

Progress = tuple[int, int]
"""(target tests that passed, target tests that ran to a pass or a failure)."""


def progress(targets: Sequence[str], verdict: Verdict) -> Progress:
    cases = [case for target in targets for case in cases_for_target(target, list(verdict.cases))]
    return (
        sum(case.outcome == "passed" for case in cases),
        sum(case.outcome in ("passed", "failed") for case in cases),
    )


@dataclass(frozen=True)
class Best:
    """The best state so far: what its run reached, its commit, its iteration (0: the start)."""

    progress: Progress
    commit: str
    iteration: int


class Setbacks:
    """Remembers the best state; says when a run went back behind it."""

    def __init__(self, exam: Hashable, targets: Sequence[str], start: str, baseline: Verdict):
        self.exam = exam
        self.targets = targets
        self.best = Best(progress(targets, baseline), start, 0)

    def judge(
        self, iteration: int, verdict: Verdict, commit: str, exam: Hashable, targets: Sequence[str]
    ) -> Best | None:
        """The state to go back to when fewer target tests ran than in the best state;
        None otherwise (and this run is remembered when it is the best yet). After the
        developer changed the exam or the targets, nothing is compared with before."""
        reached = progress(targets, verdict)
        if (exam, tuple(targets)) != (self.exam, tuple(self.targets)):
            self.exam, self.targets = exam, targets
            self.best = Best(reached, commit, iteration)
            return None
        if reached[1] < self.best.progress[1]:
            return self.best
        if reached >= self.best.progress:
            self.best = Best(reached, commit, iteration)
        return None


def undo(
    repo: Path, worktree: Path, best: str, tested: str, protected: Collection[str]
) -> list[str]:
    """Blocking: the files that differ between the best state's commit and the tested one
    put back as they were in the best state (protected ones left to the exam's restore);
    the paths put back."""
    out = gitops.git(repo, "diff-tree", "-r", "-z", "--name-only", "--no-renames", best, tested)
    paths = [p for p in out.split("\0") if p and p not in protected]
    failed = diff.revert_rejected(repo, best, worktree, [ev.Rejection(p, None) for p in paths])
    return [p for p in paths if p not in failed]
