"""A race in the app (``--attempts N``): a lane per attempt under the status line, the panes
following the focused lane (1…9, a click), the review on the winner, commands to every lane
or to one."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from app_probe import ProbedApp
from apphelpers import SESSION, StableLoop, finish, stable_config
from loophelpers import KATA, edit
from scripted_openai import Call, Reply
from textual.pilot import Pilot

from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.race import Race
from codexloop.tui.dialogs import PromptScreen
from codexloop.tui.lane_bar import lane_text
from codexloop.tui.lanes import Lane, Lanes
from codexloop.tui.review import ReviewScreen

pytestmark = pytest.mark.anyio


class StableLaneLoop(StableLoop):
    """An attempt whose events do not change between runs: the race's one baseline run is
    made by whichever attempt comes first (the others show a line saying so), so the
    baseline's output is left out of every lane's terminal."""

    async def emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.TestStarted):
            self.in_baseline = event.iteration == 0
        elif isinstance(event, ev.TestOutput) and getattr(self, "in_baseline", False):
            return
        await super().emit(event)


def race_app(config: Config) -> ProbedApp:
    def factory(cfg: Config) -> Race:
        race = Race(cfg, name=SESSION, backoff=(0.0,), review=cfg.pick == "first")
        for loop in race.loops:  # events that do not change between runs (snapshots)
            loop.__class__ = StableLaneLoop
        return race

    return ProbedApp(config, loop_factory=factory, clock=lambda: 0.0)


def fixed_by_b(*before: Reply) -> list[Reply]:
    """Attempt b's script: ``before``, then the right operator."""
    was = "a * b + 3" if before else "a - b"
    return [
        *before,
        Reply(text="Operator.", tool_calls=[edit("calc.py", was, "a + b")]),
        Reply(text="Now add adds."),
    ]


def wrong(i: int) -> list[Reply]:
    content = f"def add(a, b):\n    return a * b + {i}\n"
    return [
        Reply(
            text=f"Slow guess {i}.",
            tool_calls=[Call("write_file", {"path": "calc.py", "content": content})],
        ),
        Reply(text=f"Guessed {i}."),
    ]


