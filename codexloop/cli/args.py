"""The command line: ``codexloop [OPTIONS] TARGET...`` and its subcommands.

Imports stay lazy so that ``--help`` and usage errors are instant.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from codexloop.core.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CodexloopError,
    UsageError,
    error_line,
)

if TYPE_CHECKING:
    from codexloop.core.config import Config, Settings
    from codexloop.core.loop import Loop
    from codexloop.core.race import Race
    from codexloop.core.resume import SessionRecord

SUBCOMMANDS = ("demo", "replay", "resume", "branches", "clean", "batch")

DESCRIPTION = """\
Turn a failing test into working code: a coding model edits a sandboxed copy of your
repository (a git worktree on a preview branch) and the engine runs the test, feeds the
failure back and loops until green. Your checkout is untouched until you accept hunks.

subcommands:
  codexloop demo [--headless]   a scripted tour on a bundled example, no key needed
  codexloop resume [BRANCH]     go on with a stopped, interrupted or crashed session
  codexloop batch FILE          many tasks (a JSON object a line), each its own session
  codexloop replay TRACE        play a recorded session back
  codexloop branches | clean    list / remove preview branches and worktrees
"""

EPILOG = """\
model: --model, else CODEXLOOP_MODEL, else [tool.codexloop] model in pyproject.toml.
endpoint: --base-url, else OPENAI_BASE_URL, else OpenAI (key from OPENAI_API_KEY).
exit status: 0 green, 1 not green within budget or stopped, 2 usage or configuration error,
130 interrupted.
"""


class OpenApp(Protocol):
    """The full-screen front end, handed in by the entry point (this package never imports it)."""

    def __call__(
        self,
        config: Config,
        *,
        loop_factory: Callable[[Config], Loop | Race] | None = None,
        check_endpoint: bool = True,
        banner: str = "",
        throwaway: bool = False,
    ) -> int: ...


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _dollars(text: str) -> float:
    try:
        value = float(text.lstrip("$"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of US dollars") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 dollars")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _whole_number(minimum: int, meaning: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(meaning)
        return value

    return parse


_positive_int = _whole_number(1, "must be at least 1")
_non_negative_int = _whole_number(0, "must be 0 or more")


def version() -> str:
    """The installed distribution's version (``unknown`` when run from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("codexloop")
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """``--version``: the version looked up when asked for (reading the installed packages'
    metadata is ~40 ms every run would pay before its session starts)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(f"codexloop {version()}")  # on stdout, as argparse's own version action does
        parser.exit()


RESUME_DESCRIPTION = """\
Go on with a stopped, interrupted or crashed session: the same preview branch and worktree,
the conversation as the model last saw it, what is left of its budgets (as much again of a
budget it had spent). Its options (test command, guard, gates, budgets, model, endpoint) are
the session's own unless given here. codexloop branches says which sessions can be resumed.
"""


def build_parser(*, resume: bool = False, targets: bool = True) -> argparse.ArgumentParser:
    """The main command's parser; ``resume``: ``codexloop resume``'s (a session in place of
    the targets, the same options); ``targets=False``: the options alone (``codexloop batch``)."""
    parser = _Parser(
        prog="codexloop resume" if resume else "codexloop",
        description=RESUME_DESCRIPTION if resume else DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version")
    if resume:
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "branch",
            nargs="?",
            metavar="BRANCH",
            help="the session's preview branch (codexloop/<name> or <name>)",
        )
        which.add_argument(
            "--last",
            action="store_true",
            help="the latest session of the repository that can be resumed (the default)",
        )
    elif targets:
        parser.add_argument(
            "targets",
            nargs="+",
            metavar="TARGET",
            help="pytest node ids or test files: the exam; all of them are protected",
        )
    parser.add_argument("--task", help="optional extra instruction (the tests are the main spec)")
    parser.add_argument(
        "--test-cmd", metavar="CMD", help="test command; default runs pytest on the targets"
    )
    parser.add_argument(
        "--guard",
        metavar="CMD",
        help="regression guard: a pytest command (or 'auto': the whole suite) whose tests "
        "that pass at the start must still pass when the targets are green",
    )
    parser.add_argument(
        "--gate",
        action="append",
        metavar="CMD",
        help="a command that must also pass once the targets are green (repeatable, in "
        "order; e.g. 'ruff check .'): run in the sandbox, judged by its exit code",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="model name (default from config/env); a,b spreads --attempts over several",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL or OpenAI)",
    )
    parser.add_argument(
        "--max-iterations", type=_positive_int, metavar="N", help="budget of test runs (default 10)"
    )
    parser.add_argument("--headless", action="store_true", help="no screen; JSON events on stdout")
    parser.add_argument(
        "--accept",
        choices=("none", "all", "flagged"),
        default="none",
        help="headless: apply all hunks to the working tree when green (default none); a "
        "green whose change is flagged (it touches test machinery) is applied only with flagged",
    )
    parser.add_argument(
        "--repo", type=Path, metavar="PATH", help="the git checkout (default: current directory)"
    )
    parser.add_argument(
        "--command-timeout",
        type=_positive_float,
        metavar="S",
        help="time limit of a model command (default 120)",
    )
    parser.add_argument(
        "--test-timeout",
        type=_positive_float,
        metavar="S",
        help="time limit of a test run (default 600)",
    )
    parser.add_argument(
        "--max-processes",
        type=_positive_int,
        metavar="N",
        help="most processes and threads a sandboxed command may have at once, where the system "
        "allows a limit (default 1024)",
    )
    parser.add_argument(
        "--max-memory",
        type=_non_negative_int,
        metavar="GIB",
        help="address space a sandboxed command may reserve, in GiB; 0 for no limit "
        "(default 8; raise it for WebAssembly in Node.js or a JVM with a large heap)",
    )
    parser.add_argument(
        "--tmp-size",
        type=_non_negative_int,
        metavar="MIB",
        help="size of each RAM-backed temp folder in the sandbox (/tmp, /var/tmp, /dev/shm), "
        "in MiB; 0 for no limit (default 1024)",
    )
    parser.add_argument(
        "--continue",
        dest="continue_from",
        metavar="BRANCH",
        help="start from the work of an earlier session's preview branch (a new branch; the "
        "review shows both sessions' changes)",
    )
    parser.add_argument(
        "--share",
        action="append",
        metavar="PATH",
        help="a path of your checkout that git does not carry but commands need (a dependency "
        "folder, built files), shown read-only in the sandbox; repeatable "
        "(default: node_modules, when git ignores it)",
    )
    parser.add_argument(
        "--context-tokens",
        type=_positive_int,
        metavar="N",
        help="the conversation sent to the model is kept under about N tokens, older tool "
        "results shortened first (default 100000)",
    )
    parser.add_argument(
        "--no-warm",
        dest="warm",
        action="store_false",
        default=None,
        help="run every pytest cold (default: warm re-runs, forked from a preloaded process)",
    )
    parser.add_argument(
        "--api",
        choices=("auto", "responses", "chat"),
        help="wire protocol: Responses API on OpenAI's endpoint, Chat Completions elsewhere (default auto)",
    )
    parser.add_argument(
        "--reasoning",
        choices=("low", "medium", "high"),
        help="reasoning effort for models that reason (default: the model's own)",
    )
    parser.add_argument(
        "--edit-format",
        choices=("auto", "tools", "text"),
        help="how the model's changes arrive: tool calls, or edits written in its answer "
        "(path-labelled code blocks, SEARCH/REPLACE, diffs) for small local models that do not "
        "call tools; auto takes both, tool calls first (default auto)",
    )
    parser.add_argument(
        "--request-timeout",
        type=_positive_float,
        metavar="S",
        help="time limit of one model request (default 120 for OpenAI, 600 for other endpoints: "
        "a local server on a CPU can take minutes before the first byte)",
    )
    parser.add_argument(
        "--allow-network",
        action="store_true",
        default=None,
        help="let sandboxed commands reach the network (off by default)",
    )
    parser.add_argument(
        "--max-tokens",
        type=_positive_int,
        metavar="N",
        help="end the session once it has used N tokens (in and out; default: no limit)",
    )
    parser.add_argument(
        "--max-time",
        metavar="DURATION",
        help="end the session after this long (seconds, or 90s, 15m, 1h30m; default: no limit)",
    )
    parser.add_argument(
        "--max-cost",
        type=_dollars,
        metavar="USD",
        help="end the session once it has cost this many US dollars (needs price_in and "
        "price_out in [tool.codexloop])",
    )
    parser.add_argument(
        "--attempts",
        type=_positive_int,
        metavar="N",
        help="N attempts race from one snapshot, each its own sandbox and branch (default 1; "
        "the app shows a lane each)",
    )
    parser.add_argument(
        "--pick",
        choices=("first", "best"),
        help="first: the first green wins, the others stop (default); best: every attempt "
        "runs, then unflagged beats flagged, then the smallest diff",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help="test runs at once across attempts (default: the CPU count)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run the attempts as Ray actors: on the cluster at ADDRESS (ray://host:10001), "
        "else RAY_ADDRESS's, else one on this machine (needs codexloop[ray])",
    )
    parser.add_argument(
        "--hint",
        action="append",
        metavar="TEXT",
        help="an approach for one attempt, in order (repeatable: the first for attempt 1, ...)",
    )
    return parser


def require_terminal() -> None:
    """The full-screen app draws on standard output: refuse a file or a pipe there
    (``codexloop demo > file`` would otherwise write escape codes into it forever)."""
    try:
        on_terminal = sys.stdout is not None and sys.stdout.isatty()
    except (OSError, ValueError):  # closed
        on_terminal = False
    if not on_terminal:
        raise UsageError("standard output is not a terminal: use --headless")


def _fail(message: str) -> int:
    print(f"codexloop: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _failed(exc: CodexloopError, context: str = "") -> int:
    """A user-facing error ends the program: its line on standard error, its exit status."""
    print(error_line(exc, context), file=sys.stderr)
    return exc.exit_code


def main(argv: Sequence[str] | None = None, *, open_app: OpenApp) -> int:
    """Parse ``argv`` and run what it asks for; ``open_app`` opens the full-screen app."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list and args_list[0] in SUBCOMMANDS:
            from codexloop.cli.subcommands import run_subcommand

            return run_subcommand(args_list[0], args_list[1:], open_app)
        if not args_list:
            build_parser().print_usage(sys.stderr)
            return _fail(
                "name the test that defines success, e.g. codexloop tests/test_x.py::test_y"
            )
        args = build_parser().parse_args(ray_flag(args_list))
    except UsageError as exc:
        return _failed(exc)
    try:
        return run_loop(args, open_app)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except CodexloopError as exc:
        return _failed(exc)
    except Exception as exc:  # a bug of ours: say so in one line, keep the details
        return _internal_error(exc)


