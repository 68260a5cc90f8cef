"""The command palette (``ctrl+p``): the app's actions by name, from the key table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from textual.app import App, SystemCommand
from textual.screen import Screen

from codexloop.tui.keys import palette_entries

if TYPE_CHECKING:
    from codexloop.tui.app import CodexloopApp


def system_commands(app: CodexloopApp, screen: Screen[Any]) -> Iterable[SystemCommand]:
    """Textual's own commands, then each action of the key table that makes sense now."""
    yield from App.get_system_commands(app, screen)
    for key in palette_entries():
        if key.scope == "main" and not app.main.available(key.action):
            continue
        target = app if key.scope == "app" else app.main
        yield SystemCommand(key.palette, key.palette_help, getattr(target, f"action_{key.action}"))
