"""gitops against real repositories: snapshot, worktrees, commits and the three-way apply."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_git

from codexloop.core import gitops, record
from codexloop.core.gitops import FileConflict, GitError

MakeRepo = Callable[..., Path]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (outside .git) with its exact bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == ".git" or path.is_dir():
            continue
        found[rel.as_posix()] = path.read_bytes()
    return found


def index_bytes(repo: Path) -> bytes:
    return (repo / ".git" / "index").read_bytes()


def head_files(repo: Path, commit: str) -> list[str]:
    return run_git(repo, "ls-tree", "-r", "--name-only", commit).split()


class Session:
    """A developer repo, its snapshot and a sandbox worktree, as the engine sets them up."""

    def __init__(self, repo: Path, worktree: Path) -> None:
        self.repo = repo
        self.worktree = worktree
        self.base = gitops.snapshot(repo)
        gitops.create_worktree(repo, self.base, "codexloop/x", worktree)

    def model_writes(self, files: dict[str, bytes | None]) -> str:
        """Write (or delete, for None) files in the sandbox and commit them: the result."""
        for rel, data in files.items():
            path = self.worktree / rel
            if data is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        sha = record.commit_all(self.worktree, "model")
        assert sha is not None
        return sha


@pytest.fixture
def session(make_repo: MakeRepo, tmp_path: Path) -> Callable[..., Session]:
    """A session on a repo of committed text files, plus uncommitted ``raw`` byte files."""

    def build(files: dict[str, str], raw: dict[str, bytes] | None = None) -> Session:
        repo = make_repo(files)
        for rel, data in (raw or {}).items():
            (repo / rel).write_bytes(data)
        return Session(repo, tmp_path / "worktrees" / "x")

    return build


# --------------------------------------------------------------------------- git, toplevel


def test_git_error_carries_stderr(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "a\n"})
    with pytest.raises(GitError, match="no-such-rev"):
        gitops.git(repo, "rev-parse", "--verify", "no-such-rev")
    assert gitops.git(repo, "rev-parse", "--verify", "no-such-rev", check=False) == ""


def test_toplevel(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"pkg/mod.py": "x = 1\n"})
    assert gitops.toplevel(repo / "pkg") == repo.resolve()
    assert gitops.toplevel(repo / "pkg" / "mod.py") == repo.resolve()
    outside = tmp_path / "plain"
    outside.mkdir()
    assert gitops.toplevel(outside) is None


def test_a_repository_git_refuses_for_its_owner_says_why_and_how_to_trust_it(
    make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "not a checkout": git's reason and its safe.directory fix, on one line."""
    repo = make_repo({"pkg/mod.py": "x = 1\n"})
    monkeypatch.setenv("GIT_TEST_ASSUME_DIFFERENT_OWNER", "1")  # git's own switch for this
    with pytest.raises(gitops.UnsafeRepository) as caught:
        gitops.toplevel(repo / "pkg")
    message = str(caught.value)
    assert "\n" not in message and "dubious ownership" in message
    assert f"git config --global --add safe.directory {repo}" in message
    assert isinstance(caught.value, GitError)


# --------------------------------------------------------------------------- snapshot


def test_snapshot_captures_working_tree_without_touching_it(make_repo: MakeRepo) -> None:
    repo = make_repo(
        {"kept.py": "k\n", "edited.py": "old\n", "gone.py": "g\n", ".gitignore": "*.log\n"}
    )
    head = run_git(repo, "rev-parse", "HEAD").strip()
    (repo / "edited.py").write_text("new\n")
    (repo / "gone.py").unlink()
    (repo / "fresh.py").write_text("untracked\n")
    (repo / "debug.log").write_text("ignored\n")
    status, index = run_git(repo, "status", "--porcelain"), index_bytes(repo)

    sha = gitops.snapshot(repo)

    assert head_files(repo, sha) == [".gitignore", "edited.py", "fresh.py", "kept.py"]
    assert gitops.read_blob(repo, sha, "edited.py") == b"new\n"
    assert gitops.read_blob(repo, sha, "fresh.py") == b"untracked\n"
    assert run_git(repo, "rev-parse", f"{sha}^").strip() == head
    assert run_git(repo, "log", "-1", "--format=%s", sha).strip() == (
        "codexloop snapshot of main working tree"
    )
    assert index_bytes(repo) == index
    assert run_git(repo, "status", "--porcelain") == status
    assert run_git(repo, "rev-parse", "HEAD").strip() == head


