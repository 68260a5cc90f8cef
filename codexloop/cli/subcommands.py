"""Subcommands: ``branches``, ``clean`` (and, to come, ``demo`` and ``replay``)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from codexloop.cli.args import OpenApp, _fail, _failed, _Parser
from codexloop.core.errors import CodexloopError

if TYPE_CHECKING:
    from codexloop.core.config import Config
    from codexloop.core.loop import Loop


def _repo(path: Path | None) -> Path | None:
    from codexloop.core import gitops

    return gitops.toplevel((path or Path.cwd()).resolve())


def branches(argv: Sequence[str]) -> int:
    from codexloop.core import gitops

    parser = _Parser(prog="codexloop branches", description="List codexloop's preview branches.")
    parser.add_argument("--repo", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    repo = _repo(args.repo)
    if repo is None:
        return _fail(f"{args.repo or Path.cwd()} is not inside a git checkout")
    found = gitops.preview_branches(repo)
    if not found:
        print("no preview branches")
    for branch in found:
        where = f"  worktree {branch.worktree}" if branch.worktree else ""
        stamp = branch.committed_at.strftime("%Y-%m-%d %H:%M")
        print(f"{branch.name}  {branch.sha[:10]}  {stamp}  {branch.subject}{where}")
    return 0


def clean(argv: Sequence[str]) -> int:
    from codexloop.core import gitops
    from codexloop.core.process import kill_session
    from codexloop.core.sandbox import forget_session, runs_folder, state_home

    parser = _Parser(
        prog="codexloop clean",
        description="Remove codexloop's preview branches and worktrees, and kill whatever "
        "their sessions left running.",
    )
    parser.add_argument("--repo", type=Path, metavar="PATH")
    parser.add_argument(
        "branch", nargs="*", help="only these branches (default: all codexloop/* branches)"
    )
    args = parser.parse_args(argv)
    repo = _repo(args.repo)
    if repo is None:
        return _fail(f"{args.repo or Path.cwd()} is not inside a git checkout")
    found = {b.name: b for b in gitops.preview_branches(repo)}
    wanted = args.branch or list(found)
    unknown = [name for name in wanted if name not in found and f"codexloop/{name}" not in found]
    if unknown:
        return _fail(f"no preview branch named {', '.join(unknown)} (see codexloop branches)")
    for name in wanted:
        branch = found.get(name) or found[f"codexloop/{name}"]
        # What a crashed session left running (a warm server, a command's processes) first.
        session = branch.name.removeprefix("codexloop/")
        folders = [state_home() / "tmp" / session, runs_folder(session)]
        if branch.worktree is not None:
            folders.append(Path(branch.worktree))
        killed = kill_session(folders)
        if killed:
            print(f"killed {killed} process(es) left running by {branch.name}")
        if branch.worktree is not None:
            gitops.remove_worktree(repo, branch.worktree, branch.name)
        else:
            gitops.git(repo, "branch", "-D", branch.name)
        forget_session(branch.name.removeprefix("codexloop/"))
        print(f"removed {branch.name}")
    return 0


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number like 1 or 4, or max") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the speed must be more than 0")
    return value


def _run_front(
    config: Config, loop: Loop, open_app: OpenApp, *, headless: bool, banner: str
) -> int:
    if headless:
        from codexloop.cli.headless import run_headless

        return run_headless(config, loop=loop)
    return open_app(config, loop_factory=lambda _config: loop, check_endpoint=False, banner=banner)


def demo(argv: Sequence[str], open_app: OpenApp) -> int:
    from codexloop.core.config import ConfigError, Settings, load_config
    from codexloop.core.demo import TARGET, answer_review, demo_config, demo_turns, make_kata
    from codexloop.core.loop import Loop
    from codexloop.core.model import make_client
    from codexloop.core.replay import ReplayServer

    parser = _Parser(
        prog="codexloop demo",
        description="A scripted tour on a bundled invoice kata: no key, no network needed.",
    )
    parser.add_argument("--headless", action="store_true", help="no screen; JSON events on stdout")
    parser.add_argument(
        "--live",
        action="store_true",
        help="the same kata against your real model (OPENAI_API_KEY or OPENAI_BASE_URL)",
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="N|max",
        help="how fast the scripted model plays (default 1)",
    )
    args = parser.parse_args(argv)
    repo = make_kata(Path(tempfile.mkdtemp(prefix="codexloop-demo-")))
    print(f"codexloop demo: kata repository at {repo}", file=sys.stderr)
    if args.live:
        if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
            return _fail("demo --live needs OPENAI_API_KEY or OPENAI_BASE_URL (and a model)")
        try:
            config = load_config(Settings(targets=(TARGET,), repo=repo))
        except ConfigError as exc:
            return _fail(str(exc))
        if args.headless:
            from codexloop.cli.headless import run_headless

            return run_headless(config)
        return open_app(config)
    with ReplayServer(
        demo_turns(), speed=args.speed, model="scripted-demo", after=answer_review
    ) as server:
        config = demo_config(repo, server.base_url)
        loop = Loop(config, client=make_client(server.base_url, "demo"), review=not args.headless)
        return _run_front(
            config, loop, open_app, headless=args.headless, banner="scripted demo: not a live model"
        )


def replay(argv: Sequence[str], open_app: OpenApp) -> int:
    from codexloop.core import gitops
    from codexloop.core.config import Config
    from codexloop.core.loop import Loop
    from codexloop.core.model import make_client
    from codexloop.core.replay import ReplayServer, TraceError, read_recording

    parser = _Parser(prog="codexloop replay", description="Play a recorded session back.")
    parser.add_argument("trace", type=Path, metavar="TRACE", help="a session trace (.jsonl)")
    parser.add_argument("--headless", action="store_true", help="no screen; JSON events on stdout")
    parser.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="N|max",
        help="1 plays the recorded timing, 4 four times faster, max at once (default 1)",
    )
    parser.add_argument(
        "--repo", type=Path, metavar="PATH", help="the repository (default: the recorded one)"
    )
    args = parser.parse_args(argv)
    try:
        recording = read_recording(args.trace)
    except TraceError as exc:
        return _fail(str(exc))
    header = recording.header
    try:
        repo = gitops.toplevel((args.repo or Path(str(header["repo"]))).expanduser())
        targets = tuple(str(t) for t in header["targets"])
        base = str(header["base"])
    except (KeyError, TypeError):
        return _fail(
            f"{args.trace}: its header lacks the repository, base or targets; cannot replay it"
        )
    if repo is None:
        return _fail(f"{args.repo or header['repo']} is not a git checkout; pass --repo PATH")
    with ReplayServer(
        recording.turns, speed=args.speed, model=str(header.get("model", "replay"))
    ) as server:
        config = Config(
            repo=repo.resolve(),
            targets=targets,
            target_files=tuple(header.get("target_files") or ()),
            model=str(header.get("model", "replay")),
            base_url=server.base_url,
            api_key="replay",
            api="chat",
            task=str(header.get("task") or ""),
            test_cmd=header.get("test_cmd"),
            max_iterations=int(header.get("max_iterations", 10)),
            max_tool_calls=int(header.get("max_tool_calls", 40)),
        )
        loop = Loop(
            config, client=make_client(server.base_url, "replay"), base=base, write_trace=False
        )
        status = _run_front(
            config, loop, open_app, headless=args.headless, banner=f"replay of {args.trace.name}"
        )
        replayed = loop.test_outcomes
    if replayed != recording.outcomes:
        print(
            f"codexloop replay: the replay diverged from the recording (test outcomes recorded "
            f"{recording.outcomes}, replayed {replayed})",
            file=sys.stderr,
        )
    return status


def run_subcommand(name: str, argv: Sequence[str], open_app: OpenApp) -> int:
    handlers: dict[str, Callable[[], int]] = {
        "branches": lambda: branches(argv),
        "clean": lambda: clean(argv),
        "demo": lambda: demo(argv, open_app),
        "replay": lambda: replay(argv, open_app),
    }
    handler = handlers.get(name)
    if handler is None:
        return _fail(f"codexloop {name} is not available in this version yet")
    try:
        return handler()
    except CodexloopError as exc:  # a bad command line, a repository git refuses...
        return _failed(exc)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
