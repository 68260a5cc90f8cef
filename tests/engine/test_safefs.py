"""core/safefs: file access under a root that follows no link and opens regular files only."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import anyio
import pytest

from codexloop.core import safefs


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "a.py").write_text("a = 1\n")
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret").write_text("s3cret\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "keep").write_text("keep\n")
    return folder


def _tree(folder: Path) -> list[tuple[str, str]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            content = path.read_text() if path.is_file() and not path.is_symlink() else ""
            found.append((str(path.relative_to(folder)), content))
    return sorted(found)


# -- read ------------------------------------------------------------------------------


def test_read_a_regular_file(root: Path) -> None:
    assert safefs.read_file(root, "src/a.py") == b"a = 1\n"
    assert safefs.read_file(root, "./src/a.py") == b"a = 1\n"


@pytest.mark.parametrize("rel", ["/etc/passwd", "../x", "src/../../x", "a\x00b"])
def test_bad_paths_are_refused(root: Path, rel: str) -> None:
    with pytest.raises(safefs.UnsafePath):
        safefs.read_file(root, rel)


def test_a_symlink_is_followed_at_no_component(root: Path, outside: Path) -> None:
    os.symlink(outside / "secret", root / "leak")
    os.symlink(outside, root / "src" / "out")
    os.symlink("a.py", root / "src" / "inside")  # even a link that stays inside
    with pytest.raises(safefs.NotRegularFile, match="leak is a symlink"):
        safefs.read_file(root, "leak")
    with pytest.raises(safefs.SymlinkInPath, match="src/out is a symlink"):
        safefs.read_file(root, "src/out/secret")
    with pytest.raises(safefs.NotRegularFile):
        safefs.read_file(root, "src/inside")
    assert safefs.read_regular(root, "leak") is None
    assert safefs.read_regular(root, "src/out/secret") is None


@pytest.mark.anyio
async def test_a_fifo_is_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "pipe")
    with anyio.fail_after(10):
        with pytest.raises(safefs.NotRegularFile, match=r"pipe is a FIFO \(named pipe\)") as info:
            await anyio.to_thread.run_sync(safefs.read_file, root, "pipe")
    assert info.value.kind == "fifo"
    assert isinstance(info.value, OSError)


def test_a_socket_is_refused(root: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(root / "sock"))
        with pytest.raises(safefs.NotRegularFile, match="sock is a socket"):
            safefs.read_file(root, "sock")
        assert safefs.kind(root, "sock") == "socket"
    finally:
        server.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_device_is_refused_and_never_opened(root: Path) -> None:
    os.mknod(root / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: endless
    with pytest.raises(safefs.NotRegularFile, match="zero is a device file"):
        safefs.read_file(root, "zero")


def test_a_size_limit(root: Path) -> None:
    (root / "big").write_bytes(b"x" * 1000)
    assert safefs.read_file(root, "big", limit=1000) == b"x" * 1000
    with pytest.raises(safefs.FileTooLarge, match=r"big is too large \(1000 bytes") as info:
        safefs.read_file(root, "big", limit=999)
    assert info.value.size == 1000


def test_missing_files_and_folders(root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        safefs.read_file(root, "nope")
    with pytest.raises(FileNotFoundError):
        safefs.read_file(root, "no/such/file")
    with pytest.raises(IsADirectoryError):
        safefs.read_file(root, "src")
    with pytest.raises(safefs.NotADir, match=r"src/a\.py is a file, not a folder"):
        safefs.read_file(root, "src/a.py/x")
    assert safefs.kind(root, "nope") is None
    assert safefs.lstat(root, "no/such") is None


# -- write -----------------------------------------------------------------------------


def test_write_creates_folders_and_keeps_the_mode(root: Path) -> None:
    safefs.write_file(root, "new/deep/b.py", b"b = 2\n")
    assert (root / "new" / "deep" / "b.py").read_bytes() == b"b = 2\n"
    (root / "run.sh").write_text("echo\n")
    (root / "run.sh").chmod(0o755)
    safefs.write_file(root, "run.sh", b"echo hi\n")
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) == 0o755
    assert not [p for p in root.rglob("*.tmp")]  # no temp file left behind


def test_write_replaces_a_symlink_never_writes_through_it(root: Path, outside: Path) -> None:
    os.symlink(outside / "secret", root / "leak")
    os.symlink(outside / "absent", root / "dangling")
    safefs.write_file(root, "leak", b"mine\n")
    safefs.write_file(root, "dangling", b"mine\n")
    assert (outside / "secret").read_text() == "s3cret\n"
    assert not (outside / "absent").exists()
    assert not (root / "leak").is_symlink() and (root / "leak").read_text() == "mine\n"
    assert not (root / "dangling").is_symlink()


def test_write_replaces_a_hard_link_never_writes_through_it(root: Path, outside: Path) -> None:
    os.link(outside / "secret", root / "hard")
    safefs.write_file(root, "hard", b"mine\n")
    assert (outside / "secret").read_text() == "s3cret\n"
    assert (root / "hard").read_text() == "mine\n"


@pytest.mark.anyio
async def test_write_replaces_a_fifo_without_blocking(root: Path) -> None:
    os.mkfifo(root / "pipe")
    with anyio.fail_after(10):
        await anyio.to_thread.run_sync(safefs.write_file, root, "pipe", b"data\n")
    assert safefs.kind(root, "pipe") == "file"
    assert (root / "pipe").read_text() == "data\n"


def test_a_symlinked_parent_is_refused_or_replaced(root: Path, outside: Path) -> None:
    before = _tree(outside)
    os.symlink(outside, root / "tests")
    with pytest.raises(safefs.SymlinkInPath, match="tests is a symlink"):
        safefs.write_file(root, "tests/secret", b"x")
    with pytest.raises(safefs.SymlinkInPath):
        safefs.write_file(root, "tests/sub/keep", b"x")
    safefs.write_file(root, "tests/sub/keep", b"exam\n", replace_parents=True)
    assert _tree(outside) == before
    assert not (root / "tests").is_symlink()
    assert (root / "tests" / "sub" / "keep").read_text() == "exam\n"


def test_a_file_where_a_folder_belongs(root: Path) -> None:
    with pytest.raises(safefs.NotADir):
        safefs.write_file(root, "src/a.py/b.py", b"x")
    safefs.write_file(root, "src/a.py/b.py", b"x", replace_parents=True)
    assert (root / "src" / "a.py" / "b.py").read_bytes() == b"x"


def test_write_to_a_folder_is_refused(root: Path) -> None:
    with pytest.raises(IsADirectoryError):
        safefs.write_file(root, "src", b"x")


# -- remove ----------------------------------------------------------------------------


def test_remove_a_link_removes_the_link_only(root: Path, outside: Path) -> None:
    before = _tree(outside)
    os.symlink(outside, root / "out")
    os.symlink(outside / "secret", root / "leak")
    assert safefs.remove(root, "out") and safefs.remove(root, "leak")
    assert not os.path.lexists(root / "out") and not os.path.lexists(root / "leak")
    assert _tree(outside) == before


def test_remove_a_tree_does_not_follow_links_inside(root: Path, outside: Path) -> None:
    before = _tree(outside)
    (root / "d" / "e").mkdir(parents=True)
    os.symlink(outside, root / "d" / "e" / "out")
    os.symlink(outside / "sub", root / "d" / "sub")
    os.mkfifo(root / "d" / "pipe")
    assert safefs.remove(root, "d")
    assert not (root / "d").exists()
    assert _tree(outside) == before


def test_remove_behind_a_symlinked_parent_does_nothing(root: Path, outside: Path) -> None:
    before = _tree(outside)
    os.symlink(outside, root / "tests")
    assert safefs.remove(root, "tests/secret") is False
    assert safefs.remove(root, "tests/sub") is False
    assert safefs.remove(root, "missing") is False
    assert _tree(outside) == before
    with pytest.raises(safefs.UnsafePath):
        safefs.remove(root, ".")


# -- walk ------------------------------------------------------------------------------


def test_walk_reports_kinds_and_never_descends_into_links(root: Path, outside: Path) -> None:
    os.symlink(outside, root / "src" / "out")
    os.symlink(outside / "secret", root / "leak")
    os.mkfifo(root / "pipe")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")
    entries = list(safefs.walk(root, skip_dir=lambda name: name == ".git"))
    kinds = {e.rel: e.kind for e in entries}
    assert kinds == {
        ".git": "dir",
        "leak": "symlink",
        "pipe": "fifo",
        "src": "dir",
        "src/a.py": "file",
        "src/out": "symlink",
    }
    links = {e.rel: e.link for e in entries if e.kind == "symlink"}
    assert links == {"leak": str(outside / "secret"), "src/out": str(outside)}
    assert [e.rel for e in safefs.walk(root, "src")] == ["src/a.py", "src/out"]
    assert [e.kind for e in safefs.walk(root, "leak")] == ["symlink"]
    with pytest.raises(safefs.SymlinkInPath):
        list(safefs.walk(root, "src/out/sub"))
    with pytest.raises(FileNotFoundError):
        list(safefs.walk(root, "nope"))


def test_walk_stops_at_a_limit(root: Path) -> None:
    for index in range(20):
        (root / f"f{index:02}").write_text("")
    assert len(list(safefs.walk(root, limit=5))) == 5
