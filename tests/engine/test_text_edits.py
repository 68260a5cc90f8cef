"""Edits a model writes as text instead of calling the tools (issue 21): a path-labelled block, a
bare function, SEARCH/REPLACE, a unified diff — applied through the tools (same confinement, same
protected exam); ``edit_file`` forgiving near matches; what the model and the developer are told
when an answer changes nothing; ``--edit-format``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import run_git
from loophelpers import KATA, TEST_CALC, edit, make_config, of_type, run_loop, user_texts
from scripted_openai import Reply

from codexloop.core import events as ev
from codexloop.core.exam import Exam
from codexloop.core.process import RunResult
from codexloop.core.textedits import excerpt_write, find_edits, read_edits
from codexloop.core.tools import Tools

pytestmark = pytest.mark.anyio

FIXED = "def add(a, b):\n    return a + b\n"
FENCE = "```"

WHOLE_FILE_FORMS = {
    "info string": f"The fix:\n\n{FENCE}python calc.py\n{FIXED}{FENCE}\n",
    "first-line comment": f"The fix:\n\n{FENCE}python\n# calc.py\n{FIXED}{FENCE}\n",
    "line before": f"Change the file.\n\n**calc.py**\n{FENCE}python\n{FIXED}{FENCE}\n",
    "sentence before": f"Here is the corrected `calc.py`:\n{FENCE}python\n{FIXED}{FENCE}\n",
    # No fence at all: Qwen2.5-Coder-1.5B wrote its right fix of money.py so, never applied.
    "unfenced": f"The operator is wrong.\n# calc.py\n{FIXED}\nThis makes the test pass.\n",
}
OTHER_FORMS = {
    "bare function": (
        f"The operator is wrong. It should be:\n\n{FENCE}python\n{FIXED}\n"
        f"# Example usage\nprint(add(2, 3))\n{FENCE}\n"
    ),
    "search/replace": (
        f"calc.py\n{FENCE}python\n<<<<<<< SEARCH\n    return a - b\n=======\n"
        f"    return a + b\n>>>>>>> REPLACE\n{FENCE}\n"
    ),
    "unified diff": (
        f"{FENCE}diff\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n"
        f"-    return a - b\n+    return a + b\n{FENCE}\n"
    ),
}


async def _green_from(make_repo, scripted_openai, text: str) -> list[ev.Event]:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text=text))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed", [e for e in events if isinstance(e, ev.Notice)]
    assert run_git(repo, "show", f"{result.branch}:calc.py") == FIXED
    # One answer, applied, then the tests: the edit took no second request.
    assert len(scripted_openai.requests) == 1
    return events


@pytest.mark.parametrize("form", WHOLE_FILE_FORMS, ids=list(WHOLE_FILE_FORMS))
async def test_a_path_labelled_block_is_written_as_the_whole_file(
    make_repo, scripted_openai, form: str
) -> None:
    events = await _green_from(make_repo, scripted_openai, WHOLE_FILE_FORMS[form])
    [call] = of_type(events, ev.ToolCall)
    assert call.name == "write_file"
    assert json.loads(call.arguments) == {"path": "calc.py", "content": FIXED}
    [result] = of_type(events, ev.ToolResult)
    assert result.ok
    # The developer hears once that the model writes its edits as text.
    infos = [n.message for n in of_type(events, ev.Notice) if "as text" in n.message]
    assert len(infos) == 1 and "--edit-format" in infos[0]


@pytest.mark.parametrize("form", OTHER_FORMS, ids=list(OTHER_FORMS))
async def test_other_text_edit_forms_go_green(make_repo, scripted_openai, form: str) -> None:
    events = await _green_from(make_repo, scripted_openai, OTHER_FORMS[form])
    assert all(r.ok for r in of_type(events, ev.ToolResult))
    assert of_type(events, ev.ToolCall)


async def test_a_text_edit_of_the_exam_is_refused_like_a_tool_call(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    weak = f"{FENCE}python\n# tests/test_calc.py\ndef test_add():\n    pass\n{FENCE}\n"
    scripted_openai.add(Reply(text=weak), Reply(text="Fine."))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "failed"
    [refusal] = of_type(events, ev.ToolResult)
    assert refusal.refused and "protected" in refusal.summary
    assert run_git(repo, "show", f"{result.branch}:tests/test_calc.py") == TEST_CALC
    # Nothing applied: the turn goes on, and the model is told what was refused and how to act.
    assert len(scripted_openai.requests) == 2
    told = user_texts(scripted_openai.requests[1])
    assert "tests/test_calc.py" in told and "protected" in told
    assert '"name": "edit_file"' in told


async def test_a_bare_function_of_the_exam_is_refused_too(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    weak = f"{FENCE}python\ndef test_add():\n    pass\n{FENCE}\n"
    scripted_openai.add(Reply(text=weak), Reply(text="Fine."))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "failed"
    assert [r.refused for r in of_type(events, ev.ToolResult)] == [True]
    assert run_git(repo, "show", f"{result.branch}:tests/test_calc.py") == TEST_CALC


async def test_a_near_miss_old_text_applies_with_a_note(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    flat = edit("calc.py", "def add(a, b):\nreturn a - b", "def add(a, b):\nreturn a + b")
    scripted_openai.add(Reply(tool_calls=[flat]), Reply(text="Done."))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed"
    assert run_git(repo, "show", f"{result.branch}:calc.py") == FIXED
    [outcome] = of_type(events, ev.ToolResult)
    assert outcome.ok and "indentation" in outcome.summary
    [message] = [m for m in scripted_openai.requests[1]["messages"] if m["role"] == "tool"]
    assert "indentation" in message["content"]


async def test_an_answer_that_changes_nothing_twice_produces_the_notice(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text="The code looks right to me."), Reply(text="Still right."))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=2))
    assert result.status == "failed"
    notices = [n for n in of_type(events, ev.Notice) if n.level == "warning"]
    assert len([n for n in notices if "changed nothing" in n.message]) == 1
    # After the first, the model is asked for the whole file the exam imports; after the
    # second, it hears with the next failure that its answer was not applied, and how to act.
    assert "write the whole new calc.py" in user_texts(scripted_openai.requests[1])
    told = user_texts(scripted_openai.requests[2])
    assert "no tool call" in told and '"name": "edit_file"' in told
    assert '"path": "calc.py"' in told  # the example names a real file of the project


async def test_the_same_answer_three_times_ends_the_turn(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    unparsable = "<tool_call>\n{'name': edit_file, path: calc.py}\n</tool_call>"
    scripted_openai.add(*[Reply(text=unparsable) for _ in range(3)], Reply(text="unused"))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "failed"
    # Three requests, then the tests ran: the fourth reply was never asked for.
    assert len(scripted_openai.requests) == 3
    kinds = [type(e) for e in events if isinstance(e, ev.ModelTurnStarted | ev.TestFinished)]
    assert kinds == [ev.TestFinished, *[ev.ModelTurnStarted] * 3, ev.TestFinished]
    assert any("three times" in n.message for n in of_type(events, ev.Notice))


async def test_the_same_failing_call_three_times_ends_the_turn(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    wrong = edit("calc.py", "a * b", "a + b")
    scripted_openai.add(*[Reply(tool_calls=[wrong]) for _ in range(3)], Reply(text="unused"))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "failed"
    assert len(scripted_openai.requests) == 3
    assert len(of_type(events, ev.TestFinished)) == 2
    assert len([n for n in of_type(events, ev.Notice) if "changed nothing" in n.message]) == 2


async def test_edit_format_tools_ignores_text_edits(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text=WHOLE_FILE_FORMS["first-line comment"]))
    config = make_config(repo, scripted_openai.base_url, max_iterations=1, edit_format="tools")
    result, events = await run_loop(config)
    assert result.status == "failed"
    assert of_type(events, ev.ToolCall) == []
    assert run_git(repo, "show", f"{result.branch}:calc.py") == KATA["calc.py"]


async def test_edit_format_tools_ignores_text_calls(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    call = {"name": "edit_file", "arguments": {"path": "calc.py", "old_text": "-", "new_text": "+"}}
    scripted_openai.add(Reply(text=json.dumps(call)))
    config = make_config(repo, scripted_openai.base_url, max_iterations=1, edit_format="tools")
    result, events = await run_loop(config)
    assert result.status == "failed" and of_type(events, ev.ToolCall) == []


async def test_edit_format_text_runs_no_native_call(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text=WHOLE_FILE_FORMS["info string"]),
    )
    config = make_config(repo, scripted_openai.base_url, max_iterations=1, edit_format="text")
    result, events = await run_loop(config)
    assert result.status == "passed"
    results = of_type(events, ev.ToolResult)
    assert [(r.name, r.ok) for r in results] == [("edit_file", False), ("write_file", True)]
    [native] = [m for m in scripted_openai.requests[1]["messages"] if m["role"] == "tool"]
    assert "--edit-format text" in native["content"]
    # No tool is sent (a server would render their schemas and invite native calls): the
    # system prompt lists them and shows how to write a call as text.
    first = scripted_openai.requests[0]
    assert "tools" not in first and "tool_choice" not in first
    system = first["messages"][0]["content"]
    assert "writing tool calls as text" in system
    assert "edit_file{path, old_text, new_text}" in system and "list_files{path?}" in system


async def test_the_tools_are_sent_in_auto(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="ok"))
    await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    first = scripted_openai.requests[0]
    assert len(first["tools"]) == 6 and first["tool_choice"] == "auto"
    assert "writing tool calls as text" not in first["messages"][0]["content"]


async def test_native_tool_calls_stay_first_in_auto(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    wrong = f"{FENCE}python\n# calc.py\ndef add(a, b):\n    return a * b\n{FENCE}\n"
    scripted_openai.add(
        Reply(text=wrong, tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Done.")
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed"
    assert [c.name for c in of_type(events, ev.ToolCall)] == ["edit_file"]
    assert run_git(repo, "show", f"{result.branch}:calc.py") == FIXED


async def test_a_summary_after_native_edits_is_not_applied_again(
    make_repo, scripted_openai
) -> None:
    """A model that uses the tools and then shows what it did in a diff is done, not editing."""
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text=OTHER_FORMS["unified diff"]),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed"
    assert len(of_type(events, ev.ToolCall)) == 1 and len(scripted_openai.requests) == 2


# -- units: what is read from a text, and edit_file's near matches ---------------------------


def test_find_edits_ignores_shell_blocks_and_unclosed_fences() -> None:
    def never(_rel: str) -> bool:
        return True

    text = f"Run `python calc.py`:\n{FENCE}bash\npython calc.py\n{FENCE}\n"
    assert find_edits(text, never) == []
    cut = f"{FENCE}python\n# calc.py\ndef add(a, b):\n"  # the answer was cut off
    assert find_edits(cut, never) == []


@pytest.fixture
def tools(make_repo) -> Tools:
    files = {
        **KATA,
        "greet.py": 'def greet(name):\n    return "hello " + name   \n',
        "twice.py": "p = 'a'\nq = 'a'\n",
    }
    repo = make_repo(files)

    async def run_command(command: str) -> RunResult:
        raise AssertionError(command)

    return Tools(repo, Exam(repo, "HEAD", ("tests/test_calc.py",)), run_command)


async def _edit(tools: Tools, path: str, old: str, new: str) -> Any:
    return await tools.execute(
        "edit_file", json.dumps({"path": path, "old_text": old, "new_text": new})
    )


async def test_edit_file_forgives_quote_style(tools: Tools) -> None:
    outcome = await _edit(tools, "greet.py", "return 'hello ' + name", "return 'hi ' + name")
    assert outcome.ok and "quote" in outcome.content
    assert (tools.root / "greet.py").read_text().splitlines()[1] == "    return 'hi ' + name   "


async def test_edit_file_forgives_trailing_spaces(tools: Tools) -> None:
    old = 'def greet(name):\n    return "hello " + name\n'
    outcome = await _edit(tools, "greet.py", old, 'def greet(name):\n    return "hi " + name\n')
    assert outcome.ok and "trailing" in outcome.content
    assert (tools.root / "greet.py").read_text() == 'def greet(name):\n    return "hi " + name\n'


async def test_edit_file_refuses_a_near_match_that_is_not_unique(tools: Tools) -> None:
    outcome = await _edit(tools, "twice.py", '= "a"', '= "b"')
    assert not outcome.ok and "2 times" in outcome.content
    assert (tools.root / "twice.py").read_text() == "p = 'a'\nq = 'a'\n"


async def test_edit_file_near_match_is_still_guarded(tools: Tools) -> None:
    flat = "def test_add():\nassert add(2, 3) == 5"
    outcome = await _edit(tools, "tests/test_calc.py", flat, "def test_add():\nassert True")
    assert outcome.refused
    assert (tools.root / "tests/test_calc.py").read_text() == TEST_CALC


class FakeProject:
    """The project as textedits sees it, in memory."""

    def __init__(self, files: dict[str, str], protected: tuple[str, ...] = ()) -> None:
        self.files = files
        self.protected_paths = protected

    def read_text(self, raw: str) -> str | None:
        return self.files.get(raw)

    def exists(self, raw: str) -> bool:
        return raw in self.files

    def protected(self, rel: str) -> bool:
        return rel in self.protected_paths

    def python_files(self, limit: int = 2_000) -> list[str]:
        return sorted(rel for rel in self.files if rel.endswith(".py"))[:limit]


SHAPES = (
    "import math\n\n\nclass Circle:\n    def __init__(self, r):\n        self.r = r\n\n"
    "    def area(self):\n        return self.r\n\n    def name(self):\n        return 'circle'\n"
    "\n\ndef unit():\n    return Circle(1)\n"
)
TEST_SHAPES = "from shapes import Circle, unit, perimeter\n\n\ndef test_area():\n    assert 1\n"


def _plan(text: str, files: dict[str, str] | None = None) -> list[Any]:
    project = FakeProject(
        files or {"shapes.py": SHAPES, "tests/test_shapes.py": TEST_SHAPES},
        protected=("tests/test_shapes.py",),
    )
    return read_edits(text, project)


def _content(planned: list[Any]) -> str:
    [edit] = planned
    assert edit.tool == "write_file", edit
    return str(edit.arguments["content"])


def test_a_labelled_excerpt_of_a_python_file_keeps_the_rest() -> None:
    text = f"{FENCE}python\n# shapes.py\ndef unit():\n    return Circle(2)\n{FENCE}"
    content = _content(_plan(text))
    assert "return Circle(2)" in content and "def area(self):" in content
    assert content.count("def unit") == 1


def test_a_bare_method_replaces_it_in_its_class() -> None:
    text = f"{FENCE}python\n    def area(self):\n        return math.pi * self.r ** 2\n{FENCE}"
    content = _content(_plan(text))
    assert "    def area(self):\n        return math.pi * self.r ** 2\n" in content
    assert "return self.r\n" not in content and "def name(self)" in content
    compile(content, "shapes.py", "exec")


def test_a_class_excerpt_adds_its_new_method_and_keeps_the_others() -> None:
    text = (
        f"{FENCE}python\nclass Circle:\n    def perimeter(self):\n"
        f"        return 2 * math.pi * self.r\n{FENCE}"
    )
    content = _content(_plan(text))
    assert "def perimeter(self)" in content and "def area(self)" in content
    assert content.index("def perimeter") < content.index("def unit")
    compile(content, "shapes.py", "exec")


def test_a_new_function_goes_to_the_module_the_exam_imports_it_from() -> None:
    text = f"{FENCE}python\nimport os\n\ndef perimeter(c):\n    return 2 * c.r\n{FENCE}"
    content = _content(_plan(text))
    assert content.rstrip().endswith("def perimeter(c):\n    return 2 * c.r")
    assert content.startswith("import math\nimport os\n")


def test_a_new_method_goes_into_the_one_class_the_exam_imports() -> None:
    """Seen with Qwen2.5-Coder-1.5B on the stack kata: its first answer was a bare
    ``def peek(self)`` block, which no file defines; it belongs in ``Stack``."""
    stack = "class Stack:\n    def __init__(self):\n        self.items = []\n\n\nLIMIT = 3\n"
    project = FakeProject(
        {"stack.py": stack, "tests/test_stack.py": "from stack import Stack, LIMIT\n"},
        protected=("tests/test_stack.py",),
    )
    text = f"{FENCE}python\ndef peek(self):\n    return self.items[-1]\n{FENCE}"
    [edit] = read_edits(text, project)
    assert edit.tool == "write_file" and "class Stack" in edit.what, edit
    content = str(edit.arguments["content"])
    assert "        self.items = []\n\n    def peek(self):\n        return self.items[-1]\n" in (
        content
    )
    compile(content, "stack.py", "exec")
    # Two classes imported: which one is not guessed.
    project.files["stack.py"] = stack + "\n\nclass Queue:\n    pass\n"
    project.files["tests/test_stack.py"] = "from stack import Stack, Queue\n"
    [edit] = read_edits(text, project)
    assert not edit.tool and "no project file defines peek" in edit.problem


def test_a_new_function_nobody_imports_is_not_guessed() -> None:
    [edit] = _plan(f"{FENCE}python\ndef helper():\n    return 1\n{FENCE}")
    assert not edit.tool and "no project file defines helper" in edit.problem


def test_search_replace_without_fences_and_with_the_path_carried_over() -> None:
    text = (
        "shapes.py\n<<<<<<< SEARCH\n        return self.r\n=======\n        return self.r ** 2\n"
        ">>>>>>> REPLACE\n\n<<<<<<< SEARCH\n        return 'circle'\n=======\n"
        "        return 'round'\n>>>>>>> REPLACE\n"
    )
    planned = _plan(text)
    assert [(p.tool, p.arguments["path"]) for p in planned] == [("edit_file", "shapes.py")] * 2
    assert planned[1].arguments["new_text"] == "        return 'round'"


def test_a_bare_diff_and_a_new_file() -> None:
    text = (
        "--- a/shapes.py\n+++ b/shapes.py\n@@ -8,2 +8,2 @@\n     def area(self):\n"
        "-        return self.r\n+        return self.r ** 2\n\nThat is all.\n"
        "--- /dev/null\n+++ b/util.py\n@@ -0,0 +1,2 @@\n+def double(x):\n+    return 2 * x\n"
    )
    first, second = _plan(text)
    assert first.tool == "edit_file"
    assert first.arguments["old_text"] == "    def area(self):\n        return self.r"
    assert second.arguments == {"path": "util.py", "content": "def double(x):\n    return 2 * x\n"}


def test_what_a_block_cannot_be() -> None:
    excerpt = f"{FENCE}python\n# shapes.py\nimport math\n# ... rest of the file ...\n{FENCE}"
    [edit] = _plan(excerpt)
    assert "excerpt" in edit.problem
    broken = f"{FENCE}python\n# shapes.py\ndef unit(:\n{FENCE}"
    [edit] = _plan(broken)
    assert "not valid Python" in edit.problem
    same = f"{FENCE}python\n# shapes.py\n{SHAPES}{FENCE}"
    [edit] = _plan(same)
    assert "already holds" in edit.problem
    # A sentence naming two files labels nothing; one naming the protected test is no label
    # either: the block's definition goes where it is defined.
    two = f"See shapes.py and tests/test_shapes.py:\n{FENCE}python\nx = 1\n{FENCE}"
    assert _plan(two) == []
    weak = (
        f"The test in tests/test_shapes.py needs this:\n{FENCE}python\ndef unit():\n"
        f"    return Circle(3)\n{FENCE}"
    )
    [edit] = _plan(weak)
    assert edit.arguments["path"] == "shapes.py"


async def test_a_broken_call_beside_a_labelled_block_applies_the_block(
    make_repo, scripted_openai
) -> None:
    text = "<tool_call>{'name': write_file}</tool_call>\n" + WHOLE_FILE_FORMS["info string"]
    events = await _green_from(make_repo, scripted_openai, text)
    assert [c.name for c in of_type(events, ev.ToolCall)] == ["write_file"]


def test_a_whole_file_block_that_drops_a_method_keeps_it() -> None:
    """The 1.5B model rewrote stack.py with its new ``peek`` and without ``__len__``, which
    the exam uses: the class is merged, the method it left out stays."""
    stack = (
        '"""A stack."""\n\n\nclass Stack:\n    def __init__(self):\n        self._items = []\n\n'
        "    def push(self, item):\n        self._items.append(item)\n\n"
        "    def __len__(self):\n        return len(self._items)\n"
    )
    rewritten = (
        '"""A stack."""\n\nclass Stack:\n    def __init__(self):\n        self._items = []\n\n'
        "    def push(self, item):\n        self._items.append(item)\n\n"
        "    def peek(self):\n        return self._items[-1]\n"
    )
    project = FakeProject({"stack.py": stack})
    content = _content(read_edits(f"{FENCE}python\n# stack.py\n{rewritten}{FENCE}", project))
    assert "def peek(self)" in content and "def __len__(self)" in content
    compile(content, "stack.py", "exec")
    # Written as a text write_file, the same.
    merged = excerpt_write("stack.py", rewritten, project)
    assert merged is not None and "def __len__(self)" in merged.arguments["content"]
    # A block that keeps every method is the whole file, as written.
    whole = rewritten.replace(
        "    def peek", "    def __len__(self):\n        return 0\n\n    def peek"
    )
    assert _content(read_edits(f"{FENCE}python\n# stack.py\n{whole}{FENCE}", project)) == whole


# -- replacements said in a sentence; a module importing from itself (session 10's traces) ----

PROSE_FIX = (
    "The operator is wrong: `add` subtracts. You can fix it by replacing `return a - b` with "
    "`return a + b`."
)


async def test_a_replacement_said_in_a_sentence_is_applied(make_repo, scripted_openai) -> None:
    # Qwen2.5-Coder-1.5B on the off-by-one kata: the right fix, in prose, no block.
    events = await _green_from(make_repo, scripted_openai, PROSE_FIX)
    [call] = of_type(events, ev.ToolCall)
    assert call.name == "edit_file"
    assert json.loads(call.arguments) == {
        "path": "calc.py",
        "old_text": "return a - b",
        "new_text": "return a + b",
    }


@pytest.mark.parametrize(
    "sentence",
    [
        "Change `a - b` to `a + b`.",
        "The line `return a - b` should be `return a + b`.",
        "It must go from `a - b` to `a + b`.",
    ],
)
def test_the_forms_of_a_replacement_in_prose(sentence: str) -> None:
    [stated] = find_edits(sentence, lambda _path: False)
    assert stated.form == "prose"
    assert stated.old.endswith("a - b") and stated.new.endswith("a + b")


def test_prose_that_quotes_values_or_names_no_code_is_no_edit(tools: Tools) -> None:
    # Values are not code; a text found twice is no one place, nor one found nowhere; a
    # block wins over prose.
    assert find_edits("The result `2` should be `3`.", tools.exists) == []
    assert read_edits("Replace `'a'` with `'b'`.", tools) == []
    assert read_edits("Replace `nowhere()` with `somewhere()`.", tools) == []
    assert read_edits("Replace `eturn a - b` with `x`.", tools) == []  # not at a word's edge
    block = f"Replace `return a - b` with `x`:\n{FENCE}python\n# calc.py\n{FIXED}{FENCE}\n"
    [planned] = read_edits(block, tools)
    assert planned.tool == "write_file"


SELF_IMPORTING = f"{FENCE}python\n# calc.py\nfrom calc import add\n\n{FIXED}{FENCE}\n"


async def test_a_block_that_imports_from_its_own_module_loses_that_line(
    make_repo, scripted_openai
) -> None:
    # The 1.5B model copied the test's import line into the module, iteration after
    # iteration: the module could never load, whatever the fix below it.
    events = await _green_from(make_repo, scripted_openai, SELF_IMPORTING)
    [result] = of_type(events, ev.ToolResult)
    assert result.ok


async def test_a_text_write_that_imports_from_its_own_module_loses_that_line(
    make_repo, scripted_openai
) -> None:
    wrong = "from calc import add\n\ndef add(a, b):\n    return a * b\n"
    call = {"name": "write_file", "arguments": {"path": "calc.py", "content": wrong}}
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text=json.dumps(call)))
    scripted_openai.add(Reply(text=OTHER_FORMS["search/replace"].replace("a - b", "a * b")))
    config = make_config(repo, scripted_openai.base_url, max_iterations=2)
    result, _events = await run_loop(config)
    assert result.status == "passed"
    assert run_git(repo, "show", f"{result.branch}:calc.py") == FIXED
    # A model acting through text starts its next iteration afresh: it reads the module as
    # it is now, without the line, and the failure its own code caused.
    said = user_texts(scripted_openai.requests[1])
    assert "--- calc.py ---\ndef add(a, b):\n    return a * b" in said
    assert "assert 6 == 5" in said


def test_only_names_the_module_defines_are_dropped() -> None:
    from codexloop.core.textedits import without_self_imports

    kept, dropped = without_self_imports("calc.py", "from calc import add\n" + FIXED)
    assert (kept, dropped) == (FIXED, ["from calc import add"])
    # A package's __init__ importing its submodule, an alias, a name from elsewhere: stay.
    for rel, source in [
        ("pkg/__init__.py", "from pkg import sub\n"),
        ("calc.py", "from calc import add as plus\n" + FIXED),
        ("calc.py", "from calc import mul\n" + FIXED),
        ("calc.py", "from calculus import add\n" + FIXED),
    ]:
        assert without_self_imports(rel, source) == (source, [])


async def test_a_block_that_goes_on_with_the_test_file_is_split_at_its_path(
    make_repo, scripted_openai
) -> None:
    # The 1.5B model wrote its fixed module and, after "# tests/test_pages.py", the test
    # itself in one block: the test went into the module.
    text = (
        f"{FENCE}python\n# calc.py\n{FIXED}\n# tests/test_calc.py\n"
        f"from calc import add\n\ndef test_add():\n    assert add(2, 3) == 6\n{FENCE}\n"
    )
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text=text))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed"
    assert run_git(repo, "show", f"{result.branch}:calc.py") == FIXED
    assert run_git(repo, "show", f"{result.branch}:tests/test_calc.py") == TEST_CALC
    refused = [r for r in of_type(events, ev.ToolResult) if r.refused]
    assert len(refused) == 1 and "tests/test_calc.py" in refused[0].summary


def test_a_block_that_only_changes_blank_lines_changes_nothing(tools: Tools) -> None:
    # The 1.5B model wrote its unchanged module back with a blank line more: the tests ran
    # again for nothing, and it counted as progress. (A comment is a change: tests and
    # linters read them.)
    relaid = f"{FENCE}python\n# calc.py\n\ndef add(a, b):\n\n    return a - b   \n{FENCE}\n"
    [planned] = read_edits(relaid, tools)
    assert planned.tool == "" and "only blank lines or trailing spaces" in planned.problem
    changed = relaid.replace("a - b", "a + b")
    [planned] = read_edits(changed, tools)
    assert planned.tool == "write_file"


def test_a_path_comment_followed_by_prose_or_a_missing_file_is_no_file(tools: Tools) -> None:
    assert find_edits("# calc.py\nThe operator is wrong there.\n", tools.exists) == []
    assert find_edits(f"# nowhere.py\n{FIXED}", tools.exists) == []


# -- a "whole file" that holds none of the file's code (session 11's trace) --------------------


async def test_a_block_with_none_of_the_files_code_is_not_written(
    make_repo, scripted_openai
) -> None:
    """Qwen2.5-Coder-1.5B on the price kata wrote `# money.py` then only the module's docstring,
    six iterations in a row: written as the whole file it deleted ``format_price``, the exam
    stopped collecting, the file was put back, and the model wrote the same again. A block
    that defines nothing, for a file that defines something, is not the whole file."""
    repo = make_repo({**KATA, "calc.py": '"""Sums."""\n\n\ndef add(a, b):\n    return a - b\n'})
    docstring_only = f'The fix:\n\n{FENCE}python\n# calc.py\n"""Sums."""\n{FENCE}\n'
    fixed = f'{FENCE}python\n# calc.py\n"""Sums."""\n\n\n{FIXED}{FENCE}\n'
    scripted_openai.add(Reply(text=docstring_only), Reply(text=fixed))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed"
    # The first block was never written: one write (the fix), the baseline and one test run.
    assert [c.name for c in of_type(events, ev.ToolCall)] == ["write_file"]
    assert len(of_type(events, ev.TestFinished)) == 2
    told = user_texts(scripted_openai.requests[1])
    assert "add" in told and "not the whole file" in told


async def test_a_text_written_write_file_with_none_of_the_files_code_is_not_run(
    make_repo, scripted_openai
) -> None:
    """The same answer as a JSON ``write_file`` written as text (another route to the same
    loss): the docstring alone is not written over ``add``, the model is told what it would
    delete; a constant alone is merged into the file."""
    import json

    repo = make_repo({**KATA, "calc.py": '"""Sums."""\n\n\ndef add(a, b):\n    return a - b\n'})

    def call(content: str) -> str:
        return json.dumps(
            {"name": "write_file", "arguments": {"path": "calc.py", "content": content}}
        )

    scripted_openai.add(
        Reply(text=call('"""Sums."""\n')),
        Reply(text=call('"""Sums."""\n\n\n' + FIXED)),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status == "passed"
    results = of_type(events, ev.ToolResult)
    assert [r.ok for r in results] == [False, True]
    assert "none of calc.py's functions or classes (add)" in results[0].summary
    assert len(of_type(events, ev.TestFinished)) == 2  # nothing ran on the deleted function
    assert "not the whole file" in user_texts(scripted_openai.requests[1])


def test_a_text_written_constant_alone_is_merged(tools: Tools) -> None:
    from codexloop.core.textcalls import TextCall, _as_excerpt

    arguments = json.dumps({"path": "calc.py", "content": "RATE = 2\n"})
    arguments, _note, problem = _as_excerpt(TextCall("write_file", arguments, "bare"), tools)
    content = json.loads(arguments)["content"]
    assert problem == ""
    assert "RATE = 2" in content and "def add(a, b)" in content


def test_a_block_with_no_definitions_keeps_the_files_code(tools: Tools) -> None:
    # Neighbours: a constant alone merges in (the file keeps its functions); an import alone,
    # a comment alone, a docstring alone are refused with the names they would delete.
    [planned] = read_edits(f"{FENCE}python\n# calc.py\nRATE = 2\n{FENCE}\n", tools)
    assert planned.tool == "write_file"
    assert "def add(a, b)" in planned.arguments["content"]
    assert "RATE = 2" in planned.arguments["content"]
    for body in ("import math\n", "# the sums\n", '"""Sums."""\n', "pass\n"):
        [planned] = read_edits(f"{FENCE}python\n# calc.py\n{body}{FENCE}\n", tools)
        assert planned.tool == "" and "add" in planned.problem, body
    # A file that defines no function or class is written whole from such a block.
    [planned] = read_edits(f"{FENCE}python\n# twice.py\np = 'b'\n{FENCE}\n", tools)
    assert planned.tool == "write_file" and planned.arguments["content"] == "p = 'b'\n"


def test_a_labelled_function_alone_keeps_the_modules_header() -> None:
    """`Change format_price in money.py to:` and the function alone: written whole, the
    1.5B model's answer lost the module's docstring; in a module with imports and constants it
    would lose those too. The function is replaced, the rest kept."""
    money = (
        '"""Prices."""\nimport math\n\nRATE = 100\n\n\ndef format_price(cents):\n'
        "    return f'{cents / RATE}'\n"
    )
    project = FakeProject({"money.py": money})
    fixed = "def format_price(cents):\n    return f'{math.floor(cents) / RATE:.2f}'\n"
    answer = f"Change `format_price` in `money.py` to:\n{FENCE}python\n{fixed}{FENCE}\n"
    content = _content(read_edits(answer, project))
    assert content == money.replace("    return f'{cents / RATE}'\n", fixed.split("\n", 1)[1])
    # The whole module given again, header and all, is written as given.
    whole = money.replace("RATE = 100", "RATE = 1000")
    answer = f"{FENCE}python\n# money.py\n{whole}{FENCE}\n"
    assert _content(read_edits(answer, project)) == whole