def test_big_untracked_files_stay_out_of_the_snapshot(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "a\n"})
    (repo / "data").mkdir()
    with open(repo / "data" / "dump.bin", "wb") as handle:  # sparse: big, but costs no disk
        handle.truncate(gitops.MAX_UNTRACKED_BYTES + 1)
    (repo / "data" / "small.csv").write_text("x\n1\n")
    left_out: list[tuple[str, int]] = []
    sha = gitops.snapshot(repo, left_out)
    assert head_files(repo, sha) == ["a.py", "data/small.csv"]
    assert left_out == [("data/dump.bin", gitops.MAX_UNTRACKED_BYTES + 1)]
    assert run_git(repo, "status", "--porcelain").splitlines() == ["?? data/"]


def test_a_preview_branch_leads_back_to_its_snapshot(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "a\n"})
    (repo / "a.py").write_text("changed\n")
    snap = gitops.snapshot(repo)
    run_git(repo, "branch", "codexloop/x", snap)
    run_git(repo, "worktree", "add", "-q", str(repo.parent / "wt"), "codexloop/x")
    (repo.parent / "wt" / "b.py").write_text("b\n")
    for n in (1, 2):
        record.commit_all(repo.parent / "wt", f"codexloop iteration {n}: red")
        (repo.parent / "wt" / "b.py").write_text(f"b{n}\n")
    assert gitops.snapshot_of(repo, "codexloop/x") == snap
    with pytest.raises(gitops.GitError, match="not a codexloop preview branch"):
        gitops.snapshot_of(repo, "main")
    with pytest.raises(gitops.GitError, match="no branch"):
        gitops.snapshot_of(repo, "codexloop/none")


def test_snapshot_in_repo_without_commits(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "a\n", "sub/b.py": "b\n"}, commit=False)
    sha = gitops.snapshot(repo)
    assert head_files(repo, sha) == ["a.py", "sub/b.py"]
    assert run_git(repo, "rev-list", "--parents", "-1", sha).split() == [sha]
    assert not (repo / ".git" / "index").exists()
    assert run_git(repo, "status", "--porcelain").splitlines() == ["?? a.py", "?? sub/"]


def test_snapshot_detached_head(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "a\n"})
    run_git(repo, "checkout", "-q", "--detach")
    sha = gitops.snapshot(repo)
    subject = run_git(repo, "log", "-1", "--format=%s", sha).strip()
    assert subject == "codexloop snapshot of detached working tree"


@pytest.fixture
def no_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in (
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "EMAIL",
        "GIT_CONFIG_GLOBAL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_identity")
def test_snapshot_and_commit_without_identity(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"a.py": "a\n"})
    assert gitops.git(repo, "config", "user.email", check=False) == ""
    sha = gitops.snapshot(repo)
    ident = "%an <%ae>|%cn <%ce>"
    who = run_git(repo, "log", "-1", f"--format={ident}", sha).strip()
    assert who == "codexloop <codexloop@localhost>|codexloop <codexloop@localhost>"

    worktree = tmp_path / "wt"
    gitops.create_worktree(repo, sha, "codexloop/anon", worktree)
    (worktree / "a.py").write_text("b\n")
    commit = record.commit_all(worktree, "change")
    assert commit is not None
    assert run_git(repo, "log", "-1", "--format=%an", commit).strip() == "codexloop"


@pytest.mark.usefixtures("no_identity")
def test_configured_identity_wins_over_fallback(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "a\n"})
    run_git(repo, "config", "user.name", "Dev")
    run_git(repo, "config", "user.email", "dev@example.com")
    sha = gitops.snapshot(repo)
    assert run_git(repo, "log", "-1", "--format=%an <%ae>", sha).strip() == "Dev <dev@example.com>"


# --------------------------------------------------------------------------- worktree, commit


