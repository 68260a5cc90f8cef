"""``--ray`` on the command line and without Ray installed (issue 18): these run everywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from loophelpers import KATA, run_cli

from codexloop.cli.args import ray_flag


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--ray", "t.py::t"], ["--ray=auto", "t.py::t"]),
        (["--ray", "ray://head:10001", "t.py"], ["--ray", "ray://head:10001", "t.py"]),
        (["--ray", "10.0.0.5:6379", "t.py"], ["--ray", "10.0.0.5:6379", "t.py"]),
        (["--ray", "auto", "t.py"], ["--ray", "auto", "t.py"]),
        (["t.py", "--ray"], ["t.py", "--ray"]),
        (["--ray", "tests/test_x.py::test_y[a:1]"], ["--ray=auto", "tests/test_x.py::test_y[a:1]"]),
    ],
)
def test_ray_before_a_target_takes_no_address(argv: list[str], expected: list[str]) -> None:
    assert ray_flag(argv) == expected


def _without_ray(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import ray`` fails as it does when Ray is not installed."""
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n"
    )
    return {"PYTHONPATH": str(fake.parent)}


def test_ray_missing_is_one_line_and_exit_2(make_repo, tmp_path) -> None:
    repo = make_repo(KATA)
    done = run_cli(
        "--headless",
        "--ray",
        "tests/test_calc.py::test_add",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        cwd=repo,
        env=_without_ray(tmp_path),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "codexloop: error: --ray needs Ray, which is not installed: pip install "
        "'codexloop[ray]' (or pip install ray)"
    ]
    assert done.stdout == ""


def test_the_engine_and_the_command_line_import_no_ray(tmp_path) -> None:
    code = (
        "import sys\n"
        "import codexloop.cli.args, codexloop.cli.headless, codexloop.cli.batch\n"
        "import codexloop.core.executor, codexloop.core.race, codexloop.core.loop\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_resume_refuses_ray(make_repo) -> None:
    repo = make_repo(KATA)
    done = run_cli("resume", "--ray", cwd=repo)
    assert done.returncode == 2
    assert "--ray" in done.stderr and "on this machine" in done.stderr
