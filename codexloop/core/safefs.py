"""Host-side file access inside a directory the model controls, without following links.

The sandbox's worktree is written by model commands, so any name in it may be a symlink
to a file or folder outside, a FIFO that blocks whoever opens it, a socket or a device.
Every function here takes a trusted ``root`` (opened as is) and a relative path, and walks
the path one component at a time through directory file descriptors opened with
``O_NOFOLLOW``: a symlink is never followed at any component, only regular files are
opened (``lstat`` first, then ``O_NONBLOCK | O_NOFOLLOW`` and ``fstat`` to be sure, so a
FIFO or device is never opened blocking), and reads can be bounded in size.

Failures are ``OSError`` subclasses whose messages a model can read and act on.

Over 400 lines: every host-side access to the model's worktree goes through these few
functions, so their no-link, regular-file rules are audited in one place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

Kind = Literal["file", "dir", "symlink", "fifo", "socket", "device", "other"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 1 << 20

_KIND_NAMES = {
    "symlink": "a symlink",
    "fifo": "a FIFO (named pipe)",
    "socket": "a socket",
    "device": "a device file",
    "other": "not a regular file",
    "dir": "a folder",
}


class UnsafePath(OSError):
    """The path cannot be used safely: a link, a special file, a bad name."""

    def __init__(self, message: str, err: int = errno.EPERM) -> None:
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SymlinkInPath(UnsafePath):
    """A component of the path (or its last name) is a symlink; it is not followed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.ELOOP)


class NotADir(UnsafePath):
    """A component of the path that should be a folder is a file or a special file."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.ENOTDIR)


class NotRegularFile(UnsafePath):
    """The path names a FIFO, socket, device or symlink where a regular file is needed."""

    def __init__(self, message: str, kind: Kind) -> None:
        super().__init__(message, errno.EINVAL)
        self.kind = kind


class FileTooLarge(UnsafePath):
    """The file is larger than the caller's limit."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message, errno.EFBIG)
        self.size = size


def kind_of(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def describe(kind: Kind) -> str:
    """'a FIFO (named pipe)', 'a symlink', ... for messages."""
    return _KIND_NAMES.get(kind, "a regular file")


def parts_of(rel: str | PurePosixPath) -> list[str]:
    """The components of a relative path; refuses absolute paths, ``..`` and NUL bytes."""
    text = str(rel)
    if "\x00" in text:
        raise UnsafePath(f"{text!r}: the path contains a NUL byte")
    pure = PurePosixPath(text)
    if pure.is_absolute():
        raise UnsafePath(f"{text}: an absolute path where a relative one is needed")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"{text}: '..' is not allowed")
    return parts


def _open_root(root: Path | str) -> int:
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_dir_at(dir_fd: int, name: str, shown: str) -> int:
    """Open the folder ``name`` under ``dir_fd``; never through a symlink."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    st = _lstat_at(dir_fd, name)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, f"{shown} does not exist")
    kind = kind_of(st.st_mode)
    if kind == "symlink":
        raise SymlinkInPath(f"{shown} is a symlink; symlinks are not followed")
    raise NotADir(f"{shown} is {describe(kind) if kind != 'file' else 'a file'}, not a folder")


@contextlib.contextmanager
def _parent(
    root: Path | str, parts: list[str], *, create: bool = False, replace: bool = False
) -> Iterator[int]:
    """A file descriptor of the folder holding ``parts[-1]`` (of ``root`` when empty).

    ``create`` makes missing folders; ``replace`` also removes whatever non-folder stands
    where a folder is needed (a symlink, a file, a FIFO) and makes a real folder there.
    """
    fd = _open_root(root)
    try:
        for index, name in enumerate(parts[:-1]):
            shown = "/".join(parts[: index + 1])
            try:
                child = _open_dir_at(fd, name, shown)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
                child = _open_dir_at(fd, name, shown)
            except UnsafePath:
                if not replace:
                    raise
                remove_at(fd, name)
                os.mkdir(name, 0o777, dir_fd=fd)
                child = _open_dir_at(fd, name, shown)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def lstat(root: Path | str, rel: str | PurePosixPath) -> os.stat_result | None:
    """``lstat`` of ``rel`` under ``root`` reached without following links; None when missing.

    Raises SymlinkInPath or NotADir when a folder on the way is not a real folder.
    """
    parts = parts_of(rel)
    if not parts:
        return os.stat(root)
    try:
        with _parent(root, parts) as fd:
            return _lstat_at(fd, parts[-1])
    except FileNotFoundError:
        return None


def kind(root: Path | str, rel: str | PurePosixPath) -> Kind | None:
    """What ``rel`` is (from ``lstat``), or None when it does not exist."""
    st = lstat(root, rel)
    return None if st is None else kind_of(st.st_mode)


def read_file(root: Path | str, rel: str | PurePosixPath, *, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``rel`` under ``root``.

    No symlink is followed at any component; a FIFO, socket, device or symlink raises
    NotRegularFile without being opened blocking; more than ``limit`` bytes raises
    FileTooLarge. A missing file raises FileNotFoundError.
    """
    parts = parts_of(rel)
    shown = "/".join(parts) or "."
    if not parts:
        raise IsADirectoryError(errno.EISDIR, f"{shown} is a folder")
    with _parent(root, parts) as dir_fd:
        st = _lstat_at(dir_fd, parts[-1])
        if st is None:
            raise FileNotFoundError(errno.ENOENT, f"{shown} does not exist")
        found = kind_of(st.st_mode)
        if found == "dir":
            raise IsADirectoryError(errno.EISDIR, f"{shown} is a folder")
        if found != "file":
            raise NotRegularFile(
                f"{shown} is {describe(found)}, not a regular file: not opened", found
            )
        return read_at(dir_fd, parts[-1], limit=limit, shown=shown)


