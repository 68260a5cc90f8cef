"""The line buffer and the panes' pieces, each in a bare app."""

from __future__ import annotations

import pytest
from rich.text import Text
from textual.app import App, ComposeResult

from codexloop.tui.diff_pane import diff_stats, highlight_diff
from codexloop.tui.linebuffer import LineBuffer
from codexloop.tui.terminal_pane import TerminalPane, short_command

pytestmark = pytest.mark.anyio


class BufferApp(App[None]):
    def __init__(self, buffer: LineBuffer) -> None:
        super().__init__()
        self.buffer = buffer

    def compose(self) -> ComposeResult:
        yield self.buffer


async def test_line_buffer_streams_fragments_into_lines() -> None:
    buffer = LineBuffer(max_lines=100)
    async with BufferApp(buffer).run_test(size=(40, 10)) as pilot:
        for piece in ("Hel", "lo wor", "ld\nsecond", " line\n\nthird"):
            buffer.write(piece)
        assert buffer.text == ""  # queued until the frame flush
        assert buffer.flush()
        assert buffer.text == "Hello world\nsecond line\n\nthird"
        buffer.write_line("tool", tag="t1")
        buffer.replace_line("t1", "tool done")
        buffer.replace_line("t9", "other")
        buffer.flush()
        assert buffer.text.splitlines()[-3:] == ["third", "tool done", "other"]
        await pilot.pause()
        assert buffer.is_vertical_scroll_end


async def test_a_line_with_newlines_becomes_several_lines() -> None:
    buffer = LineBuffer(max_lines=100)
    async with BufferApp(buffer).run_test(size=(40, 10)) as pilot:
        buffer.write_line(Text("one\ntwo", style="bold"), tag="t")
        buffer.replace_line("t", "three\nfour")  # the tagged line is the last one: "two"
        buffer.write_line("five")
        buffer.flush()
        await pilot.pause()
        assert buffer.text == "one\nthree\nfour\nfive" and buffer.line_count == 4
        assert buffer.virtual_size.height == 4


async def test_line_buffer_wraps_to_width_and_rewraps_on_resize() -> None:
    buffer = LineBuffer()
    async with BufferApp(buffer).run_test(size=(21, 10)) as pilot:
        buffer.write("word " * 20)
        buffer.flush()
        await pilot.pause()
        width = buffer.scrollable_content_region.width
        rows = buffer.virtual_size.height
        assert rows >= 100 // width
        await pilot.resize_terminal(41, 10)
        await pilot.pause()
        assert buffer.virtual_size.height < rows


def test_the_private_textual_call_the_line_buffer_relies_on_is_there() -> None:
    """LineBuffer grows its virtual size without a screen reflow through ScrollView's
    ``_scroll_update`` (private). Without it the buffer falls back to the public setter,
    correct but slower: an upgrade of Textual that removes it must be noticed here."""
    import inspect

    fast = getattr(LineBuffer, "_scroll_update", None)
    assert callable(fast)
    assert list(inspect.signature(fast).parameters) == ["self", "virtual_size"]


async def test_line_buffer_keeps_bounded_history() -> None:
    buffer = LineBuffer(max_lines=1_000)
    async with BufferApp(buffer).run_test(size=(40, 10)):
        for n in range(5_000):
            buffer.write(f"line {n}\n")
            if n % 100 == 0:
                buffer.flush()
        buffer.flush()
        assert buffer.line_count <= 1_100
        assert buffer.text.splitlines()[-1] == "line 4999"
        assert buffer.virtual_size.height == buffer.line_count


async def test_terminal_pane_keeps_colours_and_handles_carriage_returns() -> None:
    pane = TerminalPane()
    async with BufferApp(pane).run_test(size=(60, 10)):
        pane.write("\x1b[31mFAILED\x1b[0m tests/test_x.py\r")
        pane.write("\nprogress 10%\rprogress 100%\n")
        pane.write("----- generated xml file: /tmp/x/junit-1.xml -----\nafter\n")
        pane.flush()
        assert pane.text == "FAILED tests/test_x.py\nprogress 100%\nafter"
        first = pane._lines[0]
        assert [str(span.style) for span in first.spans] == ["color(1)"]  # ANSI red, kept


def test_diff_highlighting_marks_lines_and_counts_them() -> None:
    diff = (
        "diff --git a/calc.py b/calc.py\nindex 1..2 100644\n--- a/calc.py\n+++ b/calc.py\n"
        "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"
    )
    lines = highlight_diff(diff)
    assert lines[0].plain.startswith("━━ calc.py")
    assert [line.plain for line in lines[-2:]] == ["-    return a - b", "+    return a + b"]
    assert diff_stats(diff) == (1, 1, 1)


def test_short_command_names_the_interpreter() -> None:
    assert short_command("/x/.venv/bin/python -m pytest -q t.py") == "python -m pytest -q t.py"
    assert short_command("make test") == "make test"
