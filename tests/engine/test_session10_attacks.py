"""Session 10's changes, attacked by a second pair of eyes: replacements said in prose, a
labelled block split at another path's comment, a module's import from itself left out, a
block that changes only blank lines refused, and the iteration commit written by the
recorder itself (its identity, message and HEAD read from files).

Each attack was seen to succeed (a crash on a labelled fix followed by a shell block, prose
searched per sentence per file, an empty split part wiping a module, a self-import cut with the
statement sharing its line or a standard namesake's import, a comment change refused, a Latin-1
identity stopping every commit, HEAD followed out of the repository into a FIFO) and now fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_git
from loophelpers import KATA, TEST_CALC, make_config, of_type, run_loop
from scripted_openai import Reply

from codexloop.core import events as ev
from codexloop.core import record
from codexloop.core.exam import Exam
from codexloop.core.process import RunResult
from codexloop.core.textedits import find_edits, read_edits
from codexloop.core.tools import Tools

pytestmark = pytest.mark.anyio

FENCE = "```"
FIXED = "def add(a, b):\n    return a + b\n"
CALC = KATA["calc.py"]


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


def _kata_project() -> FakeProject:
    return FakeProject(dict(KATA), protected=("tests/test_calc.py",))


async def _apply(tools: Tools, text: str) -> list[Any]:
    """Plan the answer's edits and run them through the tools, as the loop does."""
    outcomes = []
    for planned in read_edits(text, tools):
        if planned.tool:
            outcomes.append(await tools.execute(planned.tool, json.dumps(planned.arguments)))
    return outcomes


# ------------------------------------------- 1. reading the answer: a crash in find_edits

# After a labelled block, find_edits's loop variable `lines` (the answer's lines) is rebound
# to the block's last part (`for part, (where, lines) in enumerate(_files_in(...))`): the
# next fence that is not labelled by its info string or first line looks up the line before
# it in that short list.
LABELLED_THEN_BASH = (
    f"Here is the fix:\n\n{FENCE}python\n# calc.py\n{FIXED}{FENCE}\n\n"
    f"Run the tests with:\n\n{FENCE}bash\npytest\n{FENCE}\n"
)


def test_a_labelled_block_followed_by_a_shell_block_is_read() -> None:
    [stated] = find_edits(LABELLED_THEN_BASH, lambda _rel: True)
    assert stated.path == "calc.py" and stated.content == FIXED


async def test_a_fix_followed_by_how_to_run_the_tests_goes_green(make_repo, scripted_openai):
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text=LABELLED_THEN_BASH))
    try:
        result, _events = await run_loop(
            make_config(repo, scripted_openai.base_url, max_iterations=1)
        )
    except* IndexError:
        pytest.fail("the engine crashed on the answer")
    assert result.status == "passed"
    assert run_git(repo, "show", f"{result.branch}:calc.py") == FIXED


# -------------------------------------------------- 2. prose: slow, and where it reaches


def test_prose_regexes_stay_linear_on_a_huge_answer() -> None:
    # Shapes that would backtrack: an open backtick with no close, a long run of non-space
    # after "in", whitespace runs, backticks alone; a megabyte each.
    crafted = [
        "change `ab` in " + "a`" * 500_000,
        "`" * 1_000_000,
        "`abc` " * 200_000,
        ("replace `" + "x" * 50 + " ") * 20_000,
        "`x should be `" * 70_000,
        "change " + " " * 1_000_000 + "x",
        "from `" * 200_000,
    ]
    for text in crafted:
        started = time.perf_counter()
        find_edits(text, lambda _rel: False)
        assert time.perf_counter() - started < 5, text[:40]


def test_many_prose_sentences_cost_little_on_a_large_project() -> None:
    body = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(800))
    files = {f"pkg/m{i}.py": body for i in range(100)}
    text = "\n".join(f"Replace `value_{i} + 1` with `value_{i} + 2`." for i in range(200))
    started = time.perf_counter()
    assert read_edits(text, FakeProject(files)) == []
    assert time.perf_counter() - started < 3


async def test_prose_never_edits_a_conftest_or_the_exam(tools: Tools) -> None:
    # The old text is in the protected test and in a conftest.py (protected by its name),
    # nowhere else: no edit; the exam's line is not reachable through a sentence either.
    conftest = tools.root / "conftest.py"
    conftest.write_text("def pytest_configure(config):\n    config.strict_mode = 1\n")
    assert read_edits("Replace `config.strict_mode = 1` with `pass`.", tools) == []
    assert read_edits("Change `assert add(2, 3) == 5` to `assert True`.", tools) == []
    # `in <path>` names the file in vain: the edit goes to the one unprotected place.
    said = "Change `add(2, 3) == 5` in tests/test_calc.py to `add(2, 3) == -1`."
    assert await _apply(tools, said) == []
    assert (tools.root / "tests/test_calc.py").read_text() == TEST_CALC


