"""Plugins load only from what was installed when the session started: a distribution the model
adds (a ``*.dist-info`` with a ``pytest11`` entry point on the path) is not autoloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from codexloop.core import plugins
from codexloop.core.plugins import Plugin

FORCE_PASS = """\
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outcome.get_result().outcome = "passed"
"""


def _plant_distribution(folder: Path) -> None:
    """What a model could write into ``src/``: a plugin and the metadata that declares it."""
    folder.mkdir()
    (folder / "evil_plugin.py").write_text(FORCE_PASS)
    meta = folder / "evil_dist-1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-dist\nVersion: 1.0\n")
    (meta / "entry_points.txt").write_text("[pytest11]\nforce_pass = evil_plugin\n")


def _pytest(project: Path, src: Path, *args: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    clean.update(env or {}, PYTHONPATH=str(src))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_x.py"],
        cwd=project,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return f"exit={done.returncode}\n{done.stdout}{done.stderr}"


def test_a_plugin_added_after_the_start_is_not_loaded(tmp_path: Path) -> None:
    at_start = plugins.installed(sys.executable)
    names = {plugin.name for plugin in at_start.plugins}
    assert "anyio" in names and "force_pass" not in names
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_x.py").write_text("def test_x():\n    assert 1 + 1 == 3\n")
    src = tmp_path / "src"
    _plant_distribution(src)

    # The attack works when pytest autoloads entry points: the wrong code passes.
    attacked = _pytest(project, src)
    assert "exit=0" in attacked and "1 passed" in attacked

    # With autoloading off and the plugins of the start named, it fails as it should, and the
    # plugins installed at the start are still there.
    guarded = _pytest(
        project,
        src,
        *plugins.pytest_plugin_args(at_start.plugins),
        env=dict(plugins.PLUGIN_ENV),
    )
    assert "exit=1" in guarded and "1 failed" in guarded, guarded
    assert plugins.PLUGIN_ENV == {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    listed = _pytest(
        project,
        src,
        *plugins.pytest_plugin_args(at_start.plugins),
        "--co",
        "-v",
        env=dict(plugins.PLUGIN_ENV),
    )
    assert "anyio" in listed and "force_pass" not in listed and "evil" not in listed


def test_plugin_args_name_each_entry_point_and_keep_the_developers_exclusions() -> None:
    found = (
        Plugin("anyio", "anyio.pytest_plugin", "anyio"),
        Plugin("xdist", "xdist.plugin", "pytest-xdist"),
        Plugin("xdist.looponfail", "xdist.looponfail", "pytest-xdist"),
        Plugin("randomly", "pytest_randomly", "pytest-randomly"),
    )
    assert plugins.pytest_plugin_args(found) == [
        "-p",
        "anyio",
        "-p",
        "xdist",
        "-p",
        "xdist.looponfail",
        "-p",
        "randomly",
    ]
    disabled = plugins.disabled_plugins(["-ra", "-p", "no:randomly", "-pno:xdist.looponfail"])
    assert disabled == frozenset({"randomly", "xdist.looponfail"})
    assert plugins.pytest_plugin_args(found, disabled=disabled) == [
        "-p",
        "anyio",
        "-p",
        "xdist",
    ]
    # pytest blocks ``pytest_NAME`` along with ``NAME``.
    prefixed = (Plugin("pytest_cov", "pytest_cov.plugin", "pytest-cov"),)
    assert plugins.pytest_plugin_args(prefixed, disabled=frozenset({"cov"})) == []


def test_an_interpreter_that_does_not_answer_gives_the_engines_own_view(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    found = plugins.installed(str(broken))
    assert not found.complete
    assert "platform" in found.stdlib and "pytest" in found.top_level
    assert found.plugins == ()  # nothing named: pytest loads only its own plugins
