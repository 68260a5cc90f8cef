"""``python -m codexloop``."""

from codexloop.main import run

run()
