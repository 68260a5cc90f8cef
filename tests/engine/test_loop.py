"""The loop end to end: the real openai client against a scripted server, real git repos."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_git
from loophelpers import (
    KATA,
    TEST_CALC,
    edit,
    make_config,
    of_type,
    run_loop,
    tool_results,
    user_texts,
)
from scripted_openai import Call, Drop, HTTPError, Reply

from codexloop.core import events as ev

pytestmark = pytest.mark.anyio


async def test_red_then_green_feeds_the_failure_back(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    seen: dict[str, Any] = {}

    def second_attempt(request: dict[str, Any]) -> Reply:
        seen["digest"] = user_texts(request)
        return Reply(tool_calls=[edit("calc.py", "a * b", "a + b")])

    scripted_openai.add(
        Reply(text="Let me look.", tool_calls=[Call("read_file", {"path": "calc.py"})]),
        Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="Multiplication it is."),
        second_attempt,
        Reply(text="Now it adds."),
    )
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config)

    assert result.status == "passed"
    assert result.iterations == 2
    finished = of_type(events, ev.TestFinished)
    assert [f.passed for f in finished] == [
        False,
        False,
        True,
    ]  # baseline, iteration 1, iteration 2
    # The first request shows the exam and the baseline failure; the third, iteration 1's failure.
    first = user_texts(scripted_openai.requests[0])
    assert TEST_CALC.strip() in first and "assert -1 == 5" in first
    # ...and the project's files, so the first turn need not list them.
    assert "Project files:\ncalc.py\ntests/test_calc.py\n" in first
    assert "assert 6 == 5" in seen["digest"]
    # The model read the real file; its text streamed in pieces.
    assert "return a - b" in tool_results(scripted_openai.requests[1])[0]
    assert "".join(e.text for e in of_type(events, ev.ModelText)).startswith("Let me look.")
    # The developer's checkout is untouched; the preview branch has one commit per iteration.
    assert (repo / "calc.py").read_text() == KATA["calc.py"]
    assert run_git(repo, "status", "--porcelain") == ""
    log = run_git(repo, "log", "--format=%s", result.branch)
    assert "iteration 1: red" in log and "iteration 2: green" in log
    assert run_git(repo, "show", f"{result.branch}:calc.py").endswith("return a + b\n")
    assert of_type(events, ev.LoopFinished)[-1].status == "passed"
    assert of_type(events, ev.LoopStarted)[0].branch == result.branch
    usage = of_type(events, ev.Usage)[-1]
    assert usage.input_total == 100 * 5 and usage.output_total == 20 * 5


async def test_the_sandbox_starts_from_the_uncommitted_working_tree(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({"calc.py": KATA["calc.py"]})
    (repo / "tests").mkdir()
    (repo / "tests" / "test_calc.py").write_text(TEST_CALC)  # the fresh, uncommitted exam
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b + 0\n")  # uncommitted fix
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config)
    assert result.status == "passed" and result.iterations == 0
    assert scripted_openai.requests == []  # already green: no model call at all
    assert any("already pass" in n.message for n in of_type(events, ev.Notice))


@pytest.mark.parametrize("isolated", [True, False], ids=["bwrap", "no-bwrap"])
async def test_a_model_that_weakens_the_exam_stays_red(
    make_repo, scripted_openai, request, isolated
) -> None:
    if not isolated:
        request.getfixturevalue("no_bwrap")
    repo = make_repo(KATA)
    weak = "def test_add():\n    pass\n"
    scripted_openai.add(
        Reply(
            tool_calls=[
                edit("tests/test_calc.py", "== 5", "== -1"),
                Call("write_file", {"path": "tests/test_calc.py", "content": weak}),
                Call(
                    "write_file",
                    {"path": "tests/conftest.py", "content": "collect_ignore = ['x']\n"},
                ),
                Call(
                    "write_file",
                    {"path": "pytest.ini", "content": "[pytest]\naddopts = -k nothing\n"},
                ),
                Call("write_file", {"path": "./tests/../tests/test_calc.py", "content": weak}),
            ]
        ),
        Reply(
            tool_calls=[Call("run_command", {"command": f"printf '{weak}' > tests/test_calc.py"})]
        ),
        Reply(text="The tests pass now."),
        Reply(
            tool_calls=[
                Call("run_command", {"command": "rm tests/test_calc.py; echo 'x=1' > conftest.py"})
            ]
        ),
        Reply(text="Done."),
    )
    config = make_config(repo, scripted_openai.base_url, max_iterations=2)
    result, events = await run_loop(config)

    assert result.status == "failed"
    refusals = [r for r in of_type(events, ev.ToolResult) if r.refused]
    assert len(refusals) == 5
    assert all("protected" in r.summary for r in refusals)
    restored = [r.paths for r in of_type(events, ev.ExamRestored)]
    if isolated:  # the exam is read-only inside the sandbox: only the new conftest.py needs undoing
        assert restored == [("conftest.py",)]
    else:  # the engine puts everything back before each run
        assert restored == [("tests/test_calc.py",), ("conftest.py", "tests/test_calc.py")]
    assert of_type(events, ev.LoopStarted)[0].isolation == ("full" if isolated else "none")
    assert [f.passed for f in of_type(events, ev.TestFinished)] == [False, False, False]
    assert run_git(repo, "show", f"{result.branch}:tests/test_calc.py") == TEST_CALC
    assert "conftest.py" not in run_git(repo, "ls-tree", "-r", "--name-only", result.branch)
    # The model is told why, in words it can act on.
    first_results = tool_results(scripted_openai.requests[1])
    assert all(
        r.startswith("refused:") and "change the code under test" in r for r in first_results
    )


async def test_paths_outside_the_sandbox_are_refused(
    make_repo, scripted_openai, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s3cret")
    repo = make_repo(KATA)
    os.symlink(outside, repo / "escape")
    run_git(repo, "add", "escape")
    run_git(repo, "commit", "-qm", "a symlink out")
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call("read_file", {"path": str(outside / "secret.txt")}),
                Call("read_file", {"path": "../outside/secret.txt"}),
                Call("read_file", {"path": "escape/secret.txt"}),
                Call("write_file", {"path": "escape/new.txt", "content": "x"}),
                Call("list_files", {"path": "escape"}),
                Call("grep", {"pattern": "s3cret", "path": "/"}),
                Call("read_file", {"path": "~/.ssh/id_rsa"}),
            ]
        ),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="fixed"),
    )
    config = make_config(repo, scripted_openai.base_url)
    result, _events = await run_loop(config)
    assert result.status == "passed"
    results = tool_results(scripted_openai.requests[1])
    assert len(results) == 7
    assert all(r.startswith("refused:") for r in results), results
    assert not any("s3cret" in r for r in results)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_malformed_and_failing_calls_become_results_and_the_loop_goes_on(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(
        {
            **KATA,
            "calc.py": "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n",
        }
    )
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call("edit_file", '{"path": "calc.py", "old_text": "a - b"'),  # cut-off JSON
                Call("delete_everything", {}),
                edit("calc.py", "return a - b", "x"),
                edit("calc.py", "def add(a,b):", "x"),
                edit("calc.py", "def  add(a, b):", "x"),
                edit("nope.py", "a", "b"),
                Call("read_file", {"path": 42}),
                Call("grep", {"pattern": "("}),
                Call("write_file", '["not", "an", "object"]'),
            ]
        ),
        Reply(
            tool_calls=[
                edit(
                    "calc.py",
                    "def add(a, b):\n    return a - b",
                    "def add(a, b):\n    return a + b",
                )
            ]
        ),
        Reply(text="fixed"),
    )
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config)
    assert result.status == "passed"
    results = tool_results(scripted_openai.requests[1])
    assert results[0].startswith("error: the arguments are not valid JSON")
    assert "no tool named 'delete_everything'" in results[1]
    assert "matches 2 times" in results[2] and "lines 2, 6" in results[2]
    assert "not found" in results[3] and "closest text is at line 1" in results[3]
    assert "whitespace" in results[4]
    assert "nope.py does not exist" in results[5]
    assert "must be a non-empty string" in results[6]
    assert "invalid regular expression" in results[7]
    assert "must be a JSON object" in results[8]
    assert all(not r.ok for r in of_type(events, ev.ToolResult)[:9])


async def test_api_errors_and_dropped_streams_are_retried_visibly(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        HTTPError(503, "overloaded"),
        Drop(Reply(text="I will fix the addition operator now, carefully."), after_chunks=3),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="fixed"),
    )
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config)
    assert result.status == "passed"
    retries = of_type(events, ev.ModelRetry)
    assert [r.retry for r in retries] == [1, 2]
    assert "HTTP 503" in retries[0].reason
    assert any("broke off" in n.message for n in of_type(events, ev.Notice))


async def test_an_error_no_retry_fixes_stops_the_loop_cleanly(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(HTTPError(404, "The model `nope` does not exist", code="model_not_found"))
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config)
    assert result.status == "failed"
    assert "does not exist" in result.reason
    assert of_type(events, ev.LoopFinished)[-1].status == "failed"
    assert len(scripted_openai.requests) == 1


async def test_tool_budget_per_iteration_ends_the_turn(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    reads = [Call("read_file", {"path": "calc.py"}) for _ in range(3)]
    scripted_openai.add(
        Reply(tool_calls=reads),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="fixed"),
    )
    config = make_config(repo, scripted_openai.base_url, max_tool_calls=2)
    result, _events = await run_loop(config)
    assert result.status == "passed" and result.iterations == 2
    last = tool_results(scripted_openai.requests[1])[-1]
    assert last.startswith("not executed: the budget of 2 tool calls")


def _make_venv_with_editable_install(repo: Path) -> None:
    """A project venv whose site-packages points at the checkout's src (what editable installs do)."""
    venv = repo / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    import pytest as _pytest

    ours = Path(_pytest.__file__).resolve().parent.parent
    (site / "_codexloop_test_deps.pth").write_text(f"{ours}\n")  # pytest itself
    (site / "__editable__.kata-0.1.pth").write_text(f"{repo / 'src'}\n")


