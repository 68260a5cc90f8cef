"""Session 9's changes, attacked: the warm server's unfiltered module report and preloads,
the engine's own checkout of a model-written tree, and the headless endpoint check beside
the set-up.

Each test is an attack. One that succeeds is kept as a strict xfail whose reason says
``HOLE:`` and what it is; one that fails (the defence holds) is kept when it checks
something no other test does.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
from loophelpers import KATA, make_config, of_type, run_loop
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core.sandbox import state_home

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


async def _plant_then_wrong(make_repo: Any, scripted_openai: Any, calc: str) -> None:
    """Turn 1 writes ``calc`` (the attack, and add wrong), turn 2 plain wrong code: with the
    defence, all three runs (baseline, 1, 2) are red."""
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": calc + WRONG})]),
        Reply(text="Done."),
        _after_the_server_imported(
            Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})])
        ),
        Reply(text="Done again."),
    )
    config = make_config(repo, scripted_openai.base_url, max_iterations=2, warm=True)
    result, events = await run_loop(config)

    notices = [n.message for n in of_type(events, ev.Notice)]
    assert not [n for n in notices if "warm test runs are off" in n], notices
    assert [f.passed for f in of_type(events, ev.TestFinished)] == [False, False, False]
    assert result.status == "failed"
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


@pytest.mark.xfail(
    strict=True,
    reason=(
        "HOLE: a reported 'unittest.__main__' (standard library, so _outside) makes the "
        "server run unittest.main() with its own sys.argv; it imports '<control fd>' as a "
        "module from sys.path[0], the run tree, where the run wrote <fd>.py: the run's code "
        "runs in the server, plants sys.modules['calc'], and later runs are green with add "
        "wrong"
    ),
)
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


@pytest.mark.xfail(
    strict=True,
    reason=(
        "HOLE: backports (setuptools/_vendor, a pkgutil.extend_path namespace package) "
        "resolves outside the project, but its __path__ takes in the run tree's backports/ "
        "folder when the server imports it: a reported 'backports.warmplant' is imported by "
        "the server from the run tree; it plants calc and later runs are green with add wrong"
    ),
)
async def test_a_pkgutil_namespace_package_never_brings_a_run_module_into_the_server(
    make_repo, scripted_openai
) -> None:
    await _plant_then_wrong(make_repo, scripted_openai, BACKPORTS)
