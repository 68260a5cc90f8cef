"""Text from a server whose strings are UTF-16: a character cut across two deltas is shown
whole, a half that never gets its other half is spelled out — nothing the engine passes on
(screen, trace, the next request) holds text no UTF-8 writer can take."""

from __future__ import annotations

from pathlib import Path

import pytest

from codexloop.core import events as ev
from codexloop.core.events import joined, whole_characters
from codexloop.core.trace import TraceWriter, read_trace

SMILE = "\U0001f600"
HIGH, LOW = "\ud83d", "\ude00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain ü", "plain ü"),
        (f"a {HIGH}{LOW} b", f"a {SMILE} b"),
        (f"lone {HIGH} high", "lone \\ud83d high"),
        (f"lone {LOW} low", "lone \\ude00 low"),
        (f"{LOW}{HIGH}", "\\ude00\\ud83d"),  # the wrong order is no pair
    ],
)
def test_joined_is_valid_utf8(text: str, expected: str) -> None:
    assert joined(text) == expected
    joined(text).encode("utf-8")


def test_a_character_cut_across_deltas_is_shown_whole() -> None:
    shown, held = [], ""
    for delta in ("smile ", HIGH, LOW, " and ", f"more {HIGH}", f"{LOW}!"):
        chunk, held = whole_characters(held + delta)
        if chunk:
            shown.append(chunk)
    assert held == ""
    assert "".join(shown) == f"smile {SMILE} and more {SMILE}!"
    assert all(chunk.encode("utf-8") for chunk in shown)


def test_a_half_held_back_is_spelled_out_when_nothing_follows() -> None:
    chunk, held = whole_characters(f"cut {HIGH}")
    assert (chunk, held) == ("cut ", HIGH)
    assert joined(held) == "\\ud83d"


def test_the_trace_takes_half_a_character_in_streamed_reasoning(tmp_path: Path) -> None:
    trace = TraceWriter(tmp_path / "t.jsonl", {})
    trace.write(ev.ModelReasoning(text=f"thinking {HIGH}"))
    trace.close()
    [_header, reasoning] = read_trace(tmp_path / "t.jsonl")
    assert reasoning["text"] == f"thinking {HIGH}"  # the escape reads back as it was