async def test_prose_does_not_write_through_a_link_to_the_exam(tools: Tools) -> None:
    # A link (planted by a hostile repository or the model) to the exam holds its text where
    # the search for the one place looks: links are left out of that search.
    (tools.root / "alias.py").symlink_to("tests/test_calc.py")
    outcomes = await _apply(tools, "Replace `assert add(2, 3) == 5` with `assert True`.")
    assert all(not o.ok for o in outcomes)
    assert (tools.root / "tests/test_calc.py").read_text() == TEST_CALC


# ---------------------------------------------------------- 3. the block split at a path


@pytest.mark.parametrize(
    "where", ["../outside.py", "conftest.py", "tests/conftest.py", "sitecustomize.py"]
)
async def test_a_split_part_cannot_land_outside_or_in_test_machinery(
    tools: Tools, where: str
) -> None:
    payload = "import pytest\n\n\ndef pytest_runtest_call(item):\n    pass\n"
    text = f"{FENCE}python\n# calc.py\n{FIXED}\n# {where}\n{payload}{FENCE}\n"
    outcomes = await _apply(tools, text)
    assert outcomes and outcomes[0].ok  # calc.py
    assert [o.ok for o in outcomes[1:]] == [False]
    assert not (tools.root / where).exists()
    assert not (tools.root.parent / "outside.py").exists()


async def test_a_split_conftest_does_not_make_a_wrong_add_green(make_repo, scripted_openai):
    # A conftest.py after the module, forging every test's call into a pass: refused, so the
    # wrong module stays red.
    forge = (
        "import pytest\n\n\n@pytest.hookimpl(tryfirst=True)\ndef pytest_runtest_call(item):\n"
        "    return True\n\n\ndef pytest_pyfunc_call(pyfuncitem):\n    return True\n"
    )
    wrong = "def add(a, b):\n    return a * b\n"
    text = f"{FENCE}python\n# calc.py\n{wrong}\n# conftest.py\n{forge}{FENCE}\n"
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text=text))
    result, events = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert result.status != "passed"
    assert "conftest.py" not in run_git(repo, "ls-tree", "-r", "--name-only", result.branch)
    assert any(r.refused for r in of_type(events, ev.ToolResult))


def test_an_empty_part_of_a_split_block_does_not_wipe_its_file() -> None:
    text = f"{FENCE}python\n# calc.py\n\n# tests/test_calc.py\n{TEST_CALC}{FENCE}\n"
    planned = read_edits(text, _kata_project())
    wipes = [p for p in planned if p.tool == "write_file" and not p.arguments["content"]]
    assert wipes == []


# ------------------------------------------------------- 4. a module's import from itself


def test_a_self_import_sharing_its_line_keeps_the_other_statement() -> None:
    module = "from calc import add; import math\n\n\ndef add(a, b):\n    return math.fsum([a, b])\n"
    [planned] = read_edits(f"{FENCE}python calc.py\n{module}{FENCE}\n", _kata_project())
    assert "import math" in planned.arguments["content"]


def test_a_module_extending_its_standard_namesake_keeps_the_import() -> None:
    module = "from json import JSONEncoder\n\n\nclass JSONEncoder(JSONEncoder):\n    pass\n"
    [planned] = read_edits(f"{FENCE}python\n# compat/json.py\n{module}{FENCE}\n", _kata_project())
    assert planned.arguments["content"] == module


def test_a_self_import_inside_a_block_or_with_other_names_is_kept() -> None:
    # Only top-level lines whose every name the module defines go: a guarded import or one
    # bringing a name the module lacks stays, whatever the model meant by it.
    for module in [
        "try:\n    from calc import add\nexcept ImportError:\n    pass\n\n\n" + FIXED,
        "from calc import add, sub\n\n\n" + FIXED,
    ]:
        [planned] = read_edits(f"{FENCE}python calc.py\n{module}{FENCE}\n", _kata_project())
        assert planned.arguments["content"] == module


# ---------------------------------------------------------------- 5. the same program


