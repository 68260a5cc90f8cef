"""Subcommands: ``branches``, ``clean`` (and, to come, ``demo`` and ``replay``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from codexloop.tui.cli import UsageError, _fail, _Parser


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

    parser = _Parser(
        prog="codexloop clean", description="Remove codexloop's preview branches and worktrees."
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
        if branch.worktree is not None:
            gitops.remove_worktree(repo, branch.worktree, branch.name)
        else:
            gitops.git(repo, "branch", "-D", branch.name)
        print(f"removed {branch.name}")
    return 0


def run_subcommand(name: str, argv: Sequence[str]) -> int:
    handlers = {"branches": branches, "clean": clean}
    handler = handlers.get(name)
    if handler is None:
        return _fail(f"codexloop {name} is not available in this version yet")
    try:
        return handler(argv)
    except UsageError as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