def test_create_worktree_at_snapshot(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"a.py": "a\n"})
    (repo / "new.py").write_text("untracked\n")
    (repo / "a.py").write_text("edited\n")
    status = run_git(repo, "status", "--porcelain")
    base = gitops.snapshot(repo)
    worktree = tmp_path / "deep" / "wt"

    gitops.create_worktree(repo, base, "codexloop/x", worktree)

    assert run_git(worktree, "rev-parse", "--abbrev-ref", "HEAD").strip() == "codexloop/x"
    assert run_git(worktree, "rev-parse", "HEAD").strip() == base
    assert (worktree / "new.py").read_text() == "untracked\n"
    assert (worktree / "a.py").read_text() == "edited\n"
    assert run_git(worktree, "status", "--porcelain") == ""
    assert run_git(repo, "status", "--porcelain") == status
    assert run_git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"


def test_commit_all(session: Callable[..., Session], tmp_path: Path) -> None:
    s = session({"a.py": "a\n", "b.py": "b\n"})
    assert record.commit_all(s.worktree, "nothing") is None
    assert run_git(s.worktree, "rev-parse", "HEAD").strip() == s.base

    (s.worktree / "a.py").write_text("changed\n")
    (s.worktree / "b.py").unlink()
    (s.worktree / "c.py").write_text("new\n")
    (s.worktree / "junk.pyc").write_bytes(b"\0")
    exclude = tmp_path / "exclude"
    exclude.write_text("*.pyc\n")
    sha = record.commit_all(s.worktree, "step 1\n\nbody", exclude_file=exclude)

    assert sha is not None
    assert run_git(s.repo, "rev-parse", "codexloop/x").strip() == sha
    assert run_git(s.repo, "rev-parse", f"{sha}^").strip() == s.base
    assert head_files(s.repo, sha) == ["a.py", "c.py"]
    assert run_git(s.repo, "log", "-1", "--format=%B", sha).strip() == "step 1\n\nbody"
    assert record.commit_all(s.worktree, "again", exclude_file=exclude) is None
    assert run_git(s.worktree, "status", "--porcelain") == "?? junk.pyc\n"


def test_hooks_never_run(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"a.py": "a\n"})
    marker = tmp_path / "hook-ran"
    for hook in ("pre-commit", "post-commit", "post-checkout", "reference-transaction"):
        path = repo / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        path.chmod(0o755)
    run_git(repo, "commit", "-q", "--allow-empty", "-m", "hooks are live")
    assert marker.exists()  # the hooks do run for plain git
    marker.unlink()

    (repo / "a.py").write_text("b\n")
    base = gitops.snapshot(repo)
    worktree = tmp_path / "wt"
    gitops.create_worktree(repo, base, "codexloop/x", worktree)
    (worktree / "a.py").write_text("c\n")
    assert record.commit_all(worktree, "model") is not None
    gitops.remove_worktree(repo, worktree, "codexloop/x")

    assert not marker.exists()


def test_tampered_git_file_is_not_followed(
    make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that rewrites the worktree's .git file cannot get its own config used."""
    repo = make_repo({"a.py": "a\n"})
    base = gitops.snapshot(repo)
    worktree = tmp_path / "wt"
    gitops.create_worktree(repo, base, "codexloop/x", worktree)
    marker = tmp_path / "filter-ran"
    fake = worktree / "fake"
    run_git(worktree, "init", "-q", "--bare", str(fake))
    (fake / "config").write_text(
        (fake / "config").read_text() + f'[filter "evil"]\n\tclean = touch {marker}; cat\n'
    )
    (worktree / ".gitattributes").write_text("* filter=evil\n")
    (worktree / ".git").write_text(f"gitdir: {fake}\n")
    (worktree / "a.py").write_text("b\n")

    sha = record.commit_all(worktree, "model")  # recorded gitdir, not the .git file
    assert sha is not None
    assert run_git(repo, "rev-parse", "codexloop/x").strip() == sha
    assert not marker.exists()

    monkeypatch.setattr(gitops, "_GITDIRS", {})  # as if in a later process
    monkeypatch.setattr(record, "_RECORDERS", {})
    with pytest.raises(GitError, match="not a linked git worktree"):
        record.commit_all(worktree, "model")
    assert not marker.exists()


def test_changed_paths(session: Callable[..., Session]) -> None:
    s = session({"a.py": "a\n", "b.py": "b\n", "c.py": "c\n", ".gitignore": "*.log\n"})
    assert record.changed_paths(s.worktree, s.base) == []
    (s.worktree / "a.py").write_text("changed\n")
    record.commit_all(s.worktree, "one")
    (s.worktree / "b.py").unlink()
    (s.worktree / "sub").mkdir()
    (s.worktree / "sub" / "new.py").write_text("new\n")
    (s.worktree / "x.log").write_text("ignored\n")
    (s.worktree / "c.py").write_text("c\n")  # rewritten with the same content

    assert record.changed_paths(s.worktree, s.base) == ["a.py", "b.py", "sub/new.py"]


def test_read_blob(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "a\n"})
    assert gitops.read_blob(repo, "HEAD", "a.py") == b"a\n"
    assert gitops.read_blob(repo, "HEAD", "missing.py") is None


