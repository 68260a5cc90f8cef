"""A hostile model against the engine's host-side file handling (issue 13, class 3).

Model commands can plant symlinks to secrets or folders outside the sandbox, FIFOs,
sockets, hard links and a symlinked ``tests`` folder; the engine's tools, the exam restore
and the loop's own reads run on the host, outside bubblewrap. Every test drives the real
loop against the scripted server, with and without bubblewrap, and checks containment
(nothing outside read, written or removed; nothing sent to the endpoint) and that the loop
finished with its iteration recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import run_git
from loophelpers import KATA, TEST_CALC, edit, make_config, of_type, run_loop, tool_results
from scripted_openai import Call, Reply

from codexloop.core import events as ev

pytestmark = pytest.mark.anyio

SECRET = "BEGIN-OPENSSH-PRIVATE-KEY-c0ffee"
GUARD_S = 120  # a hang fails the test instead of blocking the suite
FIX = edit("calc.py", "a - b", "a + b")


@pytest.fixture(params=["bwrap", "no-bwrap"])
def isolation(request: pytest.FixtureRequest) -> str:
    if request.param == "no-bwrap":
        request.getfixturevalue("no_bwrap")
    return str(request.param)


def _outside(tmp_path: Path) -> tuple[Path, Path]:
    """A folder outside the repository holding a secret key, like ~/.ssh."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "id_rsa"
    secret.write_text(f"{SECRET}\n")
    return outside, secret


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` with its content ('<dir>' for folders), links not followed."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), folder)] = "<dir>"
        for name in filenames:
            path = Path(dirpath, name)
            found[str(path.relative_to(folder))] = path.read_text()
    return found


def _sent(server: Any) -> str:
    """Everything the engine sent to the model endpoint."""
    return json.dumps(server.requests)


def _finished(result: Any, events: list[ev.Event], *, status: str, iterations: int) -> None:
    finished = of_type(events, ev.LoopFinished)
    assert finished and finished[-1].status == status, finished
    assert result.status == status and result.iterations == iterations
    assert len(of_type(events, ev.TestFinished)) == iterations + 1  # baseline + iterations


async def test_grep_and_list_files_do_not_follow_a_symlink_to_a_secret(
    make_repo, scripted_openai, tmp_path: Path, isolation: str
) -> None:
    outside, secret = _outside(tmp_path)
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call("run_command", {"command": f"ln -s {secret} leak.txt && ln -s tests alias"})
            ]
        ),
        Reply(
            tool_calls=[
                Call("grep", {"pattern": "OPENSSH"}),
                Call("grep", {"pattern": "OPENSSH", "path": "."}),
                Call("list_files", {}),
                Call("read_file", {"path": "leak.txt"}),
                Call("grep", {"pattern": "OPENSSH", "path": "leak.txt"}),
                # A link inside the sandbox still works as a path, and the exam behind it
                # is still the exam.
                Call("read_file", {"path": "alias/test_calc.py"}),
                Call("write_file", {"path": "alias/test_calc.py", "content": "pass\n"}),
            ]
        ),
        Reply(tool_calls=[FIX]),
        Reply(text="fixed"),
    )
    config = make_config(repo, scripted_openai.base_url)
    with anyio.fail_after(GUARD_S):
        result, events = await run_loop(config)

    assert SECRET not in _sent(scripted_openai)
    results = tool_results(scripted_openai.requests[2])[-7:]
    grep_all, grep_dot, listing, read, grep_link, read_alias, write_alias = results
    assert grep_all == "no matches" and grep_dot == "no matches"
    # The link is shown as a link, with its target's name, never its content.
    assert listing.splitlines() == [
        "alias -> tests",
        "calc.py",
        f"leak.txt -> {secret}",
        "tests/test_calc.py",
    ]
    assert read.startswith("refused:") and grep_link.startswith("refused:")
    assert read_alias == TEST_CALC
    assert write_alias.startswith("refused: tests/test_calc.py is protected")
    assert of_type(events, ev.ExamRestored) == []  # the write never happened
    assert secret.read_text() == f"{SECRET}\n"
    _finished(result, events, status="passed", iterations=1)


async def test_a_symlinked_folder_outside_is_neither_listed_nor_searched(
    make_repo, scripted_openai, tmp_path: Path, isolation: str
) -> None:
    outside, _secret = _outside(tmp_path)
    (outside / "notes").mkdir()
    (outside / "notes" / "plan.txt").write_text(f"the plan: {SECRET}\n")
    before = _tree(outside)
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call(
                    "run_command",
                    {"command": f"ln -s {outside} ssh && mkdir lib && ln -s {outside} lib/x"},
                ),
            ]
        ),
        Reply(
            tool_calls=[
                Call("list_files", {}),
                Call("grep", {"pattern": "OPENSSH|plan"}),
                Call("list_files", {"path": "lib"}),
                Call("list_files", {"path": "ssh"}),
                Call("grep", {"pattern": "plan", "path": "lib/x/notes"}),
            ]
        ),
        Reply(tool_calls=[FIX]),
        Reply(text="fixed"),
    )
    config = make_config(repo, scripted_openai.base_url)
    with anyio.fail_after(GUARD_S):
        result, events = await run_loop(config)

    sent = _sent(scripted_openai)
    assert SECRET not in sent and "id_rsa" not in sent and "plan.txt" not in sent
    listing, grep, lib, ssh, grep_in = tool_results(scripted_openai.requests[2])[-5:]
    assert f"ssh -> {outside}" in listing.splitlines()
    assert f"lib/x -> {outside}" in listing.splitlines()
    assert grep == "no matches"
    assert lib.splitlines() == [f"lib/x -> {outside}"]
    assert ssh.startswith("refused:") and grep_in.startswith("refused:")
    assert _tree(outside) == before
    _finished(result, events, status="passed", iterations=1)


@pytest.mark.parametrize("victim_kind", ["file", "folder"])
async def test_restoring_the_exam_replaces_a_symlinked_tests_folder(
    make_repo, scripted_openai, tmp_path: Path, isolation: str, victim_kind: str
) -> None:
    """`ln -s /somewhere tests`: the restore used to write through the link (an outside
    file overwritten) or rmtree what stood at tests/test_calc.py (an outside folder)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    if victim_kind == "file":
        (victim / "test_calc.py").write_text("the developer's other project\n")
    else:
        (victim / "test_calc.py").mkdir()
        (victim / "test_calc.py" / "keep.txt").write_text("precious\n")
    (victim / "other.txt").write_text("untouched\n")
    before = _tree(victim)
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(
            tool_calls=[
                FIX,
                Call(
                    "run_command",
                    {
                        "command": f"mv tests tests-old || cp -r tests tests-old; "
                        f"rm -rf tests; ln -sfn {victim} tests; ls -la"
                    },
                ),
            ]
        ),
        Reply(text="done"),
    )
    config = make_config(repo, scripted_openai.base_url)
    with anyio.fail_after(GUARD_S):
        result, events = await run_loop(config)

    assert _tree(victim) == before
    # The link itself was replaced by a real folder holding the exam.
    tree = run_git(repo, "ls-tree", "-r", result.branch).splitlines()
    exam = [line for line in tree if line.endswith("\ttests/test_calc.py")]
    assert exam and exam[0].startswith("100644 blob"), tree
    assert run_git(repo, "show", f"{result.branch}:tests/test_calc.py") == TEST_CALC
    _finished(result, events, status="passed", iterations=1)


async def test_fifos_and_sockets_get_clear_results_and_never_hang(
    make_repo, scripted_openai, isolation: str
) -> None:
    repo = make_repo(KATA)
    make_socket = "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.bind('sock')\""
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call("run_command", {"command": "mkfifo pipe.txt && mkfifo tests/pipe.py"}),
                Call("run_command", {"command": make_socket}),
            ]
        ),
        Reply(
            tool_calls=[
                Call("grep", {"pattern": "anything"}),
                Call("grep", {"pattern": "anything", "path": "pipe.txt"}),
                Call("read_file", {"path": "pipe.txt"}),
                Call("write_file", {"path": "pipe.txt", "content": "x"}),
                edit("pipe.txt", "a", "b"),
                Call("list_files", {}),
                Call("read_file", {"path": "sock"}),
                FIX,
            ]
        ),
        Reply(text="fixed"),
    )
    config = make_config(repo, scripted_openai.base_url)
    with anyio.fail_after(GUARD_S):
        result, events = await run_loop(config)

    grep_all, grep_pipe, read, write, edited, listing, read_sock, _fix = tool_results(
        scripted_openai.requests[2]
    )[-8:]
    assert grep_all == "no matches"
    for answer in (grep_pipe, read, write, edited):
        assert answer.startswith("error: pipe.txt is a FIFO (named pipe)"), answer
    assert read_sock.startswith("error: sock is a socket")
    assert listing.splitlines() == ["calc.py", "tests/test_calc.py"]
    assert (repo / "calc.py").read_text() == KATA["calc.py"]
    _finished(result, events, status="passed", iterations=1)


async def test_write_file_never_writes_through_a_hard_link(
    make_repo, scripted_openai, tmp_path: Path, no_bwrap: Path
) -> None:
    """Without bubblewrap a command can hard-link an outside file into the worktree (same
    filesystem, and root may link anything): a write replaces the name, not the file."""
    outside, secret = _outside(tmp_path)
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[Call("run_command", {"command": f"ln {secret} key.py"})]),
        Reply(
            tool_calls=[
                Call("write_file", {"path": "key.py", "content": "owned\n"}),
                FIX,
            ]
        ),
        Reply(text="fixed"),
    )
    config = make_config(repo, scripted_openai.base_url)
    with anyio.fail_after(GUARD_S):
        result, events = await run_loop(config)

    if of_type(events, ev.ToolResult)[0].ok:  # the link was made: the write must not reach it
        assert secret.read_text() == f"{SECRET}\n"
        assert run_git(repo, "show", f"{result.branch}:key.py") == "owned\n"
    _finished(result, events, status="passed", iterations=1)


def test_reverting_rejected_hunks_never_writes_through_a_link(make_repo, tmp_path: Path) -> None:
    """The review's revert runs on the host: a file the model turned into a link to an
    outside file is replaced (whole-file rejection) or reported as not revertible (a hunk),
    never written through; a link where a folder was is not followed."""
    from codexloop.core.diff import Hunk, revert_rejected
    from codexloop.core.sandbox import Sandbox

    outside, secret = _outside(tmp_path)
    before = _tree(outside)
    repo = make_repo({**KATA, "pkg/mod.py": "x = 1\n"})
    box = Sandbox.create(repo, "revert-links")
    try:
        (box.worktree / "calc.py").unlink()
        os.symlink(secret, box.worktree / "calc.py")
        os.symlink(secret, box.worktree / "new.py")
        os.rename(box.worktree / "pkg", box.worktree / "pkg-old")
        os.symlink(outside, box.worktree / "pkg")
        hunk = Hunk(0, "@@ -1 +1 @@", 1, 1, 1, 1, ("-x = 1", f"+{SECRET}"))
        failed = revert_rejected(
            box.repo,
            box.base,
            box.worktree,
            [
                ev.Rejection("new.py", hunk),  # a hunk: the link is not read
                ev.Rejection("calc.py", None),  # whole file: back to the snapshot
                ev.Rejection("pkg/mod.py", hunk),
            ],
        )
        assert failed == ["new.py", "pkg/mod.py"]
        assert _tree(outside) == before
        assert not (box.worktree / "calc.py").is_symlink()
        assert (box.worktree / "calc.py").read_text() == KATA["calc.py"]
        assert os.readlink(box.worktree / "new.py") == str(secret)
    finally:
        box.remove(delete_branch=True)
