"""How the app looks: snapshots at 120x40, and what shows at 80x24 and when zoomed."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from apphelpers import (
    finish,
    keys_shown,
    make_app,
    red_then_green,
    review_app,
    stable_config,
    workers_named,
)
from loophelpers import KATA, edit, make_config
from scripted_openai import Reply
from textual.pilot import Pilot

from codexloop.core import events as ev
from codexloop.tui.hunks import HunkView, MarkedLines
from codexloop.tui.review import ReviewScreen

pytestmark = pytest.mark.anyio


def test_snapshot_running(make_repo, scripted_openai, snap_compare) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(
        Reply(
            text="The test wants add(2, 3) == 5 and gets -1: the operator is wrong.",
            tool_calls=[edit("calc.py", "a - b", "a + b")],
        ),
        Reply(text="Fixed the operator: add returns a + b now.", chunk_size=20, hold=hold),
    )
    app = make_app(stable_config(repo, scripted_openai.base_url), stable=True)

    async def running(pilot: Pilot[Any]) -> None:
        await app.wait_until(lambda: "Fixed the operator: " in app.main.model_pane.text)
        await app.settle()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 40), run_before=running)


def test_snapshot_red(make_repo, scripted_openai, snap_compare) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(text="Perhaps it multiplies.", tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="Now add multiplies."),
        Reply(text="Or a power.", tool_calls=[edit("calc.py", "a * b", "a ** b")]),
        Reply(text="Now add raises a to b."),
    )
    app = make_app(stable_config(repo, scripted_openai.base_url, max_iterations=2), stable=True)

    async def red(pilot: Pilot[Any]) -> None:
        await finish(app, pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=red)


def test_snapshot_green(make_repo, scripted_openai, snap_compare) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = make_app(stable_config(repo, scripted_openai.base_url), stable=True)

    async def green(pilot: Pilot[Any]) -> None:
        await finish(app, pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=green)


async def test_zoom_fills_the_screen_and_back_follows_the_tail(make_repo, scripted_openai) -> None:
    """Issue 16 item 5: a zoomed pane was as wide as its share times the screen (three screens
    for the model pane: no right border, lines cut), the timeline kept its 21 columns, and the
    model pane came back from a zoom scrolled to its top."""
    repo = make_repo(KATA)
    scripted_openai.add(*red_then_green())
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(80, 24)) as pilot:
        await finish(app, pilot)
        pane = app.main.model_pane
        assert pane.has_focus and pane.is_vertical_scroll_end and pane.scroll_offset.y > 0
        before = pane.region
        await pilot.press("z")
        await pilot.pause()
        assert pane.region.x == 0 and pane.region.width == 80
        assert pane.virtual_size.width <= pane.scrollable_content_region.width  # wrapped
        await pilot.press("z")
        await pilot.pause()
        assert pane.region == before and pane.is_vertical_scroll_end and pane.scroll_offset.y > 0
        timeline = app.main.timeline
        await pilot.press("t")
        timeline.focus()
        await pilot.press("z")
        await pilot.pause()
        assert timeline.region.width == 80


async def test_at_80_columns_every_key_shows_and_help_scrolls(make_repo, scripted_openai) -> None:
    """Issue 16 item 7: at 80x24 the footer lost q, the review's footer lost apply and back,
    the help stopped after ctrl+p and did not scroll, and the review's file list took 35 of
    80 columns (hunks wrapped at 40, continuation lines without their + or -)."""
    repo = make_repo(KATA)
    long_line = "    return a + b  # " + "the sum, as the exam says " * 4
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "    return a - b", long_line)]), Reply(text="Fixed.")
    )
    app = review_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.wait_for_event(ev.ReviewReady)
        await app.wait_until(lambda: isinstance(app.screen, ReviewScreen))
        await workers_named(app, pilot, "load")
        review = app.screen
        assert {"enter", "escape", "a", "x", "c"} <= keys_shown(review, 80)
        assert review.query_one("#review-files").region.width <= 24
        hunk = review.query_one(HunkView)
        assert hunk.region.width >= 50
        console = app.console
        options = console.options.update_width(hunk.content_size.width)
        body = hunk.content
        assert isinstance(body, MarkedLines)
        lines = ["".join(s.text for s in row) for row in console.render_lines(body, options)]
        added = [line for line in lines if line.startswith("+")]
        assert len(added) >= 2 and all(line.strip() for line in lines)  # marked throughout
        await pilot.press("escape")
        await pilot.pause()
        assert {"q", "space", "m", "v", "question_mark"} <= keys_shown(app.screen, 80)
        await pilot.press("question_mark")
        await pilot.pause()
        box = app.screen.query_one("#help-box")
        assert box.max_scroll_y > 0 and box.has_focus
        await pilot.press("end")
        await pilot.pause()
        assert box.scroll_y == box.max_scroll_y  # the rest of the help, down to "escape"
        await pilot.press("escape", "q")
        await app.wait_for_event(ev.LoopFinished)


async def test_small_terminals_hide_the_timeline_and_t_toggles_it(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    app = make_app(make_config(repo, scripted_openai.base_url))
    async with app.run_test(size=(80, 24)) as pilot:
        await finish(app, pilot)
        assert not app.main.timeline.display
        for pane in (
            app.main.exam.pane,
            app.main.model_pane,
            app.main.terminal_pane,
            app.main.diff_pane,
        ):
            assert pane.size.width >= 30 and pane.size.height >= 6
        await pilot.press("t")
        assert app.main.timeline.display
        await pilot.resize_terminal(200, 50)
        await pilot.pause()
        assert app.main.timeline.display
