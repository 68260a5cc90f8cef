"""The app's keys, once: the bindings, the help screen and the command palette come from here.

Each :class:`Key` names an action, the keys bound to it, what the footer calls it, what the help
screen says of it and how the palette lists it. Session actions (``scope="main"``) are methods of
the main screen; they are bound on the app, so they act from every screen (the review, a dialog),
as global keys do (``scope="app"``: help, zoom, quit, interrupt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class Key:
    action: str
    keys: str = ""
    """Textual key names, comma-separated ("" for a palette command without a key)."""
    footer: str = ""
    """What the footer calls it."""
    help: str = ""
    """The help screen's line ("": not in the help)."""
    help_keys: str = ""
    """How the help screen names the keys (default: the first key)."""
    palette: str = ""
    """The command palette's title ("": not in the palette)."""
    palette_help: str = ""
    scope: Literal["main", "app"] = "main"
    show: bool = True
    """Whether the footer shows it."""
    priority: bool = False
    numbered: bool = False
    """Each of its keys is a digit, and the action takes it (``focus_lane(2)``)."""

    @property
    def shown_keys(self) -> str:
        return self.help_keys or self.keys.split(",")[0]


KEYS: tuple[Key, ...] = (
    Key(
        "toggle_pause",
        "space",
        "Pause/Resume",
        "pause / resume the loop (it pauses at a safe point: after a tool call or before a test run)",
        palette="Pause / resume the loop",
        palette_help="At a safe point: after a tool call or before a test run",
    ),
    Key(
        "message",
        "m",
        "Message",
        "message the model: your text joins the conversation at its next turn",
        palette="Message the model",
        palette_help="A steering message; it joins at the model's next turn",
    ),
    Key(
        "more_iterations",
        "c",
        "More iterations",
        "budget spent, still red: give the loop as many iterations again (it keeps its conversation)",
        palette="More iterations",
        palette_help="The budget is spent and it is still red: as many again, the conversation kept",
    ),
    Key(
        "review",
        "v",
        "Review",
        "review hunk by hunk: a accept, x reject, c reject with a comment for the model, "
        "A accept all, enter apply the accepted ones to your checkout",
        palette="Review the change",
        palette_help="Hunk by hunk: accept, reject, comment; apply to your working tree",
    ),
    Key(
        "edit_exam",
        "e",
        "Edit exam",
        "edit the exam in its pane (the loop pauses): ctrl+s saves to your checkout and "
        "resumes, escape cancels",
        palette="Edit the exam",
        palette_help="In the exam pane; the loop pauses; ctrl+s saves to your checkout, escape cancels",
    ),
    Key(
        "external_editor",
        "E",
        "$EDITOR",
        "edit the exam in $EDITOR (the app steps aside; the loop pauses meanwhile)",
        palette="Edit the exam in $EDITOR",
        palette_help="The app steps aside while your editor runs; the loop pauses",
    ),
    Key(
        "add_target",
        palette="Add a target…",
        palette_help="A test or test file for the exam, from the next test run on",
    ),
    Key(
        "remove_target",
        palette="Remove a target…",
        palette_help="From the next test run on; at least one stays",
    ),
    Key(
        "toggle_timeline",
        "t",
        "Timeline",
        "show / hide the iteration timeline",
        palette="Timeline: show / hide",
        palette_help="The iterations, red or green",
        show=False,
    ),
    Key(
        "",
        help="on the timeline: that iteration's commands, test output and diff",
        help_keys="enter",
    ),
    Key("", help="move between panes (arrows, page up/down, home/end scroll)", help_keys="tab"),
    Key(
        "focus_lane",
        ",".join("123456789"),
        "Lane",
        "with --attempts: bring attempt N's lane into focus (the panes, timeline and status "
        "follow it; a click on a lane does too)",
        help_keys="1…9",
        show=False,
        numbered=True,
    ),
    Key(
        "zoom",
        "z",
        "Zoom",
        "zoom the focused pane (again to restore)",
        palette="Zoom the focused pane",
        palette_help="It fills the screen; again to restore (z)",
        scope="app",
        show=False,
    ),
    Key("", help="command palette: the same actions by name", help_keys="ctrl+p"),
    Key(
        "help",
        "question_mark,f1",
        "Help",
        "this help",
        help_keys="? / f1",
        palette="Keys",
        palette_help="What every key does",
        scope="app",
    ),
    Key(
        "request_quit",
        "q",
        "Quit",
        "quit: while the loop runs, asks first, then stops it; when it waits for you, finishes",
        palette="Stop the loop and quit",
        palette_help="Asks first while the loop runs",
        scope="app",
    ),
    Key(
        "interrupt",
        "ctrl+c",
        "Interrupt",
        "interrupt: stop the loop now and exit with status 130",
        scope="app",
        show=False,
        priority=True,
    ),
)


def action_of(key: Key) -> str:
    """The binding's action: the app's own, or the main screen's through the app."""
    return key.action if key.scope == "app" else f"main('{key.action}')"


def bindings() -> list[BindingType]:
    """The app's bindings, in the footer's order."""
    found: list[BindingType] = []
    for key in KEYS:
        if key.numbered:
            found += [
                Binding(digit, f"main('{key.action}({digit})')", key.footer, show=False)
                for digit in key.keys.split(",")
            ]
        elif key.keys:
            found.append(
                Binding(key.keys, action_of(key), key.footer, show=key.show, priority=key.priority)
            )
    return found


def help_rows() -> list[tuple[str, str]]:
    """(keys, what they do), in the help screen's order."""
    return [(key.shown_keys, key.help) for key in KEYS if key.help]


def palette_entries() -> list[Key]:
    return [key for key in KEYS if key.palette]
