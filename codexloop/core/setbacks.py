"""Setbacks: an iteration after which fewer of the target tests even run is undone.

A red run is still progress when the tests ran and failed differently; it is a setback when
the change stopped them from running at all — a module overwritten with the test's text, an
import broken, a syntax error. Small models do that (Qwen2.5-Coder-1.5B wrote the test file's
content over the module under test in its first iteration, and every later iteration started
from the wreck). The engine then puts the files the change touched back as they were in the
best state so far (the snapshot, or the iteration where the most target tests passed and ran),
and tells the model what its change caused and what was put back. Protected files are never
touched here: the exam is restored before every run anyway.

A change once undone is not made again: the same model wrote the same ``money.py`` (importing
``requests``, which the sandbox does not have) six iterations running, each put back, each
written again. A write that would leave a file as an undone change left it (trailing spaces and
blank lines aside) is refused with the reason, before any test run; so is a Python file that
imports a module whose absence stopped the tests, while the project has no such module.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codexloop.core import briefing, diff, gitops, pysyntax
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


_ERROR_LINE = re.compile(r"^E\s+(\w*(?:Error|Exception)\b.*)$", re.MULTILINE)
_MISSING = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")


def cause(digest: str) -> str:
    """The error a red run's collection stopped at, in one line ("" when there is none)."""
    found = _ERROR_LINE.findall(digest)
    return found[-1].strip()[:300] if found else ""


def missing_module(line: str) -> str:
    """The top-level name of the module a ``ModuleNotFoundError`` could not find, or ""."""
    found = _MISSING.search(line)
    return found.group(1).split(".")[0] if found else ""


def has_module(python_files: Iterable[str], name: str) -> bool:
    """Does a project with these Python files have a module ``name`` to import (a file
    ``name.py`` or a package ``name/``, at its root or below, as under ``src/``)?"""
    return any(
        rel == f"{name}.py"
        or rel.startswith(f"{name}/")
        or rel.endswith(f"/{name}.py")
        or f"/{name}/" in rel
        for rel in python_files
    )


def _fingerprint(data: bytes) -> bytes:
    """Equal for two texts that differ only in trailing spaces and blank lines at the end."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    return hashlib.sha256(b"\n".join(line.rstrip() for line in lines).rstrip()).digest()


def _imports(rel: str, source: bytes) -> set[str]:
    """The top-level names of the modules a Python source imports (absolute imports)."""
    try:
        tree = pysyntax.parse(source)
    except (SyntaxError, ValueError):
        return set()
    return {name.split(".")[0] for name, folder in briefing.imports(tree, rel) if folder is None}


@dataclass(frozen=True)
class Undone:
    """A change put back as a setback: when, and what it caused."""

    iteration: int
    cause: str

    @property
    def what(self) -> str:
        caused = f" ({self.cause})" if self.cause else ""
        return (
            f"the change undone after iteration {self.iteration}, which stopped the target "
            f"tests from running{caused}"
        )


@dataclass
class Undoings:
    """The changes undone so far, by file and content, and the modules found missing."""

    contents: dict[tuple[str, bytes], Undone] = field(default_factory=dict)
    missing: dict[str, Undone] = field(default_factory=dict)

    def remember(self, undone: Undone, contents: dict[str, bytes | None]) -> None:
        """``contents``: each file as the undone change left it (None: it deleted it)."""
        for path, data in contents.items():
            if data is not None:
                self.contents[(path, _fingerprint(data))] = undone
        if module := missing_module(undone.cause):
            self.missing[module] = undone

    def veto(self, rel: str, new: bytes, has_module: Callable[[str], bool]) -> str | None:
        """Why writing ``new`` to ``rel`` would make an undone change again, or None.
        ``has_module``: whether the project has a module of that top-level name."""
        if not self.contents and not self.missing:
            return None
        undone = self.contents.get((rel, _fingerprint(new)))
        if undone is not None:
            return f"{rel} would be exactly as {undone.what}; make a different change"
        if not rel.endswith(".py") or not self.missing:
            return None
        for module in sorted(_imports(rel, new) & self.missing.keys()):
            if not has_module(module):
                return (
                    f"{rel} imports {module}, which is not installed here and is not part of "
                    f"the project: that import made {self.missing[module].what}. Use only the "
                    "standard library and the project's own code"
                )
        return None


class Setbacks:
    """Remembers the best state; says when a run went back behind it."""

    def __init__(self, exam: Hashable, targets: Sequence[str], start: str, baseline: Verdict):
        self.exam = exam
        self.targets = targets
        self.best = Best(progress(targets, baseline), start, 0)
        self.undoings = Undoings()

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
            self.undoings = Undoings()  # what broke the old exam may be what the new one wants
            return None
        if reached[1] < self.best.progress[1]:
            return self.best
        if reached >= self.best.progress:
            self.best = Best(reached, commit, iteration)
        return None


def undo(
    repo: Path, worktree: Path, best: str, tested: str, protected: Collection[str]
) -> dict[str, bytes | None]:
    """Blocking: the files that differ between the best state's commit and the tested one
    put back as they were in the best state (protected ones left to the exam's restore);
    the paths put back, each with its content as the tested change left it (None: deleted)."""
    out = gitops.git(repo, "diff-tree", "-r", "-z", "--name-only", "--no-renames", best, tested)
    paths = [p for p in out.split("\0") if p and p not in protected]
    undone = {p: gitops.read_blob(repo, tested, p) for p in paths}
    failed = diff.revert_rejected(repo, best, worktree, [ev.Rejection(p, None) for p in paths])
    return {p: data for p, data in undone.items() if p not in failed}