def read_at(dir_fd: int, name: str, *, limit: int | None = None, shown: str = "") -> bytes:
    """The bytes of the regular file ``name`` in the open folder ``dir_fd``: opened without
    following a link and without blocking, checked with ``fstat`` to be a regular file
    (NotRegularFile), at most ``limit`` bytes (FileTooLarge). ``shown``: its name in messages."""
    shown = shown or name
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkInPath(f"{shown} is a symlink; symlinks are not followed") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between lstat and open
            found = kind_of(st.st_mode)
            raise NotRegularFile(f"{shown} is {describe(found)}, not a regular file", found)
        if limit is not None and st.st_size > limit:
            raise FileTooLarge(
                f"{shown} is too large ({st.st_size} bytes, the limit is {limit})", st.st_size
            )
        # Regular files ignore O_NONBLOCK; with a limit, reading stops past it even if the
        # file grew after fstat.
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise FileTooLarge(f"{shown} is too large (over {limit} bytes, the limit)", total)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular(
    root: Path | str, rel: str | PurePosixPath, *, limit: int | None = None
) -> bytes | None:
    """Like read_file, but None when ``rel`` is missing, not a regular file, or behind a
    link or non-folder (what a careful caller treats as "no such file")."""
    try:
        return read_file(root, rel, limit=limit)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, UnsafePath):
        return None


def write_file(
    root: Path | str,
    rel: str | PurePosixPath,
    data: bytes,
    *,
    replace_parents: bool = False,
    mode: int | None = None,
) -> None:
    """Write ``data`` to ``rel`` under ``root`` atomically (temp file + ``os.replace``).

    Missing folders are made one at a time, never through a link. A folder on the way that
    is a symlink or a file raises SymlinkInPath / NotADir, unless ``replace_parents``: then
    it is removed (the link itself, never what it points to) and a real folder made. A
    symlink or special file at the final name is replaced, never written through; a folder
    there raises IsADirectoryError. The mode of a regular file already there is kept
    (``mode`` overrides; new files get 0o666 less the umask).
    """
    parts = parts_of(rel)
    shown = "/".join(parts) or "."
    if not parts:
        raise IsADirectoryError(errno.EISDIR, f"{shown} is a folder")
    name = parts[-1]
    with _parent(root, parts, create=True, replace=replace_parents) as dir_fd:
        st = _lstat_at(dir_fd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"{shown} is a folder")
        keep = mode
        if keep is None and st is not None and stat.S_ISREG(st.st_mode):
            keep = stat.S_IMODE(st.st_mode) & 0o777
        temp = f".{name[:100]}.codexloop-{uuid.uuid4().hex[:12]}.tmp"
        fd = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o666,
            dir_fd=dir_fd,
        )
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if keep is not None:
                    os.fchmod(fd, keep)
            finally:
                os.close(fd)
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise


def remove(root: Path | str, rel: str | PurePosixPath) -> bool:
    """Remove ``rel`` under ``root``: a file, link or special file is unlinked, a folder
    removed with everything in it through folder descriptors (links inside are removed,
    never followed). False when there was nothing to remove, including when a folder on the
    way is a link or a file (the path is then not inside ``root``)."""
    parts = parts_of(rel)
    if not parts:
        raise UnsafePath("refusing to remove the root folder")
    try:
        with _parent(root, parts) as dir_fd:
            if _lstat_at(dir_fd, parts[-1]) is None:
                return False
            remove_at(dir_fd, parts[-1])
            return True
    except (FileNotFoundError, UnsafePath):
        return False


