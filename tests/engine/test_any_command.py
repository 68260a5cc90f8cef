"""Projects whose tests are not pytest: judged by the exit code, their test setup protected."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_git
from loophelpers import KATA, edit, make_config, of_type, run_loop, tool_results, user_texts
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core import process
from codexloop.core.exam import Exam, command_files
from codexloop.core.testrun import judge, junit_env

pytestmark = pytest.mark.anyio

CHECK = (
    'grep -q "return a + b" calc.py && echo "add adds" || { echo "add does not add"; exit 1; }\n'
)
PACKAGE = {"name": "calc", "scripts": {"test": "node --test"}, "dependencies": {"left-pad": "1"}}


async def run_in(repo: Path, command: str, junit: Path) -> process.RunResult:
    env = {"PATH": "/usr/bin:/bin", **junit_env(junit)}
    return await process.run(["bash", "-c", command], cwd=repo, env=env, timeout=30)


async def test_a_command_without_a_junit_report_is_judged_by_its_exit_code(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    green = judge(("x",), await run_in(tmp_path, "echo fine", junit), junit, strict=False)
    assert green.passed and "judged by the exit code" in green.summary
    red = judge(("x",), await run_in(tmp_path, "echo broken; exit 3", junit), junit, strict=False)
    assert not red.passed and "exit code 3" in red.summary and "broken" in red.digest
    # The default pytest command always writes a report: without one it is red.
    assert not judge(("x",), await run_in(tmp_path, "true", junit), junit).passed


async def test_a_command_that_runs_pytest_keeps_the_strict_rules(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text("def test_a():\n    pass\n")
    junit = tmp_path / "junit.xml"
    run = await run_in(tmp_path, f"{sys.executable} -m pytest -q -p no:cacheprovider", junit)
    assert judge(("test_a.py::test_a",), run, junit, strict=False).passed
    assert not judge(("test_a.py::test_gone",), run, junit, strict=False).passed


def test_files_a_test_command_names_are_part_of_the_exam(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    for name in ("Makefile", "scripts/check.sh", "check.py"):
        (tmp_path / name).write_text("x\n")
    assert command_files(tmp_path, "make test") == ("Makefile",)
    assert command_files(tmp_path, "bash scripts/check.sh --fast") == ("scripts/check.sh",)
    assert command_files(tmp_path, "PYTHONPATH=. python check.py /etc/passwd ../x") == ("check.py",)
    assert command_files(tmp_path, "npm test") == ()
    assert command_files(tmp_path, None) == ()


def test_javascript_test_configuration_is_protected(tmp_path: Path) -> None:
    exam = Exam(tmp_path, "HEAD", ("test/calc.test.js",))
    for name in ("jest.config.js", "vitest.config.mts", ".mocharc.yml", "web/playwright.config.ts"):
        assert exam.check_write(name, b"a", b"b") is not None, name
    assert exam.check_write("src/config.js", b"a", b"b") is None
    old = json.dumps(PACKAGE).encode()
    skipped = json.dumps({**PACKAGE, "scripts": {"test": "exit 0"}}).encode()
    added = json.dumps({**PACKAGE, "dependencies": {"left-pad": "2"}}).encode()
    assert "package.json" in str(exam.check_write("package.json", old, skipped))
    assert exam.check_write("package.json", old, added) is None


async def test_a_shell_exam_loop_refuses_the_script_and_goes_green(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({**KATA, "check.sh": CHECK})
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "check.sh", "content": "exit 0\n"})]),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed without touching the check."),
    )
    config = make_config(repo, scripted_openai.base_url, test_cmd="sh check.sh")
    result, events = await run_loop(config)
    assert result.status == "passed"
    refusal = tool_results(scripted_openai.requests[1])[0]
    assert "refused" in refusal and "the test command runs it" in refusal
    finished = of_type(events, ev.TestFinished)
    assert [f.passed for f in finished] == [False, True]
    assert "judged by the exit code" in finished[-1].summary
    assert run_git(repo, "show", f"{result.branch}:check.sh") == CHECK


async def test_the_model_reads_no_escape_codes(make_repo, scripted_openai) -> None:
    """Colours are for the developer's terminal: the failure digest and a command's output
    reach the model as plain text (issue 16, item 12)."""
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call("run_command", {"command": "printf '\\033[33mno tests ran\\033[0m\\n'"})
            ]
        ),
        Reply(text="Done."),
    )
    colour = "printf '\\033[31mboom\\033[0m \\033]0;title\\007\\n'; exit 1"
    config = make_config(repo, scripted_openai.base_url, max_iterations=1, test_cmd=colour)
    result, events = await run_loop(config)
    assert result.status == "failed"
    first, second = scripted_openai.requests[0], scripted_openai.requests[1]
    assert "boom" in user_texts(first) and "\x1b" not in user_texts(first)
    assert "no tests ran" in tool_results(second)[0]
    assert "\x1b" not in tool_results(second)[0]
    # The developer's terminal still gets the colours.
    assert "\x1b[31mboom" in "".join(o.text for o in of_type(events, ev.TestOutput))
