"""Subcommands: ``branches``, ``clean``, ``demo``, ``replay`` and ``resume``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from codexloop.cli.args import (
    OpenApp,
    _fail,
    _failed,
    _internal_error,
    _Parser,
    build_parser,
    require_terminal,
    run_loop,
)
from codexloop.core.errors import EXIT_INTERRUPTED, CodexloopError
from codexloop.core.words import counted

if TYPE_CHECKING:
    from codexloop.core.config import Config
    from codexloop.core.gitops import PreviewBranch
    from codexloop.core.loop import Loop
    from codexloop.core.race import Race
    from codexloop.core.replay import Recording


REPO_HELP = "the git checkout whose preview branches these are (default: current directory)"


def _repo(path: Path | None) -> Path | None:
    from codexloop.core import gitops

    return gitops.toplevel((path or Path.cwd()).resolve())


def branches(argv: Sequence[str]) -> int:
    from codexloop.core import gitops

    parser = _Parser(prog="codexloop branches", description="List codexloop's preview branches.")
    parser.add_argument("--repo", type=Path, metavar="PATH", help=REPO_HELP)
    args = parser.parse_args(argv)
    repo = _repo(args.repo)
    if repo is None:
        return _fail(f"{args.repo or Path.cwd()} is not inside a git checkout")
    found = gitops.preview_branches(repo)
    if not found:
        print("no preview branches")
    can_resume = _resumable(repo, {b.name for b in found})
    races: dict[str, list[PreviewBranch]] = {}
    for branch in found:
        session, _, attempt = branch.name.removeprefix(gitops.PREVIEW_PREFIX).rpartition("/")
        if session and re.fullmatch(r"a\d+", attempt):
            races.setdefault(session, []).append(branch)
    shown: set[str] = set()
    for branch in found:
        session = branch.name.removeprefix(gitops.PREVIEW_PREFIX).rpartition("/")[0]
        if session in races:
            if session not in shown:  # the attempts of a race, together under it
                shown.add(session)
                print(_race_header(session, races[session]))
                for one in races[session]:
                    label = one.name.rpartition("/")[2]
                    print("  " + _branch_line(one, label, can_resume.get(one.name)))
            continue
        print(_branch_line(branch, branch.name, can_resume.get(branch.name)))
    if can_resume:
        print("resume one with: codexloop resume BRANCH (the latest: codexloop resume --last)")
    return 0


def _resumable(repo: Path, names: set[str]) -> dict[str, str]:
    """Branch -> how its session ended, for the sessions that can be resumed."""
    from codexloop.core import resume

    found = {}
    for record in resume.records(repo):
        if record.branch not in found and resume.resumable(record, names) is None:
            ended = "crashed" if record.status == resume.RUNNING else record.status
            found[record.branch] = f"{ended} after {counted(record.iterations, 'iteration')}"
    return found


def _branch_line(branch: PreviewBranch, label: str, resumable: str | None = None) -> str:
    where = f"  worktree {branch.worktree}" if branch.worktree else ""
    stamp = branch.committed_at.strftime("%Y-%m-%d %H:%M")
    can = f"  [resumable: {resumable}]" if resumable else ""
    return f"{label}  {branch.sha[:10]}  {stamp}  {branch.subject}{where}{can}"


def _race_header(session: str, attempts: list[PreviewBranch]) -> str:
    """``codexloop/<session>/``, how many attempts are kept, and the winner when the session's
    index (beside its traces) names one."""
    from codexloop.core.gitops import PREVIEW_PREFIX
    from codexloop.core.trace import traces_dir

    header = f"{PREVIEW_PREFIX}{session}/  race: {counted(len(attempts), 'attempt branch', 'attempt branches')} kept"
    try:
        index = json.loads((traces_dir() / session / "index.json").read_text())
    except (OSError, ValueError):
        return header
    winner = index.get("winner") if isinstance(index, dict) else None
    return header + (f", winner a{winner}" if isinstance(winner, int) else ", no winner")


def clean(argv: Sequence[str]) -> int:
    from codexloop.core import gitops
    from codexloop.core.leftovers import remove_preview_branch

    parser = _Parser(
        prog="codexloop clean",
        description="Remove codexloop's preview branches and worktrees, and kill whatever "
        "their sessions left running.",
    )
    parser.add_argument("--repo", type=Path, metavar="PATH", help=REPO_HELP)
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
        killed = remove_preview_branch(repo, branch)
        if killed:
            print(f"killed {counted(killed, 'process', 'processes')} left running by {branch.name}")
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
    config: Config,
    loop: Loop | Race,
    open_app: OpenApp,
    *,
    headless: bool,
    banner: str,
    throwaway: bool,
) -> int:
    """The session in the app or headless; ``throwaway``: its branch is removed afterwards."""
    if headless:
        from codexloop.cli.headless import run_headless

        return run_headless(config, loop=loop)
    return open_app(
        config,
        loop_factory=lambda _config: loop,
        check_endpoint=False,
        banner=banner,
        throwaway=throwaway,
    )


def demo(argv: Sequence[str], open_app: OpenApp) -> int:
    from codexloop.core.demo import make_kata
    from codexloop.core.leftovers import remove_kata

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
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the kata repository and its preview branch afterwards (default: removed)",
    )
    args = parser.parse_args(argv)
    # Everything that can refuse the demo does so before the kata exists.
    if not args.headless:
        require_terminal()
    if args.live and not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
        return _fail("demo --live needs OPENAI_API_KEY or OPENAI_BASE_URL (and a model)")
    root = Path(tempfile.mkdtemp(prefix="codexloop-demo-"))
    made = False
    try:
        repo = make_kata(root)
        made = True
        kept = " (kept: --keep)" if args.keep else " (removed when the demo ends; --keep keeps it)"
        print(f"codexloop demo: kata repository at {repo}{kept}", file=sys.stderr)
        if args.live:
            return _live_demo(repo, open_app, headless=args.headless, keep=args.keep)
        return _scripted_demo(
            repo, open_app, headless=args.headless, speed=args.speed, keep=args.keep
        )
    finally:
        if not args.keep:
            remove_kata(root, root / "invoice-kata")
            if made:
                print(
                    "codexloop demo: removed the kata, its worktree and branch (--keep keeps them)",
                    file=sys.stderr,
                )


def _live_demo(repo: Path, open_app: OpenApp, *, headless: bool, keep: bool) -> int:
    from codexloop.core.config import Settings, load_config
    from codexloop.core.demo import TARGET

    config = load_config(Settings(targets=(TARGET,), repo=repo))  # no model: one line, exit 2
    if headless:
        from codexloop.cli.headless import run_headless

        return run_headless(config)
    return open_app(config, throwaway=not keep)


def _scripted_demo(
    repo: Path, open_app: OpenApp, *, headless: bool, speed: float | None, keep: bool
) -> int:
    from codexloop.core.demo import answer_review, demo_config, demo_turns
    from codexloop.core.loop import Loop
    from codexloop.core.model import make_client
    from codexloop.core.replay import ReplayServer

    with ReplayServer(
        demo_turns(), speed=speed, model="scripted-demo", after=answer_review
    ) as server:
        config = demo_config(repo, server.base_url)
        loop = Loop(
            config,
            client=make_client(server.base_url, "demo"),
            review=not headless,
            write_trace=False,  # the kata it would replay on is gone after the demo
        )
        return _run_front(
            config,
            loop,
            open_app,
            headless=headless,
            banner="scripted demo: not a live model",
            throwaway=not keep,
        )


def replay(argv: Sequence[str], open_app: OpenApp) -> int:
    from codexloop.core import gitops
    from codexloop.core.replay import TraceError, read_recording

    parser = _Parser(prog="codexloop replay", description="Play a recorded session back.")
    parser.add_argument(
        "trace",
        type=Path,
        metavar="TRACE",
        help="a session trace (.jsonl), or a race's folder of traces (or its index.json)",
    )
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
    index = args.trace / "index.json" if args.trace.is_dir() else args.trace
    try:
        if index.name == "index.json":
            traces, pick = _race_traces(index)
        else:
            traces, pick = [args.trace], "first"
        recordings = [read_recording(trace) for trace in traces]
    except TraceError as exc:
        return _fail(str(exc))
    header = recordings[0].header
    try:
        repo = gitops.toplevel((args.repo or Path(str(header["repo"]))).expanduser())
        targets = tuple(str(t) for t in header["targets"])
        base = str(header["base"])
    except (KeyError, TypeError):
        return _fail(
            f"{traces[0]}: its header lacks the repository, base or targets; cannot replay it"
        )
    if repo is None:
        return _fail(f"{args.repo or header['repo']} is not a git checkout; pass --repo PATH")
    if not args.headless:
        require_terminal()
    return _replay(args, open_app, recordings, repo.resolve(), targets, base, pick)


def _race_traces(index: Path) -> tuple[list[Path], str]:
    """The attempts' traces a race's ``index.json`` lists, in order, and its pick."""
    from codexloop.core.replay import TraceError

    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        attempts = sorted(data["attempts"], key=lambda a: int(a["attempt"]))
        traces = [Path(str(a["trace"])) for a in attempts]
        pick = str(data.get("pick") or "first")
    except FileNotFoundError:
        raise TraceError(f"{index}: no such race index") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TraceError(f"{index}: not a race's index of traces ({exc})") from None
    if not traces or any(not trace.name for trace in traces):
        raise TraceError(f"{index}: the race's index names no traces")
    return traces, pick if pick in ("first", "best") else "first"


def _replay(
    args: argparse.Namespace,
    open_app: OpenApp,
    recordings: list[Recording],
    repo: Path,
    targets: tuple[str, ...],
    base: str,
    pick: str,
) -> int:
    """Serve each attempt's recorded turns on its own server; run the session (a race when
    there are several) from the recorded base; say where the replay diverged."""
    from codexloop.core.config import Config
    from codexloop.core.leftovers import discard_session
    from codexloop.core.loop import Loop
    from codexloop.core.model import make_client
    from codexloop.core.race import Race
    from codexloop.core.replay import ReplayServer

    header = recordings[0].header
    models = [str(r.header.get("model", "replay")) for r in recordings]
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(ReplayServer(r.turns, speed=args.speed, model=model))
            for r, model in zip(recordings, models, strict=True)
        ]
        config = Config(
            repo=repo,
            targets=targets,
            target_files=tuple(header.get("target_files") or ()),
            model=",".join(models),
            base_url=servers[0].base_url,
            api_key="replay",
            api="chat",
            task=str(header.get("task") or ""),
            test_cmd=header.get("test_cmd"),
            max_iterations=int(header.get("max_iterations", 10)),
            max_tool_calls=int(header.get("max_tool_calls", 40)),
            attempts=len(recordings),
            pick=pick,
        )
        clients = [make_client(server.base_url, "replay") for server in servers]
        loop: Loop | Race = (
            Race(config, clients=clients, base=base, write_trace=False)
            if len(recordings) > 1
            else Loop(config, client=clients[0], base=base, write_trace=False)
        )
        try:
            status = _run_front(
                config,
                loop,
                open_app,
                headless=args.headless,
                banner=f"replay of {args.trace.name}",
                throwaway=True,
            )
        finally:
            # The recorded session keeps its own branch: a replay's copy is no work of its own.
            discard_session(loop, always=True)
    loops = loop.loops if isinstance(loop, Race) else [loop]
    for number, (one, recording) in enumerate(zip(loops, recordings, strict=True), 1):
        if one.test_outcomes != recording.outcomes:
            which = f" (attempt {number})" if len(loops) > 1 else ""
            print(
                f"codexloop replay: the replay diverged from the recording{which} (test "
                f"outcomes recorded {recording.outcomes}, replayed {one.test_outcomes})",
                file=sys.stderr,
            )
    return status


def resume(argv: Sequence[str], open_app: OpenApp) -> int:
    """``codexloop resume [BRANCH | --last] [OPTIONS]``: the session's own options, with the
    ones given here on top."""
    from codexloop.core import resume as records

    args = build_parser(resume=True).parse_args(argv)
    racing = [f"--{name}" for name in ("attempts", "pick", "jobs", "ray") if getattr(args, name)]
    if racing or args.continue_from or args.hint:
        given = racing + ["--continue"] * bool(args.continue_from) + ["--hint"] * bool(args.hint)
        return _fail(
            f"{', '.join(given)}: a resume goes on with one session as it was, on this machine "
            "(resume one attempt of a race by its branch; start a new race with codexloop "
            "TARGET --attempts N)"
        )
    repo = _repo(args.repo)
    if repo is None:
        return _fail(f"{args.repo or Path.cwd()} is not inside a git checkout")
    found = records.find(repo, args.branch)
    with records.claim(found):
        # Held now: the record as it is, checked again (another resume may have just ended).
        record = records.find(repo, found.branch)
        if args.guard is not None and args.guard != record.settings.get("guard"):
            # The kept verdict is of the session's own guard: another one is taken afresh.
            record.guard_passed = None
        print(
            f"codexloop: resuming {record.branch} "
            f"({'crashed' if record.status == records.RUNNING else record.status} after "
            f"{counted(record.iterations, 'iteration')})",
            file=sys.stderr,
        )
        try:
            return run_loop(args, open_app, resumed=record)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except CodexloopError:
            raise  # its line and status, as for every subcommand
        except Exception as exc:  # a bug of ours: one line, the details in a file
            return _internal_error(exc)


def run_subcommand(name: str, argv: Sequence[str], open_app: OpenApp) -> int:
    def batch() -> int:
        from codexloop.cli.batch import batch as run_batch  # anyio and the engine: only now

        return run_batch(argv)

    handlers: dict[str, Callable[[], int]] = {
        "batch": batch,
        "branches": lambda: branches(argv),
        "clean": lambda: clean(argv),
        "demo": lambda: demo(argv, open_app),
        "replay": lambda: replay(argv, open_app),
        "resume": lambda: resume(argv, open_app),
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
