"""Hunks of the preview branch, and applying only the accepted ones: real repositories."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import run_git

from codexloop.core import gitops, record
from codexloop.core.diff import apply_selected, changes, parse_diff, sandbox_diff

LINES = "".join(f"line {i}\n" for i in range(1, 31))


def preview(repo: Path, edit) -> tuple[str, str]:
    """Snapshot the repo, make a worktree, let ``edit`` change it, commit: (base, head)."""
    base = gitops.snapshot(repo)
    worktree = repo.parent / "wt"
    gitops.create_worktree(repo, base, "codexloop/test", worktree)
    edit(worktree)
    head = record.commit_all(worktree, "model")
    assert head is not None
    return base, head


def three_hunks(wt: Path) -> None:
    text = LINES.replace("line 2\n", "line two\n").replace("line 15\n", "line fifteen\n")
    (wt / "f.txt").write_text(text.replace("line 28\n", "line twenty-eight\n"))


def test_a_file_splits_into_hunks_with_counts(make_repo) -> None:
    repo = make_repo({"f.txt": LINES})
    base, head = preview(repo, three_hunks)
    [change] = changes(repo, base, head)
    assert change.path == "f.txt" and change.status == "modified" and not change.whole
    assert [(h.index, h.added, h.removed) for h in change.hunks] == [
        (0, 1, 1),
        (1, 1, 1),
        (2, 1, 1),
    ]


def test_keeping_two_of_three_hunks_with_the_developers_own_edit_intact(make_repo) -> None:
    repo = make_repo({"f.txt": LINES, "mine.txt": "mine\n"})
    base, head = preview(repo, three_hunks)
    # Meanwhile the developer edits the same file elsewhere, and another file, uncommitted.
    (repo / "f.txt").write_text(LINES.replace("line 8\n", "line 8 (mine)\n"))
    (repo / "mine.txt").write_text("mine, edited\n")
    result = apply_selected(repo, base, head, {("f.txt", 0), ("f.txt", 2)})
    assert result.ok and result.written == ["f.txt"]
    text = (repo / "f.txt").read_text()
    assert "line two\n" in text and "line twenty-eight\n" in text  # accepted
    assert "line 15\n" in text and "line fifteen" not in text  # rejected
    assert "line 8 (mine)\n" in text  # the developer's own edit, kept
    assert (repo / "mine.txt").read_text() == "mine, edited\n"
    assert run_git(repo, "diff", "--cached") == ""  # the index is never touched


def test_a_conflicting_selection_leaves_the_tree_as_it_was(make_repo) -> None:
    repo = make_repo({"f.txt": LINES, "g.txt": "g\n"})

    def edit(wt: Path) -> None:
        three_hunks(wt)
        (wt / "g.txt").write_text("g changed\n")

    base, head = preview(repo, edit)
    (repo / "f.txt").write_text(LINES.replace("line 2\n", "line 2 (mine)\n"))
    result = apply_selected(repo, base, head, {("f.txt", 0), ("g.txt", 0)})
    assert not result.ok and [c.path for c in result.conflicts] == ["f.txt"]
    assert (repo / "g.txt").read_text() == "g\n"  # never half-applied
    assert "line 2 (mine)\n" in (repo / "f.txt").read_text()


def test_added_deleted_renamed_and_binary_files_go_whole(make_repo) -> None:
    repo = make_repo(
        {"old.txt": "old\n", "gone.txt": "bye\n", "moved.txt": LINES, "img.bin": "\x00\x01"}
    )

    def edit(wt: Path) -> None:
        (wt / "new.txt").write_text("new\n")
        (wt / "gone.txt").unlink()
        os.rename(wt / "moved.txt", wt / "renamed.txt")
        (wt / "img.bin").write_bytes(b"\x00\x02\x03")

    base, head = preview(repo, edit)
    found = {c.path: c for c in changes(repo, base, head)}
    assert found["new.txt"].status == "added" and found["gone.txt"].status == "deleted"
    assert found["renamed.txt"].status == "renamed" and found["renamed.txt"].old_path == "moved.txt"
    assert found["img.bin"].binary and all(c.whole for c in found.values())
    result = apply_selected(
        repo, base, head, {("new.txt", -1), ("renamed.txt", -1), ("img.bin", -1)}
    )
    assert result.ok
    assert (repo / "new.txt").read_text() == "new\n"
    assert (repo / "renamed.txt").read_text() == LINES and not (repo / "moved.txt").exists()
    assert (repo / "img.bin").read_bytes() == b"\x00\x02\x03"
    assert (repo / "gone.txt").read_text() == "bye\n"  # its deletion was not accepted


def test_crlf_and_no_final_newline_round_trip_byte_for_byte(make_repo) -> None:
    repo = make_repo({"README": "r\n"})
    crlf = b"".join(b"row %d\r\n" % i for i in range(1, 21))
    (repo / "win.txt").write_bytes(crlf)
    (repo / "tail.txt").write_bytes(b"a\nb\nc")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "files")

    def edit(wt: Path) -> None:
        (wt / "win.txt").write_bytes(
            crlf.replace(b"row 2\r\n", b"row two\r\n").replace(b"row 19\r\n", b"row 19!\r\n")
        )
        (wt / "tail.txt").write_bytes(b"a\nb\nc changed")

    base, head = preview(repo, edit)
    result = apply_selected(repo, base, head, {("win.txt", 1), ("tail.txt", 0)})
    assert result.ok
    assert (repo / "win.txt").read_bytes() == crlf.replace(b"row 19\r\n", b"row 19!\r\n")
    assert (repo / "tail.txt").read_bytes() == b"a\nb\nc changed"


def test_sandbox_diff_shows_untracked_files_too(make_repo) -> None:
    repo = make_repo({"a.txt": "a\n"})
    base = gitops.snapshot(repo)
    wt = repo.parent / "wt"
    gitops.create_worktree(repo, base, "codexloop/d", wt)
    (wt / "a.txt").write_text("a2\n")
    (wt / "brand_new.py").write_text("x = 1\n")
    text = sandbox_diff(wt, base)
    files = {c.path: c for c in parse_diff(text)}
    assert files["a.txt"].status == "modified" and files["brand_new.py"].status == "added"
    assert (
        run_git(wt, "status", "--porcelain").count("??") == 1
    )  # the sandbox's own index untouched


def test_the_exam_is_left_out_of_the_review_and_the_diff(make_repo) -> None:
    repo = make_repo({"calc.py": "x = 1\n", "tests/test_calc.py": "def test(): pass\n"})

    def edit(wt: Path) -> None:
        (wt / "calc.py").write_text("x = 2\n")
        (wt / "tests" / "test_calc.py").write_text(
            "def test(): assert True\n"
        )  # the developer's edit

    base, head = preview(repo, edit)
    assert [c.path for c in changes(repo, base, head)] == ["calc.py", "tests/test_calc.py"]
    assert [c.path for c in changes(repo, base, head, ("tests/test_calc.py",))] == ["calc.py"]
    text = sandbox_diff(repo.parent / "wt", base, leave_out=("tests/test_calc.py",))
    assert [c.path for c in parse_diff(text)] == ["calc.py"]


# -- huge diffs are clipped for display --------------------------------------------------------


def _file_diff(path: str, added: int) -> str:
    body = "".join(f"+line {n}\n" for n in range(added))
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1111111\n"
        f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{added} @@\n{body}"
    )


def test_a_small_diff_is_shown_whole() -> None:
    from codexloop.core.diff import clip_diff

    diff = _file_diff("a.py", 10) + _file_diff("b.py", 10)
    assert clip_diff(diff) == diff


def test_a_huge_file_keeps_its_head_and_the_others_stay_whole() -> None:
    from codexloop.core.diff import CLIPPED_HEAD, clip_diff

    small = _file_diff("small.py", 5)
    clipped = clip_diff(_file_diff("huge.txt", 100_000) + small)
    lines = clipped.splitlines()
    assert len(lines) < CLIPPED_HEAD + 20
    assert "[... 99806 more lines of this file's diff not shown ...]" in lines
    assert clipped.endswith(small)  # the next file is intact


def test_a_diff_of_many_files_stops_with_a_count_of_what_is_left() -> None:
    from codexloop.core.diff import clip_diff

    diff = "".join(_file_diff(f"f{n}.py", 500) for n in range(100))
    clipped = clip_diff(diff, total_lines=5_000)
    assert len(clipped.splitlines()) < 5_600
    last = clipped.splitlines()[-1]
    assert last.startswith("[... the diff goes on: ") and "more files" in last
