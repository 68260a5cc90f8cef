"""Blob reads, checked as an attacker would: the repository gitops opens reads blobs
through one persistent ``git cat-file --batch``, and that reader — like every command gitops
starts — runs nothing planted in the repository's configuration or in the sandbox, inherits
no location variable of a parent git, and stays in step whatever it is asked."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import run_git

from codexloop.core import gitops, record
from codexloop.core.gitops import GitError

MakeRepo = Callable[..., Path]


@pytest.fixture(autouse=True)
def _fresh_readers() -> Iterator[None]:
    gitops.close_readers()
    yield
    gitops.close_readers()


def readers() -> dict[int, tuple[list[bytes], dict[bytes, bytes]]]:
    """This process's live ``git cat-file`` children: pid -> (argv, environment)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")[:-1]
            environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"cat-file" in argv and b") Z" not in stat:
            env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
            found[int(name)] = (argv, env)
    return found


def plant(config_of: Path, marker: Path) -> None:
    """Configuration that would run ``touch marker`` from every hook, the fsmonitor, a clean
    or smudge filter, a filter process, a textconv and an external diff."""
    touch = f"touch {shlex.quote(str(marker))}"
    hooks = config_of.parent / "evil-hooks"
    hooks.mkdir(exist_ok=True)
    for hook in ("pre-commit", "post-checkout", "reference-transaction", "post-index-change"):
        for folder in (hooks, config_of.parent / "hooks"):
            if folder.is_dir():
                (folder / hook).write_text(f"#!/bin/sh\n{touch}\n")
                (folder / hook).chmod(0o755)
    settings = {
        "core.hooksPath": str(hooks),
        "core.fsmonitor": touch,
        "filter.evil.clean": f"{touch}; cat",
        "filter.evil.smudge": f"{touch}; cat",
        "filter.evil.process": touch,
        "diff.evil.textconv": f"{touch}; cat",
        "diff.external": touch,
    }
    for key, value in settings.items():
        subprocess.run(["git", "config", "--file", str(config_of), key, value], check=True)


# --------------------------------------------------------------------------- one process


