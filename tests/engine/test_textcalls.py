"""Tool calls a model writes as text instead of calling the tools (issue 21): JSON bare, fenced,
in tags, after Llama and Mistral markers — run like native calls."""

from __future__ import annotations

import json

import pytest
from conftest import run_git
from loophelpers import KATA, edit, make_config, of_type, run_loop, tool_results, user_texts
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core.textcalls import find_calls

pytestmark = pytest.mark.anyio

FIXED = "def add(a, b):\n    return a + b\n"
FENCE = "```"
EDIT = {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"}
CALL = json.dumps({"name": "edit_file", "arguments": EDIT})

FORMS = {
    "bare": f"I will fix the operator.\n{CALL}\n",
    "fenced": f"Let me fix it:\n{FENCE}json\n{CALL}\n{FENCE}",
    "qwen tags": f"<tool_call>\n{CALL}\n</tool_call>",
    "tools tags": f"<tools>\n{CALL}\n</tools>",
    "llama": '<|python_tag|>{"name": "edit_file", "parameters": ' + json.dumps(EDIT) + "}",
    "mistral": f"[TOOL_CALLS] [{CALL}]",
    "list": f"{FENCE}json\n[{CALL}]\n{FENCE}",
    "pythonic": '[edit_file(path="calc.py", old_text="a - b", new_text="a + b")]',
}


@pytest.mark.parametrize("form", FORMS, ids=list(FORMS))
def test_each_form_is_read_as_a_call(form: str) -> None:
    [call] = find_calls(FORMS[form])
    assert call.name == "edit_file"
    assert json.loads(call.arguments) == EDIT


def test_the_pythonic_form_and_code_that_only_looks_like_it() -> None:
    """Llama 3.x writes ``[tool(arg="…")]``; a line of code calling a function of that name,
    a positional or computed argument, is no call."""
    fenced = f'Fixing it.\n{FENCE}python\nedit_file(path="calc.py", old_text="a - b", new_text="a + b")\n{FENCE}'
    assert [json.loads(c.arguments) for c in find_calls(fenced)] == [EDIT]
    two = '[read_file(path="calc.py"), grep(pattern="def add(")]'
    assert [(c.name, json.loads(c.arguments)) for c in find_calls(two)] == [
        ("read_file", {"path": "calc.py"}),
        ("grep", {"pattern": "def add("}),
    ]
    content = '[write_file(path="a.py", content="""def f():\n    return \'x)\'\n""")]'
    [write] = find_calls(content)
    assert json.loads(write.arguments)["content"] == "def f():\n    return 'x)'\n"
    for code in ('x = grep(pattern="a")', "grep(pattern=compute())", 'run_command("ls")'):
        assert find_calls(code) == [], code


def test_more_forms_and_what_is_not_a_call() -> None:
    # Arguments as a JSON string (the OpenAI wire shape), the OpenAI "function" wrapper,
    # several calls in one tag, Mistral's newer marker, a think block left out.
    assert [c.name for c in find_calls('{"name": "read_file", "arguments": "{\\"path\\": "}')] == [
        "read_file"
    ]
    wrapped = {"type": "function", "function": {"name": "list_files", "arguments": {}}}
    assert [c.name for c in find_calls(json.dumps(wrapped))] == ["list_files"]
    two = '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n{"name": "grep", "arguments": {"pattern": "x"}}\n</tool_call>'
    assert [c.name for c in find_calls(two)] == ["read_file", "grep"]
    mistral = '[TOOL_CALLS]read_file[ARGS]{"path": "calc.py"}'
    assert [json.loads(c.arguments) for c in find_calls(mistral)] == [{"path": "calc.py"}]
    thought = '<think>{"name": "read_file", "arguments": {"path": "x"}}</think>Done.'
    assert find_calls(thought) == []
    # Literal newlines inside a JSON string (small models write file contents that way).
    raw = '<tool_call>{"name": "write_file", "arguments": {"path": "calc.py", "content": "def add(a, b):\n    return a + b\n"}}</tool_call>'
    [write] = find_calls(raw)
    assert json.loads(write.arguments)["content"] == FIXED
    # Python's triple quotes where JSON wants a string (small models write files that way).
    triple = f'{FENCE}json\n{{"name": "write_file", "arguments": {{"path": "calc.py", '
    triple += f'"content": """{FIXED}"""}}}}\n{FENCE}'
    [write] = find_calls(triple)
    assert json.loads(write.arguments)["content"] == FIXED
    # Plain JSON data, code, and names of tools that do not exist outside tags are no calls.
    assert find_calls('{"name": "Ada", "age": 36}') == []
    assert find_calls(f"{FENCE}python\nconfig = {{'name': 'x'}}\n{FENCE}") == []
    assert find_calls("The answer is 5.") == []


@pytest.mark.parametrize("form", ["bare", "fenced", "qwen tags"])
async def test_a_text_call_runs_like_a_native_call(make_repo, scripted_openai, form: str) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text=FORMS[form]), Reply(text="Done."))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed"
    assert run_git(repo, "show", f"{result.branch}:calc.py") == FIXED
    [call] = of_type(events, ev.ToolCall)
    assert call.name == "edit_file" and json.loads(call.arguments) == EDIT
    [outcome] = of_type(events, ev.ToolResult)
    assert outcome.ok and outcome.call_id == call.call_id
    # The change ended the turn (as an edit written as text does): the tests judged it at once.
    assert len(scripted_openai.requests) == 1
    infos = [n.message for n in of_type(events, ev.Notice) if "tool calls as text" in n.message]
    assert len(infos) == 1