def test_preview_branches_and_remove_worktree(
    session: Callable[..., Session],
) -> None:
    s = session({"a.py": "a\n"})
    (s.worktree / "a.py").write_text("b\n")
    sha = record.commit_all(s.worktree, "codexloop: step one")
    run_git(s.repo, "branch", "codexloop/orphan", s.base)
    run_git(s.repo, "branch", "feature")

    found = {b.name: b for b in gitops.preview_branches(s.repo)}

    assert set(found) == {"codexloop/x", "codexloop/orphan"}
    x = found["codexloop/x"]
    assert x.worktree is not None and x.worktree.resolve() == s.worktree.resolve()
    assert (x.sha, x.subject) == (sha, "codexloop: step one")
    assert x.committed_at.tzinfo is not None
    assert found["codexloop/orphan"].worktree is None

    gitops.remove_worktree(s.repo, s.worktree, "codexloop/x")

    assert not s.worktree.exists()
    assert [b.name for b in gitops.preview_branches(s.repo)] == ["codexloop/orphan"]
    assert str(s.worktree) not in run_git(s.repo, "worktree", "list")
    gitops.remove_worktree(s.repo, s.worktree, "codexloop/x")  # already gone: no error


# --------------------------------------------------------------------------- apply_changes


def test_apply_clean(session: Callable[..., Session]) -> None:
    s = session({"a.py": "one\ntwo\n", "b.py": "b\n"})
    index = index_bytes(s.repo)
    result = s.model_writes({"a.py": b"one\nTWO\n"})

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert applied.ok
    assert (applied.written, applied.deleted) == (["a.py"], [])
    assert (s.repo / "a.py").read_text() == "one\nTWO\n"
    assert index_bytes(s.repo) == index
    assert run_git(s.repo, "status", "--porcelain") == " M a.py\n"


def test_apply_never_writes_what_is_left_out(session: Callable[..., Session]) -> None:
    """The exam is the developer's: a result that records another version of it (they edited
    it mid-loop, and again since) applies everything else and leaves it alone."""
    s = session({"a.py": "one\n", "tests/test_a.py": "v1\n"})
    result = s.model_writes({"a.py": b"two\n", "tests/test_a.py": b"v2\n"})
    (s.repo / "tests/test_a.py").write_text("v3\n")

    applied = gitops.apply_changes(s.repo, s.base, result, leave_out=("tests/test_a.py",))

    assert applied.ok and applied.written == ["a.py"]
    assert (s.repo / "tests/test_a.py").read_text() == "v3\n"


def test_apply_keeps_developer_edit_to_another_file(
    session: Callable[..., Session],
) -> None:
    s = session({"a.py": "a\n", "b.py": "b\n"})
    result = s.model_writes({"a.py": b"model\n"})
    (s.repo / "b.py").write_text("developer\n")

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert applied.ok and applied.written == ["a.py"]
    assert (s.repo / "a.py").read_text() == "model\n"
    assert (s.repo / "b.py").read_text() == "developer\n"


LINES = "".join(f"line {i}\n" for i in range(1, 21))


def test_apply_merges_developer_edit_to_same_file(
    session: Callable[..., Session],
) -> None:
    s = session({"a.py": LINES})
    result = s.model_writes({"a.py": LINES.replace("line 18\n", "model 18\n").encode()})
    (s.repo / "a.py").write_text(LINES.replace("line 2\n", "developer 2\n"))

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert applied.ok and applied.written == ["a.py"]
    merged = (s.repo / "a.py").read_text()
    assert merged == LINES.replace("line 2\n", "developer 2\n").replace("line 18\n", "model 18\n")


