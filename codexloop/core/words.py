"""Counted nouns for messages people read: "1 file", "2 files", never "1 files" or "file(s)"."""

from __future__ import annotations


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` and the noun that goes with it (``plural`` defaults to ``singular + "s"``)."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"
