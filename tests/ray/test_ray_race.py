"""Attempts as Ray actors (issue 18), on a real local cluster against the scripted server."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from conftest import run_git
from loophelpers import KATA, edit, event_channel_run, make_config, of_type
from scripted_openai import Reply

from codexloop.core import events as ev
from codexloop.core.executor import new_session

pytestmark = [pytest.mark.anyio, pytest.mark.ray]

FIX = edit("calc.py", "a - b", "a + b")
WRONG = edit("calc.py", "a - b", "a * b")


def session(repo: Any, url: str, models: str, **overrides: Any) -> Any:
    config = make_config(repo, url, model=models, ray="auto", **overrides)
    return new_session(config, backoff=(0.0,))


async def test_two_attempts_on_ray_the_winner_comes_home(
    ray_cluster, make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add_for("m1", Reply(tool_calls=[WRONG]), Reply(text="Done."))
    scripted_openai.add_for("m2", Reply(tool_calls=[FIX]), Reply(text="Fixed."))
    contest = session(
        repo, scripted_openai.base_url, "m1,m2", attempts=2, pick="best", max_iterations=1
    )
    with anyio.fail_after(120):
        result, events = await event_channel_run(contest)
    assert result.status == "passed" and result.branch.endswith("/a2"), events[-3:]
    assert "a + b" in run_git(repo, "show", f"{result.branch}:calc.py")
    finished = {e.attempt: e for e in of_type(events, ev.AttemptFinished)}
    assert finished[1].status == "failed" and finished[2].status == "passed"
    print([type(e).__name__ for e in events])
