"""A headless session's snapshot and worktree started ahead, beside the engine's imports: the
session takes them; a session that never began leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import run_git
from loophelpers import KATA, TARGET, cli_env, make_config
from scripted_openai import Call, Reply, ScriptedOpenAI

from codexloop.core import ahead
from codexloop.core.loop import Loop
from codexloop.core.sandbox import create_ahead, drop_ahead, make_sandbox, session_name

RIGHT = "def add(a, b):\n    return a + b\n"


def branches(repo) -> list[str]:  # type: ignore[no-untyped-def]
    return run_git(repo, "branch", "--list", "--format=%(refname:short)", "codexloop/*").split()


def test_a_sandbox_started_ahead_and_never_taken_is_undone(make_repo) -> None:
    repo = make_repo(KATA)
    name = session_name((TARGET,))
    create_ahead(repo, name, None)
    drop_ahead(repo, name, None)
    assert branches(repo) == []
    assert "codexloop" not in run_git(repo, "worktree", "list")
    drop_ahead(repo, name, None)  # nothing left to undo: nothing done


@pytest.mark.anyio
async def test_the_session_takes_the_sandbox_started_for_its_name(
    make_repo, scripted_openai: ScriptedOpenAI
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": RIGHT})]),
        Reply(text="Fixed."),
    )
    name = session_name((TARGET,))
    create_ahead(repo, name, None)
    loop = Loop(make_config(repo, scripted_openai.base_url), name=name, backoff=(0.0,))
    result = await loop.run()
    assert result.status == "passed"
    assert ahead.leftover(make_sandbox, repo, name, None, None) is None  # it was taken
    assert branches(repo) == [f"codexloop/{name}"]  # one sandbox, the session's


def test_a_headless_session_leaves_one_branch(make_repo, scripted_openai: ScriptedOpenAI) -> None:
    """Through the command line (where the sandbox is started ahead): the session's branch,
    and no other."""
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text="I will not change anything."))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "codexloop",
            "--headless",
            "--max-iterations",
            "1",
            "--model",
            "m",
            "--base-url",
            scripted_openai.base_url,
            TARGET,
        ],
        cwd=repo,
        env=cli_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(branches(repo)) == 1
