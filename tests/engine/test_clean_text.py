"""What the model reads is plain: no terminal escapes, project-relative paths, the test
command as a developer types it, and the project code the exam imports."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from loophelpers import edit, make_config, run_loop, tool_results
from scripted_openai import Call, Reply

from codexloop.core.briefing import imported_modules, outline
from codexloop.core.conversation import Conversation, relative_paths
from codexloop.core.prompts import plain_command
from codexloop.core.sandbox import state_home

MONEY = 'def money(amount):\n    return "%.1f EUR" % amount\n'
TEST_MONEY = (
    'from shop.money import money\n\n\ndef test_money():\n    assert money(3.5) == "3.50 EUR"\n'
)
SHOP = {"shop/__init__.py": "", "shop/money.py": MONEY, "tests/test_money.py": TEST_MONEY}
TARGET = "tests/test_money.py::test_money"
# A command whose output is coloured and names files by their absolute paths.
NOISY = (
    "python -c \"import shop.money as m; print('\\033[31mred\\033[0m', m.__file__); "
    "import os; print(os.getcwd()); raise SystemExit(open('nope'))\""
)


def body_text(request: dict[str, Any]) -> str:
    """A request body as text, escapes unescaped (JSON writes ESC as \\u001b)."""
    return json.dumps(request, ensure_ascii=False)


def first_message(request: dict[str, Any]) -> str:
    return str(request["messages"][1]["content"])


@pytest.mark.anyio
async def test_no_request_carries_escapes_or_sandbox_paths(make_repo, scripted_openai) -> None:
    repo = make_repo(SHOP)
    scripted_openai.add(
        Reply(tool_calls=[Call("run_command", {"command": NOISY})]),
        Reply(text="I looked around."),  # red: the digest of a coloured assertion diff
        Reply(tool_calls=[edit("shop/money.py", "%.1f", "%.2f")]),
        Reply(text="Done."),
    )
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url, TARGET))
    assert result.status == "passed"
    requests = scripted_openai.requests
    assert len(requests) == 4
    for request in requests:
        text = body_text(request)
        assert "\x1b" not in text and "#x1B" not in text
        assert str(state_home()) not in text  # no worktree, run tree or scratch path
        assert str(result.worktree) not in text
    [noisy] = tool_results(requests[1])
    assert "red shop/money.py" in noisy  # the colours gone, the path relative
    digest = requests[2]["messages"][-1]["content"]
    assert "- 3.50 EUR" in digest and "+ 3.5 EUR" in digest  # the diff, plain


@pytest.mark.anyio
async def test_the_first_message_shows_the_plain_command_and_the_imported_code(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(SHOP)
    scripted_openai.add(Reply(tool_calls=[edit("shop/money.py", "%.1f", "%.2f")]), Reply("Done."))
    result, _events = await run_loop(make_config(repo, scripted_openai.base_url, TARGET))
    assert result.status == "passed"
    opening = first_message(scripted_openai.requests[0])
    assert f"Test command: pytest {TARGET}\n" in opening
    assert "The engine runs it" in opening
    assert "--color" not in opening and "no:cacheprovider" not in opening
    assert sys.executable not in opening and str(state_home()) not in opening
    assert f"--- shop/money.py ---\n{MONEY}" in opening  # the code under test, whole


@pytest.mark.anyio
async def test_the_developers_own_test_command_is_shown_as_given(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(SHOP)
    command = f"{sys.executable} -m pytest -q tests/test_money.py"
    scripted_openai.add(Reply(tool_calls=[edit("shop/money.py", "%.1f", "%.2f")]), Reply("Done."))
    config = make_config(repo, scripted_openai.base_url, TARGET, test_cmd=command)
    result, _events = await run_loop(config)
    assert result.status == "passed"
    assert f"Test command: {command}\n" in first_message(scripted_openai.requests[0])


def test_the_plain_command_is_pytest_on_the_targets() -> None:
    assert plain_command(["tests/test_x.py::test_y"], None) == "pytest tests/test_x.py::test_y"
    assert plain_command(["tests/test_x.py::test_y[a b]"], None) == (
        "pytest 'tests/test_x.py::test_y[a b]'"
    )
    assert plain_command(["t.py"], "make check") == "make check"


# -- the imported code ---------------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> list[str]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return sorted(files)


BIG = "\n\n".join(
    f'def helper_{n}(value: int, *, scale: float = 1.0) -> float:\n    """Helper {n}."""\n'
    + "    total = value * scale\n" * 60
    + "    return total"
    for n in range(6)
)
PROJECT = {
    "src/shop/__init__.py": "",
    "src/shop/money.py": MONEY,
    "src/shop/big.py": "LIMIT = 3\n\n\nclass Ledger:\n    rows: list[int]\n\n"
    "    def add(self, row):\n" + "        pass\n" * 30 + "\n\n" + BIG,
    "tests/helpers.py": "def euros(x):\n    return x\n",
    "tests/test_shop.py": "import os\nimport pytest\nfrom shop.money import money\n"
    "from shop import big\nfrom shop.tax import vat\nfrom .helpers import euros\n",
}


def test_the_exam_s_imports_resolve_to_project_files(tmp_path: Path) -> None:
    files = write(tmp_path, PROJECT)
    found = imported_modules(tmp_path, ["tests/test_shop.py"], files, ["", "src", "tests"])
    shown = {m.path: m for m in found.modules}
    assert list(shown) == ["src/shop/money.py", "src/shop/big.py", "tests/helpers.py"]
    assert shown["src/shop/money.py"].whole and shown["src/shop/money.py"].text == MONEY
    big = shown["src/shop/big.py"]
    assert not big.whole  # too large: an outline
    assert "def helper_5(value: int, *, scale: float = 1.0) -> float:" in big.text
    assert '"""Helper 5."""' in big.text and "total = value" not in big.text
    assert "class Ledger:" in big.text and "    def add(self, row):" in big.text
    assert "LIMIT = 3" in big.text
    assert found.missing == ("shop.tax",)  # a module of a project package, not there yet


def test_the_imported_code_keeps_to_its_budget(tmp_path: Path) -> None:
    files = write(tmp_path, PROJECT)
    found = imported_modules(tmp_path, ["tests/test_shop.py"], files, ["", "src"], budget=100)
    assert sum(len(m.text) for m in found.modules) <= 100
    assert "src/shop/big.py" in found.left_out


def test_an_outline_of_what_does_not_parse_is_its_head() -> None:
    assert outline("def broken(:\n" * 500).endswith("read_file shows it whole]")


# -- the conversation's last word -----------------------------------------------------------------


def test_paths_under_the_sandbox_become_project_relative() -> None:
    roots = ["/h/.cache/codexloop/worktrees/s-1", "/h/.cache/codexloop/runs/s-1/tree"]
    text = (
        'File "/h/.cache/codexloop/worktrees/s-1/src/x.py", line 3\n'
        "ImportError while importing '/h/.cache/codexloop/runs/s-1/tree/tests/test_x.py'\n"
        "cwd: /h/.cache/codexloop/worktrees/s-1\n"
        "elsewhere: /h/.cache/codexloop/worktrees/s-10/a.py"
    )
    assert relative_paths(text, roots) == (
        'File "src/x.py", line 3\n'
        "ImportError while importing 'tests/test_x.py'\n"
        "cwd: .\n"
        "elsewhere: /h/.cache/codexloop/worktrees/s-10/a.py"
    )


def test_what_the_conversation_takes_in_is_plain(tmp_path: Path) -> None:
    conversation = Conversation("first \x1b[1mbold\x1b[0m", roots=[tmp_path])
    conversation.start_iteration()
    conversation.say(f"\x1b[31mred\x1b[0m at {tmp_path}/a.py")
    conversation.tool_result("c1", "a file\r\nwith carriage returns\r\n")  # no escape: as it is
    conversation.tool_result("c2", f"\x1b[32mok\x1b[0m {tmp_path}/b.py\r\n")
    contents = [m["content"] for m in conversation.messages[1:]]
    assert contents == [
        "first bold",
        "red at a.py",
        "a file\r\nwith carriage returns\r\n",
        "ok b.py\n",
    ]
