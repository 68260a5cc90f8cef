"""Recording the sandbox in git without letting git read the sandbox.

Host-side git never looks at the worktree: no ``git add``, ``status`` or ``diff`` runs on it,
so nothing the model wrote there (a nested repository with its own ``.git/config``, a
filter, textconv or diff driver, a FIFO, a name git refuses) is ever interpreted on the
host. Instead this module walks the worktree itself — through directory file descriptors,
never following a symlink, opening regular files only, each bounded in size — hashes what it
finds into git objects it writes directly, and builds the trees. Git is only asked to write a
commit of a finished tree and to move the branch.

What is left out, and said so: ``.git`` entries at any depth and other names git refuses,
FIFOs, sockets and devices, files over :data:`MAX_FILE_BYTES`, and new content past
:data:`MAX_SCAN_BYTES` in one recording. Ignored files (``.gitignore`` at any depth,
``info/exclude``, the developer's global excludes and the sandbox's own exclude file) stay
out, as with ``git add -A``; tracked files stay tracked even when ignored.

Files the model has not touched keep the blob git checked out (a stat cache seeded right
after the checkout), so clean and smudge filters (line endings, LFS) never make an untouched
file look changed.

Over 400 lines: the fd walk, the ignore rules and the stat cache share their state and run
on every test run; together they replace ``git add -A`` without running git's filters.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
import time
import zlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codexloop.core import gitops, safefs

MAX_FILE_BYTES = gitops.MAX_UNTRACKED_BYTES
"""A file larger than this is never recorded (like the snapshot's rule)."""
MAX_SCAN_BYTES = 256 << 20
"""New content read in one recording; past it, further new or changed files are left out."""
MAX_ENTRIES = 500_000
"""Entries walked in one recording: a model cannot make the walk endless."""
MAX_IGNORE_BYTES = 1 << 20
"""A ``.gitignore`` larger than this is not read."""
MAX_WILDCARDS = 4
"""A ``.gitignore`` pattern with more runs of ``*`` than this is not applied (``*a*a*a*a*b``
would make Python's backtracking matcher run for hours on a long name)."""
MAX_PATTERN_CHARS = 1000
MAX_DEPTH = 256
"""Folders nested deeper than this are not recorded (with a notice)."""
_WILDCARDS = re.compile(r"\*+")
_RACY_NS = 100_000_000  # a file changed this close to a scan is hashed again next time

_FILE = "100644"
_EXEC = "100755"
_LINK = "120000"
_TREE = "40000"
_GITLINK = "160000"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def refused_name(name: str, *, link: bool = False) -> str | None:
    """Why git would refuse ``name`` as a path component (None: it is fine).

    At least as strict as git's ``verify_path`` with ``core.protectNTFS`` (on by default):
    ``.git`` in any case, with trailing dots or spaces, an NTFS stream or its 8.3 short name.
    """
    lowered = name.lower()
    if name in ("", ".", "..") or "/" in name:
        return "not a valid name"
    if re.fullmatch(r"\.git[ .]*(?::.*)?", lowered) or re.fullmatch(r"git~\d+", lowered):
        return "git's own metadata (a nested repository)"
    if "\\" in name:
        return "a backslash in a name (git refuses it)"
    if link and lowered.rstrip(" .") in (".gitmodules", ".gitattributes", ".gitignore", ".mailmap"):
        return "a symlink git refuses to record"
    return None


# --------------------------------------------------------------------------- ignore rules


@dataclass(frozen=True)
class _Layer:
    """The ignore patterns of one source: its folder (relative to the root) and one regex."""

    base: str
    regex: re.Pattern[str] | None
    ignores: tuple[bool, ...]  # per pattern in file order: True ignores, False re-includes


def _layer(base: str, text: str) -> _Layer:
    from pathspec.patterns.gitignore.basic import GitIgnoreBasicPattern

    alternatives: list[str] = []
    ignores: list[bool] = []  # per pattern, in file order
    for line in text.splitlines():
        if len(line) > MAX_PATTERN_CHARS or len(_WILDCARDS.findall(line)) > MAX_WILDCARDS:
            continue  # matched by backtracking, such a pattern could take hours: not applied
        try:
            pattern = GitIgnoreBasicPattern(line)
        except Exception:  # a malformed line: git skips it too
            continue
        if pattern.include is None or pattern.regex is None:
            continue
        source = re.sub(r"\(\?P<\w+>", "(?:", pattern.regex.pattern)
        alternatives.append(f"(?P<p{len(alternatives)}>{source})")
        ignores.append(bool(pattern.include))
    if not alternatives:
        return _Layer(base, None, ())
    # Last pattern wins: put it first, the regex then reports the first alternative matching.
    order = list(range(len(alternatives)))[::-1]
    regex = re.compile("|".join(alternatives[i] for i in order))
    return _Layer(base, regex, tuple(ignores))


def _matches(layer: _Layer, rel: str) -> bool | None:
    """True: ``rel`` (a folder ends with ``/``) is ignored by this layer, False: re-included,
    None: no pattern of it matches."""
    if layer.regex is None:
        return None
    if layer.base:
        if not rel.startswith(layer.base + "/"):
            return None
        rel = rel[len(layer.base) + 1 :]
    match = layer.regex.match(rel)
    if match is None or match.lastgroup is None:
        return None
    return layer.ignores[int(match.lastgroup[1:])]


def _ignored(layers: list[_Layer], rel: str) -> bool:
    for layer in reversed(layers):  # the deepest .gitignore speaks first
        verdict = _matches(layer, rel)
        if verdict is not None:
            return verdict
    return False


def _read_small(path: Path, limit: int) -> str:
    """A trusted host file (global excludes): regular files only, bounded."""
    try:
        fd = os.open(path, _OPEN_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, limit).decode("utf-8", "replace")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class Entry:
    """One recorded path: its git mode and object id."""

    mode: str
    sha: str


@dataclass
class Scan:
    """The sandbox as recorded: a tree, its entries, and what was left out and why."""

    tree: str
    entries: dict[str, Entry]
    left_out: list[tuple[str, str]] = field(default_factory=list)


class _Objects:
    """Loose objects written straight into the repository's object store."""

    def __init__(self, objects: Path, algorithm: str) -> None:
        self.dir = objects
        self.algorithm = algorithm

    def write(self, kind: str, data: bytes) -> str:
        """Store ``data`` as a ``kind`` object (unless it is there already); its id."""
        header = f"{kind} {len(data)}\0".encode()
        digest = hashlib.new(self.algorithm)
        digest.update(header)
        digest.update(data)
        sha = digest.hexdigest()
        folder = self.dir / sha[:2]
        path = folder / sha[2:]
        if path.exists():
            return sha
        folder.mkdir(exist_ok=True)
        tmp = folder / f"tmp_obj_codexloop_{os.getpid()}_{threading.get_ident()}"
        with open(tmp, "wb") as handle:
            handle.write(zlib.compress(header + data, 1))
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
        return sha


def _small_file(path: Path) -> str:
    """A regular file's text, stripped ("" for anything else: a pipe is never opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)


def _commit_bytes(
    tree: str, parent: str | None, message: str, author: str, committer: str
) -> bytes:
    """A git commit object's body, as ``git commit-tree -m`` writes it, dated now."""
    now = int(time.time())
    offset = time.localtime(now).tm_gmtoff
    hours, minutes = divmod(abs(offset) // 60, 60)
    date = f"{now} {'-' if offset < 0 else '+'}{hours:02d}{minutes:02d}"
    lines = [f"tree {tree}", *([f"parent {parent}"] if parent else [])]
    lines += [f"author {author} {date}", f"committer {committer} {date}", "", message]
    # surrogateescape: an identity git gave as bytes that are not UTF-8 is written as given.
    return ("\n".join(lines).rstrip("\n") + "\n").encode("utf-8", "surrogateescape")


def _tree_bytes(items: dict[str, tuple[str, str]], size: int) -> bytes:
    """A git tree object's body: entries sorted as git sorts them (folders as ``name/``)."""

    def key(name: str) -> bytes:
        encoded = os.fsencode(name)
        return encoded + b"/" if items[name][0] == _TREE else encoded

    body = bytearray()
    for name in sorted(items, key=key):
        mode, sha = items[name]
        body += f"{mode} ".encode() + os.fsencode(name) + b"\0" + bytes.fromhex(sha)
    assert all(len(sha) == size * 2 for _m, sha in items.values())
    return bytes(body)


# --------------------------------------------------------------------------- the recorder


class Recorder:
    """Records one sandbox worktree; keeps a stat cache between recordings (thread-safe)."""

    def __init__(
        self, worktree: Path, exclude_file: Path | None = None, *, fresh_checkout: bool = False
    ) -> None:
        self.root = Path(worktree).resolve()
        env = gitops.worktree_env(self.root)
        self.gitdir = Path(env["GIT_DIR"])
        # One git for both (a git too old to know --show-object-format echoes it: SHA-1).
        asked = ("rev-parse", "--git-common-dir", "--show-object-format")
        common, fmt, *_ = [*gitops.git(self.gitdir, *asked, env=self._env()).splitlines(), ""]
        self.common = (self.gitdir / common).resolve()
        self.objects = _Objects(self.common / "objects", "sha256" if fmt == "sha256" else "sha1")
        self.exclude_file = exclude_file
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, ...], Entry]] = {}
        self._commits: dict[str, dict[str, Entry]] = {}  # a commit's entries never change
        # Read at the first scan: building them imports pathspec (~20 ms), not a cost for a
        # session's start, which records nothing before its baseline run.
        self._global: list[_Layer] | None = None
        self.tracked: dict[str, Entry] = {}
        self._identities: tuple[str, str] | None = None  # author, committer: asked once
        self._head: tuple[str, str] | None = None  # the last commit made here, and its tree
        self._index_behind: str | None = None  # a commit the worktree's index is yet to follow
        if fresh_checkout:
            self.seed()
        else:  # anything may have changed since the checkout: every file is read once
            self.tracked = self.head_entries()

    def _env(self) -> dict[str, str]:
        # GIT_DIR alone: a bare view of the repository, no work tree, so no attributes, ignore
        # files or nested repositories of the sandbox can be consulted.
        return {"GIT_DIR": str(self.gitdir)}

    def git(self, *args: str, input: bytes | None = None) -> str:
        return gitops.git(self.gitdir, *args, env=self._env(), input=input)

    def _global_layers(self) -> list[_Layer]:
        sources: list[Path] = []
        configured = gitops.git(
            self.gitdir, "config", "--path", "core.excludesFile", env=self._env(), check=False
        ).strip()
        if configured:
            sources.append(Path(configured).expanduser())
        else:
            xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
            sources.append(Path(xdg) / "git" / "ignore")
        sources.append(self.common / "info" / "exclude")
        if self.exclude_file is not None:
            sources.append(self.exclude_file)
        return [_layer("", _read_small(p, MAX_IGNORE_BYTES)) for p in sources]

    def head_entries(self, commit: str = "HEAD") -> dict[str, Entry]:
        """Every path of ``commit``'s tree (files, links, submodules) with mode and id."""
        return tree_entries(self.gitdir, commit)

    def set_exclude(self, exclude_file: Path | None) -> None:
        """Another exclude file (the sandbox's own, once it shares paths); the cache stays."""
        with self._lock:
            self.exclude_file = exclude_file
            self._global = None

    def seed(self) -> None:
        """Remember what git checked out: untouched files keep their blob whatever the filters.

        Only right after the checkout (``fresh_checkout``): a file changed since then with its
        size kept would otherwise be taken for the checked-out blob, and the change lost."""
        self.tracked = self.head_entries()
        now = time.time_ns()
        for rel, entry in self.tracked.items():
            if entry.mode == _GITLINK:
                continue
            try:
                st = os.lstat(self.root / rel)
            except OSError:
                continue
            want_link = entry.mode == _LINK
            kind_ok = stat.S_ISLNK(st.st_mode) if want_link else stat.S_ISREG(st.st_mode)
            if kind_ok and now - st.st_ctime_ns > _RACY_NS and _mode_of(st) == entry.mode:
                self._cache[rel] = (stat_key(st), entry)

    # -- scanning -------------------------------------------------------------------

    def scan(self, leave_out: Collection[str] = ()) -> Scan:
        """Record the worktree as it is now (blocking); ``leave_out``: paths not recorded
        whatever the worktree holds."""
        with self._lock:
            return self._scan(leave_out)

    def _scan(self, leave_out: Collection[str]) -> Scan:
        started = time.time_ns()
        walk = _Walk(self, started)
        if self._global is None:
            self._global = self._global_layers()
        root_fd = os.open(self.root, safefs.DIR_FLAGS)
        try:
            walk.folder(root_fd, "", list(self._global), ignored=False)
        finally:
            os.close(root_fd)
        entries = walk.entries
        for rel in leave_out:
            entries.pop(rel, None)
        # Gitlinks (the developer's submodules) are carried over as they are.
        for rel, entry in self.tracked.items():
            if entry.mode == _GITLINK:
                entries.setdefault(rel, entry)
        self._cache = walk.cache
        return Scan(self._write_trees(entries), entries, walk.left_out)

    def _write_trees(self, entries: dict[str, Entry]) -> str:
        folders: dict[str, dict[str, tuple[str, str]]] = {"": {}}
        for rel in entries:
            parts = rel.split("/")
            for i in range(1, len(parts)):
                folders.setdefault("/".join(parts[:i]), {})
        size = hashlib.new(self.objects.algorithm).digest_size
        for rel, entry in entries.items():
            parent, _, name = rel.rpartition("/")
            folders[parent][name] = (entry.mode, entry.sha)
        for folder in sorted(folders, key=lambda f: -f.count("/") if f else 1):
            if not folder:
                continue
            sha = self.objects.write("tree", _tree_bytes(folders[folder], size))
            parent, _, name = folder.rpartition("/")
            folders[parent][name] = (_TREE, sha)
        return self.objects.write("tree", _tree_bytes(folders[""], size))

    # -- what the engine asks of it -------------------------------------------------------

    def commit(self, message: str) -> str | None:
        """Record the worktree as a commit on its branch, its index following at once; None
        when nothing changed."""
        sha = self.commit_scan(self.scan(), message)
        self.refresh_index()
        return sha

    def commit_scan(self, scan: Scan, message: str) -> str | None:
        """Record ``scan`` as a commit on the branch; None when it is the tree HEAD has. One
        git process when HEAD is where the last commit left it: the commit object is written
        here (identity asked of git once), the ref moved by ``update-ref``, and the
        worktree's index follows when a command is about to read it (:meth:`refresh_index`)."""
        head, head_tree = self._head_now()
        if scan.tree == head_tree:
            return None
        if self._identities is None:
            self._identities = gitops.identities(self.gitdir, self._env())
        sha = self.objects.write(
            "commit", _commit_bytes(scan.tree, head, message, *self._identities)
        )
        subject = message.splitlines()[0] if message.strip() else "commit"
        self.git("update-ref", "-m", f"commit: {subject}", "HEAD", sha, head or "0" * 40)
        with self._lock:
            self.tracked = dict(scan.entries)
            self._head = (sha, scan.tree)
            self._index_behind = sha
        return sha

    def refresh_index(self) -> None:
        """The worktree's index as the last commit left it (objects only, no work tree read),
        so that `git status` and `git diff` in the sandbox show what is new since that commit:
        run before a command of the model's, and at the end (blocking)."""
        with self._lock:
            behind, self._index_behind = self._index_behind, None
        if behind is not None:
            self.git("read-tree", behind)

    def _head_now(self) -> tuple[str | None, str | None]:
        """HEAD's commit and tree: from memory when the branch's ref still names the last
        commit made here (read from its file), else from git."""
        kept = self._head
        if kept is not None:
            head = _small_file(self.gitdir / "HEAD")
            name = head[5:] if head.startswith("ref: refs/") else ""
            # Only a name git itself would take: never out of the repository's refs.
            if name and ".." not in name.split("/") and _small_file(self.common / name) == kept[0]:
                return kept
        done = gitops.git(
            self.gitdir, "rev-parse", "HEAD", "HEAD^{tree}", env=self._env(), check=False
        ).split()
        return (done[0], done[1]) if len(done) == 2 else (None, None)

    def changed_paths(self, base: str) -> list[str]:
        """Paths whose recorded content differs from ``base``'s (a commit: listed once)."""
        now = self.scan().entries
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", base):
            then = self.head_entries(base)  # a name may move: asked every time
        else:
            if base not in self._commits:
                self._commits[base] = self.head_entries(base)
            then = self._commits[base]
        return sorted(p for p in now.keys() | then.keys() if now.get(p) != then.get(p))

    def diff(self, base: str, options: Sequence[str] = (), pathspec: Sequence[str] = ()) -> str:
        """``git diff`` from ``base`` to the worktree as recorded now (no drivers, no colour)."""
        tree = self.scan().tree
        return diff_trees(self.gitdir, base, tree, options, pathspec)


