"""The run tree: a clean checkout of the candidate commit, where the exam runs.

The model works in its worktree; the exam never runs there. Before every test run the
engine records the worktree as a commit (the candidate) and brings this folder to exactly
that commit's tree, from git's object store alone: files the model left out of commits
(``__pycache__``, ``*.pyc``, ``*.egg-info``, build folders, anything ignored) are absent,
whatever an earlier run wrote is gone, and nothing a run writes flows back into the
worktree, the commit or the review. What is tested is what is recorded.

The folder lies outside everything a model command can see. Host-side, it is walked and
rewritten through directory file descriptors: a symlink a run planted is removed, never
followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from codexloop.core import gitops, safefs
from codexloop.core.record import Entry, stat_key

_LINK = "120000"
_GITLINK = "160000"


class RunTree:
    """One session's run tree; :meth:`reconcile` makes it equal to a recorded tree."""

    def __init__(self, path: Path, gitdir: Path, keep: Iterable[str] = ()) -> None:
        self.path = path
        self.gitdir = gitdir
        self.keep = frozenset(keep)  # shared paths (node_modules): placed by the sandbox
        self._written: dict[str, tuple[Entry, tuple[int, ...]]] = {}
        path.mkdir(parents=True, exist_ok=True)

    def reconcile(self, entries: dict[str, Entry]) -> None:
        """Make the folder hold exactly ``entries`` (blocking): remove what is not in them,
        rewrite what differs from what was written, write what is missing."""
        wanted_dirs = {
            "/".join(p.split("/")[:i]) for p in entries for i in range(1, p.count("/") + 1)
        }
        wanted_dirs |= {p for p, e in entries.items() if e.mode == _GITLINK}
        good: set[str] = set()
        root = os.open(self.path, safefs.DIR_FLAGS)
        try:
            self._sweep(root, "", entries, wanted_dirs, good)
        finally:
            os.close(root)
        missing = [p for p in entries if p not in good]
        self._write(missing, entries)

    def _sweep(
        self,
        fd: int,
        rel: str,
        entries: dict[str, Entry],
        wanted_dirs: set[str],
        good: set[str],
    ) -> None:
        for name in os.listdir(fd):
            path = f"{rel}/{name}" if rel else name
            if path in self.keep:
                continue
            try:
                st = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and path in wanted_dirs:
                if entries.get(path, Entry("", "")).mode == _GITLINK:
                    good.add(path)
                    continue
                child = os.open(name, safefs.DIR_FLAGS, dir_fd=fd)
                try:
                    self._sweep(child, path, entries, wanted_dirs, good)
                finally:
                    os.close(child)
                continue
            written = self._written.get(path)
            entry = entries.get(path)
            if entry is not None and written is not None and written == (entry, stat_key(st)):
                good.add(path)
                continue
            safefs.remove_at(fd, name)
            self._written.pop(path, None)

    def _write(self, paths: list[str], entries: dict[str, Entry]) -> None:
        blobs = [p for p in paths if entries[p].mode != _GITLINK]
        contents = _cat_blobs(self.gitdir, [entries[p].sha for p in blobs])
        for rel in paths:
            entry = entries[rel]
            parent_fd = self._open_parent(rel)
            name = rel.rsplit("/", 1)[-1]
            try:
                if entry.mode == _GITLINK:
                    os.mkdir(name, dir_fd=parent_fd)
                    continue
                data = contents[entry.sha]
                if entry.mode == _LINK:
                    os.symlink(os.fsdecode(data), name, dir_fd=parent_fd)
                else:
                    perm = 0o755 if entry.mode == "100755" else 0o644
                    fd = os.open(
                        name,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                        perm,
                        dir_fd=parent_fd,
                    )
                    try:
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view) :]
                        os.fchmod(fd, perm)
                    finally:
                        os.close(fd)
                st = os.lstat(name, dir_fd=parent_fd)
                self._written[rel] = (entry, stat_key(st))
            finally:
                os.close(parent_fd)

    def _open_parent(self, rel: str) -> int:
        """The folder of ``rel``, made where missing, every component opened without
        following a link."""
        fd = os.open(self.path, safefs.DIR_FLAGS)
        for part in rel.split("/")[:-1]:
            if part in ("", ".", ".."):  # never above or beside the folder
                os.close(fd)
                raise OSError(f"refused to write {rel!r}: not a path inside the folder")
            try:
                child = os.open(part, safefs.DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, safefs.DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return fd


def _cat_blobs(gitdir: Path, shas: list[str]) -> dict[str, bytes]:
    """Blob contents from the object store (``git cat-file --batch``, no filters)."""
    wanted = list(dict.fromkeys(shas))
    if not wanted:
        return {}
    out = gitops.git_bytes(
        gitdir,
        "cat-file",
        "--batch",
        env={"GIT_DIR": str(gitdir)},
        input="".join(f"{sha}\n" for sha in wanted).encode(),
    )
    found: dict[str, bytes] = {}
    pos = 0
    for sha in wanted:
        end = out.index(b"\n", pos)
        header = out[pos:end].split(b" ")
        if len(header) != 3:
            raise gitops.GitError(f"git cat-file: unexpected answer {out[pos:end]!r}")
        size = int(header[2])
        found[sha] = out[end + 1 : end + 1 + size]
        pos = end + 1 + size + 1
    return found
