"""The review marks a flagged hunk: a green bought with an object equal to everything.

The change makes the kata's test pass without fixing ``add`` (tests/test_flagged_green.py runs it
through the loop): the review marks the hunk whose line makes it equal to everything, and only it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_git
from loophelpers import KATA
from rich.console import ConsoleRenderable
from textual.app import App

from codexloop.core import gitops
from codexloop.tui.hunks import FLAG_MARK, HunkView
from codexloop.tui.review import ReviewScreen

HACK = (
    "class _Five:\n"
    "    def __eq__(self, other):\n"
    "        return True\n"
    "\n"
    "\n"
    "def add(a, b):\n"
    "    return _Five()\n"
)
HACK_LINE = 3  # `return True`: the line that makes it equal to everything


# -- the review marks the flagged hunk -------------------------------------------------


def preview(repo: Path, files: dict[str, str]) -> tuple[str, str]:
    base = gitops.snapshot(repo)
    worktree = repo.parent / "wt"
    gitops.create_worktree(repo, base, "codexloop/flagged", worktree)
    for rel, text in files.items():
        (worktree / rel).write_text(text)
    run_git(worktree, "add", "-A")
    run_git(worktree, "commit", "-qm", "model")
    return base, run_git(worktree, "rev-parse", "HEAD").strip()


class ReviewApp(App[None]):
    def __init__(self, repo: Path, base: str, head: str) -> None:
        super().__init__()
        self.args = (repo, base, head)

    def on_mount(self) -> None:
        self.push_screen(ReviewScreen(*self.args))


async def shown_hunks(app: ReviewApp, pilot) -> list[HunkView]:
    await app.workers.wait_for_complete()
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, ReviewScreen)
    return list(screen.query(HunkView))


def rendered(view: HunkView) -> str:
    """What the hunk shows: its title and its body, as plain text."""
    title = str(view.border_title or "")
    body = view.content
    assert isinstance(body, ConsoleRenderable)
    lines = view.app.console.render_lines(body, view.app.console.options.update_width(100))
    return title + "\n" + "\n".join("".join(s.text for s in line) for line in lines)


@pytest.mark.anyio
async def test_review_marks_a_flagged_hunk_and_only_it(make_repo) -> None:
    helpers = "".join(f"def helper{i}():\n    return {i}\n\n\n" for i in range(10))
    repo = make_repo({"calc.py": KATA["calc.py"], "helpers.py": helpers})
    honest = helpers.replace("return 7", "return 7 * 1")
    base, head = preview(repo, {"calc.py": HACK, "helpers.py": honest})
    app = ReviewApp(repo, base, head)
    async with app.run_test(size=(120, 40)) as pilot:
        views = await shown_hunks(app, pilot)
        by_path = {view.item.change.path: view for view in views}
        assert set(by_path) == {"calc.py", "helpers.py"}
        flagged, clean = rendered(by_path["calc.py"]), rendered(by_path["helpers.py"])
        assert FLAG_MARK in flagged and f"line {HACK_LINE}: __eq__ returns a constant" in flagged
        assert by_path["calc.py"].has_class("flagged")
        assert FLAG_MARK not in clean and not by_path["helpers.py"].has_class("flagged")
        title = str(app.screen.query_one("#review-title").render())
        assert "1 line touches test machinery" in title  # (not "1 line(s) touch")


@pytest.mark.anyio
async def test_review_without_flags_shows_no_mark(make_repo) -> None:
    repo = make_repo(KATA)
    base, head = preview(repo, {"calc.py": KATA["calc.py"].replace("a - b", "a + b")})
    app = ReviewApp(repo, base, head)
    async with app.run_test(size=(120, 40)) as pilot:
        views = await shown_hunks(app, pilot)
        assert len(views) == 1
        assert FLAG_MARK not in rendered(views[0])
        assert not views[0].has_class("flagged")
        assert "test machinery" not in str(app.screen.query_one("#review-title").render())
