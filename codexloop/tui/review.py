"""Review: the preview branch's change, hunk by hunk; keep what you like.

Files on the left with their counts, hunks on the right, each pending, accepted or
rejected. ``enter`` applies the accepted hunks to the working tree three-way (a
conflict changes nothing and is shown) — through the engine, which answers with an
``applied`` event (see ``Session.apply_hunks``); rejected hunks with a comment go back to the
model, and the loop goes on from there.

A hunk whose added lines touch test machinery (an ``__eq__`` that returns True, a patch of
pytest, a trace function: what code inside the test process can fake) carries a warning
mark and the reasons, from :func:`codexloop.core.flags.for_commit`. Each hunk is shown by
:mod:`codexloop.tui.hunks`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Label, OptionList
from textual.widgets.option_list import Option

from codexloop.core import events as ev
from codexloop.core import outcome
from codexloop.core.diff import FileChange, changes
from codexloop.core.flags import Flag, for_commit
from codexloop.core.gitops import GitError
from codexloop.core.words import counted
from codexloop.tui.dialogs import PromptScreen
from codexloop.tui.hunks import FLAG_MARK, FLAG_STYLE, MARKS, Decision, HunkView, Item
from codexloop.tui.workers import describe, spawn

MOVE = Binding.Group("Move", compact=True)


ApplyHunks = Callable[[str, tuple[tuple[str, int], ...]], Awaitable[ev.Applied]]
"""Applies a review's accepted hunks of a commit: ``(head, hunks) -> applied``."""


@dataclass
class ReviewOutcome:
    """What the review ended with: what was applied, and what goes back to the model."""

    applied: ev.Applied | None
    kept: int
    dropped: int
    feedback: tuple[ev.Rejection, ...] = field(default=())