async def test_a_text_call_that_changes_a_file_ends_the_turn_and_the_tests_judge_it(
    make_repo, scripted_openai
) -> None:
    """Red after the change: the next iteration's first request shows the file as the call
    left it and the failure (a model acting through text starts each iteration afresh)."""
    repo = make_repo(KATA)
    wrong = json.dumps({"name": "edit_file", "arguments": {**EDIT, "new_text": "a * b"}})
    right = json.dumps({"name": "edit_file", "arguments": {**EDIT, "old_text": "a * b"}})
    scripted_openai.add(Reply(text=wrong), Reply(text=f"<tool_call>{right}</tool_call>"))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "passed" and result.iterations == 2
    told = user_texts(scripted_openai.requests[1])
    assert "--- calc.py ---\ndef add(a, b):\n    return a * b" in told
    assert "assert 6 == 5" in told  # the failure of the run that judged it
    assert tool_results(scripted_openai.requests[1]) == []


async def test_text_calls_read_then_write(make_repo, scripted_openai) -> None:
    """A small model's session: it reads, then writes the file, each time as text."""
    repo = make_repo(KATA)
    read = '<tool_call>\n{"name": "read_file", "arguments": {"path": "calc.py"}}\n</tool_call>'
    write = json.dumps({"name": "write_file", "arguments": {"path": "calc.py", "content": FIXED}})
    scripted_openai.add(Reply(text=read), Reply(text=write), Reply(text="Fixed."))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed"
    assert "return a - b" in user_texts(scripted_openai.requests[1])
    assert [r.ok for r in of_type(events, ev.ToolResult)] == [True, True]
    # Only the first time is the developer told.
    assert len([n for n in of_type(events, ev.Notice) if "as text" in n.message]) == 1