def diff_trees(
    gitdir: Path, old: str, new: str, options: Sequence[str] = (), pathspec: Sequence[str] = ()
) -> str:
    """``git diff`` of two recorded trees or commits, read from the object store alone: a bare
    view of the repository (no work tree, so no attributes, drivers or textconv of the
    sandbox's), external diff and textconv off."""
    return gitops.git(
        gitdir,
        "diff",
        "--no-ext-diff",
        "--no-textconv",
        "--no-color",
        *options,
        old,
        new,
        *pathspec,
        env={"GIT_DIR": str(gitdir)},
    )


def stat_key(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's content may have (ctime cannot be set back)."""
    return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _mode_of(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return _LINK
    return _EXEC if st.st_mode & stat.S_IXUSR else _FILE


def _parents(rel: str) -> Iterator[str]:
    parts = rel.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


class _Walk:
    """One recording's walk through directory file descriptors."""

    def __init__(self, recorder: Recorder, started: int) -> None:
        self.recorder = recorder
        self.started = started
        self.entries: dict[str, Entry] = {}
        self.cache: dict[str, tuple[tuple[int, ...], Entry]] = {}
        self.left_out: list[tuple[str, str]] = []
        self.read = 0
        self.count = 0
        self.tracked = recorder.tracked
        self.tracked_dirs = {p for rel in recorder.tracked for p in _parents(rel)}

    def leave(self, rel: str, why: str) -> None:
        self.left_out.append((rel, why))

    def folder(self, fd: int, rel: str, layers: list[_Layer], *, ignored: bool) -> None:
        if rel.count("/") >= MAX_DEPTH:
            self.leave(rel, f"nested deeper than {MAX_DEPTH} folders")
            return
        prefix = f"{rel}/" if rel else ""
        try:
            names = sorted(entry.name for entry in os.scandir(fd))
        except OSError as exc:
            self.leave(rel or ".", f"cannot be listed ({exc.strerror})")
            return
        if ".gitignore" in names and not ignored:
            text = self._read_ignore(fd)
            if text:
                layers = [*layers, _layer(rel, text)]
        for name in names:
            self.count += 1
            if self.count > MAX_ENTRIES:
                if self.count == MAX_ENTRIES + 1:
                    self.leave(
                        rel or ".", f"more than {MAX_ENTRIES} entries: the rest not recorded"
                    )
                return
            path = prefix + name
            if not rel and name == ".git":
                continue  # the worktree's own link to its repository
            try:
                st = os.lstat(name, dir_fd=fd)
            except OSError:
                continue
            is_link = stat.S_ISLNK(st.st_mode)
            why = refused_name(name, link=is_link)
            if why is not None:
                self.leave(path, why)
                continue
            if self.tracked.get(path, Entry("", "")).mode == _GITLINK:
                continue  # a submodule's folder: its commit is carried over as it is
            if stat.S_ISDIR(st.st_mode):
                hidden = ignored or _ignored(layers, path + "/")
                if hidden and path not in self.tracked_dirs:
                    continue
                try:
                    child = os.open(name, safefs.DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    self.folder(child, path, layers, ignored=hidden)
                finally:
                    os.close(child)
                continue
            if not (stat.S_ISREG(st.st_mode) or is_link):
                if not (ignored or _ignored(layers, path)):
                    kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a special file"
                    self.leave(path, f"{kind} (only files and symlinks are recorded)")
                continue
            if (ignored or _ignored(layers, path)) and path not in self.tracked:
                continue
            self.file(fd, name, path, st)

    def file(self, fd: int, name: str, rel: str, st: os.stat_result) -> None:
        key = stat_key(st)
        cached = self.recorder._cache.get(rel)
        if cached is not None and cached[0] == key:
            self.entries[rel] = cached[1]
            self.cache[rel] = cached
            return
        if st.st_size > MAX_FILE_BYTES:
            self.leave(
                rel, f"{st.st_size / 2**20:.0f} MB, over the {MAX_FILE_BYTES >> 20} MB limit"
            )
            return
        if self.read + st.st_size > MAX_SCAN_BYTES:
            self.leave(
                rel, f"over the {MAX_SCAN_BYTES >> 20} MB of new content one recording takes"
            )
            return
        try:
            if stat.S_ISLNK(st.st_mode):
                data = os.fsencode(os.readlink(name, dir_fd=fd))
            else:
                data = safefs.read_at(fd, name, limit=MAX_FILE_BYTES, shown=rel)
        except OSError as exc:
            self.leave(rel, f"cannot be read ({exc.strerror or exc})")
            return
        self.read += len(data)
        entry = Entry(_mode_of(st), self.recorder.objects.write("blob", data))
        self.entries[rel] = entry
        if self.started - st.st_ctime_ns > _RACY_NS and self.started - st.st_mtime_ns > _RACY_NS:
            self.cache[rel] = (key, entry)

    def _read_ignore(self, fd: int) -> str:
        try:
            return safefs.read_at(fd, ".gitignore", limit=MAX_IGNORE_BYTES).decode(
                "utf-8", "replace"
            )
        except OSError:
            return ""


# --------------------------------------------------------------------------- one per worktree

_RECORDERS: dict[Path, Recorder] = {}
_RECORDERS_LOCK = threading.Lock()


def tree_entries(gitdir: Path, commit: str) -> dict[str, Entry]:
    """Every path of ``commit``'s tree (files, links, submodules) with mode and id, read from
    the object store of ``gitdir`` alone."""
    out = gitops.git(
        gitdir, "ls-tree", "-r", "-z", commit, env={"GIT_DIR": str(gitdir)}, check=False
    )
    found: dict[str, Entry] = {}
    for record in out.split("\0"):
        if not record:
            continue
        meta, _, rel = record.partition("\t")
        mode, _kind, sha = meta.split(" ")
        found[rel] = Entry(mode, sha)
    return found


def recorder(
    worktree: Path, exclude_file: Path | None = None, *, fresh_checkout: bool = False
) -> Recorder:
    """The recorder of a worktree: one per worktree, made on first use (``fresh_checkout``:
    right after git checked it out, so its stat data can stand for the checked-out blobs). A
    caller with another exclude file changes the exclude file, never the cache."""
    root = Path(worktree).resolve()
    with _RECORDERS_LOCK:
        found = _RECORDERS.get(root)
        if found is None or fresh_checkout:
            found = Recorder(root, exclude_file, fresh_checkout=fresh_checkout)
            _RECORDERS[root] = found
        elif found.exclude_file != exclude_file:
            found.set_exclude(exclude_file)
        return found


def forget(worktree: Path) -> None:
    with _RECORDERS_LOCK:
        _RECORDERS.pop(Path(worktree).resolve(), None)


def commit_all(worktree: Path, message: str, exclude_file: Path | None = None) -> str | None:
    """Commit every change in the worktree on its branch; None when nothing changed."""
    return recorder(worktree, exclude_file).commit(message)


def changed_paths(worktree: Path, base: str, exclude_file: Path | None = None) -> list[str]:
    """Repo-relative paths whose current content in the worktree differs from ``base``."""
    return recorder(worktree, exclude_file).changed_paths(base)
