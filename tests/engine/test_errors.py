"""One error hierarchy, one exit-status map (codexloop.core.errors), for every front end."""

from __future__ import annotations

import pytest

from codexloop.core import errors
from codexloop.core.config import ConfigError
from codexloop.core.errors import (
    EXIT_GREEN,
    EXIT_INTERRUPTED,
    EXIT_RED,
    EXIT_USAGE,
    CodexloopError,
    SandboxError,
    UsageError,
    error_line,
    exit_status,
    result_status,
)
from codexloop.core.gitops import GitError
from codexloop.core.model import ContextOverflow, ModelError, WrongProtocol
from codexloop.core.replay import TraceError
from codexloop.core.warm import WarmError


def test_the_exit_statuses_are_the_documented_ones() -> None:
    assert (EXIT_GREEN, EXIT_RED, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)


@pytest.mark.parametrize(
    "kind",
    [
        ConfigError,
        GitError,
        ModelError,
        ContextOverflow,
        WrongProtocol,
        TraceError,
        UsageError,
        SandboxError,
    ],
)
def test_every_user_facing_error_is_a_codexloop_error_exiting_2(kind: type[Exception]) -> None:
    exc = kind("something the user can fix")
    assert isinstance(exc, CodexloopError)
    assert exit_status(exc) == EXIT_USAGE


def test_internal_errors_stay_outside_and_exit_1() -> None:
    assert not issubclass(WarmError, CodexloopError)
    assert exit_status(RuntimeError("a bug")) == EXIT_RED
    assert exit_status(KeyboardInterrupt()) == EXIT_INTERRUPTED
    assert exit_status(CodexloopError("x", exit_code=EXIT_RED)) == EXIT_RED


def test_the_error_line_is_one_line() -> None:
    exc = GitError("fatal: detected dubious ownership\n\tgit config --global --add x\n")
    line = error_line(exc, "cannot set up the sandbox")
    assert "\n" not in line
    assert line.startswith("codexloop: error: cannot set up the sandbox: fatal: detected")


def test_a_session_that_ran_exits_by_its_status() -> None:
    assert result_status("passed") == EXIT_GREEN
    assert result_status("failed") == result_status("stopped") == result_status(None) == EXIT_RED
    assert result_status("passed", interrupted=True) == EXIT_INTERRUPTED
    assert errors.EXIT_INTERNAL == EXIT_RED


def test_what_ends_a_session_before_its_loop_runs() -> None:
    """One rule for the app and headless: git or a missing sandbox is the set-up (exit 2), any
    other user-facing error is shown as it is, anything else is a bug (None: exit 1)."""
    from codexloop.core.errors import setup_failure

    git = setup_failure(GitError("fatal: no space"), sandbox_exists=True)
    assert isinstance(git, SandboxError) and exit_status(git) == EXIT_USAGE
    assert str(git) == "cannot set up the sandbox: fatal: no space"
    disk = setup_failure(PermissionError(13, "Permission denied"), sandbox_exists=False)
    assert isinstance(disk, SandboxError) and "cannot set up the sandbox" in str(disk)
    assert setup_failure(PermissionError(13, "denied"), sandbox_exists=True) is None
    config = ConfigError("target 'x' collects no test")
    assert setup_failure(config, sandbox_exists=True) is config
    assert setup_failure(RuntimeError("a bug"), sandbox_exists=False) is None
