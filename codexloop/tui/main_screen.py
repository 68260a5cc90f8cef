"""The main screen: exam | model on top, terminal | diff below, the timeline on the side.

It owns the panes and the session's actions (pause, message, review, more iterations, the exam,
the timeline, the targets). Engine events reach it through the :class:`~codexloop.tui.pump.EventPump`:
each pane registers for the events it shows, and the screen redraws what the session state says
changed (the status line, the timeline, the diff, the exam, the keys). A race's lanes show
under the status line; the panes follow the lane in focus (:meth:`MainScreen.focus_lane`).
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from anyio.abc import ObjectReceiveStream
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, OptionList

from codexloop.core import events as ev
from codexloop.core.errors import setup_failure
from codexloop.core.words import counted
from codexloop.tui import narration
from codexloop.tui.dialogs import PromptScreen
from codexloop.tui.diff_pane import SandboxDiffPane, iteration_diff
from codexloop.tui.exam_panel import ExamPanel
from codexloop.tui.lane_bar import LaneBar, LaneChip
from codexloop.tui.model_pane import ModelPane
from codexloop.tui.narration import Line
from codexloop.tui.pump import EventPump
from codexloop.tui.review import ReviewOutcome, ReviewScreen
from codexloop.tui.screens import DiffScreen, IterationScreen
from codexloop.tui.session import Session
from codexloop.tui.state import Changes
from codexloop.tui.status_line import StatusLine
from codexloop.tui.terminal_pane import TerminalPane
from codexloop.tui.timeline import Timeline
from codexloop.tui.workers import describe, spawn

STATUS_S = 0.25
"""The status line's clock and rate are refreshed at this period."""
NARROW_COLUMNS = 100
"""Below this width the timeline hides (``t`` shows it)."""
PANE_LINES = 5_000
"""History kept by the model pane and the sandbox terminal."""

IDLE_WHILE_EDITING = frozenset(
    {
        "toggle_pause",
        "message",
        "review",
        "more_iterations",
        "edit_exam",
        "external_editor",
        "toggle_timeline",
        "zoom",
        "help",
        "request_quit",
    }
)
"""While the exam is edited in place, only the editor's keys (and ctrl+c) act."""