async def test_lanes_follow_the_focus_and_the_review_opens_on_the_winner(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add_for("a", *wrong(1), Reply(text="still thinking", hold=hold))
    scripted_openai.add_for("b", *fixed_by_b())
    config = stable_config(repo, scripted_openai.base_url, model="a,b", attempts=2)
    app = race_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_until(lambda: isinstance(app.screen, ReviewScreen))
        main = app.main
        lanes = app.session.lanes
        assert lanes is not None and lanes.focused == 2  # the green lane came into focus
        assert "Now add adds." in main.model_pane.text
        await pilot.pause()
        await pilot.press("escape")
        await app.wait_until(lambda: app.screen is app.main)
        await pilot.press("1")
        await pilot.pause()
        app.flush()
        assert lanes.focused == 1
        assert "Guessed 1." in main.model_pane.text
        assert "Now add adds." not in main.model_pane.text
        hold.set()


async def test_a_finished_race_shows_every_lane(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("a", *wrong(1), *wrong(2))
    scripted_openai.add_for("b", *fixed_by_b(*wrong(3)))
    config = stable_config(repo, scripted_openai.base_url, model="a,b", attempts=2)
    app = race_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.wait_until(lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        await pilot.press("A", "enter")
        await finish(app, pilot)
        main, lanes = app.main, app.session.lanes
        assert lanes is not None and lanes.focused == 2 and lanes.winner == 2
        # The review's hunks went to the winner alone: applied once.
        assert len([e for e in app.events if isinstance(e, ev.Applied)]) == 1
        assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
        await pilot.press("1")
        await pilot.pause()
        app.flush()
        assert lanes.focused == 1
        text = main.model_pane.text
        assert "Guessed 1." in text and "Now add adds." not in text, text


def _requests_of(scripted: Any, model: str) -> list[dict[str, Any]]:
    return [r for r in scripted.requests if r.get("model") == model]


async def test_pause_reaches_every_lane_and_a_message_one_or_all(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    held = {model: threading.Event() for model in "ab"}
    for model in "ab":
        first = wrong(1)
        first[0].hold = held[model]
        scripted_openai.add_for(model, *first, *wrong(2), *wrong(3))
    config = stable_config(repo, scripted_openai.base_url, model="a,b", attempts=2)
    app = race_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        lanes = app.session.lanes
        assert lanes is not None
        await app.wait_until(lambda: len(scripted_openai.requests) == 2)
        await pilot.press("space")  # pause: every lane, at its next safe point
        for event in held.values():
            event.set()
        await app.wait_until(lambda: all(lane.state == "paused" for lane in lanes.lanes.values()))
        await pilot.press("m")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press(*"@2 only for b", "enter")
        await pilot.press("m")
        await pilot.press(*"for both", "enter")
        await pilot.pause()
        await pilot.press("space")  # resume: every lane
        await app.wait_until(
            lambda: (
                len(_requests_of(scripted_openai, "a")) >= 2
                and len(_requests_of(scripted_openai, "b")) >= 2
            )
        )
        said = {
            model: "\n".join(
                str(m.get("content")) for m in _requests_of(scripted_openai, model)[1]["messages"]
            )
            for model in "ab"
        }
        assert "only for b" in said["b"] and "only for b" not in said["a"]
        assert "for both" in said["a"] and "for both" in said["b"]
        await pilot.press("q")
        await pilot.pause()
        app.exit_policy.stop_then_exit("test over")
        await app.wait_for_event(ev.LoopFinished)


async def test_a_click_on_a_lane_focuses_it(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("a", *wrong(1))
    scripted_openai.add_for("b", *wrong(2))
    config = stable_config(
        repo, scripted_openai.base_url, model="a,b", attempts=2, max_iterations=1, pick="best"
    )
    app = race_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        await finish(app, pilot)
        lanes = app.session.lanes
        assert lanes is not None and lanes.winner is None
        await pilot.click("#lane-2")
        app.flush()
        assert lanes.focused == 2
        assert "Guessed 2." in app.main.model_pane.text
        assert "Guessed 1." not in app.main.model_pane.text
        assert app.main.timeline.records  # its iterations
        await pilot.press("3")  # no such lane: said, nothing changes
        assert lanes.focused == 2


def test_a_lane_chip_says_state_iteration_tokens_and_verdict() -> None:
    lane = Lane(2, state="thinking", iteration=3, tokens_in=9_000, tokens_out=3_400, passed=False)
    assert lane_text(lane, winner=False).plain == "2 ✗ #3  THINKING  12k"
    lane.finished, lane.passed = "passed", True
    assert lane_text(lane, winner=True).plain == "2 ★ ✓ #3  ✓ GREEN  12k"
    lane.finished, lane.waiting = None, "budget"
    assert "budget spent" in lane_text(lane, winner=False).plain


def test_lanes_keep_each_story_joined_and_the_race_events_for_all() -> None:
    lanes = Lanes(2)
    assert lanes.take(ev.ModelText("he", attempt=1))
    assert lanes.take(ev.ModelText("llo", attempt=1))
    assert not lanes.take(ev.ModelText("other", attempt=2))
    assert not lanes.take(ev.TestFinished(1, False, 1, 0.1, "red", attempt=2))
    assert lanes.take(ev.Usage(1, 1, 10, 5, attempt=0))
    assert lanes.take(ev.Usage(1, 1, 20, 9, attempt=0))
    assert lanes.lanes[2].passed is False
    story = lanes.focus(2)
    assert story is not None and lanes.focused == 2
    assert [type(e).__name__ for e in story] == ["ModelText", "TestFinished", "Usage"]
    assert story[-1].input_total == 20  # type: ignore[attr-defined]
    assert lanes.focus(2) is None and lanes.focus(7) is None
    back = lanes.focus(1)
    assert back is not None and back[0] == ev.ModelText("hello", attempt=1)


async def test_more_iterations_go_to_every_lane_whose_budget_is_spent(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("a", *wrong(1), *wrong(2))
    scripted_openai.add_for("b", *wrong(3), *wrong(4))
    config = stable_config(
        repo, scripted_openai.base_url, model="a,b", attempts=2, max_iterations=1
    )
    app = race_app(config)
    async with app.run_test(size=(120, 40)) as pilot:
        lanes = app.session.lanes
        assert lanes is not None
        await app.wait_until(lambda: lanes.waiting("budget") == [1, 2])
        await app.wait_until(lambda: app.session.state.budget_spent is not None)
        await pilot.press("c")
        await app.wait_until(
            lambda: (
                len(_requests_of(scripted_openai, "a")) == 4
                and len(_requests_of(scripted_openai, "b")) == 4
            )
        )
        await app.wait_until(lambda: lanes.waiting("budget") == [1, 2])
        assert {lane.iteration for lane in lanes.lanes.values()} == {2}
        app.exit_policy.stop_then_exit("test over")
        await app.wait_for_event(ev.LoopFinished)


def test_snapshot_lanes(make_repo, scripted_openai, snap_compare) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("a", *wrong(1), *wrong(2))
    scripted_openai.add_for("b", *fixed_by_b(*wrong(3)))
    config = stable_config(
        repo, scripted_openai.base_url, model="a,b", attempts=2, max_iterations=2, pick="best"
    )
    app = race_app(config)

    async def raced(pilot: Pilot[Any]) -> None:
        await finish(app, pilot)
        await pilot.press("1")
        app.clear_notifications()
        await app.settle()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 40), run_before=raced)