async def test_a_text_call_is_refused_like_a_native_one(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    weak = {"path": "tests/test_calc.py", "content": "def test_add():\n    pass\n"}
    scripted_openai.add(
        Reply(text=json.dumps({"name": "write_file", "arguments": weak})),
        Reply(text=FORMS["qwen tags"]),
        Reply(text="Done."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed"
    assert [(r.ok, r.refused) for r in of_type(events, ev.ToolResult)] == [
        (False, True),
        (True, False),
    ]
    told = user_texts(scripted_openai.requests[1])
    assert "protected" in told and "Nothing" in told


async def test_text_calls_share_the_tool_budget(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    reads = "\n".join(
        '<tool_call>{"name": "read_file", "arguments": {"path": "calc.py"}}</tool_call>'
        for _ in range(3)
    )
    scripted_openai.add(Reply(text=reads), Reply(text="unused"))
    config = make_config(repo, scripted_openai.base_url, max_iterations=1, max_tool_calls=2)
    result, events = await run_loop(config)
    assert [r.ok for r in of_type(events, ev.ToolResult)] == [True, True, False]
    assert any("tool budget" in n.message for n in of_type(events, ev.Notice))
    assert len(scripted_openai.requests) == 1 and result.status == "failed"


WANDER = {"path": "calc.py", "content": "from calc import add\n"}  # what a small model did next


async def test_the_models_own_passing_run_of_the_exam_ends_the_turn(
    make_repo, scripted_openai
) -> None:
    """Seen with Qwen2.5-Coder-1.5B: it fixed the code, ran the test (exit 0), then wandered on
    and overwrote the fix. A passing run of the exam's tests after a change ends the turn: the
    engine runs the exam at once. (Text calls that change a file end the turn already.)"""
    repo = make_repo(KATA)
    run = {"command": "python -m pytest -q tests/test_calc.py"}
    scripted_openai.add(
        Reply(tool_calls=[Call("edit_file", EDIT)]),
        Reply(tool_calls=[Call("run_command", run)]),
        Reply(tool_calls=[Call("write_file", WANDER)]),
        Reply(text="Done."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed" and result.iterations == 1
    assert len(scripted_openai.requests) == 2  # the wandering answer was never asked for
    notices = [e.message for e in of_type(events, ev.Notice)]
    assert any("ran the tests after its change and they passed" in n for n in notices)


async def test_a_passing_run_of_other_tests_goes_on(make_repo, scripted_openai) -> None:
    repo = make_repo({**KATA, "tests/test_other.py": "def test_other():\n    pass\n"})
    other = Call("run_command", {"command": "python -m pytest -q tests/test_other.py"})
    scripted_openai.add(
        Reply(tool_calls=[Call("edit_file", EDIT)]),
        Reply(tool_calls=[other]),
        Reply(text="Done."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert [r.ok for r in of_type(events, ev.ToolResult)] == [True, True]
    assert result.status == "passed" and len(scripted_openai.requests) == 3


async def test_a_module_written_to_import_from_itself_gets_a_warning(
    make_repo, scripted_openai
) -> None:
    """Seen with the 1.5B model, five iterations in a row: the test's import line written into
    the module it imports from. The write goes through, and its result says why it cannot work."""
    repo = make_repo(KATA)
    wrong = "from calc import add\n\ndef add(a, b):\n    return a + b\n"
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": wrong})]),
        Reply(text="Done."),
    )
    await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    [result] = tool_results(scripted_openai.requests[1])
    assert "Warning: calc.py imports from itself (from calc import add)" in result


def test_what_counts_as_importing_from_itself() -> None:
    from codexloop.core.tools import self_import_note

    assert self_import_note("src/pkg/mod.py", "from pkg.mod import a\n")
    assert self_import_note("pkg/__init__.py", "from pkg import a\n")
    assert not self_import_note("calc.py", "from os import path\nfrom .calc import x\n")
    assert not self_import_note("calc.txt", "from calc import add\n")
    assert not self_import_note("calc.py", "from calc import (\n")  # does not parse: no note


async def test_a_change_that_changes_nothing_says_so(make_repo, scripted_openai) -> None:
    """The 1.5B model wrote the same content again and again; and edited a line into itself."""
    repo = make_repo(KATA)
    same = Call("write_file", {"path": "calc.py", "content": KATA["calc.py"]})
    noop = edit("calc.py", "a - b", "a - b")
    scripted_openai.add(Reply(tool_calls=[same, noop]), Reply(text="Done."))
    _result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    results = of_type(events, ev.ToolResult)
    assert [(r.ok, r.summary) for r in results] == [
        (False, "calc.py already holds exactly this content: nothing changed"),
        (False, "new_text is the same as old_text: nothing would change"),
    ]
    assert not of_type(events, ev.SandboxChanged)
