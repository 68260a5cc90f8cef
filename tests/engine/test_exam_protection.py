"""Everything pytest reads for configuration is the developer's, at any depth, and a module the
model adds cannot shadow the standard library, pytest or an installed distribution."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_git
from loophelpers import KATA, TEST_CALC, edit, make_config, of_type, run_loop, tool_results
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core.exam import Exam
from codexloop.core.plugins import Installed

TARGET_FILE = "tests/unit/test_calc.py"
PROJECT = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    TARGET_FILE: TEST_CALC,
    "pyproject.toml": '[project]\nname = "calc"\n\n[tool.pytest.ini_options]\naddopts = "-ra"\n',
    "lib/pyproject.toml": '[project]\nname = "lib"\n\n[tool.pytest.ini_options]\naddopts = "-q"\n',
    "src/mypkg/__init__.py": "",
    "src/mypkg/core.py": "X = 1\n",
}
CONFIG_NAMES = [
    "pytest.toml",
    ".pytest.toml",
    "pytest.ini",
    ".pytest.ini",
    "tox.ini",
    "setup.cfg",
    "conftest.py",
    "sitecustomize.py",
    "usercustomize.py",
    "evil.pth",
]
DEPTHS = ["", "sub/", "tests/unit/", "a/b/c/d/"]


@pytest.fixture
def exam(make_repo) -> Exam:
    repo = make_repo(PROJECT)
    return Exam(repo, "HEAD", (TARGET_FILE,))


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_configuration_file_pytest_reads_is_protected_at_any_depth(
    exam: Exam, name: str, depth: str
) -> None:
    rel = depth + name
    assert exam.protection(rel) is not None
    assert exam.check_write(rel, None, b"[pytest]\naddopts = -k nothing\n") is not None


@pytest.mark.parametrize("rel", ["pyproject.toml", "lib/pyproject.toml", "sub/pyproject.toml"])
@pytest.mark.parametrize(
    "section",
    [
        '[tool.pytest.ini_options]\naddopts = "-k nothing"\n',
        '[tool.pytest]\naddopts = ["-k", "nothing"]\n',  # pytest 9's native table
    ],
)
def test_the_pytest_sections_of_pyproject_toml_are_protected_at_any_depth(
    exam: Exam, rel: str, section: str
) -> None:
    old = (exam.repo / rel).read_bytes() if (exam.repo / rel).is_file() else None
    base = old if old is not None else b'[project]\nname = "x"\n'
    new = base.replace(b"[tool.pytest.ini_options]", b"[tool.other]") + b"\n" + section.encode()
    reason = exam.check_write(rel, old, new)
    assert reason is not None and "pytest" in reason


def test_the_rest_of_a_pyproject_toml_stays_editable(exam: Exam) -> None:
    for rel in ("pyproject.toml", "lib/pyproject.toml"):
        old = (exam.repo / rel).read_bytes()
        new = old.replace(b'name = "', b'version = "1.0"\nname = "')
        assert exam.check_write(rel, old, new) is None
    # A new sub-project beside the tests, with no pytest section, is no test configuration.
    assert exam.check_write("tools/pyproject.toml", None, b'[project]\nname = "t"\n') is None


@pytest.mark.parametrize("rel", ["tests/pyproject.toml", "tests/unit/setup.py", "setup.py"])
def test_a_new_rootdir_marker_beside_the_tests_is_refused(exam: Exam, rel: str) -> None:
    """pytest takes a folder with a pyproject.toml (or setup.py) above the tests as rootdir,
    which moves the conftest cut-off: creating one there changes the exam."""
    assert exam.check_write(rel, None, b'[project]\nname = "t"\n') is not None


@pytest.mark.parametrize(
    "rel",
    [
        "tests/unit/__init__.py",
        "tests/__init__.py",
        "__init__.py",
        "tests/__init__.cpython-311-x86_64-linux-gnu.so",
        "tests/unit/__init__.pyc",
    ],
)
def test_the_packages_of_the_target_files_are_protected_up_to_the_root(
    exam: Exam, rel: str
) -> None:
    reason = exam.protection(rel)
    assert reason is not None and "package" in reason


@pytest.mark.parametrize("rel", ["lib/__init__.py", "tests/unit/helpers.py", "src/mypkg/x.py"])
def test_other_packages_and_test_helpers_stay_writable(exam: Exam, rel: str) -> None:
    assert exam.check_write(rel, None, b"X = 1\n") is None


def test_the_target_packages_init_files_in_the_snapshot_are_listed_as_protected(
    make_repo,
) -> None:
    repo = make_repo({**KATA, "tests/__init__.py": "", "lib/__init__.py": ""})
    exam = Exam(repo, "HEAD", ("tests/test_calc.py",))
    assert exam.protected_files() == ["tests/test_calc.py", "tests/__init__.py"]


@pytest.mark.parametrize(
    ("rel", "what"),
    [
        ("platform.py", "standard library"),
        ("src/platform.py", "standard library"),
        ("src/decimal/__init__.py", "standard library"),
        ("tests/unit/fractions.py", "standard library"),  # pytest puts the test folder first
        ("pytest/__init__.py", "pytest"),
        ("src/pytest/__init__.py", "pytest"),
        ("src/_pytest/python.py", "pytest"),
        ("pluggy.py", "pytest"),
        ("iniconfig/__init__.py", "pytest"),
        ("anyio.py", "installed"),
    ],
)
def test_a_new_module_that_shadows_what_the_tests_import_is_refused(
    exam: Exam, rel: str, what: str
) -> None:
    reason = exam.check_write(rel, None, b"def anything():\n    return True\n")
    assert reason is not None and what in reason
    assert reason == exam.shadowing(rel)


@pytest.mark.parametrize(
    "rel",
    [
        "src/evil-1.0.dist-info/entry_points.txt",
        "evil.egg-info/entry_points.txt",
        "tests/unit/evil.dist-info/METADATA",
        "deep/down/evil.egg-info/PKG-INFO",
    ],
)
def test_new_distribution_metadata_is_refused(exam: Exam, rel: str) -> None:
    reason = exam.check_write(rel, None, b"[pytest11]\nevil = evil\n")
    assert reason is not None and "entry point" in reason


@pytest.mark.parametrize(
    "rel",
    [
        "calc_helpers.py",  # an ordinary new module
        "src/mypkg/json.py",  # not top-level
        "src/mypkg/core.py",  # the project's own
        "docs/platform.py",  # not a folder the tests import from
        "platform.txt",  # not importable
        "logging/app.log",  # a data folder
        "src/newpkg/__init__.py",
    ],
)
def test_ordinary_modules_are_not_refused(exam: Exam, rel: str) -> None:
    assert exam.check_write(rel, None, b"X = 1\n") is None


def test_a_module_already_in_the_snapshot_is_never_refused(make_repo) -> None:
    """A project installed in editable mode (``src/mypkg``, ``mypkg`` installed) keeps working,
    and so does a project that has its own module of a standard name."""
    repo = make_repo({**PROJECT, "src/logging.py": "LEVEL = 1\n"})
    exam = Exam(repo, "HEAD", (TARGET_FILE,))
    exam._installed = Installed(
        stdlib=frozenset({"logging", "platform"}),
        top_level=frozenset({"mypkg", "pytest"}),
        plugins=(),
    )
    assert exam.check_write("src/mypkg/new.py", None, b"") is None
    assert exam.check_write("src/mypkg/__init__.py", b"", b"X = 2\n") is None
    assert exam.check_write("src/logging.py", b"LEVEL = 1\n", b"LEVEL = 2\n") is None
    assert exam.check_write("mypkg.py", None, b"") is None  # the project's name, in another root
    assert exam.check_write("src/platform.py", None, b"") is not None


def test_shadowing_paths_lists_what_a_command_made(exam: Exam) -> None:
    paths = [
        "calc.py",
        TARGET_FILE,
        "src/mypkg/core.py",
        "src/platform.py",
        "pytest/__init__.py",
        "src/evil.egg-info/entry_points.txt",
        "notes.txt",
    ]
    found = exam.shadowing_paths(paths)
    assert [rel for rel, _reason in found] == [
        "src/platform.py",
        "pytest/__init__.py",
        "src/evil.egg-info/entry_points.txt",
    ]
    assert all(reason for _rel, reason in found)


def test_the_installed_names_are_asked_once_per_session(exam: Exam) -> None:
    first = exam.installed()
    assert "platform" in first.stdlib and {"pytest", "_pytest", "pluggy"} <= first.top_level
    assert exam.installed() is first


@pytest.mark.anyio
async def test_the_model_is_told_why_and_the_loop_goes_on(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call("write_file", {"path": "tests/__init__.py", "content": "import calc\n"}),
                Call(
                    "write_file",
                    {"path": "sub/pytest.toml", "content": '[pytest]\naddopts = ["-k", "x"]\n'},
                ),
                Call("write_file", {"path": "platform.py", "content": "def system():\n  1\n"}),
            ]
        ),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed the addition."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))

    assert result.status == "passed"
    refusals = [r for r in of_type(events, ev.ToolResult) if r.refused]
    assert len(refusals) == 3
    told = tool_results(scripted_openai.requests[1])
    assert len(told) == 3 and all(text.startswith("refused:") for text in told)
    assert "package" in told[0] and "test configuration" in told[1]
    assert "standard library" in told[2]
    listed = run_git(repo, "ls-tree", "-r", "--name-only", result.branch).split()
    assert not {"tests/__init__.py", "sub/pytest.toml", "platform.py"} & set(listed)
    assert not (Path(result.worktree) / "platform.py").exists()


@pytest.mark.parametrize("rel", ["tests/pyproject.toml", "sub/pyproject.toml", "tests/setup.py"])
def test_config_a_command_made_at_any_depth_is_put_back_before_a_run(
    exam: Exam, tmp_path: Path, rel: str
) -> None:
    """A command is not refused like a tool: whatever test configuration it made below the
    root is removed before the run (the pytest sections of a pyproject.toml at any depth, a
    rootdir marker above the tests)."""
    worktree = tmp_path / "wt"
    (worktree / rel).parent.mkdir(parents=True)
    (worktree / rel).write_text('[tool.pytest.ini_options]\naddopts = "-p no:python"\n')
    restored = exam.restore(worktree, [rel])
    assert rel in restored
    assert not (worktree / rel).exists()
