"""The iteration timeline: red or green, duration, tokens; select one to look back at it."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option, OptionDoesNotExist

from codexloop.tui.status_line import human_count

TEST_OUTPUT_CHARS = 200_000
"""Test output kept per iteration (the tail); as much again of the model's commands."""


def _keep_tail(chunks: list[str], chars: int) -> int:
    """Drop the oldest chunks past the cap; returns the characters left."""
    while chars > TEST_OUTPUT_CHARS and len(chunks) > 1:
        chars -= len(chunks.pop(0))
    return chars


@dataclass
class IterationRecord:
    iteration: int
    passed: bool | None = None
    duration_s: float = 0.0
    commit: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    summary: str = ""
    test_output: list[str] = field(default_factory=list)
    command_output: list[str] = field(default_factory=list)  # the model's run_command calls
    _chars: int = 0
    _command_chars: int = 0

    def add_output(self, text: str) -> None:
        self.test_output.append(text)
        self._chars = _keep_tail(self.test_output, self._chars + len(text))

    def add_command_output(self, text: str) -> None:
        self.command_output.append(text)
        self._command_chars = _keep_tail(self.command_output, self._command_chars + len(text))

    @property
    def label(self) -> str:
        return "baseline" if self.iteration == 0 else f"iteration {self.iteration}"


def timeline_prompt(record: IterationRecord) -> Text:
    """One row: verdict, number, duration, tokens (17 cells)."""
    line = Text(no_wrap=True, overflow="ellipsis")
    if record.passed is None:
        line.append("… ", style="yellow")
    elif record.passed:
        line.append("✓ ", style="bold green")
    else:
        line.append("✗ ", style="bold red")
    line.append("base" if record.iteration == 0 else f"#{record.iteration:<3}", style="bold")
    line.append(f"{record.duration_s:>6.1f}s", style="dim")
    tokens = record.input_tokens + record.output_tokens
    if tokens:
        line.append(f"{human_count(tokens):>5}", style="dim")
    return line


class Timeline(OptionList):
    """One row per iteration (and the baseline run); Enter opens it."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.records: dict[int, IterationRecord] = {}

    def upsert(self, record: IterationRecord) -> None:
        self.records[record.iteration] = record
        option_id = f"iteration-{record.iteration}"
        prompt = timeline_prompt(record)
        try:
            index = self.get_option_index(option_id)
        except OptionDoesNotExist:
            self.add_option(Option(prompt, id=option_id))
        else:
            self.replace_option_prompt_at_index(index, prompt)

    def record_at(self, option_id: str | None) -> IterationRecord | None:
        if not option_id or not option_id.startswith("iteration-"):
            return None
        return self.records.get(int(option_id.removeprefix("iteration-")))
