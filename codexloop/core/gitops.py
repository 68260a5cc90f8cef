"""Git plumbing for the sandbox: snapshot, worktrees, commits, blob reads, the three-way apply.

Git runs synchronously (the engine calls these functions from worker threads), as plain
subprocesses. Every command has hooks, fsmonitor and automatic gc off (``-c
core.hooksPath=/dev/null -c core.fsmonitor=false -c gc.auto=0`` on every command line, the
persistent readers' included), a C locale and no terminal prompt, no location variable
inherited from a parent git (GIT_DIR & co. are taken out of this process's environment), is
never run in a directory it could not enter, and never with a sandbox worktree as its working
directory. Blob reads of the developer's repository go through one ``git cat-file --batch``
per repository, kept open between reads, instead of one process a blob (GitPython did this
before; its import, ~50-90 ms and two ``git version`` runs, sat on every session's way to its
first test run).

Commits, refs and worktrees are written by git's own plumbing (``commit-tree``,
``update-ref``, ``worktree add``): never guessing an identity from the host name, moving refs
with git's compare-and-swap, whatever the ref storage. ``git merge-file`` does the three-way
apply.

No function here reads a sandbox worktree's files: recording them is
:mod:`codexloop.core.record`'s job, so nothing the model wrote is interpreted by git on the
host. The developer's checkout (files and index) is only ever read, except by
:func:`apply_changes`, which writes files (never the index) and only when no file conflicts.

Over 400 lines: running git and reading blobs, the snapshot and worktrees, and the three-way
apply share the hardened runner and the repository cache, and are one module's worth of git.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from codexloop.core import safefs
from codexloop.core.errors import CodexloopError

PREVIEW_PREFIX = "codexloop/"
FALLBACK_NAME = "codexloop"
FALLBACK_EMAIL = "codexloop@localhost"

_CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "gc.auto=0")
_SAFETY = tuple(arg for setting in _CONFIG for arg in ("-c", setting))
# Location variables inherited from a parent git process (a hook, `git rebase -x`) would
# point every command at the wrong repository or index; only an explicit ``env`` sets them.
_SCRUBBED = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
)
_NULL_SHA = "0" * 40
_BINARY_PROBE = 8000
_REGULAR = ("100644", "100755")
_SYMLINK = "120000"
_GITLINK = "160000"

# Worktree -> its administrative git dir, recorded when we create the worktree (or first
# check it), so a `.git` file rewritten by the model cannot point our commands at a config it
# wrote. Its keys are also the folders host-side git never runs in.
_GITDIRS: dict[Path, Path] = {}


class GitError(CodexloopError):
    """A git command failed; the message carries git's stderr."""


class UnsafeRepository(GitError):
    """Git refuses the repository: it belongs to another user (``safe.directory``)."""


# --------------------------------------------------------------------------- running git

_ENVIRON_LOCK = threading.Lock()


def _scrub_environment() -> None:
    """Take the inherited location variables out of this process's environment.

    Every git here gets ``os.environ`` with a few values added, and codexloop never wants a
    parent git's GIT_DIR, GIT_WORK_TREE, GIT_COMMON_DIR or GIT_OBJECT_DIRECTORY (the sandbox
    gets an environment of its own), so they go before any git runs. Normally that is the
    first call, on the main thread, before any worker thread exists.
    """
    if any(name in os.environ for name in _SCRUBBED):
        with _ENVIRON_LOCK:
            for name in _SCRUBBED:
                os.environ.pop(name, None)


def _executable() -> str:
    """The git to run: ``git`` on PATH, or the one ``GIT_PYTHON_GIT_EXECUTABLE`` names (the
    variable GitPython reads, which earlier versions of codexloop ran git through)."""
    return os.path.expanduser(os.environ.get(_EXECUTABLE_VARIABLE) or "git")


