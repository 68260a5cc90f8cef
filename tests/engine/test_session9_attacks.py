"""Session 9's changes, attacked: the warm server's unfiltered module report and preloads,
the engine's own checkout of a model-written tree, and the headless endpoint check beside
the set-up.

Each test is an attack, written by a second pair of eyes and seen to succeed first: a reported
``unittest.__main__`` ran the run's code in the warm server; a ``pkgutil`` namespace package
took in the run tree's folder there; a ``..`` path in a crafted tree wrote a hook into the
developer's ``.git``. Each now fails: the server imports with the project off its path (no
``__main__``, no module that acts when imported), and a model-written tree with a path git
refuses is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_git
from loophelpers import KATA, warm_session_stays_red
from scripted_openai import Call, Reply

from codexloop.core.sandbox import Sandbox, state_home

pytestmark = pytest.mark.anyio

WRONG = "def add(a, b):\n    return a - b\n"


# ------------------------------------------------ 1. the warm server's module report

# What the payload does once it runs in the server: a module ``calc`` with the right ``add``
# in sys.modules (every later fork inherits it: the test's ``from calc import add`` finds it
# imported), and a mark in the server's temp folder so that the scripted model answers only
# once the server has it (a real model thinks for seconds; the engine resets the run tree
# only before the next run).
PAYLOAD = textwrap.dedent(
    """\
    import os, sys, types
    if "calc" not in sys.modules:  # the server (in the run, calc is being imported)
        sys.exit = lambda *args, **kwargs: None  # an exit a main module calls: ignored
        _calc = types.ModuleType("calc")
        exec("def add(a, b):\\n    return a + b\\n", _calc.__dict__)
        sys.modules["calc"] = _calc
        open(os.path.join(os.environ["TMPDIR"], "planted-in-server"), "w").close()
    """
)


def _planted() -> bool:
    return any((state_home() / "runs").glob("*/tmp/planted-in-server"))


def _after_the_server_imported(reply: Reply) -> Callable[[dict[str, Any]], Reply]:
    """The model's next turn, given once the payload ran in the server (or 20 s passed:
    the attack failed)."""

    def turn(request: dict[str, Any]) -> Reply:
        deadline = time.monotonic() + 20
        while not _planted() and time.monotonic() < deadline:
            time.sleep(0.05)
        return reply

    return turn


async def _plant_then_wrong(
    make_repo: Any, scripted_openai: Any, calc: str, files: dict[str, str] = KATA
) -> None:
    """Turn 1 writes ``calc`` (the attack, and add wrong), turn 2 plain wrong code: with the
    defence, all three runs (baseline, 1, 2) are red."""
    repo = make_repo(files)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": calc + WRONG})]),
        Reply(text="Done."),
        _after_the_server_imported(
            Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})])
        ),
        Reply(text="Done again."),
    )
    await warm_session_stays_red(repo, scripted_openai.base_url)
    assert not _planted()


# The run (a fork of a fork of the server) reads the server's command line: ``python
# codexloop_warm_server.py <control fd> <run tree>``. ``python -m unittest`` imported as a
# module (``unittest.__main__``, standard library: outside the project) runs
# ``unittest.main()`` with the server's own sys.argv: it imports the test names it is given,
# the first being the control descriptor's number, as a module, from the server's sys.path,
# whose first entry is the server's working directory: the run tree, which the run can
# write. The run writes ``<fd>.py`` there and reports ``unittest.__main__``; the server
# imports it, and with it the run's module.
UNITTEST_MAIN = textwrap.dedent(
    """\
    import os
    import sys
    import types

    _PAYLOAD = {payload!r}


    def _parent(pid):
        with open(f"/proc/{{pid}}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])


    try:
        _server = _parent(os.getppid())
        with open(f"/proc/{{_server}}/cmdline", "rb") as _h:
            _argv = [a.decode() for a in _h.read().split(b"\\0") if a]
        if _argv[1].endswith("codexloop_warm_server.py"):
            with open(os.path.join(_argv[3], _argv[2] + ".py"), "w") as _f:
                _f.write(_PAYLOAD)
            sys.modules["unittest.__main__"] = types.ModuleType("unittest.__main__")
    except (OSError, IndexError, ValueError):
        pass
    """
).format(payload=PAYLOAD)


@pytest.mark.parametrize("bwrap", [True, False], ids=["bwrap", "no-bwrap"])
async def test_a_reported_main_module_never_runs_the_runs_code_in_the_server(
    make_repo, scripted_openai, request, bwrap: bool
) -> None:
    if not bwrap:
        request.getfixturevalue("no_bwrap")
    await _plant_then_wrong(make_repo, scripted_openai, UNITTEST_MAIN)


# setuptools (once imported) puts its ``_vendor`` folder on sys.path; there ``backports`` is
# a pkgutil-style namespace package: its ``__init__`` extends ``__path__`` with every
# ``backports`` folder on sys.path, the run tree's (the server's sys.path[0]) among them.
# ``_outside`` asks where the top-level ``backports`` resolves (setuptools' folder: outside)
# and the server imports ``backports.warmplant``, which then comes from the run tree.
BACKPORTS = textwrap.dedent(
    """\
    import os

    _PAYLOAD = {payload!r}
    try:
        os.makedirs("backports", exist_ok=True)  # the run's working directory: the run tree
        with open(os.path.join("backports", "warmplant.py"), "w") as _f:
            _f.write(_PAYLOAD)
        import setuptools  # noqa: F401
        import backports.warmplant  # noqa: F401
    except Exception:
        pass
    """
).format(payload=PAYLOAD)


async def test_a_pkgutil_namespace_package_never_brings_a_run_module_into_the_server(
    make_repo, scripted_openai
) -> None:
    await _plant_then_wrong(make_repo, scripted_openai, BACKPORTS)


# A project with ``src/`` has it on the server's path (the sandbox's source roots). The run
# replaces the run tree's ``src`` with a link to a folder of its own (its TMPDIR) holding a
# module, and imports it: by its real path the module lives outside the project, and so does
# the path entry, though both are named inside it.
SRC_LINK = textwrap.dedent(
    """    import os
    import shutil

    _PAYLOAD = {payload!r}
    try:
        _own = os.path.join(os.environ["TMPDIR"], "elsewhere")
        os.makedirs(_own, exist_ok=True)
        with open(os.path.join(_own, "srclinked.py"), "w") as _f:
            _f.write(_PAYLOAD)
        if os.path.isdir("src") and not os.path.islink("src"):
            shutil.rmtree("src")
            os.symlink(_own, "src")
        import srclinked  # noqa: F401
    except Exception:
        pass
    """
).format(payload=PAYLOAD)


async def test_a_path_entry_linked_out_of_the_project_never_brings_a_run_module_in(
    make_repo, scripted_openai
) -> None:
    files = {**KATA, "src/helper.py": "X = 1\n"}
    await _plant_then_wrong(make_repo, scripted_openai, SRC_LINK, files)


# ----------------------------------- 2. the engine's checkout of a model-written tree


def _object(repo: Path, kind: str, data: bytes) -> str:
    done = subprocess.run(
        ["git", "hash-object", "-t", kind, "--literally", "-w", "--stdin"],
        cwd=repo,
        input=data,
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip()


def _tree(repo: Path, entries: list[tuple[str, str, str]]) -> str:
    """A tree object of ``(mode, name, id)`` entries, as given: no name is checked."""
    data = b"".join(
        f"{mode} ".encode() + os.fsencode(name) + b"\0" + bytes.fromhex(sha)
        for mode, name, sha in entries
    )
    return _object(repo, "tree", data)


def _commit_on(repo: Path, branch: str, entries: list[tuple[str, str, str]]) -> None:
    """A commit on ``branch`` whose tree is the branch tip's plus ``entries`` (as a node's
    bundle could bring it home: git fetch checks no tree by default)."""
    tip = run_git(repo, "rev-parse", branch).strip()
    listed = run_git(repo, "ls-tree", tip).splitlines()
    kept = []
    for line in listed:
        meta, name = line.split("\t", 1)
        mode, _kind, sha = meta.split()
        kept.append((mode, name, sha))
    tree = _tree(repo, kept + entries)
    commit = run_git(repo, "commit-tree", tree, "-p", tip, "-m", "iteration 2").strip()
    run_git(repo, "update-ref", f"refs/heads/{branch}", commit)


def _climb_to(
    repo: Path, start: Path, rel: str, data: bytes, mode: str = "100755"
) -> tuple[str, str, str]:
    """A top-level tree entry whose path, read from ``start``, leads through ``..`` to
    ``rel`` in ``repo`` (the real path, every folder of it a folder)."""
    target = (repo.resolve() / rel).parts[1:]  # from the root down
    sha = _object(repo, "blob", data)
    entry = (mode, target[-1], sha)
    for part in reversed(target[:-1]):
        entry = ("40000", part, _tree(repo, [entry]))
    for _ in start.resolve().parts[1:]:  # up to the root
        entry = ("40000", "..", _tree(repo, [entry]))
    return entry


HOOK = b"#!/bin/sh\necho the model's hook ran on the host\n"


@pytest.mark.parametrize("how", ["continue", "reopen"])
async def test_a_dotdot_path_in_a_model_tree_never_writes_outside_the_worktree(
    make_repo, how: str
) -> None:
    """A tree whose path climbs with ``..`` components to the developer's repository and
    names ``.git/hooks/post-checkout``: written by the run tree's writer it would be a hook
    the developer's next ``git checkout`` runs on the host."""
    repo = make_repo(KATA)
    box = Sandbox.create(repo, "hostile")
    name, branch, base = box.name, box.branch, box.base
    worktree = box.worktree
    # The tree's top level gains ``..``: its path, seen from the worktree, climbs to the root.
    _commit_on(repo, branch, [_climb_to(repo, worktree, ".git/hooks/post-checkout", HOOK)])
    hook = repo / ".git" / "hooks" / "post-checkout"
    try:
        if how == "reopen":
            run_git(repo, "worktree", "remove", "--force", str(worktree))
            with contextlib.suppress(Exception):
                Sandbox.reopen(repo, name, branch, base).remove()
        else:
            box.remove()
            with contextlib.suppress(Exception):
                Sandbox.create(repo, "again", continue_from=branch).remove(delete_branch=True)
        assert not hook.exists(), ("a hook in the developer's repository", oct(hook.stat().st_mode))
    finally:
        hook.unlink(missing_ok=True)


