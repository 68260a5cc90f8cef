"""Setbacks (issue 21, seen with a 1.5B model): a change after which fewer target tests even
run is undone, and the model hears what its change caused and what was put back."""

from __future__ import annotations

import pytest
from conftest import run_git
from loophelpers import KATA, edit, make_config, of_type, run_loop, user_texts
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core.setbacks import Setbacks, Undone, has_module
from codexloop.core.testrun import Verdict

pytestmark = pytest.mark.anyio

WRECK = Call("write_file", {"path": "calc.py", "content": KATA["tests/test_calc.py"]})


async def test_a_change_that_stops_the_tests_running_is_undone(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[WRECK]),  # the test's text over the module: nothing can import
        Reply(text="Done."),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),  # needs the module back
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "passed" and result.iterations == 2
    [notice] = [n for n in of_type(events, ev.Notice) if "stopped the target tests" in n.message]
    assert "(0 ran, 1 before; ImportError: cannot import name 'add'" in notice.message
    assert notice.message.endswith("): calc.py put back as they were at the start")
    told = user_texts(scripted_openai.requests[2])
    assert "Your change stopped the target tests from running (0 ran, 1 before it): Import" in told
    assert "The engine put calc.py back as they were at the start" in told
    assert run_git(repo, "show", f"{result.branch}:calc.py") == KATA["calc.py"].replace(
        "a - b", "a + b"
    )


async def test_a_red_run_that_still_runs_the_tests_is_kept(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]),  # red, but the test ran
        Reply(text="Done."),
        Reply(tool_calls=[edit("calc.py", "a * b", "a + b")]),  # builds on it
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "passed" and result.iterations == 2
    assert not [n for n in of_type(events, ev.Notice) if "stopped the target tests" in n.message]


async def test_a_missing_function_is_no_setback_from_an_import_error(
    make_repo, scripted_openai
) -> None:
    """The baseline itself cannot import what the test needs: nothing runs, so a change
    that still does not run the test is not behind it."""
    repo = make_repo({**KATA, "calc.py": "def sub(a, b):\n    return a - b\n"})
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "def sub", "def subtract")]),
        Reply(text="Done."),
        Reply(text="Still thinking."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "failed"
    assert not [n for n in of_type(events, ev.Notice) if "stopped the target tests" in n.message]
    assert "def subtract" in run_git(repo, "show", f"{result.branch}:calc.py")


# Qwen2.5-Coder-1.5B, price kata, 2026-12-03 run 2: the same money.py (importing `requests`,
# which the sandbox lacks) written six iterations running; each undone, each written again.
MISSING = "import forex_rates_api\n\n\ndef add(a, b):\n    return a + b\n"
AS_TEXT = f"The fix:\n```python\n# calc.py\n{MISSING}```\n"


def refusals(events: list[ev.Event]) -> list[str]:
    return [r.summary for r in of_type(events, ev.ToolResult) if r.refused]


async def test_a_change_undone_as_a_setback_is_refused_when_written_again(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    again_with_spaces = AS_TEXT.replace("a + b\n", "a + b   \n\n")
    fixed = Call("write_file", {"path": "calc.py", "content": "def add(a, b):\n    return a + b\n"})
    scripted_openai.add(
        Reply(text=AS_TEXT),  # iteration 1: undone
        Reply(text=AS_TEXT),  # the same again: refused before any test run
        Reply(text=again_with_spaces),  # the same but for trailing blanks: refused
        Reply(tool_calls=[fixed]),  # something else: written, green
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "passed" and result.iterations == 2
    assert len([e for e in of_type(events, ev.TestFinished) if e.iteration > 0]) == 2
    refused = refusals(events)
    assert len(refused) == 2
    assert all(
        "calc.py would be exactly as the change undone after iteration 1, which stopped the "
        "target tests from running (ModuleNotFoundError: No module named 'forex_rates_api')" in r
        for r in refused
    )
    [notice] = [n for n in of_type(events, ev.Notice) if "stopped the target tests" in n.message]
    assert "(0 ran, 1 before; ModuleNotFoundError: No module named 'forex_rates_api')" in (
        notice.message
    )
    told = user_texts(scripted_openai.requests[1])
    assert "forex_rates_api is not installed here and is not part of the project" in told
    assert "the same change again will be refused" in told
    # A model acting through text starts afresh: its undone answer is not shown to it again,
    # the file as it was put back is.
    assistant = [m for m in scripted_openai.requests[1]["messages"] if m["role"] == "assistant"]
    assert assistant == []
    assert "your last change put back" in told and "return a - b" in told
    assert "would be exactly as the change undone" in user_texts(scripted_openai.requests[2])


async def test_a_new_file_importing_the_module_found_missing_is_refused(
    make_repo, scripted_openai
) -> None:
    """Other code, same import: refused while the project has no such module; once the model
    adds it to the project, the import is its own business."""
    repo = make_repo(KATA)
    other = "import forex_rates_api.rates as r\n\n\ndef add(a, b):\n    return r.add(a, b)\n"
    module = "def add(a, b):\n    return a + b\n"
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": MISSING})]),
        Reply(text="Done."),
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": other})]),
        Reply(
            tool_calls=[
                Call("write_file", {"path": "forex_rates_api/__init__.py", "content": ""}),
                Call("write_file", {"path": "forex_rates_api/rates.py", "content": module}),
                Call("write_file", {"path": "calc.py", "content": other}),
            ]
        ),
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "passed" and result.iterations == 2
    [refused] = refusals(events)
    assert refused.startswith(
        "refused: calc.py imports forex_rates_api, which is not installed here and is not part"
    )
    assert "r.add(a, b)" in run_git(repo, "show", f"{result.branch}:calc.py")


async def test_an_edit_that_leads_back_to_the_undone_content_is_refused(
    make_repo, scripted_openai
) -> None:
    """Another route to the same file: edit_file rather than write_file."""
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": MISSING})]),
        Reply(text="Done."),
        Reply(tool_calls=[edit("calc.py", "def add(a, b):\n    return a - b", MISSING.strip())]),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "passed" and result.iterations == 2
    [refused] = refusals(events)
    assert "calc.py would be exactly as the change undone after iteration 1" in refused


def test_what_was_undone_is_forgotten_when_the_exam_changes() -> None:
    """A module missing for the old exam may be what the new one asks for."""
    baseline = Verdict(False, "red", "digest")
    setbacks = Setbacks("exam-1", ["t"], "start", baseline)
    cause = "ModuleNotFoundError: No module named 'forex_rates_api'"
    setbacks.undoings.remember(Undone(1, cause), {"calc.py": MISSING.encode(), "gone.py": None})
    assert setbacks.undoings.veto("calc.py", MISSING.encode(), lambda _name: False)
    assert setbacks.undoings.veto("other.py", b"import forex_rates_api\n", lambda _name: False)
    assert not setbacks.undoings.veto("gone.py", b"", lambda _name: False)
    assert not setbacks.undoings.veto("notes.txt", b"import forex_rates_api\n", lambda _n: False)
    setbacks.judge(2, baseline, "commit", "exam-2", ["t"])
    assert not setbacks.undoings.veto("calc.py", MISSING.encode(), lambda _name: False)


def test_a_module_the_project_has_is_found_at_any_depth() -> None:
    files = ["src/forex/__init__.py", "src/rates.py", "calc.py", "tests/test_calc.py"]
    assert has_module(files, "forex") and has_module(files, "rates") and has_module(files, "calc")
    assert not has_module(files, "requests") and not has_module(files, "fore")