_RAY_ADDRESS = re.compile(r"auto|local|[a-z]+://.*|[\w.-]+:\d+")


def ray_flag(argv: list[str]) -> list[str]:
    """``--ray`` before a target takes no address: ``--ray tests/x.py::t`` is ``--ray=auto``
    and the target (an address is ``auto``, ``scheme://…`` or ``host:port``)."""
    out = list(argv)
    for index, word in enumerate(out[:-1]):
        if word == "--ray" and not _RAY_ADDRESS.fullmatch(out[index + 1]):
            out[index] = "--ray=auto"
    return out


def _internal_error(exc: BaseException) -> int:
    import os
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="codexloop-crash-", suffix=".txt")
    with os.fdopen(fd, "w") as handle:
        traceback.print_exception(exc, file=handle)
    print(
        f"codexloop: internal error: {type(exc).__name__}: {exc} (details in {path})",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def settings_of(args: argparse.Namespace) -> Settings:
    """What the command line gave, as :class:`~codexloop.core.config.Settings`."""
    from codexloop.core.config import Settings

    return Settings(
        targets=tuple(getattr(args, "targets", ())),
        repo=args.repo,
        task=args.task,
        test_cmd=args.test_cmd,
        model=args.model,
        base_url=args.base_url,
        max_iterations=args.max_iterations,
        command_timeout=args.command_timeout,
        max_processes=args.max_processes,
        context_tokens=args.context_tokens,
        max_memory=args.max_memory,
        tmp_size=args.tmp_size,
        share=tuple(args.share) if args.share else None,
        continue_from=args.continue_from,
        test_timeout=args.test_timeout,
        allow_network=args.allow_network,
        api=args.api,
        reasoning=args.reasoning,
        edit_format=args.edit_format,
        request_timeout=args.request_timeout,
        warm=args.warm,
        attempts=args.attempts,
        pick=args.pick,
        jobs=args.jobs,
        hints=tuple(args.hint) if args.hint else None,
        max_tokens=args.max_tokens,
        max_time=args.max_time,
        max_cost=args.max_cost,
        gates=tuple(args.gate) if args.gate else None,
        guard=args.guard,
        ray=args.ray,
    )


def run_loop(
    args: argparse.Namespace, open_app: OpenApp, *, resumed: SessionRecord | None = None
) -> int:
    """Run the session the command line asks for (``resumed``: go on with that one)."""
    from codexloop.core import model_process

    if args.ray is None:  # the model worker first: the client's import (0.5-1 s of a core)
        model_process.start()  # runs beside everything from here (with --ray: on the nodes)
    from codexloop.core.config import load_config

    settings = settings_of(args)
    if resumed is not None:
        settings = resumed.settings_for(settings)
    config = load_config(settings)  # a CodexloopError ends main() with its line and status
    if config.ray is not None:  # Ray missing or out of reach: said now, before any screen
        from codexloop.core.executor import prepare

        if sys.stderr.isatty():
            print("codexloop: joining the Ray cluster…", file=sys.stderr)
        prepare(config)
    if args.accept != "none" and not args.headless:
        return _fail("--accept applies to --headless runs; in the app, review with v")
    if not args.headless:
        require_terminal()
    if args.headless:
        from codexloop.cli.headless import run_headless

        return run_headless(
            config,
            accept_all=args.accept in ("all", "flagged"),
            accept_flagged=args.accept == "flagged",
            resumed=resumed,
        )
    if resumed is not None:
        from codexloop.core.loop import Loop

        return open_app(config, loop_factory=lambda cfg: Loop(cfg, review=True, resumed=resumed))
    return open_app(config)