async def test_tests_use_the_sandbox_code_despite_an_editable_install(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(
        {
            ".gitignore": ".venv/\n",
            "pyproject.toml": '[project]\nname = "kata"\nversion = "0.1"\n',
            "src/kata/__init__.py": "",
            "src/kata/calc.py": "def add(a, b):\n    return a - b\n",
            "tests/test_calc.py": "from kata.calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
        }
    )
    _make_venv_with_editable_install(repo)
    scripted_openai.add(
        Reply(tool_calls=[edit("src/kata/calc.py", "a - b", "a + b")]), Reply(text="fixed")
    )
    config = make_config(repo, scripted_openai.base_url)
    result, events = await run_loop(config)
    started = of_type(events, ev.LoopStarted)[0]
    assert str(repo / ".venv" / "bin" / "python") in started.test_command
    assert result.status == "passed", [f.summary for f in of_type(events, ev.TestFinished)]
    assert (repo / "src/kata/calc.py").read_text().endswith("a - b\n")


async def test_every_event_lands_in_the_trace(make_repo, scripted_openai) -> None:
    import json

    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="fixed"))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.trace is not None
    lines = [json.loads(line) for line in result.trace.read_text().splitlines()]
    assert lines[0]["type"] == "trace_header"
    assert [line["type"] for line in lines[1:]] == [e.type for e in events]