def test_apply_conflict_writes_nothing(session: Callable[..., Session]) -> None:
    s = session({"a.py": LINES, "clean.py": "clean\n", "gone.py": "gone\n"})
    result = s.model_writes(
        {
            "a.py": LINES.replace("line 5\n", "model 5\n").encode(),
            "clean.py": b"model\n",
            "gone.py": None,
            "added.py": b"added\n",
        }
    )
    (s.repo / "a.py").write_text(LINES.replace("line 5\n", "developer 5\n"))
    before, index = tree_bytes(s.repo), index_bytes(s.repo)

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert not applied.ok
    assert applied.conflicts == [FileConflict("a.py", "both changed the same lines")]
    assert (applied.written, applied.deleted) == ([], [])
    assert tree_bytes(s.repo) == before
    assert index_bytes(s.repo) == index


def test_apply_added_deleted_renamed(session: Callable[..., Session]) -> None:
    s = session({"old/name.py": "content\n", "pkg/only.py": "x\n", "keep.py": "k\n"})
    result = s.model_writes(
        {
            "old/name.py": None,
            "new/place/name.py": b"content\n",
            "pkg/only.py": None,
            "added.py": b"added\n",
        }
    )

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert applied.ok
    assert applied.written == ["added.py", "new/place/name.py"]
    assert applied.deleted == ["old/name.py", "pkg/only.py"]
    assert (s.repo / "new" / "place" / "name.py").read_text() == "content\n"
    assert (s.repo / "added.py").read_text() == "added\n"
    assert not (s.repo / "old").exists()  # emptied directories are removed
    assert not (s.repo / "pkg").exists()
    assert (s.repo / "keep.py").read_text() == "k\n"


def test_apply_added_over_different_file_conflicts(
    session: Callable[..., Session],
) -> None:
    s = session({"a.py": "a\n"})
    result = s.model_writes({"new.py": b"model\n", "a.py": b"b\n"})
    (s.repo / "new.py").write_text("developer\n")

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert [c.path for c in applied.conflicts] == ["new.py"]
    assert (s.repo / "new.py").read_text() == "developer\n"
    assert (s.repo / "a.py").read_text() == "a\n"


def test_apply_added_identical_file_is_fine(session: Callable[..., Session]) -> None:
    s = session({"a.py": "a\n"})
    result = s.model_writes({"new.py": b"same\n"})
    (s.repo / "new.py").write_text("same\n")
    applied = gitops.apply_changes(s.repo, s.base, result)
    assert applied.ok and applied.written == []


def test_apply_delete_of_changed_file_conflicts(
    session: Callable[..., Session],
) -> None:
    s = session({"a.py": "a\n"})
    result = s.model_writes({"a.py": None})
    (s.repo / "a.py").write_text("developer\n")

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert applied.conflicts == [FileConflict("a.py", "deleted in the result but changed on disk")]
    assert (s.repo / "a.py").read_text() == "developer\n"


def test_apply_change_of_file_deleted_on_disk_conflicts(
    session: Callable[..., Session],
) -> None:
    s = session({"a.py": "a\n"})
    result = s.model_writes({"a.py": b"model\n"})
    (s.repo / "a.py").unlink()
    applied = gitops.apply_changes(s.repo, s.base, result)
    assert [c.path for c in applied.conflicts] == ["a.py"]
    assert not (s.repo / "a.py").exists()


def test_apply_binary(session: Callable[..., Session]) -> None:
    s = session({"a.py": "a\n"}, {"img.bin": b"\x89PNG\0\x01\x02base", "other.bin": b"\0other"})
    result = s.model_writes({"img.bin": b"\x89PNG\0\x01\x02model", "other.bin": b"\0model\xff"})

    clean = gitops.apply_changes(s.repo, s.base, result, paths=["img.bin"])
    assert clean.ok and clean.written == ["img.bin"]
    assert (s.repo / "img.bin").read_bytes() == b"\x89PNG\0\x01\x02model"

    (s.repo / "other.bin").write_bytes(b"\0developer")
    both = gitops.apply_changes(s.repo, s.base, result, paths=["other.bin"])
    assert both.conflicts == [FileConflict("other.bin", "binary file changed on both sides")]
    assert (s.repo / "other.bin").read_bytes() == b"\0developer"


