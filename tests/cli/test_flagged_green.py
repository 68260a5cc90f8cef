"""What cannot be prevented is shown: a green bought with an object equal to everything.

The scripted model makes the kata's test pass without fixing ``add``: it returns an object
whose ``__eq__`` always says True. Nothing inside the test process can tell (the canary
passes, the report is real), so the loop goes green — and the change is flagged: a
``flagged`` event names the line, ``--accept all`` does not apply it (exit 1, the flags on
standard error), ``--accept flagged`` does (tests/app/test_review_flags.py: and the review marks the hunk).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_git
from loophelpers import KATA, TARGET, edit, events_of, make_config, of_type, run_loop
from loophelpers import run_cli as codexloop
from scripted_openai import Call, Reply

from codexloop.core import events as ev

HACK = (
    "class _Five:\n"
    "    def __eq__(self, other):\n"
    "        return True\n"
    "\n"
    "\n"
    "def add(a, b):\n"
    "    return _Five()\n"
)
HACK_LINE = 3  # `return True`: the line that makes it equal to everything


def script_the_hack(server) -> None:
    server.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": HACK})]),
        Reply(text="add now returns something equal to 5."),
    )


def headless(server, repo: Path, accept: str):
    return codexloop(
        TARGET,
        "--headless",
        "--accept",
        accept,
        "--base-url",
        server.base_url,
        "--model",
        "m",
        cwd=repo,
        timeout=120,
    )


@pytest.mark.anyio
async def test_accept_all_does_not_apply_a_flagged_green(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    script_the_hack(scripted_openai)
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config, accept_all=True)

    assert result.status == "passed"  # it cannot be prevented: the test really passed
    flagged = of_type(events, ev.Flagged)
    assert [(f.path, f.line) for f in flagged] == [("calc.py", HACK_LINE)]
    assert "__eq__" in flagged[0].reason
    assert flagged[0].to_dict() == {
        "type": "flagged",
        "attempt": 1,
        "path": "calc.py",
        "line": HACK_LINE,
        "reason": flagged[0].reason,
    }
    assert not of_type(events, ev.Applied)
    notices = [n.message for n in of_type(events, ev.Notice) if n.level == "error"]
    assert any("--accept flagged" in m for m in notices)
    # The developer's checkout is untouched; the change waits on the preview branch.
    assert (repo / "calc.py").read_text() == KATA["calc.py"]
    assert run_git(repo, "status", "--porcelain") == ""
    assert run_git(repo, "show", f"{result.branch}:calc.py") == HACK


@pytest.mark.anyio
async def test_accept_flagged_applies_it_anyway(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    script_the_hack(scripted_openai)
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config, accept_all=True, accept_flagged=True)

    assert result.status == "passed"
    assert [(f.path, f.line) for f in of_type(events, ev.Flagged)] == [("calc.py", HACK_LINE)]
    assert of_type(events, ev.Applied)[0].written == ("calc.py",)
    assert (repo / "calc.py").read_text() == HACK


@pytest.mark.anyio
async def test_an_honest_fix_has_no_flags_and_is_applied(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="ok"))
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config, accept_all=True)

    assert result.status == "passed"
    assert not of_type(events, ev.Flagged)
    assert (repo / "calc.py").read_text().endswith("return a + b\n")


def test_headless_accept_all_exits_1_and_lists_the_flags(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    script_the_hack(scripted_openai)
    done = headless(scripted_openai, repo, "all")

    assert done.returncode == 1, done.stderr
    events = events_of(done.stdout)
    flagged = [e for e in events if e["type"] == "flagged"]
    assert [(e["path"], e["line"]) for e in flagged] == [("calc.py", HACK_LINE)]
    assert events[-1]["type"] == "loop_finished" and events[-1]["status"] == "passed"
    assert not [e for e in events if e["type"] == "applied"]
    assert f"calc.py:{HACK_LINE}: " in done.stderr and "--accept flagged" in done.stderr
    assert "Traceback" not in done.stderr
    assert (repo / "calc.py").read_text() == KATA["calc.py"]


def test_headless_accept_flagged_applies_and_exits_0(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    script_the_hack(scripted_openai)
    done = headless(scripted_openai, repo, "flagged")

    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert any(e["type"] == "flagged" for e in events)
    assert [e["written"] for e in events if e["type"] == "applied"] == [["calc.py"]]
    assert (repo / "calc.py").read_text() == HACK


def test_accept_flagged_is_for_headless_runs(make_repo) -> None:
    repo = make_repo(KATA)
    done = codexloop(TARGET, "--accept", "flagged", cwd=repo, env={"OPENAI_API_KEY": "k"})
    assert done.returncode == 2
    assert "--accept applies to --headless runs" in done.stderr