class MainScreen(Screen[None]):
    """The session's workspace."""

    def __init__(self, session: Session, *, banner: str = "", autostart: bool = True) -> None:
        super().__init__()
        self.session = session
        self.banner = banner
        self.autostart = autostart
        self.pump = EventPump(session.state, self.react)
        session.on_change = self.react
        self._timeline_choice: bool | None = None

    def compose(self) -> ComposeResult:
        self.status_line = StatusLine(id="status")
        self.lane_bar = LaneBar(self.session.lanes, id="lanes")
        self.timeline = Timeline(id="timeline")
        self.exam = ExamPanel(self.session, self.note, id="exam-panel")
        self.model_pane = ModelPane(id="model", max_lines=PANE_LINES)
        self.terminal_pane = TerminalPane(id="terminal", max_lines=PANE_LINES)
        self.diff_pane = SandboxDiffPane(self.session.diff_source, id="diff")
        yield self.status_line
        yield self.lane_bar
        with Horizontal(id="main"):
            yield self.timeline
            with Vertical(id="panes"):
                with Horizontal(id="top"):
                    yield self.exam
                    yield self.model_pane
                with Horizontal(id="bottom"):
                    yield self.terminal_pane
                    yield self.diff_pane
        yield Footer()

    def on_mount(self) -> None:
        session = self.session
        self.pump.panes = (self.model_pane, self.terminal_pane)
        self.pump.running = lambda: self.is_running
        self.model_pane.connect(self.pump, session.state)
        self.terminal_pane.connect(self.pump)
        self.pump.route(ev.LoopStarted, self._loop_started)
        self.pump.route(ev.TargetsChanged, session.targets_changed)
        self.pump.route(ev.TamperDetected, self._tampered)
        self.pump.route(ev.Notice, self._notice)
        self.pump.route(ev.Applied, session.applied)
        self.pump.lanes = session.lanes
        self.pump.ready_elsewhere = self._lane_waits
        self.pump.route(ev.Winner, self._winner)
        self.lane_bar.sync()
        self.timeline.border_title = "iterations"
        self.model_pane.border_title = f"model · {session.config.model}"
        if session.lanes is not None:
            first = session.config.for_attempt(1).model
            self.model_pane.border_title = f"model · attempt 1 · {first}"
        if self.banner:  # first, so it stays in sight at 80 columns
            self.model_pane.border_title = f"model · {self.banner} · {session.config.model}"
            self.model_pane.note(f"▌{self.banner}", "bold yellow")
        self.terminal_pane.border_title = "sandbox terminal"
        self.diff_pane.border_title = "diff vs base"
        self.set_interval(STATUS_S, self.show_status, name="status")
        self._apply_layout()
        self.show_status()
        self.model_pane.focus()
        if self.autostart:
            # After the first layout, so the loop knows the terminal pane's width from its
            # very first test run (pytest formats its output for it).
            self.call_after_refresh(self.start_loop)

    # -- the session ---------------------------------------------------------------------------

    def start_loop(self) -> None:
        """Build the loop from the config and run it; its events feed the panes."""
        loop, send, receive, commands = self.session.start()
        if self.terminal_pane.columns > 0:
            self.session.send(ev.SetColumns(self.terminal_pane.columns))
        spawn(self, self._consume(receive), name="events")
        spawn(self, self.session.drive(loop, send, commands, self._loop_failed), name="loop")

    async def _consume(self, receive: ObjectReceiveStream[ev.Event]) -> None:
        try:
            await self.pump.consume(receive)
        except Exception as exc:
            self.note(narration.events_failed(describe(exc)))
        finally:
            self.session.events_ended()

    def _loop_failed(self, error: Exception) -> None:
        """The loop raised: a user-facing error (the one mapping of core.errors) or a bug."""
        state, loop = self.session.state, self.session.loop
        known = setup_failure(error, sandbox_exists=loop is not None and loop.sandbox is not None)
        if known is None:
            state.loop_failed(describe(error))
        else:
            state.session_error(known)
            if state.finished is not None:
                return  # the loop finished first, and said why (an exam that can never pass)
        failure = state.failure or ""
        self.note(narration.loop_failed(failure))
        self.notify(failure, severity="error", timeout=10)

    def on_terminal_pane_resized(self, message: TerminalPane.Resized) -> None:
        self.session.send(ev.SetColumns(message.columns))

    def react(self, changes: Changes) -> None:
        """Redraw what the state says changed."""
        if Changes.TIMELINE in changes:
            self.timeline.sync(self.session.state.records)
        if Changes.EXAM in changes:
            self.exam.load()
            if self.banner and self.session.loop_running:  # changed outside the app
                self.notify(
                    f"{self.banner}: a recording cannot follow an edit of the exam; the replay "
                    "stops at its next model turn",
                    severity="warning",
                    timeout=10,
                )
        if Changes.TARGETS in changes:
            self.exam.show_targets()
        if Changes.DIFF_NOW in changes:
            self.diff_pane.request(0)
        elif Changes.DIFF in changes:
            self.diff_pane.request()
        if Changes.STATUS in changes:
            self.show_status()
        if Changes.LANES in changes:
            self.lane_bar.sync()
        if Changes.BINDINGS in changes:
            self.app.refresh_bindings()
        if Changes.REVIEW in changes and self.app.screen is self and not self.banner:
            # Offered at once, unless a dialog is open, or a recording plays (the scripted
            # demo: a newcomer sees the red run, the fix and the green run; v opens it).
            self.action_review()

    def show_status(self) -> None:
        self.status_line.show(self.session.state.status())

    def note(self, line: Line) -> None:
        """A line in the model pane from the app itself (not an engine event): shown next frame."""
        self.model_pane.narrate([line])
        self.pump.request_flush()

    def _loop_started(self, event: ev.LoopStarted) -> None:
        self.app.sub_title = event.branch

    # -- the lanes of a race -------------------------------------------------------------------

    def focus_lane(self, number: int) -> bool:
        """Attempt ``number``'s lane into focus: the panes, timeline and status line show its
        story so far, then follow it. False when it has the focus already (or is no lane)."""
        session, lanes = self.session, self.session.lanes
        history = lanes.focus(number) if lanes is not None else None
        if history is None or lanes is None:
            return False
        session.state.forget_events()
        self.model_pane.reset()
        self.terminal_pane.clear()
        self.timeline.reset()
        changes = self.pump.replay(history)
        if session.state.review_ready is None:
            changes &= ~Changes.REVIEW  # a review it waited for once and that is over
        lane = lanes.lanes[number]
        self.model_pane.border_title = f"model · attempt {number} · {lane.model or '…'}"
        self.react(changes | Changes.STATUS | Changes.TIMELINE | Changes.DIFF_NOW | Changes.LANES)
        self.app.refresh_bindings()
        self.pump.request_flush()
        return True

    def action_focus_lane(self, number: int) -> None:
        lanes = self.session.lanes
        if lanes is None:
            self.notify("one attempt: there are no lanes (--attempts N races N attempts)")
        elif number not in lanes.lanes:
            self.notify(f"there is no attempt {number} (this session races {len(lanes)})")
        else:
            self.focus_lane(number)

    def on_lane_chip_chosen(self, message: LaneChip.Chosen) -> None:
        self.focus_lane(message.number)

    def _lane_waits(self, attempt: int) -> None:
        """A lane out of focus waits for the developer: a green one comes into focus for its
        review (with ``--pick first`` it is the winner); a spent budget is said."""
        lanes = self.session.lanes
        lane = lanes.lanes.get(attempt) if lanes is not None else None
        if lane is None:
            return
        if lane.waiting == "review":
            if self.app.screen is self and not self.session.state.awaiting_developer:
                self.focus_lane(attempt)
                self.notify(f"attempt {attempt} went green: it is in focus for your review")
            else:
                self.notify(f"attempt {attempt} went green: {attempt} shows it")
        else:
            self.notify(f"attempt {attempt} spent its budget: c gives every waiting lane more")

    def _winner(self, event: ev.Winner) -> None:
        """The race is decided: its winner into focus (the review opens on it)."""
        if self.pump.replaying:
            return  # decided long ago: the developer chose the lane played in now
        if self.app.screen is self and self.focus_lane(event.attempt):
            self.notify(f"attempt {event.attempt} won ({event.why}): v reviews it")

    def _tampered(self, event: ev.TamperDetected) -> None:
        self.notify(event.reason, title="test results tampered with", severity="error")

    def _notice(self, event: ev.Notice) -> None:
        if event.level == "error":
            self.notify(event.message, severity="error", timeout=8)

    # -- layout ----------------------------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        self._apply_layout()

    def _apply_layout(self) -> None:
        narrow = self.size.width < NARROW_COLUMNS
        show = self._timeline_choice if self._timeline_choice is not None else not narrow
        self.timeline.display = show
        self.query_one("#main").set_class(narrow, "-narrow")
        footer = self.query_one(Footer)
        # Narrow: every key fits, q included (ctrl+p still opens the palette; help says so).
        footer.compact = narrow
        footer.show_command_palette = not narrow

    # -- actions -----------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While the exam is edited in place, only the editor's keys (and ctrl+c) act; "more
        iterations" shows only when the budget is spent."""
        if self.exam.editing and action in IDLE_WHILE_EDITING:
            return False
        if action in ("edit_exam", "external_editor") or action.startswith("focus_lane"):
            return self.app.screen is self
        return self.available(action)

    def available(self, action: str) -> bool:
        """Whether ``action`` makes sense now (the palette lists only those)."""
        if action == "more_iterations":
            return self.session.state.budget_spent is not None
        return True

    def action_toggle_pause(self) -> None:
        state = self.session.state
        if not self.session.loop_running:
            self.notify("the loop is not running")
        elif state.review_ready is not None:
            self.notify("the loop is green and waits for you: v reviews the change, q finishes")
        elif state.budget_spent is not None:
            self.notify("the loop waits for you: c gives it more, q finishes")
        else:
            self.session.toggle_pause()

    def action_message(self) -> None:
        if not self.session.loop_running:
            self.notify("the loop has finished: there is no next model turn")
            return
        if self.session.state.review_ready is not None:
            self.notify(
                "the loop is green and waits for your review: no model turn would read a "
                "message; reject a hunk with a comment (v, then c) to send the loop on",
                severity="warning",
                timeout=8,
            )
            return
        self.app.push_screen(
            PromptScreen(
                "Message to the model (joins the conversation at its next turn)",
                placeholder="e.g. the function must also accept floats"
                + ("  (@2 … for attempt 2 only)" if self.session.lanes else ""),
            ),
            self._message_entered,
        )

    def _message_entered(self, text: str | None) -> None:
        attempt = None
        lanes = self.session.lanes
        aimed = re.fullmatch(r"@(\d)\s+(.+)", text or "", re.DOTALL)
        if lanes is not None and aimed is not None and int(aimed[1]) in lanes.lanes:
            attempt, text = int(aimed[1]), aimed[2]  # "@2 try a dict": attempt 2 only
        if text and self.session.send(ev.Steer(text, attempt=attempt)):
            if self.session.state.budget_spent is not None:
                self.notify("message queued: it joins the conversation if you give more (c)")
            else:
                self.notify("message queued: it joins the conversation at the model's next turn")

    def action_more_iterations(self) -> None:
        """Red with the budget spent: as many iterations again, the conversation kept."""
        spent = self.session.state.budget_spent
        if spent is None or not self.session.loop_running:
            self.notify("more iterations are for a loop whose budget is spent")
        elif self.session.more_iterations():
            if spent.reason:
                self.note(narration.more_spend())
            else:
                self.note(narration.more_iterations(self.session.config.max_iterations))

    def action_review(self) -> None:
        """Hunk by hunk, the latest recorded state of the sandbox against the base."""
        if isinstance(self.app.screen, ReviewScreen | DiffScreen):
            return
        state, head = self.session.state, self.session.review_head()
        if state.started is None or head is None:
            self.app.push_screen(
                DiffScreen(
                    "the sandbox's changes so far (nothing recorded yet to review hunk by hunk)",
                    self.diff_pane.diff,
                    self.diff_pane.lines,
                    self.diff_pane.updated,
                )
            )
            return
        config = self.session.config
        self.app.push_screen(
            ReviewScreen(
                config.repo,
                state.started.base,
                head,
                config.target_files,
                apply=partial(self.session.apply_hunks, feed=self.pump.feed),
            ),
            self._review_done,
        )

    def _review_done(self, outcome: ReviewOutcome | None) -> None:
        if outcome is None:
            return
        applied = outcome.applied
        changed = len(applied.written) + len(applied.deleted) if applied is not None else None
        if changed:
            self.session.state.applied = (self.session.state.applied or 0) + changed
        summary = narration.review_summary(outcome.kept, outcome.dropped, changed)
        self.note(narration.note(summary, "cyan"))
        self.notify(summary)
        session = self.session
        if outcome.feedback:
            if session.feedback(outcome.feedback):
                self.notify(
                    f"{counted(len(outcome.feedback), 'comment')} sent to the model: "
                    "the loop goes on"
                )
            else:
                self.notify("the loop has finished: the comments were not sent", severity="warning")
        elif session.state.review_ready is not None:
            session.send(ev.Finish())

    def action_edit_exam(self) -> None:
        if (self.exam.editing or self.app.screen is self) and self._exam_may_change():
            self.exam.edit()

    def action_external_editor(self) -> None:
        if (self.exam.editing or self.app.screen is self) and self._exam_may_change():
            self.exam.edit_outside()

    def _exam_may_change(self) -> bool:
        """A recorded session (the scripted demo, a replay: the banner says which) has no model
        turn for an exam that changed: it would end with 'the recording has no model turn
        left'. So while it plays, the exam stays as recorded; afterwards it is yours again."""
        if not self.banner or not self.session.loop_running or self.exam.editing:
            return True
        self.notify(
            f"{self.banner}: a recording cannot follow an edit of the exam (it has no model turn "
            "for it). Edit the exam once the loop has finished, or in a live session.",
            severity="warning",
            timeout=10,
        )
        return False

    def action_toggle_timeline(self) -> None:
        self._timeline_choice = not self.timeline.display
        self._apply_layout()

    def action_add_target(self) -> None:
        self.exam.add_target()

    def action_remove_target(self) -> None:
        self.exam.remove_target()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list is not self.timeline:
            return
        record = self.timeline.record_at(event.option.id)
        if record is None:
            return
        state = self.session.state
        commit = state.commit_at(record.iteration)
        started = state.started
        diff = None
        if started is not None and commit is not None:
            worktree, base = Path(started.worktree), started.base
            diff = partial(iteration_diff, worktree, base, commit, self.session.config.target_files)
        self.app.push_screen(IterationScreen(record, diff))