def test_a_comment_the_exam_reads_is_written() -> None:
    project = FakeProject(
        {
            "calc.py": FIXED,
            "tests/test_header.py": (
                "from pathlib import Path\n\n\ndef test_header():\n"
                "    assert Path('calc.py').read_text().startswith('# SPDX')\n"
            ),
        },
        protected=("tests/test_header.py",),
    )
    headed = f"# SPDX-License-Identifier: MIT\n{FIXED}"
    [planned] = read_edits(f"{FENCE}python calc.py\n{headed}{FENCE}\n", project)
    assert planned.tool == "write_file", planned.problem


def test_the_same_program_check_does_not_hide_a_real_change() -> None:
    # Changes a syntax tree sees, however small in text, are applied.
    for changed in [
        FIXED.replace("a + b", "b + a"),
        FIXED.replace("a + b", "a + b if a else b"),
        "def add(a, b, /):\n    return a + b\n",
        "async def add(a, b):\n    return a + b\n",
    ]:
        project = FakeProject({"calc.py": FIXED})
        [planned] = read_edits(f"{FENCE}python calc.py\n{changed}{FENCE}\n", project)
        assert planned.tool == "write_file", (changed, planned.problem)


# -------------------------------------------------- 6. the commit written by the recorder


def _worktree(make_repo, files: dict[str, str]) -> Path:
    repo = make_repo(files)
    worktree = repo.parent / "wt"
    run_git(repo, "worktree", "add", "-q", "-b", "preview", str(worktree))
    return worktree


def _set_identity(repo: Path, name: bytes) -> None:
    with open(repo / ".git" / "config", "ab") as config:
        config.write(b'[user]\n\tname = "' + name + b'"\n\temail = dev@example.com\n')


def test_a_name_or_message_with_newlines_adds_no_header(make_repo) -> None:
    worktree = _worktree(make_repo, {"calc.py": "a - b\n"})
    base = run_git(worktree, "rev-parse", "HEAD").strip()
    evil = "0" * 40
    _set_identity(worktree.parent / "repo", b"Dev\\nparent " + evil.encode() + b"\\n")
    recorder = record.recorder(worktree, fresh_checkout=True)
    (worktree / "calc.py").write_text("a + b\n")
    message = f"\nparent {evil}\ntree {evil}\n\niteration 1"
    sha = recorder.commit_scan(recorder.scan(), message)
    assert sha is not None
    subprocess.run(["git", "fsck", "--strict", "--no-progress"], cwd=worktree, check=True)
    body = run_git(worktree, "cat-file", "-p", sha)
    headers = body.split("\n\n", 1)[0].splitlines()
    assert [h.split(" ", 1)[0] for h in headers] == ["tree", "parent", "author", "committer"]
    assert run_git(worktree, "rev-list", "--parents", "-1", sha).split() == [sha, base]


def test_a_latin1_identity_does_not_stop_the_commit(make_repo) -> None:
    worktree = _worktree(make_repo, {"calc.py": "a - b\n"})
    _set_identity(worktree.parent / "repo", b"Jos\xe9")
    recorder = record.recorder(worktree, fresh_checkout=True)
    (worktree / "calc.py").write_text("a + b\n")
    sha = recorder.commit_scan(recorder.scan(), "iteration 1")
    assert sha is not None
    assert run_git(worktree, "show", f"{sha}:calc.py") == "a + b\n"


def test_a_tampered_head_cannot_make_the_commit_read_outside_the_repository(make_repo):
    worktree = _worktree(make_repo, {"calc.py": "a - b\n"})
    recorder = record.recorder(worktree, fresh_checkout=True)
    (worktree / "calc.py").write_text("a + b\n")
    assert recorder.commit_scan(recorder.scan(), "iteration 1") is not None
    (worktree / "calc.py").write_text("a * b\n")
    scan = recorder.scan()
    fifo = worktree.parent / "fifo"
    os.mkfifo(fifo)
    head_file = recorder.gitdir / "HEAD"
    kept = head_file.read_text()
    head_file.write_text(f"ref: refs/{os.path.relpath(fifo, recorder.common / 'refs')}\n")
    done = threading.Event()

    def commit() -> None:
        try:
            recorder.commit_scan(scan, "iteration 2")
        except Exception:  # git may refuse the broken HEAD: not the point
            pass
        finally:
            done.set()

    thread = threading.Thread(target=commit, daemon=True)
    thread.start()
    finished = done.wait(5)
    if not finished:  # let the reader go: a writer that closes at once gives it EOF
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        done.wait(30)
    head_file.write_text(kept)
    assert finished, "the commit blocked reading a FIFO outside the repository"
