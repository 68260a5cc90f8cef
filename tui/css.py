"""Where the app's Textual CSS lives: the ``codexloop.styles`` package, via importlib.resources."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def stylesheet(name: str) -> Path:
    """The path of ``styles/<name>`` as installed (a checkout, an editable or a wheel install)."""
    return Path(str(files("codexloop.styles").joinpath(name)))
