"""Diffs of the sandbox against the base snapshot: files, hunks, and applying a selection."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from codexloop.core import events as ev
from codexloop.core import gitops, record, safefs
from codexloop.core.exam import MAX_EXAM_BYTES
from codexloop.core.words import counted

FILE_LINES_SHOWN = 2_000
"""Lines of one file's diff shown in full; beyond, its head and a note (a 2-million-line
file written by a model must not take the screen down)."""
TOTAL_LINES_SHOWN = 20_000
CLIPPED_HEAD = 200
CLIP_MARK = "[... "


def clip_diff(
    diff: str, file_lines: int = FILE_LINES_SHOWN, total_lines: int = TOTAL_LINES_SHOWN
) -> str:
    """A unified diff cut for display: huge files keep their head, a huge diff its start.

    Cuts are marked by lines starting with ``[... `` saying what was left out.
    """
    if diff.count("\n") <= min(file_lines, total_lines):
        return diff
    out: list[str] = []
    sections = re.split(r"(?m)^(?=diff --git )", diff)
    shown = 0
    for number, section in enumerate(sections):
        lines = section.splitlines()
        if not lines:
            continue
        if shown >= total_lines:
            rest = sum(max(len(s.splitlines()), 0) for s in sections[number:])
            files = sum(1 for s in sections[number:] if s.startswith("diff --git "))
            out.append(
                f"{CLIP_MARK}the diff goes on: {counted(rest, 'more line')} in "
                f"{counted(files, 'more file')} not shown ...]"
            )
            break
        if len(lines) > file_lines:
            out.extend(lines[:CLIPPED_HEAD])
            out.append(
                f"{CLIP_MARK}{len(lines) - CLIPPED_HEAD} more lines of this file's diff "
                "not shown ...]"
            )
            shown += CLIPPED_HEAD + 1
        else:
            out.extend(lines)
            shown += len(lines)
    return "\n".join(out) + "\n"


def leave_out_spec(paths: Sequence[str]) -> list[str]:
    """A pathspec for everything but ``paths`` (the exam: the developer's own, never a change)."""
    return ["--", ".", *(f":(exclude,literal){p}" for p in paths)] if paths else []


def sandbox_diff(
    worktree: Path, base: str, exclude_file: Path | None = None, leave_out: Sequence[str] = ()
) -> str:
    """Unified diff of the worktree's files (untracked ones included) against ``base``.

    The worktree is recorded by :mod:`codexloop.core.record` (git never reads it) and the
    diff is taken between the two trees. Blocking: call it from a worker thread.
    """
    return record.recorder(worktree, exclude_file).diff(
        base, ["--find-renames"], leave_out_spec(leave_out)
    )


def commit_diff(worktree: Path, base: str, commit: str, leave_out: Sequence[str] = ()) -> str:
    """Unified diff of a recorded commit against ``base`` (from the object store alone)."""
    gitdir = Path(gitops.worktree_env(worktree)["GIT_DIR"])
    return record.diff_trees(gitdir, base, commit, ["--find-renames"], leave_out_spec(leave_out))


# -- hunks -------------------------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
NO_NEWLINE = "\\ No newline at end of file"
Status = Literal["modified", "added", "deleted", "renamed"]


@dataclass(frozen=True)
class Hunk:
    index: int
    header: str
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: tuple[str, ...]  # diff lines: ' ', '-', '+' and the no-newline marker

    @property
    def added(self) -> int:
        return sum(line.startswith("+") for line in self.lines)

    @property
    def removed(self) -> int:
        return sum(line.startswith("-") for line in self.lines)

    def sides(self) -> tuple[list[str], list[str]]:
        """(old lines, new lines), each with its line ending, as in the files."""
        old: list[str] = []
        new: list[str] = []
        for i, line in enumerate(self.lines):
            if line == NO_NEWLINE or not line:
                continue
            ending = "" if i + 1 < len(self.lines) and self.lines[i + 1] == NO_NEWLINE else "\n"
            kind, text = line[0], line[1:] + ending
            if kind in " -":
                old.append(text)
            if kind in " +":
                new.append(text)
        return old, new


@dataclass(frozen=True)
class FileChange:
    path: str
    old_path: str | None
    status: Status
    binary: bool
    hunks: tuple[Hunk, ...]

    @property
    def whole(self) -> bool:
        """Accepted or rejected as one piece (binary, added, deleted, renamed)."""
        return self.binary or self.status != "modified" or not self.hunks


def parse_diff(text: str) -> list[FileChange]:
    """Files and hunks of a ``git diff`` (no colour, renames detected)."""
    files: list[FileChange] = []
    current: dict[str, Any] | None = None
    hunk: dict[str, Any] | None = None

    def close_hunk() -> None:
        nonlocal hunk
        if current is not None and hunk is not None:
            old_start, old_count, new_start, new_count = hunk["nums"]
            current["hunks"].append(
                Hunk(
                    len(current["hunks"]),
                    hunk["header"],
                    old_start,
                    old_count,
                    new_start,
                    new_count,
                    tuple(hunk["lines"]),
                )
            )
        hunk = None

    def close_file() -> None:
        nonlocal current
        close_hunk()
        if current is not None:
            files.append(
                FileChange(
                    current["path"],
                    current["old_path"],
                    current["status"],
                    current["binary"],
                    tuple(current["hunks"]),
                )
            )
        current = None

    for line in text.split("\n"):
        if line.startswith("diff --git "):
            close_file()
            a, _, b = line[len("diff --git ") :].partition(" b/")
            current = {
                "path": b,
                "old_path": None,
                "status": "modified",
                "binary": False,
                "hunks": [],
            }
            current["a"] = a.removeprefix("a/")
            continue
        if current is None:
            continue
        match = _HUNK.match(line)
        if match:
            close_hunk()
            o, oc, n, nc = match.groups()
            nums = (
                int(o),
                int(oc) if oc is not None else 1,
                int(n),
                int(nc) if nc is not None else 1,
            )
            hunk = {"header": line, "nums": nums, "lines": []}
        elif hunk is not None and (line[:1] in (" ", "-", "+") or line == NO_NEWLINE):
            hunk["lines"].append(line)
        elif line.startswith("new file mode"):
            current["status"] = "added"
        elif line.startswith("deleted file mode"):
            current["status"] = "deleted"
        elif line.startswith("rename from "):
            current["status"] = "renamed"
            current["old_path"] = line[len("rename from ") :]
        elif line.startswith("rename to "):
            current["path"] = line[len("rename to ") :]
        elif line.startswith("Binary files ") or line == "GIT binary patch":
            current["binary"] = True
        elif line.startswith("--- ") or line.startswith("+++ "):
            continue
    close_file()
    return files


def changes(repo: Path, base: str, head: str, leave_out: Sequence[str] = ()) -> list[FileChange]:
    """The preview branch's changes against the snapshot, as files and hunks (blocking).

    ``leave_out``: paths not to show (the exam files, which only the developer changes).
    """
    return parse_diff(commits_diff(repo, base, head, ["--find-renames", "-U3"], leave_out))


def commits_diff(
    repo: Path, base: str, head: str, options: Sequence[str], leave_out: Sequence[str] = ()
) -> str:
    """``git diff`` of two commits of ``repo`` (paths unquoted, no colour, no external diff),
    ``leave_out`` excluded (blocking)."""
    return gitops.git(
        repo,
        "-c",
        "core.quotepath=false",
        "diff",
        "--no-color",
        "--no-ext-diff",
        *options,
        base,
        head,
        *leave_out_spec(leave_out),
    )


def apply_hunks(old: str, hunks: list[Hunk]) -> str:
    """``old`` with the given hunks of a diff against it applied (in any order)."""
    lines = old.splitlines(keepends=True)
    out: list[str] = []
    pos = 0
    for hunk in sorted(hunks, key=lambda h: h.old_start):
        before, after = hunk.sides()
        start = hunk.old_start if hunk.old_count == 0 else hunk.old_start - 1
        if start < pos or lines[start : start + len(before)] != before:
            raise ValueError(f"hunk {hunk.header} does not apply")
        out.extend(lines[pos:start])
        out.extend(after)
        pos = start + len(before)
    out.extend(lines[pos:])
    return "".join(out)


def selection_commit(
    repo: Path, base: str, head: str, accepted: Collection[tuple[str, int]]
) -> str:
    """A commit on ``base`` holding exactly the accepted hunks of ``base..head`` (blocking).

    ``accepted`` holds ``(path, hunk index)``; a file accepted or rejected whole (binary,
    added, deleted, renamed) is named with index ``-1`` or any of its hunks.
    """
    chosen = set(accepted)
    with tempfile.TemporaryDirectory(prefix="codexloop-select-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        gitops.git(repo, "read-tree", base, env=env)
        for change in changes(repo, base, head):
            picked = [h for h in change.hunks if (change.path, h.index) in chosen]
            whole_pick = (change.path, -1) in chosen or bool(picked)
            if change.whole or len(picked) == len(change.hunks):
                if not whole_pick:
                    continue
                if change.old_path is not None:
                    gitops.git(
                        repo, "update-index", "--force-remove", "--", change.old_path, env=env
                    )
                if change.status == "deleted":
                    gitops.git(repo, "update-index", "--force-remove", "--", change.path, env=env)
                    continue
                mode, sha = _entry(repo, head, change.path)
            elif picked:
                old = (gitops.read_blob(repo, base, change.path) or b"").decode(
                    "utf-8", "surrogateescape"
                )
                merged = apply_hunks(old, picked).encode("utf-8", "surrogateescape")
                sha = gitops.git(repo, "hash-object", "-w", "--stdin", input=merged).strip()
                mode = _entry(repo, head, change.path)[0]
            else:
                continue
            gitops.git(
                repo, "update-index", "--add", "--cacheinfo", f"{mode},{sha},{change.path}", env=env
            )
        tree = gitops.git(repo, "write-tree", env=env).strip()
    ident = {
        "GIT_AUTHOR_NAME": "codexloop",
        "GIT_AUTHOR_EMAIL": "codexloop@localhost",
        "GIT_COMMITTER_NAME": "codexloop",
        "GIT_COMMITTER_EMAIL": "codexloop@localhost",
    }
    return gitops.git(
        repo, "commit-tree", tree, "-p", base, "-m", "codexloop: accepted hunks", env=ident
    ).strip()


def _entry(repo: Path, commit: str, path: str) -> tuple[str, str]:
    line = gitops.git(repo, "ls-tree", commit, "--", path).strip()
    meta, _, _name = line.partition("\t")
    mode, _kind, sha = meta.split()
    return mode, sha


def apply_selected(
    repo: Path, base: str, head: str, accepted: Collection[tuple[str, int]]
) -> gitops.ApplyResult:
    """Bring the accepted hunks into the developer's working tree, three-way, all or nothing."""
    return gitops.apply_changes(repo, base, selection_commit(repo, base, head, accepted))


def revert_hunk(text: str, hunk: Hunk) -> str | None:
    """``text`` (a file that contains the hunk's new side) with the hunk undone, or None.

    Tries the recorded position first, then a unique match of the new side anywhere
    (the file may have moved on since the diff was taken).
    """
    before, after = hunk.sides()
    lines = text.splitlines(keepends=True)
    start = hunk.new_start if hunk.new_count == 0 else hunk.new_start - 1
    if lines[start : start + len(after)] != after:
        found = [
            i for i in range(len(lines) - len(after) + 1) if lines[i : i + len(after)] == after
        ]
        if len(found) != 1 or not after:
            return None
        start = found[0]
    return "".join(lines[:start] + before + lines[start + len(after) :])


def revert_rejected(
    repo: Path, base: str, root: Path, rejections: Sequence[ev.Rejection]
) -> list[str]:
    """Undo rejected hunks (or whole files) in the worktree ``root`` of a sandbox on ``base``;
    the paths that failed."""
    failed: list[str] = []
    for rejection in rejections:
        # The worktree is the model's: no link followed at any component, regular files
        # only, writes replace the name (never through a link) (safefs).
        try:
            if rejection.hunk is None:  # a whole file: back to the snapshot's version
                original = gitops.read_blob(repo, base, rejection.path)
                if original is None:
                    safefs.remove(root, rejection.path)
                else:
                    safefs.write_file(root, rejection.path, original)
                continue
            data = safefs.read_file(root, rejection.path, limit=MAX_EXAM_BYTES)
            reverted = revert_hunk(data.decode("utf-8", "surrogateescape"), rejection.hunk)
            if reverted is None:
                failed.append(rejection.path)
            else:
                safefs.write_file(root, rejection.path, reverted.encode("utf-8", "surrogateescape"))
        except OSError:
            failed.append(rejection.path)
    return failed
