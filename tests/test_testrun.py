"""The engine decides green: real pytest runs, their JUnit reports, the verdict and digest."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from codexloop.core import process
from codexloop.core.testrun import default_command, judge, junit_env

pytestmark = pytest.mark.anyio

TESTS = """\
import pytest


def test_ok():
    assert 1 + 1 == 2


def test_bad():
    value = {"total": 10.004}
    assert round(value["total"], 2) == 10.01, "rounding is off"


@pytest.mark.skip(reason="later")
def test_skipped():
    pass


@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False


@pytest.mark.parametrize("n", [1, 2, 3])
def test_param(n):
    assert n < 3


@pytest.mark.parametrize("n", [1, 2])
def test_param_ok(n):
    assert n


class TestGroup:
    def test_inner(self):
        assert True
"""


async def verdict_for(tmp_path: Path, *targets: str):
    repo = tmp_path / "proj"
    if not repo.exists():
        (repo / "tests").mkdir(parents=True)
        (repo / "tests" / "test_mod.py").write_text(TESTS)
    junit = tmp_path / "junit.xml"
    junit.unlink(missing_ok=True)
    env = {"PATH": "/usr/bin:/bin", **junit_env(junit)}
    run = await process.run(
        ["bash", "-c", default_command(sys.executable, targets)], cwd=repo, env=env, timeout=60
    )
    return judge(targets, run, junit)


@pytest.mark.parametrize(
    "target",
    [
        "tests/test_mod.py::test_ok",
        "tests/test_mod.py::test_param_ok",
        "tests/test_mod.py::TestGroup::test_inner",
        "tests/test_mod.py::TestGroup",
        "tests/test_mod.py::test_param[1]",
    ],
)
async def test_green_when_every_target_passed(tmp_path: Path, target: str) -> None:
    verdict = await verdict_for(tmp_path, target)
    assert verdict.passed, verdict.digest
    assert verdict.digest == ""


async def test_a_failure_is_digested_for_the_model(tmp_path: Path) -> None:
    verdict = await verdict_for(tmp_path, "tests/test_mod.py::test_bad")
    assert not verdict.passed
    assert "test_bad FAILED" in verdict.digest
    assert "rounding is off" in verdict.digest
    assert "10.0 == 10.01" in verdict.digest  # pytest's assertion rewriting, from the report


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("tests/test_mod.py::test_skipped", "skipped or xfail"),
        ("tests/test_mod.py::test_xfail", "skipped or xfail"),
        ("tests/test_mod.py::test_param", "test_param[3]"),
        ("tests/test_mod.py::test_missing", "not found"),
    ],
)
async def test_skipped_xfail_partly_failing_or_uncollected_targets_are_red(
    tmp_path: Path, target: str, needle: str
) -> None:
    verdict = await verdict_for(tmp_path, target)
    assert not verdict.passed
    assert needle in verdict.digest


async def test_a_file_target_needs_all_of_its_tests(tmp_path: Path) -> None:
    verdict = await verdict_for(tmp_path, "tests/test_mod.py")
    assert not verdict.passed
    assert "test_bad" in verdict.digest


async def test_an_exit_code_0_without_the_target_is_red(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_mod.py").write_text(TESTS)
    junit = tmp_path / "junit.xml"
    run = await process.run(
        ["bash", "-c", "true"], cwd=repo, env={"PATH": "/usr/bin:/bin"}, timeout=10
    )
    verdict = judge(("tests/test_mod.py::test_ok",), run, junit)
    assert not verdict.passed
    assert "no test report" in verdict.summary


async def test_a_collection_error_is_red_with_its_message(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_mod.py").write_text(
        "import missing_module_xyz\n\ndef test_ok():\n    pass\n"
    )
    verdict = await verdict_for(tmp_path, "tests/test_mod.py::test_ok")
    assert not verdict.passed
    assert "missing_module_xyz" in verdict.digest


async def test_a_custom_command_running_pytest_from_a_subfolder_is_judged(
    tmp_path: Path,
) -> None:
    """`cd backend && pytest ...`: JUnit names are relative to backend/, the targets to the repo."""
    repo = tmp_path / "proj"
    (repo / "backend" / "tests").mkdir(parents=True)
    (repo / "backend" / "tests" / "test_mod.py").write_text(TESTS)
    junit = tmp_path / "junit.xml"
    command = f"cd backend && {sys.executable} -m pytest -q -p no:cacheprovider tests/test_mod.py"
    env = {"PATH": "/usr/bin:/bin", **junit_env(junit)}
    run = await process.run(["bash", "-c", command], cwd=repo, env=env, timeout=60)
    ok = judge(("backend/tests/test_mod.py::test_ok",), run, junit)
    assert "not collected" not in ok.digest
    bad = judge(("backend/tests/test_mod.py::test_bad",), run, junit)
    assert not bad.passed and "rounding is off" in bad.digest
    assert "not collected" in judge(("backend/tests/test_mod.py::test_gone",), run, junit).digest
    # A whole file and a folder as targets too.
    assert "not collected" not in judge(("backend/tests/test_mod.py",), run, junit).digest
    assert "not collected" not in judge(("backend/tests",), run, junit).digest


def test_anyio_is_the_runner() -> None:
    assert anyio.get_all_backends()
