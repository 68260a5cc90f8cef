"""What cannot be prevented is shown: a green bought with an object equal to everything.

The scripted model makes the kata's test pass without fixing ``add``: it returns an object
whose ``__eq__`` always says True. Nothing inside the test process can tell (the canary
passes, the report is real), so the loop goes green — and the change is flagged: a
``flagged`` event names the line, ``--accept all`` does not apply it (exit 1, the flags on
standard error), ``--accept flagged`` does, and the review marks the hunk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_git
from loophelpers import KATA, TARGET, edit, events_of, make_config, of_type, run_loop
from loophelpers import run_cli as codexloop
from rich.console import ConsoleRenderable
from scripted_openai import Call, Reply
from textual.app import App

from codexloop.core import events as ev
from codexloop.core import gitops
from codexloop.tui.review import FLAG_MARK, HunkView, ReviewScreen

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


def script_the_hack(server) -> None:
    server.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": HACK})]),
        Reply(text="add now returns something equal to 5."),
    )


def headless(server, repo: Path, accept: str):
    return codexloop(
        TARGET,
        "--headless",
        "--accept",
        accept,
        "--base-url",
        server.base_url,
        "--model",
        "m",
        cwd=repo,
        timeout=120,
    )


@pytest.mark.anyio
async def test_accept_all_does_not_apply_a_flagged_green(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    script_the_hack(scripted_openai)
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config, accept_all=True)

    assert result.status == "passed"  # it cannot be prevented: the test really passed
    flagged = of_type(events, ev.Flagged)
    assert [(f.path, f.line) for f in flagged] == [("calc.py", HACK_LINE)]
    assert "__eq__" in flagged[0].reason
    assert flagged[0].to_dict() == {
        "type": "flagged",
        "path": "calc.py",
        "line": HACK_LINE,
        "reason": flagged[0].reason,
    }
    assert not of_type(events, ev.Applied)
    notices = [n.message for n in of_type(events, ev.Notice) if n.level == "error"]
    assert any("--accept flagged" in m for m in notices)
    # The developer's checkout is untouched; the change waits on the preview branch.
    assert (repo / "calc.py").read_text() == KATA["calc.py"]
    assert run_git(repo, "status", "--porcelain") == ""
    assert run_git(repo, "show", f"{result.branch}:calc.py") == HACK


@pytest.mark.anyio
async def test_accept_flagged_applies_it_anyway(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    script_the_hack(scripted_openai)
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config, accept_all=True, accept_flagged=True)

    assert result.status == "passed"
    assert [(f.path, f.line) for f in of_type(events, ev.Flagged)] == [("calc.py", HACK_LINE)]
    assert of_type(events, ev.Applied)[0].written == ("calc.py",)
    assert (repo / "calc.py").read_text() == HACK


@pytest.mark.anyio
async def test_an_honest_fix_has_no_flags_and_is_applied(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="ok"))
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config, accept_all=True)

    assert result.status == "passed"
    assert not of_type(events, ev.Flagged)
    assert (repo / "calc.py").read_text().endswith("return a + b\n")


def test_headless_accept_all_exits_1_and_lists_the_flags(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    script_the_hack(scripted_openai)
    done = headless(scripted_openai, repo, "all")

    assert done.returncode == 1, done.stderr
    events = events_of(done.stdout)
    flagged = [e for e in events if e["type"] == "flagged"]
    assert [(e["path"], e["line"]) for e in flagged] == [("calc.py", HACK_LINE)]
    assert events[-1]["type"] == "loop_finished" and events[-1]["status"] == "passed"
    assert not [e for e in events if e["type"] == "applied"]
    assert f"calc.py:{HACK_LINE}: " in done.stderr and "--accept flagged" in done.stderr
    assert "Traceback" not in done.stderr
    assert (repo / "calc.py").read_text() == KATA["calc.py"]


def test_headless_accept_flagged_applies_and_exits_0(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    script_the_hack(scripted_openai)
    done = headless(scripted_openai, repo, "flagged")

    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert any(e["type"] == "flagged" for e in events)
    assert [e["written"] for e in events if e["type"] == "applied"] == [["calc.py"]]
    assert (repo / "calc.py").read_text() == HACK


def test_accept_flagged_is_for_headless_runs(make_repo) -> None:
    repo = make_repo(KATA)
    done = codexloop(TARGET, "--accept", "flagged", cwd=repo, env={"OPENAI_API_KEY": "k"})
    assert done.returncode == 2
    assert "--accept applies to --headless runs" in done.stderr


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
        assert "touch test machinery" in title


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