def test_one_reader_process_serves_every_blob_read(
    make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo({f"f{i}.txt": f"file {i}\n" for i in range(40)})
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting(command: list[str], *args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started.append([str(arg) for arg in command])
        return real_popen(command, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(gitops.subprocess, "Popen", counting)
    for _ in range(3):
        for i in range(40):
            assert gitops.read_blob(repo, "HEAD", f"f{i}.txt") == f"file {i}\n".encode()

    cat_files = [argv for argv in started if "cat-file" in argv]
    assert len(cat_files) == 1, started  # one `cat-file --batch` for 120 reads
    assert "--batch" in cat_files[0]
    assert len(started) <= 2  # and the `rev-parse` that opened the repository


# --------------------------------------------------------------------------- hardening


def test_the_reader_runs_with_hooks_and_fsmonitor_off_and_names_its_repository(
    make_repo: MakeRepo,
) -> None:
    repo = make_repo({"a.txt": "a\n"})
    assert gitops.read_blob(repo, "HEAD", "a.txt") == b"a\n"

    [(argv, env)] = readers().values()
    line = b" ".join(argv)
    for setting in (b"core.hooksPath=/dev/null", b"core.fsmonitor=false", b"gc.auto=0"):
        assert b"-c " + setting in line
    assert env[b"GIT_DIR"] == os.fsencode(repo / ".git")
    assert env[b"GIT_TERMINAL_PROMPT"] == b"0"


def test_configuration_planted_in_the_repository_runs_nothing_through_gitops(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    """Hooks, fsmonitor, filters, textconv and an external diff in the developer's own
    repository configuration: the reader and gitops' commands run none of them."""
    repo = make_repo({"a.txt": "plain\n", ".gitattributes": "* filter=evil diff=evil\n"})
    marker = tmp_path / "ran-on-the-host"
    plant(repo / ".git" / "config", marker)

    assert gitops.read_blob(repo, "HEAD", "a.txt") == b"plain\n"  # raw: no smudge filter
    assert gitops.read_blob(repo, "HEAD", "missing.txt") is None
    branch = gitops.git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    gitops.git(repo, "update-ref", "refs/heads/other", "HEAD")  # reference-transaction
    gitops.git(repo, "diff", "--no-ext-diff", "--no-textconv", "HEAD", "other")
    assert gitops.preview_branches(repo) == []
    assert branch == "main"
    assert not marker.exists(), "configuration planted in the repository ran"


def test_configuration_planted_in_the_sandbox_runs_nothing_and_git_never_runs_there(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    """The model nests a repository with every executing setting, rewrites the worktree's
    ``.git`` file to a git dir of its own, and plants attributes: host git reads none of it,
    and gitops refuses to run git (or open a Repo) with the worktree as its folder."""
    repo = make_repo({"a.txt": "a\n"})
    base = gitops.snapshot(repo)
    worktree = tmp_path / "wt"
    gitops.create_worktree(repo, base, "codexloop/x", worktree)
    assert record.commit_all(worktree, "nothing yet") is None  # seeded after the checkout
    marker = tmp_path / "ran-on-the-host"

    nested = worktree / "vendor"
    nested.mkdir()
    run_git(nested, "init", "-q")
    (nested / "f.txt").write_text("x\n")
    plant(nested / ".git" / "config", marker)
    fake = tmp_path / "fake-gitdir"
    run_git(tmp_path, "init", "-q", "--bare", str(fake))
    plant(fake / "config", marker)
    (worktree / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (worktree / ".git").write_text(f"gitdir: {fake}\n")
    (worktree / "a.txt").write_text("changed by the model\n")

    sha = record.commit_all(worktree, "model")  # through the recorded git dir
    assert sha is not None
    assert gitops.read_blob(repo, sha, "a.txt") == b"changed by the model\n"
    assert gitops.read_blob(repo, sha, "vendor/f.txt") == b"x\n"
    with pytest.raises(GitError, match="sandbox worktree"):
        gitops.git(worktree, "status")
    with pytest.raises(GitError, match="sandbox worktree"):
        gitops.git(nested, "log")
    with pytest.raises(GitError, match="sandbox worktree"):
        gitops.read_blob(worktree, "HEAD", "a.txt")
    assert [b.name for b in gitops.preview_branches(repo)] == ["codexloop/x"]
    gitops.remove_worktree(repo, worktree, "codexloop/x")
    assert not marker.exists(), "configuration planted in the sandbox ran on the host"
    assert all(os.fsencode(worktree) not in b" ".join(argv) for argv, _ in readers().values())


def test_inherited_location_variables_point_nothing_elsewhere(
    make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """codexloop started from a hook or `git rebase -x` inherits GIT_DIR & co. naming the
    parent's repository: no git gitops starts, reader or one-shot, uses them."""
    repo = make_repo({"a.txt": "mine\n"})
    decoy = make_repo({"a.txt": "decoy\n"}, name="decoy")
    before = {p: p.read_bytes() for p in (decoy / ".git").rglob("*") if p.is_file()}
    for name, value in {
        "GIT_DIR": decoy / ".git",
        "GIT_WORK_TREE": decoy,
        "GIT_INDEX_FILE": decoy / ".git" / "index",
        "GIT_OBJECT_DIRECTORY": decoy / ".git" / "objects",
        "GIT_COMMON_DIR": decoy / ".git",
    }.items():
        monkeypatch.setenv(name, str(value))

    (repo / "a.txt").write_text("mine, edited\n")
    sha = gitops.snapshot(repo)
    assert gitops.read_blob(repo, sha, "a.txt") == b"mine, edited\n"
    assert gitops.read_blob(repo, "HEAD", "a.txt") == b"mine\n"
    assert gitops.toplevel(repo) == repo.resolve()
    for _argv, env in readers().values():
        assert env[b"GIT_DIR"] == os.fsencode(repo / ".git")
        assert not {b"GIT_WORK_TREE", b"GIT_INDEX_FILE", b"GIT_OBJECT_DIRECTORY"} & env.keys()
    after = {p: p.read_bytes() for p in (decoy / ".git").rglob("*") if p.is_file()}
    assert after == before


def test_a_dollar_in_the_repository_path_is_not_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A $VARIABLE in a repository's path is part of its name, never expanded (GitPython,
    which read blobs before, expanded one in a path given as a string)."""
    real = tmp_path / "$CODEXLOOP_DECOY" / "repo"
    decoy = tmp_path / "decoy" / "repo"
    for where, text in ((real, "real\n"), (decoy, "decoy\n")):
        where.mkdir(parents=True)
        run_git(where, "init", "-q")
        (where / "a.txt").write_text(text)
        run_git(where, "add", "a.txt")
        run_git(where, "commit", "-qm", "one")
    monkeypatch.setenv("CODEXLOOP_DECOY", "decoy")
    assert gitops.read_blob(real, "HEAD", "a.txt") == b"real\n"
    [(_argv, env)] = readers().values()
    assert env[b"GIT_DIR"] == os.fsencode(real / ".git")


# --------------------------------------------------------------------------- in step


def test_the_reader_stays_in_step_whatever_it_is_asked(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "a\n", "pkg/b.txt": "b\n", "with space.txt": "s\n"})
    (repo / "new\nline.txt").write_text("odd name\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "odd")
    asks = [
        ("missing.txt", None),
        ("pkg", None),  # a tree, not a blob
        ("pkg/b.txt", b"b\n"),
        ("new\nline.txt", b"odd name\n"),  # a line feed: read by a process of its own
        ("new", None),
        ("with space.txt", b"s\n"),
        ("with space.txt missing", None),
        ("a.txt\0", None),
        ("a.txt", b"a\n"),
    ]
    for path, want in asks * 2:
        assert gitops.read_blob(repo, "HEAD", path) == want, path
    assert gitops.read_blob(repo, "no-such-commit", "a.txt") is None
    assert gitops.read_blob(repo, "HEAD", "a.txt") == b"a\n"


def test_a_moved_branch_and_a_killed_reader_are_read_right(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "one\n"})
    assert gitops.read_blob(repo, "HEAD", "a.txt") == b"one\n"
    (repo / "a.txt").write_text("two\n")
    run_git(repo, "commit", "-qam", "two")
    run_git(repo, "gc", "-q")  # objects move into a pack under the reader's feet
    assert gitops.read_blob(repo, "HEAD", "a.txt") == b"two\n"
    assert gitops.read_blob(repo, "HEAD~1", "a.txt") == b"one\n"

    for pid in readers():
        os.kill(pid, signal.SIGKILL)
    assert gitops.read_blob(repo, "HEAD", "a.txt") == b"two\n"  # answered anyway
    assert gitops.read_blob(repo, "HEAD~1", "a.txt") == b"one\n"  # a fresh reader
    assert len(readers()) == 1


def test_a_repository_made_again_at_the_same_path_is_read_afresh(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo = make_repo({"a.txt": "first\n"})
    assert gitops.read_blob(repo, "HEAD", "a.txt") == b"first\n"
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    again = make_repo({"a.txt": "second\n"})
    assert again == repo
    assert gitops.read_blob(repo, "HEAD", "a.txt") == b"second\n"


def test_a_sha256_repository_is_read_by_its_reader_too(tmp_path: Path) -> None:
    """64-digit object names: the same persistent reader, in step."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run_git(repo, "init", "-q", "--object-format=sha256")
    (repo / "a.txt").write_text("a\n")
    run_git(repo, "add", "a.txt")
    run_git(repo, "commit", "-qm", "one")
    for _ in range(2):
        assert gitops.read_blob(repo, "HEAD", "a.txt") == b"a\n"
        assert gitops.read_blob(repo, "HEAD", "missing.txt") is None
    assert len(readers()) == 1


def test_gitops_never_runs_git_somewhere_it_cannot_enter(tmp_path: Path) -> None:
    """A folder git cannot enter is an error, never the current directory instead."""
    with pytest.raises(GitError, match="no such directory"):
        gitops.git(tmp_path / "gone", "status")


def test_a_subfolder_and_a_checkout_that_is_itself_a_linked_worktree_are_read(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    """Opened where git's own discovery says (checkout root, git dir), as before."""
    repo = make_repo({"pkg/a.txt": "a\n"})
    assert gitops.read_blob(repo / "pkg", "HEAD", "pkg/a.txt") == b"a\n"
    linked = tmp_path / "linked"
    run_git(repo, "worktree", "add", "-q", "-b", "side", str(linked))
    (linked / "pkg" / "a.txt").write_text("side\n")
    run_git(linked, "commit", "-qam", "side")
    assert gitops.read_blob(linked, "HEAD", "pkg/a.txt") == b"side\n"
    assert gitops.read_blob(repo, "HEAD", "pkg/a.txt") == b"a\n"
    git_dirs = {env[b"GIT_DIR"] for _argv, env in readers().values()}
    assert git_dirs == {
        os.fsencode(repo / ".git"),
        os.fsencode(repo / ".git" / "worktrees" / "linked"),
    }


def test_objects_that_are_not_blobs_keep_the_reader_in_step(make_repo: MakeRepo) -> None:
    """A submodule's commit (not in this repository), an annotated tag, a commit and a tree:
    none is a blob, and the next read is answered right by the same reader."""
    repo = make_repo({"a.txt": "a\n"})
    run_git(repo, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},sub")
    run_git(repo, "commit", "-qm", "a submodule")
    run_git(repo, "tag", "-a", "-m", "tagged", "v1")
    for name in ("sub", ""):
        assert gitops.read_blob(repo, "HEAD", name) is None
    for commit in ("v1", "HEAD", "HEAD^{tree}"):
        assert gitops.read_blob(repo, commit, "") is None
        assert gitops.read_blob(repo, commit, "a.txt") == b"a\n"
    assert len(readers()) == 1
