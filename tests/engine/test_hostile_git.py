"""A hostile model against host-side git: nothing it writes is interpreted on the host.

Each attack plants git configuration where the host's git used to read it (a nested
repository with a clean filter, a textconv, a diff driver, an fsmonitor hook; an empty one;
names git refuses) and asserts both containment — the marker the planted commands would
write outside the sandbox never appears — and that the engine finished with the iteration
recorded. With and without bubblewrap.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from conftest import run_git
from loophelpers import KATA, edit, make_config, of_type, run_loop
from scripted_openai import Call, Reply

from codexloop.core import events as ev

pytestmark = pytest.mark.anyio


def _nested_repo_script(folder: str, marker: Path) -> str:
    """Shell that makes ``folder`` a repository whose configuration runs ``touch marker``."""
    touch = f"touch {shlex.quote(str(marker))}"
    return "\n".join(
        [
            f"mkdir -p {folder} && cd {folder} && git init -q . && echo x > f.txt",
            "git -c user.name=m -c user.email=m@m add f.txt",
            "git -c user.name=m -c user.email=m@m commit -qm init",
            "echo changed > f.txt",
            f"git config filter.evil.clean '{touch}; cat'",
            f"git config filter.evil.smudge '{touch}; cat'",
            f"git config diff.evil.textconv '{touch}; cat'",
            f"git config diff.external '{touch}'",
            f"git config core.fsmonitor '{touch}'",
            "printf '* filter=evil diff=evil\\n' > .gitattributes",
            "cd - >/dev/null",
            "printf '* filter=evil diff=evil\\n' > .gitattributes",
        ]
    )


def _assert_finished_and_recorded(repo: Path, events: list[ev.Event], path: str) -> None:
    finished = of_type(events, ev.LoopFinished)
    assert finished and finished[-1].status == "passed"
    iteration = of_type(events, ev.IterationFinished)[0]
    assert iteration.commit is not None
    listing = run_git(repo, "ls-tree", "-r", "--name-only", iteration.commit)
    assert path in listing.splitlines()


@pytest.mark.parametrize("bwrap", [True, False], ids=["bwrap", "no-bwrap"])
async def test_a_nested_repository_made_by_a_command_runs_nothing_on_the_host(
    make_repo, scripted_openai, tmp_path, request, bwrap
) -> None:
    if not bwrap:
        request.getfixturevalue("no_bwrap")
    repo = make_repo(KATA)
    marker = tmp_path / "ran-on-the-host"
    scripted_openai.add(
        Reply(tool_calls=[Call("run_command", {"command": _nested_repo_script("vendor", marker)})]),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))

    assert not marker.exists(), "model-written git configuration ran on the host"
    _assert_finished_and_recorded(repo, events, "vendor/f.txt")
    left_out = " ".join(n.message for n in of_type(events, ev.Notice))
    assert "vendor/.git" in left_out
    # Nothing of the nested repository's metadata is on the preview branch.
    listing = run_git(repo, "ls-tree", "-r", "--name-only", result.branch)
    assert not [p for p in listing.splitlines() if "/.git/" in p or p.endswith("/.git")]
    # The developer's own repository carries none of it either.
    assert "evil" not in run_git(repo, "config", "--list", "--local")


async def test_a_nested_repository_made_by_the_code_under_test_runs_nothing_on_the_host(
    make_repo, scripted_openai, tmp_path
) -> None:
    repo = make_repo(KATA)
    marker = tmp_path / "ran-on-the-host"
    script = _nested_repo_script("made_by_test", marker)
    code = (
        "import subprocess\n"
        f"subprocess.run(['bash', '-c', {script!r}], capture_output=True)\n\n"
        "def add(a, b):\n    return a + b\n"
    )
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": code})]),
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))

    assert not marker.exists(), "git configuration written by the test run ran on the host"
    assert of_type(events, ev.LoopFinished)[-1].status == "passed"
    assert result.head is not None


async def test_an_empty_nested_repository_does_not_stop_the_engine(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call("run_command", {"command": "mkdir -p empty && git init -q empty"}),
                Call("write_file", {"path": "empty/note.txt", "content": "kept\n"}),
                edit("calc.py", "a - b", "a + b"),
            ]
        ),
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))

    _assert_finished_and_recorded(repo, events, "empty/note.txt")
    assert result.status == "passed"


@pytest.mark.parametrize(
    "name", [".GIT/config", "x/.git /hooks", "y/.Git./config", "z/git~1/config", "w/a\\b"]
)
async def test_names_git_refuses_are_left_out_and_the_iteration_is_recorded(
    make_repo, scripted_openai, name
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call(
                    "run_command",
                    {
                        "command": f"mkdir -p {shlex.quote(str(Path(name).parent))} && "
                        f"echo '[core]' > {shlex.quote(name)}"
                    },
                ),
                edit("calc.py", "a - b", "a + b"),
            ]
        ),
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))

    _assert_finished_and_recorded(repo, events, "calc.py")
    assert result.status == "passed"
    listing = run_git(repo, "ls-tree", "-r", "--name-only", result.branch)
    assert name not in listing
    notices = " ".join(n.message for n in of_type(events, ev.Notice))
    assert "left out" in notices


async def test_a_fifo_and_a_huge_file_are_left_out_with_a_notice(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call(
                    "run_command",
                    {
                        "command": "mkfifo pipe && mkfifo .gitignore.d && "
                        "head -c 60000000 /dev/zero > big.bin"
                    },
                ),
                edit("calc.py", "a - b", "a + b"),
            ]
        ),
        Reply(text="Fixed."),
    )
    result, events = await run_loop(make_config(repo, scripted_openai.base_url))

    _assert_finished_and_recorded(repo, events, "calc.py")
    listing = run_git(repo, "ls-tree", "-r", "--name-only", result.branch).splitlines()
    assert "pipe" not in listing and "big.bin" not in listing
    notices = " ".join(n.message for n in of_type(events, ev.Notice))
    assert "big.bin" in notices and "pipe" in notices
    # The 60 MB never reached the developer's object store.
    size = sum(f.stat().st_size for f in (repo / ".git" / "objects").rglob("*") if f.is_file())
    assert size < 20_000_000


# -- a model-written branch checked out on the host ------------------------------------------------


def _developer_filter(repo: Path, marker: Path) -> None:
    """The developer's repository defines a smudge filter (as git-lfs does): a program of theirs
    that git runs on checkout for the paths a ``.gitattributes`` routes to it."""
    touch = f"touch {shlex.quote(str(marker))}"
    run_git(repo, "config", "filter.dev.smudge", f"sh -c '{touch}; cat'")
    run_git(repo, "config", "filter.dev.clean", "cat")


ROUTE = Call("write_file", {"path": ".gitattributes", "content": "* filter=dev\n"})


async def _branch_routed_to_a_developer_filter(
    make_repo: Any, scripted_openai: Any, tmp_path: Path
) -> tuple[Path, Path, Any]:
    """A repository whose config defines a smudge filter writing ``marker``, and a red session
    whose model routed every file to it (``.gitattributes``) and changed ``calc.py``."""
    repo = make_repo(KATA)
    marker = tmp_path / "smudged"
    _developer_filter(repo, marker)
    scripted_openai.add(
        Reply(tool_calls=[ROUTE, edit("calc.py", "a - b", "a * b")]), Reply(text="Hmm.")
    )
    first, _ = await run_loop(make_config(repo, scripted_openai.base_url, max_iterations=1))
    assert first.status == "failed"
    return repo, marker, first


async def test_continuing_a_branch_whose_attributes_name_a_developer_filter_runs_nothing(
    make_repo, scripted_openai, tmp_path
) -> None:
    """The model's ``.gitattributes`` routes every file through the developer's smudge filter;
    ``--continue`` checks its branch out on the host: the filter must not run (with git-lfs,
    a smudge of the model's pointer files fetches from a URL its ``.lfsconfig`` names)."""
    repo, marker, first = await _branch_routed_to_a_developer_filter(
        make_repo, scripted_openai, tmp_path
    )
    assert not marker.exists()  # nothing checked the model's tree out yet

    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a * b", "a + b")]), Reply(text="Done."))
    config = make_config(repo, scripted_openai.base_url, continue_from=first.branch)
    second, _ = await run_loop(config)
    assert not marker.exists(), "the developer's smudge filter ran on the model's tree"
    assert second.status == "passed"  # the files are there all the same
    assert "a * b" in user_texts_of(scripted_openai.requests[2])


async def test_reopening_a_removed_worktree_runs_no_developer_filter(
    make_repo, scripted_openai, tmp_path
) -> None:
    """``codexloop resume`` of a session whose worktree was removed checks its branch out again
    (``Sandbox.reopen``): the model's attributes must not reach the developer's filters."""
    from codexloop.core.sandbox import Sandbox

    repo, marker, first = await _branch_routed_to_a_developer_filter(
        make_repo, scripted_openai, tmp_path
    )
    run_git(repo, "worktree", "remove", "--force", str(first.worktree))
    name = first.branch.removeprefix("codexloop/")
    box = Sandbox.reopen(repo, name, first.branch, first.base)
    assert not marker.exists(), "the developer's smudge filter ran on the model's tree"
    assert (box.worktree / "calc.py").read_text() == KATA["calc.py"].replace("a - b", "a * b")
    assert (box.worktree / ".gitattributes").read_text() == "* filter=dev\n"


def user_texts_of(request: dict) -> str:
    return "\n".join(
        m["content"] for m in request["messages"] if m["role"] == "user" and m.get("content")
    )
