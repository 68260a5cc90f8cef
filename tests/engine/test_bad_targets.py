"""Targets that can never pass stop before the first model call (issue 16, item 3).

A target that collects no test (a typo in the function part, the code under test named instead
of its test) and an exam with a syntax error are one clear line and exit 2; no model call, no
budget spent. A collection error caused by the code under test (an import the test needs that
does not exist yet) is the normal red case and still runs.
"""

from __future__ import annotations

import pytest
from conftest import run_git
from loophelpers import KATA, TARGET, make_config, run_cli, run_loop
from scripted_openai import Call, Reply

from codexloop.core.exam import ExamError

pytestmark = pytest.mark.anyio

SYNTAX_ERROR = "from calc import add\n\n\ndef test_add(:\n    assert add(2, 3) == 5\n"


async def _refused(repo, base_url: str, *targets: str) -> str:
    config = make_config(repo, base_url, *targets, max_iterations=3)
    with pytest.RaisesGroup(ExamError, allow_unwrapped=True, flatten_subgroups=True) as caught:
        await run_loop(config)
    (error,) = (
        caught.value.exceptions if isinstance(caught.value, ExceptionGroup) else (caught.value,)
    )
    assert isinstance(error, ExamError) and error.exit_code == 2
    return str(error)


@pytest.mark.parametrize(
    "target",
    ["tests/test_calc.py::test_ad", "calc.py", "tests/test_calc.py::TestNope::test_add"],
)
async def test_a_target_that_collects_no_test_stops_before_any_model_call(
    make_repo, scripted_openai, target: str
) -> None:
    repo = make_repo(KATA)
    message = await _refused(repo, scripted_openai.base_url, target)
    assert message.startswith(f"target '{target}' collects no test"), message
    assert "\n" not in message
    assert scripted_openai.requests == []


async def test_an_exam_with_a_syntax_error_stops_before_any_model_call(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({**KATA, "tests/test_calc.py": SYNTAX_ERROR})
    message = await _refused(repo, scripted_openai.base_url)
    assert message.startswith("the exam has a syntax error at tests/test_calc.py:4"), message
    assert scripted_openai.requests == []


async def test_a_collection_error_from_the_code_under_test_is_the_normal_red(
    make_repo, scripted_openai
) -> None:
    """The test imports a function that does not exist yet: the model's job, not an error."""
    test = "from calc import mul\n\n\ndef test_add():\n    assert mul(2, 3) == 6\n"
    repo = make_repo({**KATA, "tests/test_calc.py": test})
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call(
                    "write_file",
                    {"path": "calc.py", "content": "def mul(a, b):\n    return a * b\n"},
                )
            ]
        ),
        Reply(text="Done."),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url, TARGET))
    assert result.status == "passed"
    assert len(scripted_openai.requests) == 2


def test_headless_says_it_in_one_line_and_exits_2(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    done = run_cli(
        "tests/test_calc.py::test_ad",
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m",
        cwd=repo,
    )
    assert done.returncode == 2, done.stderr
    assert "codexloop: error: target 'tests/test_calc.py::test_ad' collects no test" in done.stderr
    assert "Traceback" not in done.stderr
    assert scripted_openai.requests == []
    branches = run_git(repo, "branch", "--list", "codexloop/*")
    assert branches.strip() == "", branches  # nothing made, nothing left behind
