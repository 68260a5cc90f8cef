"""What the app's tests share: the app factories, a loop with stable events, the scripts."""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from app_probe import ProbedApp
from loophelpers import edit, make_config
from scripted_openai import Reply
from textual.pilot import Pilot

from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.loop import Loop

SESSION = "test_add"


class StableLoop(Loop):
    """A loop whose events carry nothing that changes between runs (for snapshots)."""

    async def emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.Notice) and (
            "isolation" in event.message or "process-count" in event.message
        ):
            return  # machine-dependent: bubblewrap or a process limit may be unavailable
        if isinstance(event, ev.LoopStarted):
            event = dataclasses.replace(
                event,
                isolation="full",
                isolation_reason="bubblewrap",
                max_processes=1024,
                process_limit="at most 1024 processes per command",
                bwrap="system bwrap 0.8.0 (/usr/bin/bwrap)",
            )
        elif isinstance(event, ev.TestStarted):
            event = dataclasses.replace(event, command=f"python -m pytest -q {SESSION}")
        elif isinstance(event, ev.TestOutput):
            text = re.sub(r" in \d+\.\d+s", " in 0.01s", event.text)
            # pytest's progress column counts the engine's hidden canary tests too (their
            # number is the engine's business): the one test of these runs is all of it.
            event = ev.TestOutput(re.sub(r"\[\s*\d+%\]", "[100%]", text))
        elif isinstance(event, ev.TestFinished | ev.IterationFinished):
            event = dataclasses.replace(event, duration_s=0.5)
        await super().emit(event)


# Snapshots: no third-party pytest plugins in the sandboxed run (their warnings vary by machine).
STABLE_TEST_CMD = (
    f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {shlex.quote(sys.executable)} -m pytest -q --color=yes "
    "-p no:cacheprovider -p no:warnings --rootdir=. tests/test_calc.py::test_add"
)


def stable_config(repo: Path, base_url: str, **overrides: Any) -> Config:
    return make_config(repo, base_url, test_cmd=STABLE_TEST_CMD, **overrides)


def make_app(config: Config, *, stable: bool = False) -> ProbedApp:
    kind = StableLoop if stable else Loop

    def factory(cfg: Config) -> Loop:
        return kind(cfg, name=SESSION, backoff=(0.0,))

    return ProbedApp(config, loop_factory=factory, clock=lambda: 0.0)


def red_then_green() -> list[Reply]:
    return [
        Reply(
            text="The test wants 5; maybe it multiplies.",
            tool_calls=[edit("calc.py", "a - b", "a * b")],
        ),
        Reply(text="Now add multiplies."),
        Reply(text="6 is not 5: it must add.", tool_calls=[edit("calc.py", "a * b", "a + b")]),
        Reply(text="Now add adds."),
    ]


async def finish(app: ProbedApp, pilot: Pilot[Any]) -> ev.LoopFinished:
    finished = await app.wait_for_event(ev.LoopFinished)
    await app.settle()
    await pilot.pause()
    return finished


async def stop(app: ProbedApp, pilot: Pilot[Any]) -> None:
    """Leave a test with the loop stopped cleanly (a held reply is abandoned)."""
    if app.session.loop_running:
        app.exit_policy.stop_then_exit("test over")
        await app.wait_for_event(ev.LoopFinished)
        await pilot.pause()


async def workers_named(app: ProbedApp, pilot: Pilot[Any], *names: str) -> None:
    """Wait for the named workers (the loop's own keep running while it awaits review)."""
    running = [w for w in app.workers if w.name in names]
    if running:  # (finished workers leave the manager; an empty list would mean all of them)
        await app.workers.wait_for_complete(running)
    await pilot.pause()


def review_app(config: Config) -> ProbedApp:
    return ProbedApp(
        config,
        loop_factory=lambda cfg: Loop(cfg, name=SESSION, backoff=(0.0,), review=True),
        clock=lambda: 0.0,
    )


def keys_shown(screen: Any, width: int) -> set[str]:
    """The footer keys drawn whole within ``width`` columns."""
    return {
        key.key
        for key in screen.query("FooterKey")
        if key.region.width and key.region.right <= width
    }
