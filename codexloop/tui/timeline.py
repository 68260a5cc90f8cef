"""The iteration timeline: red or green, duration, tokens; select one to look back at it."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option, OptionDoesNotExist

from codexloop.tui.state import IterationRecord
from codexloop.tui.status_line import human_count


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
        self._prompts: dict[int, Text] = {}

    def upsert(self, record: IterationRecord, prompt: Text | None = None) -> None:
        self.records[record.iteration] = record
        option_id = f"iteration-{record.iteration}"
        prompt = prompt or timeline_prompt(record)
        try:
            index = self.get_option_index(option_id)
        except OptionDoesNotExist:
            self.add_option(Option(prompt, id=option_id))
        else:
            self.replace_option_prompt_at_index(index, prompt)

    def reset(self) -> None:
        """No rows: another attempt's iterations come (a race's lane came into focus)."""
        self.clear_options()
        self.records.clear()
        self._prompts.clear()

    def sync(self, records: dict[int, IterationRecord]) -> None:
        """Rows for every record, redrawn where they changed."""
        for record in records.values():
            prompt = timeline_prompt(record)
            if self._prompts.get(record.iteration) != prompt:
                self._prompts[record.iteration] = prompt
                self.upsert(record, prompt)

    def record_at(self, option_id: str | None) -> IterationRecord | None:
        if not option_id or not option_id.startswith("iteration-"):
            return None
        return self.records.get(int(option_id.removeprefix("iteration-")))
