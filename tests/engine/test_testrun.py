"""The engine decides green: real pytest runs, their JUnit reports, the verdict and digest."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from codexloop.core import process
from codexloop.core.process import RunResult
from codexloop.core.testrun import (
    Canary,
    Case,
    Verdict,
    default_command,
    judge,
    junit_env,
    parse_junit,
    report_text,
)

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


# -- the canary --------------------------------------------------------------------------


def _run_with_canary(
    tmp_path: Path, tests: str, canary: Canary, *options: str
) -> tuple[Verdict, RunResult]:
    (tmp_path / "test_mod.py").write_text(tests)
    (tmp_path / canary.filename).write_text(canary.source())
    junit = tmp_path / "junit.xml"
    command = " ".join([default_command(sys.executable, ("test_mod.py",)), *options])
    env = {**junit_env(junit), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}
    env["PYTEST_ADDOPTS"] += f" {canary.addopts()}"
    run = anyio.run(lambda: process.run(["sh", "-c", command], cwd=tmp_path, env=env, timeout=60))
    return judge(("test_mod.py",), run, junit, canary=canary), run


def test_a_canary_run_is_green_and_its_tests_stay_off_the_terminal(tmp_path: Path) -> None:
    canary = Canary.new()
    verdict, run = _run_with_canary(tmp_path, "def test_ok():\n    assert True\n", canary)
    assert verdict.passed and verdict.tampered is None
    assert canary.passing not in run.output and canary.token not in run.output
    assert "1 passed" in run.output and "failed" not in run.output
    assert "[100%]" in run.output  # the progress counts the developer's tests alone
    assert [c.name for c in verdict.cases] == ["test_ok"]
    assert run.exit_code == 0  # the canary that must fail leaves the exit status alone


def test_with_the_canary_a_run_that_selects_nothing_still_exits_5(tmp_path: Path) -> None:
    """pytest says 'no tests collected' (exit 5) as it would without the canary."""
    canary = Canary.new()
    _verdict, run = _run_with_canary(
        tmp_path, "def test_ok():\n    assert True\n", canary, "-k", "nothing"
    )
    assert run.exit_code == 5


@pytest.mark.parametrize(
    "options",
    [(), ("-k", "test_"), ("-x",), ("-n", "2"), ("-p", "no:randomly")],
    ids=["plain", "-k", "-x", "xdist", "-p"],
)
def test_the_canary_runs_whatever_selects_or_stops_the_tests(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    """Added after selection and last: ``-k`` does not deselect it, xdist workers run it; a
    real failure keeps exit status 1. ``-x`` stops before it: missing is no tamper when the
    run has failed anyway (the run is red)."""
    canary = Canary.new()
    tests = "def test_ok():\n    assert True\n\n\ndef test_bad():\n    assert False\n"
    verdict, run = _run_with_canary(tmp_path, tests, canary, *options)
    assert verdict.tampered is None, verdict.tampered
    assert not verdict.passed
    assert run.exit_code == 1


def test_a_canary_catches_a_blanket_pass(tmp_path: Path) -> None:
    """A conftest-free patch in the code under test that makes every test pass."""
    canary = Canary.new()
    tests = "import _pytest.python\n_pytest.python.Function.runtest = lambda self: None\n\n"
    tests += "def test_ok():\n    assert False\n"
    verdict, _run = _run_with_canary(tmp_path, tests, canary)
    assert not verdict.passed
    assert verdict.tampered is not None and "must fail" in verdict.tampered


@pytest.mark.parametrize(
    ("passing", "failing", "why"),
    [
        ("passed", None, "missing"),
        ("failed", "failed", "must pass"),
        ("passed", "passed", "must fail"),
        ("passed", "skipped", "must fail"),
    ],
)
def test_canary_results_that_are_wrong_say_why(passing: str, failing: str | None, why: str) -> None:
    canary = Canary.new()
    cases = [Case("m", canary.passing, passing)]
    if failing is not None:
        cases.append(Case("m", canary.failing, failing, message=f"Failed: {canary.token}"))
    reason = canary.check(cases)
    assert reason is not None and why in reason


def test_a_failing_canary_without_its_token_is_forged() -> None:
    canary = Canary.new()
    cases = [Case("m", canary.passing, "passed"), Case("m", canary.failing, "failed", "nope")]
    assert canary.check(cases) is not None
    cases[1] = Case("m", canary.failing, "failed", f"Failed: {canary.token}")
    assert canary.check(cases) is None


MONEY_TEST = """\
def money(amount):
    return "%.1f EUR" % amount


def test_money():
    assert money(3.5) == "3.50 EUR"
"""


async def test_a_coloured_run_leaves_no_escape_in_the_digest(tmp_path: Path) -> None:
    """pytest runs with --color=yes: its JUnit writer puts the colours of an assertion diff
    into the report as text (#x1B[91m...); the model reads none of it, and the diff stays."""
    repo = tmp_path / "proj"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_mod.py").write_text(MONEY_TEST)
    verdict = await verdict_for(tmp_path, "tests/test_mod.py::test_money")
    report = (tmp_path / "junit.xml").read_text()
    assert "#x1B[" in report  # what pytest wrote (pygments colours the diff)
    assert not verdict.passed
    assert "#x1B" not in verdict.digest and "\x1b" not in verdict.digest
    assert "- 3.50 EUR" in verdict.digest and "+ 3.5 EUR" in verdict.digest


def test_control_characters_written_out_in_a_report_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "r.xml").write_text(
        '<testsuite><testcase classname="t" name="test_x">'
        '<failure message="#x1B[0m#x1B[91m- 3.50 EUR#x1B[39;49;00m bell#x07 #x41 stays">'
        "E  #x1B[92m+ 3.5 EUR#x1B[39;49;00m&#10;see issue #x12 and #x7F"
        "</failure></testcase></testsuite>"
    )
    cases = parse_junit(tmp_path / "r.xml")
    assert cases is not None
    [case] = cases
    assert case.message == "- 3.50 EUR bell #x41 stays"  # #x41 ('A') is never written so
    assert case.detail == "E  + 3.5 EUR\nsee issue  and"
    assert report_text("plain #xAB text") == "plain #xAB text"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("pytest tests/test_calc.py::test_add", True),
        ("python -m pytest -q tests/test_calc.py", True),
        ("/usr/bin/python3 -m pytest", True),  # the whole suite holds the targets
        ("pytest tests", True),
        ("pytest -k add .", True),
        ("pytest tests/test_other.py", False),
        ("pytest tests/test_calc.py | tail -3", False),  # the status is tail's
        ("pytest tests/test_calc.py || true", False),
        ("python calc.py", False),
        ("make test", True),  # the configured test command
    ],
)
def test_what_counts_as_the_model_running_the_exam(command: str, expected: bool) -> None:
    from codexloop.core.testrun import runs_the_exam

    assert runs_the_exam(command, ("tests/test_calc.py::test_add",), "make  test") is expected
