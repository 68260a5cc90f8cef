"""What a small model reads: the gap the exam imports, the ask last in every red message, and
answers that changed nothing kept out of what it reads next (Qwen2.5-Coder-1.5B copied its own
failed answers word for word, iteration after iteration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import run_git
from loophelpers import KATA, edit, make_config, of_type, run_loop, user_texts
from scripted_openai import Reply

from codexloop.core.briefing import imported_modules
from codexloop.core.textcalls import echoes

pytestmark = pytest.mark.anyio

FENCE = "```"
TEXTUTIL = '"""Small text helpers."""\n\n\ndef shout(text):\n    return text.upper() + "!"\n'
TEST_SLUG = (
    "from textutil import slugify, shout\n\n\ndef test_slugify():\n"
    '    assert slugify("Hello World") == "hello-world"\n'
)
SLUGIFY = 'def slugify(text):\n    return "-".join(text.lower().split())\n'


def write(root: Path, files: dict[str, str]) -> list[str]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return sorted(files)


def test_a_name_the_exam_imports_and_the_module_lacks_is_a_gap(tmp_path: Path) -> None:
    files = write(
        tmp_path,
        {
            "textutil.py": TEXTUTIL,
            "pkg/__init__.py": "from .impl import *\n",
            "pkg/impl.py": "def a():\n    pass\n",
            "pkg/sub.py": "",
            "lazy.py": "def __getattr__(name):\n    return name\n",
            "guarded.py": "try:\n    from json import loads as fast\nexcept ImportError:\n"
            "    fast = None\nif True:\n    LIMIT = 3\nclass Shop:\n    pass\n",
            "tests/test_x.py": "from textutil import slugify, shout\nfrom pkg import b, sub\n"
            "from lazy import anything\nfrom guarded import fast, LIMIT, Shop, missing\n",
        },
    )
    found = imported_modules(tmp_path, ["tests/test_x.py"], files, ["", "tests"])
    # Not a gap: a star import, a module __getattr__, a submodule, names bound in if/try.
    assert found.undefined == (("slugify", "textutil.py"), ("missing", "guarded.py"))


async def test_the_first_message_names_the_gap_and_ends_with_what_to_do(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({"textutil.py": TEXTUTIL, "tests/test_textutil.py": TEST_SLUG})
    fix = edit(
        "textutil.py", 'return text.upper() + "!"\n', 'return text.upper() + "!"\n\n\n' + SLUGIFY
    )
    scripted_openai.add(Reply(tool_calls=[fix]), Reply(text="Added slugify."))
    config = make_config(repo, scripted_openai.base_url, "tests/test_textutil.py::test_slugify")
    result, _events = await run_loop(config)
    assert result.status == "passed"
    first = scripted_openai.requests[0]["messages"][1]["content"]
    # The failure without the standard library's frames and pytest's hint on module names.
    assert "E   ImportError: cannot import name 'slugify' from 'textutil'" in first
    assert "tests/test_textutil.py:1: in <module>" in first
    assert "importlib" not in first and "valid Python names" not in first
    tail = first.rstrip().splitlines()[-2:]
    assert tail == [
        "The tests import slugify from textutil.py, which does not define it yet.",
        "Change textutil.py so that the tests pass (the tests are right and cannot be changed). "
        "Say in one sentence what is wrong, then make the change.",
    ]


async def test_a_red_run_ends_with_what_to_do(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="Done."),
        Reply(tool_calls=[edit("calc.py", "a * b", "a + b")]),
        Reply(text="Done."),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed" and result.iterations == 2
    red = scripted_openai.requests[2]["messages"][-1]["content"]
    assert "assert 6 == 5" in red
    assert red.rstrip().endswith(
        "Change calc.py so that the tests pass (the tests are right and cannot be changed). "
        "Say in one sentence what is wrong, then make the change."
    )


async def test_an_answer_that_changed_nothing_is_not_shown_back(make_repo, scripted_openai) -> None:
    """Two text edits of the protected test, refused: the model reads the notes, not them."""
    repo = make_repo(KATA)
    hack = f"{FENCE}python\n# tests/test_calc.py\ndef test_add():\n    assert True\n{FENCE}\n"
    hack2 = hack.replace("assert True", "pass")
    scripted_openai.add(
        Reply(text=hack),
        Reply(text=hack2),
        Reply(text=f"{FENCE}python\n# calc.py\ndef add(a, b):\n    return a + b\n{FENCE}\n"),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed" and result.iterations == 1
    second, third = scripted_openai.requests[1], scripted_openai.requests[2]
    for request in (second, third):
        assistant = [m for m in request["messages"] if m["role"] == "assistant"]
        assert assistant == []  # neither refused answer is in the conversation
    assert "refused" in user_texts(second) and "protected" in user_texts(second)
    # One note stands for the idle answers: the latest.
    notes = [m for m in third["messages"] if "Nothing in the project changed" in str(m["content"])]
    assert len(notes) == 1


async def test_a_first_answer_that_only_says_what_is_wrong_is_asked_for_the_file(
    make_repo, scripted_openai
) -> None:
    # Qwen2.5-Coder-1.5B, told to make the change and shown how to call the tools, answered
    # "I will provide the necessary code" and stopped, every iteration of a run: it is asked
    # for one concrete thing, the whole file the exam imports, in the form the engine applies.
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(text="The operator in add is wrong: it subtracts."),
        Reply(text="```python\n# calc.py\ndef add(a, b):\n    return a + b\n```\n"),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed" and result.iterations == 1  # no test run in between
    second = scripted_openai.requests[1]["messages"]
    assert {"role": "assistant", "content": "The operator in add is wrong: it subtracts."} in [
        {k: m.get(k) for k in ("role", "content")} for m in second
    ]
    asked = second[-1]["content"]
    assert "write the whole new calc.py in one fenced code block" in asked
    assert "# calc.py" in asked and "edit_file" not in asked


async def test_with_tools_only_a_first_answer_that_only_talks_is_asked_to_call_them(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(text="The operator in add is wrong: it subtracts."),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
    )
    config = make_config(repo, scripted_openai.base_url, edit_format="tools")
    result, _events = await run_loop(config)
    assert result.status == "passed" and result.iterations == 1
    asked = scripted_openai.requests[1]["messages"][-1]["content"]
    assert "Make the change now." in asked and "edit_file" in asked


async def test_an_answer_that_repeats_the_engines_message_is_not_shown_back(
    make_repo, scripted_openai
) -> None:
    """Qwen2.5-Coder-1.5B wrote the red message out again ("The code as it is now...") in
    place of an answer, twice in a row: such an answer is taken out and the model told."""

    def echo(request: dict[str, Any]) -> Reply:
        last = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
        return Reply(text=last)

    repo = make_repo(KATA)
    scripted_openai.add(
        echo,
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed" and result.iterations == 1
    second = scripted_openai.requests[1]["messages"]
    assert [m for m in second if m["role"] == "assistant"] == []  # the echo is gone
    assert second[-1]["content"].startswith("Your answer repeated the engine's message")
    assert not echoes("The operator is wrong.", str(second[1]["content"]))


async def test_a_model_acting_through_text_starts_each_iteration_afresh(
    make_repo, scripted_openai
) -> None:
    """It reads the first message and the red run's, which shows the file as its change left
    it; a model using native calls keeps the whole conversation (the red run above)."""
    repo = make_repo(KATA)
    block = f"{FENCE}python\n# calc.py\ndef add(a, b):\n    return a * b\n{FENCE}\n"
    scripted_openai.add(
        Reply(text=block),
        Reply(text=block.replace("a * b", "a + b")),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed" and result.iterations == 2
    messages = scripted_openai.requests[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "user"]
    red = messages[-1]["content"]
    assert red.startswith(
        "The code as it is now, with your changes so far (the tests below ran on it):\n"
        "--- calc.py ---\ndef add(a, b):\n    return a * b\n"
    )
    assert "assert 6 == 5" in red


async def test_the_how_to_example_copied_as_it_is_is_not_run(make_repo, scripted_openai) -> None:
    """Qwen2.5-Coder-1.5B echoed the engine's message, example call and all."""
    import json

    from codexloop.core import events as ev
    from codexloop.core.prompts import example_call

    repo = make_repo(KATA)
    _arguments, call = example_call("calc.py")
    fixed = json.dumps({"name": "edit_file", "arguments": {**json.loads(_arguments), **FIX}})
    scripted_openai.add(Reply(text=f"To change a file:\n{call}"), Reply(text=fixed))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed" and result.iterations == 1
    assert [json.loads(c.arguments)["old_text"] for c in events if isinstance(c, ev.ToolCall)] == [
        "a - b"
    ]
    assert "it is the example from the instructions" in user_texts(scripted_openai.requests[1])


