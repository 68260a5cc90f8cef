"""Errors a user can cause, and the exit statuses: defined once, for every front end.

Every error the engine lets reach a front end derives from :class:`CodexloopError`: its message
is one line the user can act on, and it carries the exit status the program ends with. The app,
headless mode and the subcommands all end through :func:`exit_status` and :func:`error_line`, so
the same failure exits with the same status whichever front end met it::

    CodexloopError                  exit 2 (usage or configuration) unless a subclass says else
      UsageError                    a bad command line                          (cli/args.py)
      ConfigError                   flags, environment, [tool.codexloop], targets (config.py)
      GitError                      a git command failed; also "not a checkout"  (gitops.py)
      SandboxError                  the session's sandbox could not be set up
      ModelError                    the endpoint refused for good (bad key/model, unreachable)
        ContextOverflow, WrongProtocol                                           (model.py)
      TraceError                    a trace that cannot be replayed              (replay.py)

A :class:`GitError` or :class:`SandboxError` that ends a session before its loop started (the
snapshot, the worktree) is a setup failure (:func:`setup_failure`): exit 2, in the app as in
headless mode. Once the loop
runs, the loop itself turns model, git and file errors into a ``failed`` result (exit 1) with a
notice; nothing of this hierarchy is raised past it then. Anything else that reaches a front end
is a bug of ours: exit 1, with the details kept in a file (:data:`EXIT_INTERNAL`).

Internal errors (``WarmError``: the warm runner falls back to cold runs; ``ToolError``: a tool
result the model reads) deliberately stay outside this hierarchy.
"""

from __future__ import annotations

from typing import Literal

EXIT_GREEN = 0
"""The loop ended green (and, with ``--accept``, what was asked was applied)."""
EXIT_RED = 1
"""Not green within the budget, stopped, a flagged green held back, or an apply that failed."""
EXIT_USAGE = 2
"""A usage or configuration error: the session could not start."""
EXIT_INTERRUPTED = 130
"""Interrupted (SIGINT, SIGTERM, SIGHUP, ctrl+c): 128 + SIGINT, as shells report it."""
EXIT_INTERNAL = EXIT_RED
"""A bug of ours (an exception outside this hierarchy)."""


class CodexloopError(Exception):
    """A failure the user can understand and usually fix; ``str()`` is one line.

    ``exit_code`` is the status the program ends with when this error ends it (2 unless a
    subclass or the constructor says otherwise).
    """

    exit_code: int = EXIT_USAGE

    def __init__(self, *args: object, exit_code: int | None = None) -> None:
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CodexloopError):
    """A bad command line (an unknown option, a missing value)."""


class SandboxError(CodexloopError):
    """The session's sandbox (snapshot, worktree, cache folder) could not be set up."""


def exit_status(exc: BaseException) -> int:
    """The exit status for an exception that ended the program."""
    if isinstance(exc, CodexloopError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL


def error_line(exc: BaseException, context: str = "") -> str:
    """``codexloop: error: <context: ><message>``, on one line, for standard error."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"codexloop: error: {context + ': ' if context else ''}{message}"


def setup_failure(exc: BaseException, *, sandbox_exists: bool) -> CodexloopError | None:
    """The user-facing error for an exception that ended a session before its loop ran
    (``Loop.run`` raised), or None for a bug of ours (exit 1, details kept).

    A git failure there is the sandbox's set-up (snapshot, worktree): said so, exit 2. So is
    an ``OSError`` before the sandbox exists (an unwritable cache folder, a full disk). Any
    other error of this hierarchy (a target that collects no test...) is shown as it is.
    """
    from codexloop.core.gitops import GitError  # gitops imports this module

    if isinstance(exc, SandboxError):
        return exc
    if isinstance(exc, GitError) or (isinstance(exc, OSError) and not sandbox_exists):
        return SandboxError(f"cannot set up the sandbox: {exc}")
    if isinstance(exc, CodexloopError):
        return exc
    return None


FinalStatus = Literal["passed", "failed", "stopped"]


def result_status(status: FinalStatus | None, *, interrupted: bool = False) -> int:
    """The exit status for a session that ran: 130 if interrupted, 0 green, else 1.

    ``status`` is ``LoopFinished.status`` (``None``: the loop never finished). A green whose
    apply failed or was held back by flags is the caller's to turn into :data:`EXIT_RED`.
    """
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_GREEN if status == "passed" else EXIT_RED


class AttemptLost(CodexloopError):
    """The machine running an attempt went away (a Ray node or actor died): that attempt
    ends as ``lost``, never the session."""

    exit_code = EXIT_RED
