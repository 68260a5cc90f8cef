"""The app's session state and narration, without a screen: event lists in, state and lines out."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from codexloop.core import events as ev
from codexloop.core.errors import SandboxError
from codexloop.tui import narration
from codexloop.tui.narration import NARRATED, narrate
from codexloop.tui.state import TEST_OUTPUT_CHARS, Changes, SessionState

STARTED = ev.LoopStarted(
    branch="codexloop/s",
    worktree="/tmp/wt",
    base="b0",
    targets=("tests/test_calc.py::test_add",),
    test_command="pytest",
    model="m",
    max_iterations=3,
    isolation="full",
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(budget: int = 3) -> tuple[SessionState, Clock]:
    clock = Clock()
    return SessionState(budget, clock), clock


def red_then_green() -> list[ev.Event]:
    return [
        STARTED,
        ev.StateChanged("testing"),
        ev.TestStarted(0, "pytest"),
        ev.TestOutput("F\n"),
        ev.TestFinished(0, False, 1, 0.4, "0 passed, 1 failed"),
        ev.IterationStarted(1),
        ev.ModelTurnStarted(1),
        ev.ModelText("Let me "),
        ev.ModelText("look."),
        ev.CommandOutput("probe\n"),
        ev.Usage(100, 20, 100, 20),
        ev.TestStarted(1, "pytest"),
        ev.TestOutput(".\n"),
        ev.TestFinished(1, True, 0, 0.3, "1 passed, 0 failed"),
        ev.IterationFinished(1, True, 1.5, "c1", 100, 20),
        ev.ReviewReady(1, "c1"),
    ]


def apply_all(s: SessionState, events: list[ev.Event]) -> list[Changes]:
    return [s.apply(event) for event in events]


def test_a_red_then_green_session_fills_the_records_and_offers_the_review() -> None:
    s, _clock = state()
    changes = apply_all(s, red_then_green())
    assert s.started is STARTED and s.info.isolation == "full" and s.info.max_iterations == 3
    base, first = s.records[0], s.records[1]
    assert (base.passed, base.duration_s, base.summary) == (False, 0.4, "0 passed, 1 failed")
    assert base.test_output == ["F\n"] and base.command_output == []
    assert first.test_output == [".\n"] and first.command_output == ["probe\n"]
    assert (first.passed, first.commit, first.input_tokens, first.output_tokens) == (
        True,
        "c1",
        100,
        20,
    )
    assert (s.info.tokens_in, s.info.tokens_out, s.info.iteration) == (100, 20, 1)
    assert s.awaiting_developer and s.commit_at(5) == "c1" and s.commit_at(0) is None
    assert s.review_head(None) == "c1"
    assert changes[-1] == Changes.STATUS | Changes.BINDINGS | Changes.REVIEW
    assert Changes.DIFF in changes[-2] and Changes.TIMELINE in changes[-2]
    # Streamed fragments change nothing but the panes' text (no redraw of anything else).
    assert changes[3] == changes[7] == changes[9] == Changes.NONE
    assert s.status().hint == "v to review · q to finish"


def test_pause_resume_and_stop_transitions() -> None:
    s, _clock = state()
    s.apply(STARTED)
    assert s.pausing() == Changes.STATUS and s.status().transition == "pausing…"
    s.apply(ev.StateChanged("thinking"))
    assert s.transition == "pausing…"  # not yet: the loop pauses at its next safe point
    s.apply(ev.StateChanged("paused"))
    assert s.transition == "" and s.status().state == "paused"
    s.resuming()
    assert s.transition == "resuming…"
    s.apply(ev.StateChanged("thinking"))
    assert s.transition == ""
    s.stopping()
    s.apply(ev.StateChanged("paused"))
    assert s.transition == "stopping…"  # stopping stays until the loop has finished
    s.apply(ev.LoopFinished("stopped", 1, "codexloop/s", reason="stopped by the developer"))
    assert s.transition == "stopping…" and s.info.final == "stopped"
    assert s.info.final_note == "stopped by the developer · q to quit"


def test_a_spent_budget_waits_and_more_iterations_go_on() -> None:
    s, _clock = state(budget=2)
    changes = apply_all(s, [STARTED, ev.IterationStarted(1), ev.BudgetSpent(2)])
    assert changes[-1] == Changes.STATUS | Changes.BINDINGS and s.awaiting_developer
    assert s.status().hint == "c for 2 more · v to review · q to finish"
    assert s.more_iterations(2) == Changes.STATUS | Changes.BINDINGS
    assert not s.awaiting_developer and s.status().hint == ""
    # Issue 16 item 6: the loop may now run to iteration 4 (it said 3 when it started).
    assert s.total_iterations == 4 and s.status().max_iterations == 4
    [separator] = narrate(ev.IterationStarted(3), s)
    assert separator.text == "iteration 3 of 4"


def test_feedback_to_a_waiting_loop_gives_a_fresh_budget() -> None:
    s, _clock = state(budget=3)
    apply_all(s, red_then_green())  # green at iteration 1, waiting for the review
    assert s.feedback_sent() == Changes.STATUS and s.total_iterations == 4
    running, _clock = state(budget=3)
    running.apply(STARTED)
    running.apply(ev.IterationStarted(1))
    assert running.feedback_sent() == Changes.NONE and running.total_iterations == 3


def test_the_end_of_a_session_and_its_exit_status() -> None:
    s, clock = state()
    apply_all(s, red_then_green())
    clock.now = 160.0
    changes = s.apply(ev.LoopFinished("passed", 1, "codexloop/s", "/tmp/wt"))
    assert changes == Changes.STATUS | Changes.BINDINGS | Changes.DIFF_NOW
    assert not s.awaiting_developer and s.info.final == "passed"
    assert s.info.final_note == "after 1 iteration · q to quit"
    clock.now = 999.0
    assert s.status().elapsed == 60.0  # the clock stops with the loop
    assert not s.session_over
    s.loop_ended(cancelled=False)
    s.events_ended()
    assert s.session_over
    assert s.exit_status(interrupted=False) == 0 and s.exit_status(interrupted=True) == 130
    # Issue 16 item 16: the exit line says whether anything was applied.
    assert s.summary() == (
        "codexloop: green after 1 iteration; nothing applied to your working tree; "
        "the work is on branch codexloop/s (worktree /tmp/wt)"
    )
    s.applied = 2
    assert "; 2 files changed in your working tree; the work is on branch" in s.summary()


def test_a_loop_that_ends_without_finishing_is_a_failure() -> None:
    s, _clock = state()
    s.loop_failed("GitError: not a git checkout")
    assert s.loop_ended(cancelled=False) == Changes.STATUS
    assert s.info.final == "failed" and s.exit_status(interrupted=False) == 1
    assert s.info.final_note == "the loop failed: GitError: not a git checkout · q to quit"
    assert s.summary() == "codexloop: the loop failed: GitError: not a git checkout"
    cancelled, _clock = state()
    cancelled.loop_ended(cancelled=True)
    assert cancelled.info.final == "stopped" and cancelled.failure == "the loop ended early"


def test_tokens_per_second_over_a_window() -> None:
    s, clock = state()
    s.apply(ev.ModelText("x" * 400))  # 100 tokens, counted once they reach the screen
    assert s.token_rate() == 0.0
    s.flushed()
    clock.now += 0.5
    s.apply(ev.ModelReasoning("y" * 400))
    s.flushed()
    assert s.token_rate() == 200.0  # over at least a second
    clock.now += 10
    assert s.token_rate() == 0.0


def test_exam_guard_counts_and_the_diff_is_asked_for() -> None:
    s, _clock = state()
    refused = ev.ToolResult("write_file", False, "tests/test_calc.py is protected", refused=True)
    assert s.apply(refused) == Changes.STATUS
    assert s.apply(ev.ToolResult("write_file", False, "no such file")) == Changes.NONE
    assert s.apply(ev.ExamRestored(("a", "b"))) == Changes.STATUS | Changes.DIFF
    assert s.info.exam_attempts == 3
    assert s.apply(ev.SandboxChanged(("calc.py",))) == Changes.DIFF
    assert s.apply(ev.HunksReverted(("calc.py",))) == Changes.DIFF
    assert s.apply(ev.ExamChanged(("t.py",), "+x")) == Changes.EXAM
    assert s.apply(ev.TargetsChanged(("t.py",), "pytest t.py")) == Changes.TARGETS


def test_output_kept_per_iteration_is_its_tail() -> None:
    s, _clock = state()
    s.apply(ev.TestStarted(1, "pytest"))
    for n in range(30):
        s.apply(ev.TestOutput(f"{n:05d}" + "x" * 9_995))
    kept = s.records[1].test_output
    assert sum(map(len, kept)) <= TEST_OUTPUT_CHARS and kept[-1].startswith("00029")
    s.apply(ev.TestStarted(1, "pytest"))  # a re-run of the same iteration starts afresh
    assert s.records[1].test_output == []


# -- narration ---------------------------------------------------------------------------------


def test_every_narrated_event_has_lines_and_the_stream_has_none() -> None:
    s, _clock = state()
    samples: list[ev.Event] = [
        STARTED,
        ev.IterationStarted(2),
        ev.ModelRetry(1, "HTTP 429", 2.0),
        ev.ExamRestored(("tests/test_calc.py",)),
        ev.TamperDetected(1, "the canary passed"),
        ev.TestStarted(0, "pytest"),
        ev.TestFinished(1, True, 0, 0.3, "1 passed"),
        ev.GuardFinished(1, False, "49 passed, 1 failed", 0.5, broken=("t::sub",)),
        ev.GateFinished(1, "ruff check .", False, 1, 0.2),
        ev.Notice("warning", "careful"),
        ev.Applied(("calc.py",), ()),
        ev.BudgetSpent(1),
        ev.ReviewReady(1, "c1"),
        ev.HunksReverted(("calc.py",), ("x.py",)),
        ev.ExamChanged(("tests/test_calc.py",), "+x"),
        ev.TargetsChanged(("t.py::a",), "pytest"),
        ev.LoopFinished("failed", 3, "codexloop/s"),
    ]
    assert {type(event) for event in samples} == set(NARRATED)
    for event in samples:
        assert narrate(event, s), event
    for event in (ev.ModelText("x"), ev.TestStarted(1, "pytest"), ev.Usage(1, 1, 1, 1)):
        assert narrate(event, s) == []


def test_the_lines_read_as_before() -> None:
    s, _clock = state(budget=10)
    started = dataclasses.replace(STARTED, bwrap="system bwrap", shared=("node_modules",))
    first, sandbox = narrate(started, s)
    assert first.spans == (("loop started", "bold"), (" · preview branch codexloop/s", "dim"))
    assert sandbox.text == (
        "sandbox: full isolation; system bwrap; shared read-only from your checkout: node_modules"
    )
    s.apply(STARTED)
    [separator] = narrate(ev.IterationStarted(2), s)
    assert separator.kind == "separator" and separator.text == "iteration 2 of 3"
    [verdict] = narrate(ev.TestFinished(1, False, 1, 0.3, "0 passed, 1 failed"), s)
    assert verdict.spans == (
        ("  ● tests ", "dim"),
        ("red", "bold red"),
        (" · 0 passed, 1 failed", "dim"),
    )
    [budget] = narrate(ev.BudgetSpent(1), s)
    assert budget.text.startswith("✗ not green after 1 iteration: c gives it 10 more")
    end = narrate(ev.LoopFinished("passed", 2, "codexloop/s"), s)
    assert [line.text for line in end] == [
        "loop finished",
        "green after 2 iterations · the work is on branch codexloop/s",
    ]
    assert narration.more_iterations(3).text == "↻ 3 more iterations"


def test_state_and_narration_import_no_textual_and_no_rich() -> None:
    """The import-linter contract, checked the way a reader would: in a fresh interpreter."""
    code = (
        "import sys, codexloop.tui.state, codexloop.tui.narration; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("iterations", [1, 2])
def test_the_final_note_counts_iterations(iterations: int) -> None:
    s, _clock = state()
    s.apply(ev.LoopFinished("failed", iterations, "codexloop/s"))
    word = "iteration" if iterations == 1 else "iterations"
    assert s.info.final_note == f"after {iterations} {word} · q to quit"


def test_a_user_facing_error_ends_the_session_with_its_own_status() -> None:
    s, _clock = state()
    s.session_error(SandboxError("cannot set up the sandbox: not a git\n checkout"))
    s.loop_ended(cancelled=False)
    assert s.failure == "cannot set up the sandbox: not a git checkout"
    assert s.info.final == "failed" and s.exit_status(interrupted=False) == 2
    assert s.exit_status(interrupted=True) == 130
    assert s.summary() == "codexloop: error: cannot set up the sandbox: not a git checkout"


def test_the_cost_shows_in_the_status_line_when_known() -> None:
    from codexloop.tui.status_line import StatusLine

    state = SessionState(10, lambda: 0.0)
    line = StatusLine()
    state.apply(ev.Usage(100, 20, 100, 20))
    line.show(state.info)
    assert "$" not in line.render_info().plain  # no prices set: no money shown
    state.apply(ev.Usage(100, 20, 200, 40, cost_total=0.125))
    line.show(state.info)
    assert "tokens 200 in · 40 out · $0.12" in line.render_info().plain


def test_the_checks_of_the_last_run_show_once_a_guard_or_gate_ran() -> None:
    from codexloop.tui.status_line import StatusLine

    state = SessionState(10, lambda: 0.0)
    line = StatusLine()

    def shown() -> str:
        line.show(state.info)
        return line.render_info().plain

    state.apply(ev.TestFinished(0, False, 1, 0.1, "0 passed, 1 failed"))
    state.apply(ev.GuardFinished(0, True, "3 passed", 0.2, failing=("t::old",)))
    assert "exam" not in shown()  # the baseline's guard run is no check of a change
    state.apply(ev.TestFinished(1, True, 0, 0.1, "1 passed, 0 failed"))
    state.apply(ev.GuardFinished(1, False, "2 passed, 1 failed", 0.2, broken=("t::sub",)))
    assert "exam ✓ · guard ✗" in shown() and "gates" not in shown()
    state.apply(ev.TestFinished(2, True, 0, 0.1, "1 passed, 0 failed"))
    assert "exam ✓ · guard –" in shown()  # a new run: the guard has not run on it yet
    state.apply(ev.GuardFinished(2, True, "3 passed", 0.2))
    state.apply(ev.GateFinished(2, "ruff check .", True, 0, 0.3))
    state.apply(ev.GateFinished(2, "mypy", False, 1, 0.3))
    assert "exam ✓ · guard ✓ · gates ✗" in shown()
    texts = [
        "".join(text for text, _style in narrate(event, state).pop().spans)
        for event in (
            ev.GuardFinished(0, True, "48 passed, 2 failed", 0.5, failing=("t::a", "t::b")),
            ev.GuardFinished(1, False, "49 passed, 1 failed", 0.5, broken=("t::sub",)),
            ev.GateFinished(1, "mypy src", False, 1, 0.2),
        )
    ]
    assert texts == [
        "  ● regression guard learned · 48 passed, 2 failed; already failing, not counted: 2 tests",
        "  ● regression guard red · broke 1 test: t::sub · 49 passed, 1 failed",
        "  ● gate failed · mypy src (exit 1)",
    ]


def test_a_refusal_reads_refused_once() -> None:
    from codexloop.tui.model_pane import tool_result_line

    call = ev.ToolCall("edit_file", '{"path": "tests/t.py"}', "c1")
    tools_own = ev.ToolResult("edit_file", False, "refused: tests/t.py is protected", "c1", True)
    bare = ev.ToolResult("edit_file", False, "tests/t.py is protected", "c1", True)
    assert tool_result_line(call, tools_own).plain.count("refused") == 1
    assert "— refused: tests/t.py is protected" in tool_result_line(call, bare).plain