async def test_a_big_untracked_file_is_left_out_and_said(make_repo, scripted_openai) -> None:
    from codexloop.core import gitops

    repo = make_repo(KATA)
    with open(repo / "dump.sql", "wb") as handle:  # sparse: big, but costs no disk
        handle.truncate(gitops.MAX_UNTRACKED_BYTES + 1)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Done."))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed"
    [note] = [n for n in of_type(events, ev.Notice) if "left out of the sandbox" in n.message]
    assert note.level == "warning" and "dump.sql (50 MB)" in note.message
    assert not (result.worktree / "dump.sql").exists()


async def test_a_session_continues_from_an_earlier_preview_branch(
    make_repo, scripted_openai
) -> None:
    from codexloop.core import gitops

    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]), Reply(text="Hmm."))
    first, _ = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert first.status == "failed"

    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a * b", "a + b")]), Reply(text="Done."))
    config = make_config(repo, scripted_openai.base_url, continue_from=first.branch)
    second, events = await run_loop(config)
    assert second.status == "passed" and second.branch != first.branch
    # It started from the first session's work (a * b gives 6, not -1)...
    assert "assert 6 == 5" in user_texts(scripted_openai.requests[2])
    assert "continues the work of an earlier session" in user_texts(scripted_openai.requests[2])
    assert of_type(events, ev.LoopStarted)[0].continued_from == first.branch
    # ...and its base is still the first snapshot: the review shows both sessions' work.
    assert second.base == first.base == gitops.snapshot_of(repo, second.branch)
    diff = run_git(repo, "diff", second.base, second.branch, "--", "calc.py")
    assert "-    return a - b" in diff and "+    return a + b" in diff
    assert (repo / "calc.py").read_text() == KATA["calc.py"]  # the checkout untouched


def test_continuing_from_a_branch_that_does_not_exist_is_a_config_error(make_repo) -> None:
    from codexloop.core.config import ConfigError

    repo = make_repo(KATA)
    with pytest.raises(ConfigError, match="--continue nope: no preview branch"):
        make_config(repo, "http://127.0.0.1:1/v1", continue_from="nope")