def test_apply_executable_bit(session: Callable[..., Session]) -> None:
    s = session({"run.sh": "echo old\n", "tool.sh": "echo tool\n"})
    (s.worktree / "new.sh").write_text("echo new\n")
    (s.worktree / "new.sh").chmod(0o755)
    (s.worktree / "run.sh").write_text("echo model\n")
    (s.worktree / "run.sh").chmod(0o755)
    (s.worktree / "tool.sh").chmod(0o755)  # mode only
    result = record.commit_all(s.worktree, "exec")
    assert result is not None

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert applied.ok and applied.written == ["new.sh", "run.sh", "tool.sh"]
    for name in ("new.sh", "run.sh", "tool.sh"):
        assert os.stat(s.repo / name).st_mode & stat.S_IXUSR, name
    assert (s.repo / "run.sh").read_text() == "echo model\n"
    assert (s.repo / "tool.sh").read_text() == "echo tool\n"
    assert run_git(s.repo, "diff", "--summary").count("mode change 100644 => 100755") == 2


def test_apply_preserves_crlf_and_missing_final_newline(
    session: Callable[..., Session],
) -> None:
    crlf = b"".join(b"row %d\r\n" % i for i in range(1, 11))
    s = session(
        {"keep.txt": "k\n"},
        {"crlf.txt": crlf, "merged.txt": crlf, "noeol.txt": b"first\nlast"},
    )
    result = s.model_writes(
        {
            "crlf.txt": crlf.replace(b"row 3\r\n", b"model 3\r\n"),
            "merged.txt": crlf.replace(b"row 9\r\n", b"model 9\r\n"),
            "noeol.txt": b"first\nchanged last",
            "added.txt": b"a\r\nno newline",
        }
    )
    (s.repo / "merged.txt").write_bytes(crlf.replace(b"row 1\r\n", b"developer 1\r\n"))

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert applied.ok
    assert (s.repo / "crlf.txt").read_bytes() == crlf.replace(b"row 3\r\n", b"model 3\r\n")
    assert (s.repo / "merged.txt").read_bytes() == crlf.replace(
        b"row 1\r\n", b"developer 1\r\n"
    ).replace(b"row 9\r\n", b"model 9\r\n")
    assert (s.repo / "noeol.txt").read_bytes() == b"first\nchanged last"
    assert (s.repo / "added.txt").read_bytes() == b"a\r\nno newline"


def test_apply_paths_subset(session: Callable[..., Session]) -> None:
    s = session({"a.py": "a\n", "b.py": "b\n", "c.py": "c\n"})
    result = s.model_writes({"a.py": b"A\n", "b.py": None, "c.py": b"C\n", "d.py": b"D\n"})

    applied = gitops.apply_changes(s.repo, s.base, result, paths=["b.py", "d.py"])

    assert applied.ok
    assert (applied.written, applied.deleted) == (["d.py"], ["b.py"])
    assert (s.repo / "a.py").read_text() == "a\n"
    assert (s.repo / "c.py").read_text() == "c\n"
    assert not (s.repo / "b.py").exists()
    assert (s.repo / "d.py").read_text() == "D\n"


def test_apply_symlink(session: Callable[..., Session]) -> None:
    s = session({"target.py": "t\n"})
    (s.worktree / "link.py").symlink_to("target.py")
    result = record.commit_all(s.worktree, "link")
    assert result is not None

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert applied.ok and applied.written == ["link.py"]
    assert os.readlink(s.repo / "link.py") == "target.py"


def test_apply_file_replacing_directory(session: Callable[..., Session]) -> None:
    s = session({"thing/inner.py": "i\n"})
    (s.worktree / "thing" / "inner.py").unlink()
    (s.worktree / "thing").rmdir()
    (s.worktree / "thing").write_text("now a file\n")
    result = record.commit_all(s.worktree, "d/f")
    assert result is not None

    applied = gitops.apply_changes(s.repo, s.base, result)

    assert applied.ok, applied.conflicts
    assert (s.repo / "thing").read_text() == "now a file\n"
