"""The command palette (``ctrl+p``): the app's actions by name, from the key table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from textual.app import App, SystemCommand
from textual.screen import Screen

from codexloop.tui.keys import palette_entries

if TYPE_CHECKING:
    from codexloop.tui.app import CodexloopApp


TEXTUAL_TWINS = frozenset({"Keys", "Quit", "Maximize", "Minimize"})
"""Textual's commands the key table has its own of (help, quit, zoom): listed once."""


def system_commands(app: CodexloopApp, screen: Screen[Any]) -> Iterable[SystemCommand]:
    """Textual's own commands (theme, screenshot), then each action of the key table that
    makes sense now."""
    for command in App.get_system_commands(app, screen):
        if command.title not in TEXTUAL_TWINS:
            yield command
    for key in palette_entries():
        if key.scope == "main" and not app.main.available(key.action):
            continue
        target = app if key.scope == "app" else app.main
        yield SystemCommand(key.palette, key.palette_help, getattr(target, f"action_{key.action}"))