_EXECUTABLE_VARIABLE = "GIT_PYTHON_GIT_EXECUTABLE"
# Every git command's environment, one-shot or a persistent reader's: git's messages in
# English (its stderr is shown and matched); no terminal prompt.
_COMMAND_ENV = {"LANGUAGE": "C", "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}


@dataclass(frozen=True)
class _Done:
    """A finished git command."""

    returncode: int
    stdout: bytes
    stderr: str


def _refuse_sandbox(path: Path) -> None:
    """Host-side git never runs with a sandbox worktree (or a folder in it) as its working
    directory: it would read the configuration, attributes or nested repository found there."""
    resolved = Path(path).resolve()
    for root in list(_GITDIRS):
        if resolved == root or resolved.is_relative_to(root):
            raise GitError(f"refused to run git in the sandbox worktree {root}")


def _run(
    cwd: Path,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> _Done:
    cwd = Path(cwd)
    # Never in the current directory instead of one it cannot enter.
    if not cwd.is_dir() or not os.access(cwd, os.X_OK):
        raise GitError(f"git {args[0] if args else ''}: no such directory {cwd}")
    if env is None or "GIT_DIR" not in env:
        _refuse_sandbox(cwd)
    _scrub_environment()
    argv = [_executable(), *_SAFETY, *args]
    try:
        done_process = subprocess.run(
            argv,
            cwd=cwd,
            env={**os.environ, **_COMMAND_ENV, **(env or {})},
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
        )
    except FileNotFoundError as exc:
        raise GitError("git is not installed (not found on PATH)") from exc
    err = _text(done_process.stderr)
    done = _Done(
        done_process.returncode, done_process.stdout, err[:-1] if err.endswith("\n") else err
    )
    if check and done.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def git(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> str:
    """Run ``git <args>`` in ``cwd`` with hooks and fsmonitor off; return its stdout.

    ``env`` adds to (or overrides) the inherited environment. Raises :class:`GitError`
    with git's stderr when the command fails and ``check`` is true.
    """
    return _text(_run(cwd, args, env, input, check).stdout)


def git_bytes(
    cwd: Path, *args: str, env: dict[str, str] | None = None, input: bytes | None = None
) -> bytes:
    """Like :func:`git`, for output that is not text (blob contents)."""
    return _run(cwd, args, env, input).stdout


# --------------------------------------------------------------------------- reading blobs


class _Reader:
    """One repository's ``git cat-file --batch``, started once and kept open between reads
    (one read at a time: a lock). Started as every git command here is (the hardened flags and
    environment), its git dir named and its working directory: nothing is discovered."""

    def __init__(self, path: Path) -> None:
        # git's own discovery (and its safe.directory check) names the checkout and git dir.
        args = ["rev-parse", "--absolute-git-dir", "--show-toplevel"]
        lines = _text(_run(path, args).stdout).splitlines()
        if len(lines) != 2:
            raise GitError(f"git rev-parse: unexpected answer {lines!r}")
        self.git_dir = Path(lines[0])
        _refuse_sandbox(Path(lines[1]))
        self.identity = _identity(self.git_dir)
        self.lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def current(self) -> bool:
        """Whether the repository it opened is still the one at its path."""
        return _identity(self.git_dir) == self.identity

    def blob(self, name: str) -> bytes | None:
        """The blob ``name`` (``<commit>:<path>``, no line feed) names, None when there is
        none; raises :class:`GitError` when the reader failed (it is stopped then: the next
        read starts another)."""
        with self.lock:
            try:
                return self._read(os.fsencode(name))
            except (OSError, ValueError) as exc:
                self._stop()
                raise GitError(f"git cat-file --batch: {exc}") from exc

    def _read(self, name: bytes) -> bytes | None:
        process = self._started()
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(name + b"\n")
        process.stdin.flush()
        header = process.stdout.readline()
        found = _BATCH_HEADER.fullmatch(header)
        if found is None:
            # "<name> missing" or "<name> ambiguous": nothing follows, the reader is in step.
            if header.endswith((b" missing\n", b" ambiguous\n")):
                return None
            raise ValueError(f"unexpected answer {header[:200]!r}")
        size = int(found.group(2))
        data = process.stdout.read(size + 1)
        if len(data) != size + 1:
            raise ValueError("the reader ended mid-object")
        return data[:-1] if found.group(1) == b"blob" else None

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._stop()
            _scrub_environment()
            self._process = subprocess.Popen(
                [_executable(), *_SAFETY, "cat-file", "--batch"],
                cwd=self.git_dir,
                env={**os.environ, **_COMMAND_ENV, "GIT_DIR": str(self.git_dir)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()  # its end of input: git exits
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()

    def close(self) -> None:
        with self.lock:
            self._stop()


# "<object id> <type> <size>": SHA-1 or SHA-256 names, as git prints them.
_BATCH_HEADER = re.compile(rb"(?:[0-9a-f]{40}|[0-9a-f]{64}) ([a-z]+) ([0-9]+)\n")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


_READERS: OrderedDict[Path, _Reader] = OrderedDict()
_READERS_LOCK = threading.Lock()
_MAX_READERS = 8  # repositories with a reader open at once (each holds one git process)


def _reader(repo: Path) -> _Reader | None:
    """The open reader of the repository at ``repo``, or None when it cannot have one."""
    key = Path(repo).absolute()
    with _READERS_LOCK:
        reader = _READERS.get(key)
        if reader is not None:
            if reader.current():
                _READERS.move_to_end(key)
                return reader
            del _READERS[key]
            reader.close()
    try:
        fresh = _Reader(key)
    except Exception:  # whatever kept it from opening: reads go one process a blob
        return None
    evicted: list[_Reader] = []
    with _READERS_LOCK:
        reader = _READERS.setdefault(key, fresh)
        _READERS.move_to_end(key)
        while len(_READERS) > _MAX_READERS:
            evicted.append(_READERS.popitem(last=False)[1])
    if reader is not fresh:
        evicted.append(fresh)
    for old in evicted:
        old.close()
    return reader


def close_readers() -> None:
    """Stop every persistent reader (they stop by themselves when this process ends)."""
    with _READERS_LOCK:
        readers = list(_READERS.values())
        _READERS.clear()
    for reader in readers:
        reader.close()


def read_blob(repo: Path, commit: str, path: str) -> bytes | None:
    """The content of ``path`` at ``commit`` as stored in git, or None if it is absent."""
    name = f"{commit}:{path}"
    if "\0" in name:
        return None
    # A line feed would end the request early on the persistent reader: such a name (and a
    # repository it cannot serve) is read by a process of its own.
    reader = _reader(repo) if "\n" not in name else None
    if reader is not None:
        try:
            return reader.blob(name)
        except GitError:
            pass
    done = _run(repo, ["cat-file", "blob", name], check=False)
    return done.stdout if done.returncode == 0 else None


def _identity_fallback(cwd: Path, env: Mapping[str, str] | None) -> dict[str, str]:
    """GIT_AUTHOR_*/GIT_COMMITTER_* values for the parts of the identity nobody configured."""
    done = _run(
        cwd,
        ["config", "--get-regexp", r"^(user|author|committer)\.(name|email)$"],
        env,
        check=False,
    )
    configured = {line.split(" ", 1)[0].lower() for line in _text(done.stdout).splitlines()}
    effective = {**os.environ, **(env or {})}
    fallback: dict[str, str] = {}
    for role in ("author", "committer"):
        for field, value in (("name", FALLBACK_NAME), ("email", FALLBACK_EMAIL)):
            var = f"GIT_{role.upper()}_{field.upper()}"
            if effective.get(var) or {f"user.{field}", f"{role}.{field}"} & configured:
                continue
            fallback[var] = value
    return fallback


def identities(cwd: Path, env: Mapping[str, str] | None) -> tuple[str, str]:
    """The author and committer (``Name <email>``) ``git commit-tree`` would write, without
    their dates: the configured ones (never guessed from the host name), else codexloop's."""
    found = []
    for role in ("AUTHOR", "COMMITTER"):
        args = ["-c", "user.useConfigOnly=true", "var", f"GIT_{role}_IDENT"]
        done = _run(cwd, args, env, check=False)
        if done.returncode != 0:
            done = _run(cwd, args, {**(env or {}), **_identity_fallback(cwd, env)})
        ident = _text(done.stdout).strip()
        found.append(ident.rsplit(" ", 2)[0])  # "Name <email> 1733000000 +0000"
    return found[0], found[1]


def commit_tree(
    cwd: Path, tree: str, parent: str | None, message: str, env: Mapping[str, str] | None
) -> str:
    """``git commit-tree`` with the configured identity, or codexloop's when there is none."""
    # useConfigOnly: never guess an identity from the host name; fall back to ours instead.
    args = ["-c", "user.useConfigOnly=true", "commit-tree", tree, "-m", message]
    if parent:
        args += ["-p", parent]
    done = _run(cwd, args, env, check=False)
    if done.returncode != 0:
        fallback = _identity_fallback(cwd, env)
        if not fallback:
            stderr = done.stderr.strip()
            raise GitError(f"git commit-tree failed ({done.returncode}): {stderr}")
        done = _run(cwd, args, {**(env or {}), **fallback})
    return _text(done.stdout).strip()


# --------------------------------------------------------------------------- repository


def toplevel(path: Path) -> Path | None:
    """The root of the git checkout containing ``path``, or None outside any checkout.

    Raises :class:`UnsafeRepository` when git refuses the checkout for its owner.
    """
    start = Path(path).absolute()
    while not start.is_dir():
        if start.parent == start:
            return None
        start = start.parent
    done = _run(start, ["rev-parse", "--show-toplevel"], check=False)
    out = _text(done.stdout).strip()
    if done.returncode != 0 and "dubious ownership" in done.stderr:
        raise unsafe_repository(done.stderr, start)
    if done.returncode != 0 or not out:
        return None
    return Path(out)


_UNSAFE_AT = re.compile(r"dubious ownership in repository at '([^']*)'")
_UNSAFE_FIX = re.compile(r"^\s*(git config --global --add safe\.directory .+?)\s*$", re.MULTILINE)


def unsafe_repository(stderr: str, start: Path) -> UnsafeRepository:
    """Git's refusal of a repository owned by someone else, on one line, with git's own fix.

    Git (2.35.2 and later) refuses a repository whose owner is not the current user (a
    tarball unpacked as another user, a bind mount, a container) unless ``safe.directory``
    names it in the global or system configuration.
    """
    at = _UNSAFE_AT.search(stderr)
    where = at.group(1) if at else str(start)
    fix = _UNSAFE_FIX.search(stderr)
    command = fix.group(1) if fix else f"git config --global --add safe.directory {where}"
    return UnsafeRepository(
        f"git refuses the repository at {where}: detected dubious ownership (it belongs to "
        f"another user); if you trust it, run: {command}"
    )


SNAPSHOT_SUBJECT = "codexloop snapshot of "
MAX_UNTRACKED_BYTES = 50 << 20
"""Untracked files larger than this stay out of the snapshot (a dataset nobody ignored would
otherwise be hashed into the repository at every start)."""


def snapshot(repo: Path, left_out: list[tuple[str, int]] | None = None) -> str:
    """A commit capturing the working tree as it is now, without touching index or files.

    Tracked changes, deletions and untracked-not-ignored files are included, but for
    untracked files over ``MAX_UNTRACKED_BYTES``: those are appended to ``left_out`` as
    (path, size). Its parent is HEAD (none in a repository without commits).
    """
    done = _run(
        repo,
        ["rev-parse", "--git-path", "index", "HEAD", "--symbolic-full-name", "HEAD"],
        check=False,
    )
    lines = _text(done.stdout).splitlines() if done.returncode == 0 else []
    if len(lines) == 3:
        index, head, ref = lines
    else:  # no commit yet: HEAD does not resolve
        index = git(repo, "rev-parse", "--git-path", "index").strip()
        head = None
        ref = git(repo, "symbolic-ref", "-q", "HEAD", check=False).strip() or "HEAD"
    label = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else "detached"
    real_index = Path(repo, index)
    with tempfile.TemporaryDirectory(prefix="codexloop-snapshot-") as tmp:
        tmp_index = Path(tmp, "index")
        if real_index.is_file():
            # copy2 keeps the mtime, which git's racy-clean check compares entries against.
            shutil.copy2(real_index, tmp_index)
        env = {"GIT_INDEX_FILE": str(tmp_index)}
        big = _big_untracked(repo)
        if left_out is not None:
            left_out.extend(big)
        spec = ["--", ".", *(f":(exclude,literal){rel}" for rel, _size in big)] if big else []
        _run(repo, ["-c", "core.splitIndex=false", "add", "-A", *spec], env)
        tree = _text(_run(repo, ["write-tree"], env).stdout).strip()
    return commit_tree(repo, tree, head, f"{SNAPSHOT_SUBJECT}{label} working tree", None)


def _big_untracked(repo: Path) -> list[tuple[str, int]]:
    listing = _run(repo, ["ls-files", "--others", "--exclude-standard", "-z"]).stdout
    big: list[tuple[str, int]] = []
    for rel in _text(listing).split("\0"):
        if not rel:
            continue
        try:
            size = os.lstat(repo / rel).st_size
        except OSError:
            continue
        if size > MAX_UNTRACKED_BYTES:
            big.append((rel, size))
    return big


def snapshot_of(repo: Path, branch: str) -> str:
    """The snapshot commit a preview branch grew from (its iterations sit on top of it)."""
    done = _run(repo, ["rev-list", "--first-parent", "--format=%s", branch, "--"], check=False)
    if done.returncode != 0:
        raise GitError(f"no branch {branch} in {repo}")
    lines = _text(done.stdout).splitlines()
    for header, subject in zip(lines[::2], lines[1::2], strict=False):
        if subject.startswith(SNAPSHOT_SUBJECT):
            return header.removeprefix("commit ").strip()
    raise GitError(f"{branch} is not a codexloop preview branch (no snapshot commit under it)")


def create_worktree(
    repo: Path, base: str, branch: str, path: Path, *, checkout: bool = True
) -> None:
    """Check out a new branch ``branch`` at commit ``base`` in a new worktree at ``path``
    (``checkout=False``: the worktree is made, its files are not written)."""
    _add_worktree(repo, Path(path), ["-b", branch, str(path), base], checkout)


def open_worktree(repo: Path, branch: str, path: Path, *, checkout: bool = True) -> None:
    """Check out the existing branch ``branch`` in a new worktree at ``path`` (``checkout``:
    as for :func:`create_worktree`)."""
    _run(repo, ["worktree", "prune"])  # a removed folder's worktree still holds the branch
    _add_worktree(repo, Path(path), [str(path), branch], checkout)


def _add_worktree(repo: Path, path: Path, args: list[str], checkout: bool) -> None:
    """``git worktree add`` at ``path``; its git dir remembered as the one it was made with."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(repo, ["worktree", "add", "--quiet", *([] if checkout else ["--no-checkout"]), *args])
    gitdir = _gitdir_from_file(path)
    if gitdir is not None:
        _GITDIRS[path.resolve()] = gitdir


def check_own_worktree(repo: Path, worktree: Path) -> None:
    """Raise :class:`GitError` unless ``worktree``'s git link names ``repo``'s own admin
    folder for it (``<common dir>/worktrees/<id>``, whose ``commondir`` leads back): a copy of
    the git dir elsewhere, with its own config, passes :func:`worktree_env`'s checks."""
    gitdir = Path(worktree_env(worktree)["GIT_DIR"])
    common_dir = (repo / git(repo, "rev-parse", "--git-common-dir").strip()).resolve()
    try:
        linked = (gitdir / (gitdir / "commondir").read_text("utf-8").strip()).resolve()
    except (OSError, UnicodeDecodeError):
        linked = None
    if gitdir.parent != common_dir / "worktrees" or linked != common_dir:
        raise GitError(f"{worktree} is not a linked git worktree of {repo}")


def _gitdir_from_file(worktree: Path) -> Path | None:
    """The git dir a linked worktree's ``.git`` file names, or None if it is not one."""
    dotgit = worktree / ".git"
    try:
        if not stat.S_ISREG(os.lstat(dotgit).st_mode):
            return None
        text = dotgit.read_text("utf-8", "surrogateescape").strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    gitdir = Path(text.removeprefix("gitdir:").strip())
    return (worktree / gitdir).resolve() if not gitdir.is_absolute() else gitdir.resolve()


def worktree_env(worktree: Path) -> dict[str, str]:
    """GIT_DIR/GIT_WORK_TREE for a sandbox worktree, checked against tampering."""
    root = Path(worktree).resolve()
    gitdir = _GITDIRS.get(root)
    if gitdir is None:
        gitdir = _gitdir_from_file(root)
        back = gitdir / "gitdir" if gitdir is not None else None
        try:
            points_back = (
                back is not None
                and Path(back.read_text("utf-8", "surrogateescape").strip()).resolve()
                == root / ".git"
            )
        except OSError:
            points_back = False
        if (
            gitdir is None
            or gitdir.is_relative_to(root)
            or gitdir.parent.name != "worktrees"
            or not (gitdir / "commondir").is_file()
            or not points_back
        ):
            raise GitError(f"{worktree} is not a linked git worktree (or its .git file changed)")
        _GITDIRS[root] = gitdir
    return {"GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(root)}


def is_ignored(repo: Path, path: str) -> bool:
    """Whether git ignores ``path`` (relative to the repository) in the checkout."""
    return _run(repo, ["check-ignore", "-q", "--", path], check=False).returncode == 0


# --------------------------------------------------------------------------- preview branches


@dataclass(frozen=True)
class PreviewBranch:
    """A ``codexloop/*`` branch, and the worktree it is checked out in, if any."""

    name: str
    worktree: Path | None
    sha: str
    subject: str
    committed_at: datetime


def _worktrees(repo: Path) -> dict[str, Path]:
    """Branch ref -> path of the (existing) worktree it is checked out in."""
    out = _text(_run(repo, ["worktree", "list", "--porcelain", "-z"]).stdout)
    found: dict[str, Path] = {}
    path: Path | None = None
    branch: str | None = None
    prunable = False
    for field in [*out.split("\0"), ""]:
        if not field:  # end of a record
            if path is not None and branch is not None and not prunable:
                found[branch] = path
            path, branch, prunable = None, None, False
        elif field.startswith("worktree "):
            path = Path(field.removeprefix("worktree "))
        elif field.startswith("branch "):
            branch = field.removeprefix("branch ")
        elif field == "prunable" or field.startswith("prunable "):
            prunable = True
    return found


def preview_branches(repo: Path) -> list[PreviewBranch]:
    """codexloop's preview branches, most recently committed first."""
    fmt = "%(refname)%00%(objectname)%00%(committerdate:unix)%00%(subject)"
    out = _text(
        _run(
            repo,
            [
                "for-each-ref",
                "--sort=-committerdate",
                f"--format={fmt}",
                f"refs/heads/{PREVIEW_PREFIX}",
            ],
        ).stdout
    )
    worktrees = _worktrees(repo) if out.strip() else {}
    branches = []
    for line in out.splitlines():
        parts = line.split("\0")
        if len(parts) != 4:
            continue
        ref, sha, stamp, subject = parts
        branches.append(
            PreviewBranch(
                name=ref.removeprefix("refs/heads/"),
                worktree=worktrees.get(ref),
                sha=sha,
                subject=subject,
                committed_at=datetime.fromtimestamp(int(stamp or 0), tz=UTC),
            )
        )
    return branches


def remove_worktree(repo: Path, path: Path, branch: str | None = None) -> None:
    """Remove the worktree at ``path`` (even with changes in it), then ``branch`` if given."""
    path = Path(path)
    # Not `git worktree remove`: it would look at the worktree's files (and any repository the
    # model nested in them). Delete the folder without following a link, then let git forget it.
    if os.path.lexists(path):
        safefs.remove_tree(path)
        if os.path.lexists(path):
            raise GitError(f"cannot remove the worktree {path}")
    _run(repo, ["worktree", "prune"])
    _GITDIRS.pop(path.resolve(), None)
    if branch is not None:
        exists = _run(
            repo, ["show-ref", "--verify", "--quiet", f"refs/heads/{branch}"], check=False
        )
        if exists.returncode == 0:
            _run(repo, ["branch", "-D", "--quiet", branch])


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class FileConflict:
    """A file that cannot be brought over without losing someone's change."""

    path: str
    reason: str


@dataclass(frozen=True)
class ApplyResult:
    """What :func:`apply_changes` wrote and deleted, or why it wrote nothing."""

    written: list[str]
    deleted: list[str]
    conflicts: list[FileConflict]

    @property
    def ok(self) -> bool:
        return not self.conflicts


@dataclass
class _Version:
    """One side of a change as stored in git (content in working-tree form)."""

    mode: str
    sha: str
    data: bytes = b""

    @property
    def executable(self) -> bool:
        return self.mode == "100755"

    @property
    def kind(self) -> str:
        return "link" if self.mode == _SYMLINK else "file"


@dataclass(frozen=True)
class _Disk:
    """The developer's file as it is now."""

    kind: str  # "file", "link", "dir" or "other"
    data: bytes
    perm: int

    @property
    def executable(self) -> bool:
        return self.kind == "file" and bool(self.perm & stat.S_IXUSR)


@dataclass(frozen=True)
class _Write:
    path: str
    data: bytes
    kind: str  # "file" or "link"
    executable: bool
    perm: int | None  # permissions of the file being replaced, if any


@dataclass(frozen=True)
class _Chmod:
    path: str
    perm: int


@dataclass(frozen=True)
class _Delete:
    path: str


_Action = _Write | _Chmod | _Delete


def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:_BINARY_PROBE]


def _same(disk: _Disk, version: _Version) -> bool:
    return disk.kind == version.kind and disk.data == version.data


def _with_exec(perm: int, executable: bool) -> int:
    return perm | ((perm & 0o444) >> 2) if executable else perm & ~0o111


def _unsafe(path: str) -> bool:
    parts = path.split("/")
    return any(p in ("", ".", "..") or p.lower() == ".git" for p in parts)


def _changes(
    repo: Path, base: str, result: str
) -> dict[str, tuple[_Version | None, _Version | None]]:
    out = _run(
        repo, ["diff-tree", "-r", "-z", "--no-renames", "--no-commit-id", base, result]
    ).stdout
    fields = out.split(b"\0")
    changes: dict[str, tuple[_Version | None, _Version | None]] = {}
    for i in range(0, len(fields) - 1, 2):
        meta, raw_path = fields[i], fields[i + 1]
        if not meta.startswith(b":"):
            continue
        old_mode, new_mode, old_sha, new_sha, _status = _text(meta[1:]).split(" ")
        old = _Version(old_mode, old_sha) if old_sha != _NULL_SHA else None
        new = _Version(new_mode, new_sha) if new_sha != _NULL_SHA else None
        changes[_text(raw_path)] = (old, new)
    return changes


def _load(repo: Path, items: list[tuple[str, _Version]]) -> None:
    """Fill in contents, converted as a checkout would write them (eol, smudge filters)."""
    batch = [(p, v) for p, v in items if v.mode != _GITLINK and "\n" not in p]
    if batch:
        request = b"".join(f"{v.sha} {p}\n".encode("utf-8", "surrogateescape") for p, v in batch)
        out = _run(repo, ["cat-file", "--batch", "--filters"], input=request).stdout
        pos = 0
        for _path, version in batch:
            end = out.index(b"\n", pos)
            header = out[pos:end].split(b" ")
            if len(header) != 3:
                raise GitError(f"git cat-file: unexpected answer {out[pos:end]!r}")
            size = int(header[2])
            version.data = out[end + 1 : end + 1 + size]
            pos = end + 1 + size + 1
    for path, version in items:  # names with a newline cannot go through --batch
        if version.mode != _GITLINK and "\n" in path:
            version.data = _run(
                repo, ["cat-file", "--filters", f"--path={path}", version.sha]
            ).stdout


def _read_disk(full: Path) -> _Disk | None:
    try:
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            return _Disk("link", os.readlink(os.fsencode(full)), stat.S_IMODE(st.st_mode))
        if stat.S_ISDIR(st.st_mode):
            return _Disk("dir", b"", stat.S_IMODE(st.st_mode))
        if not stat.S_ISREG(st.st_mode):
            return _Disk("other", b"", stat.S_IMODE(st.st_mode))
        return _Disk("file", full.read_bytes(), stat.S_IMODE(st.st_mode))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _obstacle(repo: Path, path: str, deleting: set[str]) -> tuple[str | None, bool]:
    """(reason a parent directory of ``path`` blocks it, whether a parent is missing)."""
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        parent = "/".join(parts[:i])
        try:
            mode = os.lstat(repo / parent).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None, True
        if stat.S_ISDIR(mode):
            continue
        if parent in deleting:
            return None, True
        what = "a symlink" if stat.S_ISLNK(mode) else "a file"
        return f"{what} on disk is in the way ({parent})", False
    return None, False


def _dir_vanishes(full: Path, rel: str, deleting: set[str]) -> bool:
    """True if everything under the directory ``rel`` is about to be deleted."""
    for dirpath, dirnames, filenames in os.walk(full):
        if not dirnames and not filenames:
            return False  # an empty directory stays: nothing would remove it
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            sub = Path(dirpath, name).relative_to(full).as_posix()
            if f"{rel}/{sub}" not in deleting:
                return False
    return True


def _merge(repo: Path, ours: bytes, base: bytes, theirs: bytes) -> bytes | None:
    """``git merge-file``: the clean merge, or None when the same lines changed."""
    with tempfile.TemporaryDirectory(prefix="codexloop-merge-") as tmp:
        names = []
        for label, data in (("ours", ours), ("base", base), ("theirs", theirs)):
            Path(tmp, label).write_bytes(data)
            names.append(str(Path(tmp, label)))
        done = _run(repo, ["merge-file", "-p", *names], check=False)
    if done.returncode == 0:
        return done.stdout
    if 0 < done.returncode < 128:
        return None
    raise GitError(f"git merge-file failed ({done.returncode}): {done.stderr.strip()}")


def _plan(
    repo: Path,
    path: str,
    base: _Version | None,
    theirs: _Version | None,
    deleting: set[str],
) -> _Action | FileConflict | None:
    """What to do with one file: an action, a conflict, or nothing."""
    if _unsafe(path):
        return FileConflict(path, "unsafe path")
    if _GITLINK in (base and base.mode, theirs and theirs.mode):
        return FileConflict(path, "submodule changes are not applied")
    blocked, parent_missing = _obstacle(repo, path, deleting)
    if blocked:
        return FileConflict(path, blocked)
    ours = None if parent_missing else _read_disk(repo / path)
    if ours is not None and ours.kind == "dir" and _dir_vanishes(repo / path, path, deleting):
        ours = None

    if theirs is None:  # deleted in the result
        if ours is None:
            return None
        if base is not None and _same(ours, base):
            return _Delete(path)
        return FileConflict(path, "deleted in the result but changed on disk")
    if base is None:  # added in the result
        if ours is None:
            return _Write(path, theirs.data, theirs.kind, theirs.executable, None)
        if _same(ours, theirs):
            return _exec_fix(path, ours, None, theirs)
        return FileConflict(path, "added in the result but a different file exists on disk")
    if ours is None:
        if theirs.kind == base.kind and theirs.data == base.data:
            return None  # only the mode changed, and the developer deleted the file
        return FileConflict(path, "changed in the result but deleted on disk")
    if ours.kind in ("dir", "other"):
        return FileConflict(
            path, f"a {'directory' if ours.kind == 'dir' else 'special file'} is on disk"
        )
    if theirs.kind == base.kind and theirs.data == base.data:
        return _exec_fix(path, ours, base, theirs)  # only the mode changed
    if _same(ours, base):
        perm = ours.perm if ours.kind == "file" else None
        return _Write(path, theirs.data, theirs.kind, theirs.executable, perm)
    if _same(ours, theirs):
        return _exec_fix(path, ours, base, theirs)
    if "link" in (ours.kind, base.kind, theirs.kind):
        return FileConflict(path, "symlink changed on both sides")
    if _is_binary(ours.data) or _is_binary(base.data) or _is_binary(theirs.data):
        return FileConflict(path, "binary file changed on both sides")
    merged = _merge(repo, ours.data, base.data, theirs.data)
    if merged is None:
        return FileConflict(path, "both changed the same lines")
    executable = theirs.executable if ours.executable == base.executable else ours.executable
    return _Write(path, merged, "file", executable, ours.perm)


def _exec_fix(path: str, ours: _Disk, base: _Version | None, theirs: _Version) -> _Chmod | None:
    """Take the result's executable bit, unless the developer changed it meanwhile."""
    if ours.kind != "file" or theirs.kind != "file" or ours.executable == theirs.executable:
        return None
    if base is not None and base.kind == "file" and ours.executable != base.executable:
        return None
    return _Chmod(path, _with_exec(ours.perm, theirs.executable))


def _write_file(repo: Path, action: _Write) -> None:
    target = repo / action.path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.codexloop-{secrets.token_hex(4)}.tmp")
    try:
        if action.kind == "link":
            os.symlink(os.fsdecode(action.data), tmp)
        else:
            # New files get the umask applied by open(), like a checkout.
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777 if action.executable else 0o666
            )
            with os.fdopen(fd, "wb") as handle:
                handle.write(action.data)
            if action.perm is not None:
                os.chmod(tmp, _with_exec(action.perm, action.executable))
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _prune_empty_dirs(repo: Path, path: str) -> None:
    parent = (repo / path).parent
    while parent != repo and repo in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def apply_changes(
    repo: Path,
    base: str,
    result: str,
    paths: Collection[str] | None = None,
    leave_out: Collection[str] = (),
) -> ApplyResult:
    """Bring the changes from commit ``base`` to ``result`` into the working tree of ``repo``.

    Per file, three-way: base = the snapshot, theirs = the result, ours = the file on disk
    now, so edits the developer made meanwhile are kept. All or nothing: if any file
    conflicts, nothing is written. ``paths`` limits the apply to those repo-relative paths;
    ``leave_out`` are never written (the exam: the developer's own). The index is never
    touched.
    """
    repo = Path(repo)
    changes = _changes(repo, base, result)
    for rel in leave_out:
        changes.pop(rel, None)
    if paths is not None:
        wanted = {p.removeprefix("./") for p in paths}
        changes = {p: c for p, c in changes.items() if p in wanted}
    _load(repo, [(p, v) for p, pair in changes.items() for v in pair if v is not None])
    deleting = {p for p, (_old, new) in changes.items() if new is None}

    actions: list[_Action] = []
    conflicts: list[FileConflict] = []
    for path in sorted(changes):
        old, new = changes[path]
        outcome = _plan(repo, path, old, new, deleting)
        if isinstance(outcome, FileConflict):
            conflicts.append(outcome)
        elif outcome is not None:
            actions.append(outcome)
    if conflicts:
        return ApplyResult([], [], conflicts)

    deleted = [a.path for a in actions if isinstance(a, _Delete)]
    for path in deleted:
        os.unlink(repo / path)
    for path in deleted:
        _prune_empty_dirs(repo, path)
    written = []
    for action in actions:
        if isinstance(action, _Write):
            _write_file(repo, action)
            written.append(action.path)
        elif isinstance(action, _Chmod):
            os.chmod(repo / action.path, action.perm)
            written.append(action.path)
    return ApplyResult(written, deleted, [])