class ReviewScreen(Screen[ReviewOutcome | None]):
    """Hunk by hunk: j/k move, a accept, x reject, c reject with a comment, A accept all, enter apply."""

    CSS_PATH = "review.tcss"
    BINDINGS: ClassVar = [
        # One footer key for both (the footer fits Apply and Back in 80 columns).
        Binding("down,j", "move(1)", "Next", priority=True, group=MOVE),
        Binding("up,k", "move(-1)", "Previous", priority=True, group=MOVE),
        Binding("a", "decide('accepted')", "Accept", priority=True),
        Binding("x", "decide('rejected')", "Reject", priority=True),
        Binding("c", "comment", "Reject + comment", priority=True),
        Binding("A", "accept_all", "Accept all", priority=True),
        Binding("enter", "apply", "Apply", priority=True),
        Binding("escape", "close", "Back"),
    ]

    def __init__(
        self,
        repo: Path,
        base: str,
        head: str,
        leave_out: tuple[str, ...] = (),
        apply: ApplyHunks | None = None,
    ) -> None:
        super().__init__()
        self.repo = repo
        self.apply = apply or partial(apply_here, repo, base)
        """How the accepted hunks are applied (the session's engine, or here)."""
        self.base = base
        self.head = head
        self.leave_out = leave_out  # the exam: the developer's own edits are not up for review
        self.items: list[Item] = []
        self.flags: list[Flag] = []
        self.cursor = 0
        self.failure: str | None = None
        """Why the change could not be read (then there is nothing to review)."""

    def compose(self) -> ComposeResult:
        yield Label("Review · loading the change…", id="review-title")
        with Horizontal(id="review-body"):
            yield OptionList(id="review-files")
            yield VerticalScroll(id="review-hunks")
        yield Label("", id="review-status")
        yield Footer()

    def on_resize(self) -> None:
        narrow = self.size.width < 100
        footer = self.query_one(Footer)
        footer.compact = narrow  # Apply and Back show at 80 columns
        footer.show_command_palette = not narrow

    def on_mount(self) -> None:
        self.query_one("#review-files", OptionList).can_focus = False  # keys belong to the hunks
        self.query_one("#review-hunks", VerticalScroll).focus()
        self.load()

    def load(self) -> None:
        spawn(
            self,
            partial(load_change, self.repo, self.base, self.head, self.leave_out),
            name="load",
            exclusive=True,
            done=lambda loaded: self.call_later(self._show, *loaded),
            failed=self._load_failed,
        )

    def _load_failed(self, error: Exception) -> None:
        self.failure = f"the change cannot be read: {describe(error)}"
        self.query_one("#review-title", Label).update(
            Text(f"Review · {self.failure}", style="bold red")
        )
        self.notify(self.failure, severity="error", timeout=10)

    async def _show(self, found: list[FileChange], flags: Sequence[Flag] = ()) -> None:
        if not self.is_attached:
            return  # dismissed (escape) before its work was done: nothing to show
        self.items = []
        for change in found:
            if change.whole:
                self.items.append(Item(change, None))
            else:
                self.items.extend(Item(change, hunk) for hunk in change.hunks)
        self.flags = list(flags)
        for flag in self.flags:
            owner = next((i for i in self.items if i.covers(flag)), None)
            if owner is None:  # a line outside every hunk, or a file as a whole: its first
                owner = next((i for i in self.items if i.change.path == flag.path), None)
            if owner is None and self.items:
                owner = self.items[0]
            if owner is not None:
                owner.flags.append(flag)
        flagged_paths = {f.path for f in self.flags}
        files = self.query_one("#review-files", OptionList)
        files.clear_options()
        for change in found:
            added = sum(h.added for h in change.hunks)
            removed = sum(h.removed for h in change.hunks)
            label = Text.assemble((change.path, "bold"), f"  +{added} -{removed}")
            if change.status != "modified" or change.binary:
                label.append(
                    f"  {'binary ' if change.binary else ''}{change.status}", style="italic"
                )
            if change.path in flagged_paths:
                label.append("  ⚠", style=FLAG_STYLE)
            files.add_option(Option(label, id=change.path))
        hunks = self.query_one("#review-hunks", VerticalScroll)
        await hunks.remove_children()
        await hunks.mount_all(HunkView(item, n) for n, item in enumerate(self.items))
        if not self.is_attached:
            return
        title = (
            f"Review · {counted(len(found), 'file')}, {counted(len(self.items), 'hunk')} "
            "against the snapshot"
        )
        heading = Text(title if self.items else "Review · no changes")
        if self.flags:
            warning = (
                f" · {FLAG_MARK}: {counted(len(self.flags), 'line')} "
                f"{'touches' if len(self.flags) == 1 else 'touch'} test machinery "
                "(code in the test process can fake a pass)"
            )
            heading.append(warning, style=FLAG_STYLE)
            self.notify(
                f"{counted(len(self.flags), 'flagged line')}: the change touches test machinery; "
                "check the marked hunks before you accept them",
                severity="warning",
                timeout=10,
            )
        self.query_one("#review-title", Label).update(heading)
        self._focus_cursor()

    # -- decisions -----------------------------------------------------------------

    def _view(self, index: int) -> HunkView:
        return self.query_one(f"#hunk-{index}", HunkView)

    def _focus_cursor(self) -> None:
        views = {view.id: view for view in self.query(HunkView)}
        view = views.get(f"hunk-{self.cursor}")
        if not self.items or view is None:
            return  # nothing to review, or the screen is going away (escape during loading)
        for view_id, each in views.items():
            each.set_class(view_id == f"hunk-{self.cursor}", "cursor")
        self.query_one("#review-hunks", VerticalScroll).scroll_to_widget(view, animate=False)
        files = self.query_one("#review-files", OptionList)
        path = self.items[self.cursor].change.path
        index = next(
            (i for i in range(files.option_count) if files.get_option_at_index(i).id == path), None
        )
        files.highlighted = index
        self._update_status()

    def _update_status(self) -> None:
        counts = {d: sum(i.decision == d for i in self.items) for d in MARKS}
        self.query_one("#review-status", Label).update(
            f"hunk {self.cursor + 1} of {len(self.items)} · {counts['accepted']} accepted · "
            f"{counts['rejected']} rejected · {counts['pending']} pending · enter applies the accepted ones"
        )

    def action_move(self, step: int) -> None:
        if self.items:
            self.cursor = max(0, min(len(self.items) - 1, self.cursor + step))
            self._focus_cursor()

    def _set(self, decision: Decision, comment: str = "") -> None:
        if not self.items:
            return
        item = self.items[self.cursor]
        item.decision, item.comment = decision, comment
        self._view(self.cursor).refresh_view()
        if self.cursor < len(self.items) - 1:
            self.cursor += 1
        self._focus_cursor()

    def action_decide(self, decision: Decision) -> None:
        self._set(decision)

    def action_comment(self) -> None:
        if self.items:
            self.app.push_screen(
                PromptScreen(
                    "Reject this hunk with a comment for the model",
                    placeholder="e.g. keep the public signature",
                    hint="enter rejects it · the comment goes to the model when you apply "
                    "(enter in the review) · escape cancels",
                    warning=True,
                ),
                self._commented,
            )

    def _commented(self, comment: str | None) -> None:
        if comment:
            self._set("rejected", comment)

    def action_accept_all(self) -> None:
        for n, item in enumerate(self.items):
            if item.decision == "pending":
                item.decision = "accepted"
                self._view(n).refresh_view()
        self._update_status()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        index = next(
            (n for n, i in enumerate(self.items) if i.change.path == event.option.id), None
        )
        if index is not None:
            self.cursor = index
            self._focus_cursor()

    # -- applying -----------------------------------------------------------------

    def action_apply(self) -> None:
        if self.failure is not None:
            self.notify("nothing to apply: the change could not be read (escape goes back)")
            return
        if not self.items:
            self.dismiss(ReviewOutcome(None, 0, 0))
            return
        status = self.query_one("#review-status", Label)
        status.update("applying…")
        accepted = tuple(i.key for i in self.items if i.decision == "accepted")
        spawn(
            self,
            self._apply_accepted(accepted),
            name="apply_now",
            exclusive=True,
            done=self._applied,
            failed=self._apply_failed,
        )

    def _apply_failed(self, error: Exception) -> None:
        self._apply_failed_because(describe(error))

    def _apply_failed_because(self, why: str) -> None:
        message = f"nothing applied: {why}"
        self.query_one("#review-status", Label).update(Text(message, style="bold red"))
        self.notify(f"{message}. Your working tree is unchanged.", severity="error", timeout=10)

    async def _apply_accepted(self, accepted: tuple[tuple[str, int], ...]) -> ev.Applied | None:
        return await self.apply(self.head, accepted) if accepted else None

    def _applied(self, result: ev.Applied | None) -> None:
        if result is not None and result.error:
            self._apply_failed_because(result.error)
            return
        if result is not None and result.conflicts:
            lines = "; ".join(result.conflicts)
            self.query_one("#review-status", Label).update(
                Text(
                    f"nothing applied: conflicts with your working tree ({lines})", style="bold red"
                )
            )
            self.notify(
                f"Conflict: {lines}. Your working tree is unchanged.", severity="error", timeout=10
            )
            return
        kept = sum(i.decision == "accepted" for i in self.items)
        feedback = tuple(
            ev.Rejection(i.change.path, i.hunk, i.comment)
            for i in self.items
            if i.decision == "rejected" and i.comment
        )
        self.dismiss(ReviewOutcome(result, kept, len(self.items) - kept, feedback))

    def action_close(self) -> None:
        self.dismiss(None)


def load_change(
    repo: Path, base: str, head: str, leave_out: tuple[str, ...]
) -> tuple[list[FileChange], list[Flag]]:
    """Blocking (thread): the change's files and hunks, and what of it touches test machinery."""
    found = changes(repo, base, head, leave_out)
    try:
        flags = for_commit(repo, base, head, leave_out)
    except (GitError, OSError) as exc:  # unchecked is shown, never taken as clean
        flags = [Flag("", 0, f"the change could not be checked for test machinery ({exc})")]
    return found, flags


async def apply_here(
    repo: Path, base: str, head: str, hunks: tuple[tuple[str, int], ...]
) -> ev.Applied:
    """The accepted hunks into the working tree without a session (the engine's function)."""

    async def nowhere(event: ev.Event) -> None:
        pass

    return await outcome.apply_hunks(repo, base, head, hunks, nowhere)