FIX = {"old_text": "a - b", "new_text": "a + b"}


GEOMETRY = (
    "def rectangle_area(width, height):\n    return width + height\n\n\n"
    "def square_area(side):\n    return rectangle_area(side, side)\n"
)
TEST_GEOMETRY = (
    "from geometry import rectangle_area, square_area\n\n\ndef test_rectangle_area():\n"
    "    assert rectangle_area(2, 3) == 6\n    assert square_area(3) == 9\n"
)


async def test_a_text_write_of_one_function_is_merged_into_the_module(
    make_repo, scripted_openai
) -> None:
    """The eval's wrong-operator kata: the right fix written as the whole file's content,
    without square_area, which the exam imports: merged, it is green at once (written as it
    was, the import failed and the fix was undone as a setback)."""
    import json

    repo = make_repo({"geometry.py": GEOMETRY, "tests/test_geometry.py": TEST_GEOMETRY})
    content = "def rectangle_area(width, height):\n    return width * height\n"
    call = {"name": "write_file", "arguments": {"path": "geometry.py", "content": content}}
    scripted_openai.add(Reply(text=json.dumps(call)))
    config = make_config(repo, scripted_openai.base_url, "tests/test_geometry.py")
    result, _events = await run_loop(config)
    assert result.status == "passed" and result.iterations == 1
    fixed = run_git(repo, "show", f"{result.branch}:geometry.py")
    assert "return width * height" in fixed and "def square_area(side):" in fixed


