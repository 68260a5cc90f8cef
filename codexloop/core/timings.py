"""How long the engine's phases take, per session (read by ``bench/iteration.py``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Timings(dict[str, list[float]]):
    """Durations in seconds, by phase name, in the order they were measured."""

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.setdefault(phase, []).append(time.perf_counter() - started)