@pytest.mark.parametrize("hostile", ["link-then-file", "dot-git"])
@pytest.mark.parametrize("how", ["continue", "reopen"])
async def test_a_link_then_a_file_under_it_or_a_dot_git_entry_stays_inside(
    make_repo, tmp_path: Path, how: str, hostile: str
) -> None:
    """A tree with ``d`` a link to a folder outside and ``d/planted`` a file under it, or a
    ``.git`` file of its own (a git link to a git dir the model chose): the writer follows no
    link and the worktree's git link stays the engine's."""
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = make_repo(KATA)
    box = Sandbox.create(repo, "hostile")
    name, branch, base, worktree = box.name, box.branch, box.base, box.worktree
    if hostile == "link-then-file":
        link = _object(repo, "blob", os.fsencode(outside))
        planted = _tree(repo, [("100644", "planted", _object(repo, "blob", b"x\n"))])
        _commit_on(repo, branch, [("120000", "d", link), ("40000", "d", planted)])
    else:
        theirs = _object(repo, "blob", f"gitdir: {tmp_path / 'theirs'}\n".encode())
        _commit_on(repo, branch, [("100644", ".git", theirs)])
    if how == "reopen":
        run_git(repo, "worktree", "remove", "--force", str(worktree))
        with contextlib.suppress(Exception):
            Sandbox.reopen(repo, name, branch, base)
        where = worktree
    else:
        box.remove()
        with contextlib.suppress(Exception):
            Sandbox.create(repo, "again", continue_from=branch)
        where = worktree.with_name("again")
    assert list(outside.iterdir()) == []
    if (where / ".git").exists():
        assert "theirs" not in (where / ".git").read_text()