def test_a_repetition_loop_is_told_from_a_long_answer() -> None:
    from codexloop.core.model import Repetition

    def looping(text: str, piece: int = 7) -> bool:
        watch = Repetition()
        return any(watch.add(text[i : i + piece]) for i in range(0, len(text), piece))

    echo = "The code as it is now, with your changes so far (the tests below ran on it):\n"
    block = echo + "--- money.py ---\n" + "".join(f"line {n} of the file\n" for n in range(40))
    assert looping(block * 6)
    assert looping("ok " * 2000)
    distinct = "".join(f"def f{n}(x):\n    return x + {n}\n\n" for n in range(500))
    assert not looping(distinct)
    assert not looping(block * 3)  # a block written three times is no loop yet
    assert not looping(" " * 5000)  # whitespace alone (indentation) is not a loop of text


async def test_an_answer_caught_in_a_repetition_loop_is_cut_and_the_turn_goes_on(
    make_repo, scripted_openai
) -> None:
    from codexloop.core import events as ev
    from codexloop.core.prompts import ANSWER_REPEATED

    repo = make_repo(KATA)
    block = "The code as it is now:\n" + "".join(f"line {n}\n" for n in range(60))
    endless = block * 40
    scripted_openai.add(
        Reply(text=endless, chunk_size=64),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))
    assert result.status == "passed"
    streamed = sum(len(e.text) for e in events if isinstance(e, ev.ModelText))
    assert streamed < len(endless) // 4  # cut after a few repetitions, not at the end
    assert ANSWER_REPEATED in user_texts(scripted_openai.requests[1])


async def test_a_repeated_answer_makes_a_local_server_sample_more_widely(
    make_repo, scripted_openai
) -> None:
    """llama.cpp gave Qwen2.5-Coder-1.5B's answers back word for word over six iterations: the
    same prompt, the same answer. Once an answer that changed nothing comes again, requests
    carry a temperature, until an answer changes something."""
    from codexloop.core import events as ev

    repo = make_repo(KATA)
    talk = "The operator in add is wrong."
    worse = f"calc.py\n{FENCE}python\n<<<<<<< SEARCH\n    return a - b\n=======\n"
    worse += f"    return a * b\n>>>>>>> REPLACE\n{FENCE}\n"
    fixed = worse.replace("a - b", "a * b", 1).replace("return a * b\n>>", "return a + b\n>>")
    scripted_openai.add(Reply(text=talk), Reply(text=talk), Reply(text=worse), Reply(text=fixed))
    config = make_config(repo, scripted_openai.base_url, max_iterations=3)
    result, events = await run_loop(config)
    assert result.status == "passed" and result.iterations == 3
    sent = [request.get("temperature") for request in scripted_openai.requests]
    # The second answer repeated the first: the third request samples wider; the change it
    # brought (wrong, but a change) ends that.
    assert sent == [None, None, 1.0, None]
    told = [n.message for n in of_type(events, ev.Notice) if "sample more widely" in n.message]
    assert len(told) == 1


def test_openais_endpoint_is_never_sent_a_temperature() -> None:
    from codexloop.core.model import AutoModel
    from codexloop.core.turns import Turns

    async def emit(_event: Any) -> None:
        return None

    for base_url, expected in [
        (None, None),
        ("https://api.openai.com/v1", None),
        ("http://127.0.0.1:8080/v1", 1.0),
    ]:
        client: Any = object()  # never asked: only what a request would carry is looked at
        model = AutoModel(client, "m", prefer="chat")
        turns = Turns(
            model, client, model_name="m", base_url=base_url, context_tokens=8000, emit=emit
        )
        turns._sample(True)
        assert model.temperature == expected
