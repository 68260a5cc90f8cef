"""The review screen: keep two of three hunks, find exactly those in the working tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_git
from textual.app import App
from textual.widgets import Label

from codexloop.core import gitops
from codexloop.tui.dialogs import PromptScreen
from codexloop.tui.review import ReviewOutcome, ReviewScreen

LINES = "".join(f"line {i}\n" for i in range(1, 31))


def preview(repo: Path) -> tuple[str, str]:
    base = gitops.snapshot(repo)
    worktree = repo.parent / "wt"
    gitops.create_worktree(repo, base, "codexloop/review", worktree)
    text = LINES.replace("line 2\n", "line two\n").replace("line 15\n", "line fifteen\n")
    (worktree / "f.txt").write_text(text.replace("line 28\n", "line twenty-eight\n"))
    (worktree / "new.txt").write_text("brand new\n")
    # Committed with git itself: the recorder's first use seeds its cache from HEAD, and on a
    # loaded machine f.txt, written more than 100 ms before, was taken as unchanged.
    run_git(worktree, "add", "-A")
    run_git(worktree, "commit", "-qm", "model")
    return base, run_git(worktree, "rev-parse", "HEAD").strip()


class ReviewApp(App[None]):
    def __init__(self, repo: Path, base: str, head: str) -> None:
        super().__init__()
        self.args = (repo, base, head)
        self.outcome: ReviewOutcome | None = None

    def on_mount(self) -> None:
        self.push_screen(ReviewScreen(*self.args), self._done)

    def _done(self, outcome: ReviewOutcome | None) -> None:
        self.outcome = outcome
        self.exit()


async def loaded(pilot) -> ReviewScreen:
    screen = pilot.app.screen
    assert isinstance(screen, ReviewScreen)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    return screen


@pytest.mark.anyio
async def test_keep_two_of_three_hunks_with_your_own_edits_intact(make_repo) -> None:
    repo = make_repo({"f.txt": LINES, "mine.txt": "mine\n"})
    base, head = preview(repo)
    (repo / "f.txt").write_text(
        LINES.replace("line 8\n", "line 8 (mine)\n")
    )  # meanwhile, uncommitted
    (repo / "mine.txt").write_text("mine, edited\n")
    app = ReviewApp(repo, base, head)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await loaded(pilot)
        assert [i.key for i in screen.items] == [
            ("f.txt", 0),
            ("f.txt", 1),
            ("f.txt", 2),
            ("new.txt", -1),
        ]
        await pilot.press("a")  # hunk 1 accepted, cursor moves on
        await pilot.press("c")
        await pilot.press(*"keep fifteen")
        await pilot.press("enter")  # hunk 2 rejected with a comment
        await pilot.press("a", "x")  # hunk 3 accepted, the new file rejected
        await pilot.press("k", "k", "k")
        assert screen.cursor == 0
        assert [i.decision for i in screen.items] == [
            "accepted",
            "rejected",
            "accepted",
            "rejected",
        ]
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
    outcome = app.outcome
    assert outcome is not None and outcome.applied is not None and outcome.applied.ok
    assert (outcome.kept, outcome.dropped) == (2, 2)
    assert [(r.path, r.comment) for r in outcome.feedback] == [("f.txt", "keep fifteen")]
    text = (repo / "f.txt").read_text()
    assert "line two\n" in text and "line twenty-eight\n" in text and "line 15\n" in text
    assert "line 8 (mine)\n" in text  # the developer's own edit
    assert (repo / "mine.txt").read_text() == "mine, edited\n"
    assert not (repo / "new.txt").exists()


@pytest.mark.anyio
async def test_the_comment_dialog_says_when_the_comment_is_sent(make_repo) -> None:
    """Issue 16 item 13: it said "enter sends it to the model"; it goes on apply."""
    repo = make_repo({"f.txt": LINES})
    base, head = preview(repo)
    app = ReviewApp(repo, base, head)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await pilot.press("c")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, PromptScreen)
        shown = " ".join(str(label.render()) for label in dialog.query(Label))
        assert "sends it to the model" not in shown
        assert "the comment goes to the model when you apply" in shown
        await pilot.press("escape")


@pytest.mark.anyio
async def test_accept_all_then_a_conflict_changes_nothing(make_repo) -> None:
    repo = make_repo({"f.txt": LINES})
    base, head = preview(repo)
    (repo / "f.txt").write_text(LINES.replace("line 2\n", "line 2 (mine)\n"))
    app = ReviewApp(repo, base, head)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await loaded(pilot)
        await pilot.press("A")
        assert all(i.decision == "accepted" for i in screen.items)
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.screen is screen  # still open, showing the conflict
        assert "conflicts with your working tree" in str(
            screen.query_one("#review-status").render()
        )
    assert (repo / "f.txt").read_text() == LINES.replace("line 2\n", "line 2 (mine)\n")
    assert not (repo / "new.txt").exists()


def test_review_snapshot(make_repo, snap_compare) -> None:
    repo = make_repo({"f.txt": LINES})
    base, head = preview(repo)

    async def decide(pilot) -> None:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("a", "x")
        await pilot.pause()

    app = ReviewApp(repo, base, head)
    assert snap_compare(app, terminal_size=(120, 40), run_before=decide)


@pytest.mark.anyio
async def test_hunks_that_are_gone_do_not_break_the_cursor(make_repo) -> None:
    """Escape while the hunks mount: the screen's views go away under the loader's feet."""
    repo = make_repo({"f.txt": LINES})
    base, head = preview(repo)
    app = ReviewApp(repo, base, head)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await loaded(pilot)
        assert screen.items
        await screen.query_one("#review-hunks").remove_children()
        screen._focus_cursor()  # raised NoMatches before; now nothing to do
        assert app.is_running