def remove_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` under the open folder ``dir_fd``: a whole folder through descriptors,
    never following a link. A tree too deep to walk here (a run can nest folders thousands
    deep) is handed to ``rm -rf``, through the same descriptor."""
    try:
        _remove_at(dir_fd, name)
    except (RecursionError, OSError) as exc:
        deep = isinstance(exc, RecursionError) or exc.errno in (
            errno.EMFILE,
            errno.ENFILE,
            errno.ENAMETOOLONG,
        )
        if not deep or not os.path.isdir(f"/proc/self/fd/{dir_fd}"):
            raise
        subprocess.run(
            ["rm", "-rf", "--", f"/proc/self/fd/{dir_fd}/{name}"],
            pass_fds=(dir_fd,),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=600,
            check=False,
        )
        if _lstat_at(dir_fd, name) is not None:
            raise OSError(errno.ENOTEMPTY, f"{name} could not be removed") from exc


def remove_tree(path: Path | str) -> None:
    """Remove a folder of the engine's own (scratch, run tree, worktree) and everything in it,
    however deep, never following a link inside; nothing there is fine. Errors are ignored."""
    path = Path(path)
    try:
        parent = os.open(path.parent, DIR_FLAGS)
    except OSError:
        return
    try:
        remove_at(parent, path.name)
    except OSError:
        pass
    finally:
        os.close(parent)


def _remove_at(dir_fd: int, name: str) -> None:
    st = _lstat_at(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        for entry in os.scandir(fd):
            _remove_at(fd, entry.name)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


@dataclass(frozen=True)
class Entry:
    """One name found by walk: its path relative to the root, its kind (from lstat), its
    size, and for a symlink the text of the link (never resolved)."""

    rel: str
    kind: Kind
    size: int
    link: str | None = None


def walk(
    root: Path | str,
    rel: str | PurePosixPath = ".",
    *,
    skip_dir: Callable[[str], bool] | None = None,
    limit: int | None = None,
) -> Iterator[Entry]:
    """Every entry under the folder ``rel`` (sorted, depth first), folders included.

    Kinds come from ``lstat``: a symlink to a folder is yielded as a symlink and never
    descended into. ``skip_dir(name)`` leaves a folder out (yielded but not entered).
    ``limit`` stops after that many entries. When ``rel`` is not a folder, its own entry
    is yielded alone.
    """
    parts = parts_of(rel)
    base = "/".join(parts)
    if not parts:
        fd = _open_root(root)
    else:
        with _parent(root, parts) as parent_fd:
            st = _lstat_at(parent_fd, parts[-1])
            if st is None:
                raise FileNotFoundError(errno.ENOENT, f"{base} does not exist")
            if not stat.S_ISDIR(st.st_mode):
                yield _entry(parent_fd, parts[-1], base, st)
                return
            fd = _open_dir_at(parent_fd, parts[-1], base)
    count = [0]
    try:
        yield from _walk_fd(fd, base, skip_dir, limit, count)
    finally:
        os.close(fd)


def _entry(dir_fd: int, name: str, rel: str, st: os.stat_result) -> Entry:
    found = kind_of(st.st_mode)
    link = None
    if found == "symlink":
        with contextlib.suppress(OSError):
            link = os.readlink(name, dir_fd=dir_fd)
    return Entry(rel, found, st.st_size, link)


def _walk_fd(
    fd: int,
    prefix: str,
    skip_dir: Callable[[str], bool] | None,
    limit: int | None,
    count: list[int],
) -> Iterator[Entry]:
    with os.scandir(fd) as listing:
        names = sorted(entry.name for entry in listing)
    for name in names:
        if limit is not None and count[0] >= limit:
            return
        st = _lstat_at(fd, name)
        if st is None:
            continue
        rel = f"{prefix}/{name}" if prefix else name
        entry = _entry(fd, name, rel, st)
        count[0] += 1
        yield entry
        if entry.kind != "dir" or (skip_dir is not None and skip_dir(name)):
            continue
        try:
            child = _open_dir_at(fd, name, rel)
        except OSError:
            continue  # swapped for a link or removed meanwhile
        try:
            yield from _walk_fd(child, rel, skip_dir, limit, count)
        finally:
            os.close(child)
