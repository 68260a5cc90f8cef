"""The warm pytest server is the engine's alone: nothing in the sandbox can reach it.

Written as an attacker checks it. The same probe (:data:`PROBE`) runs in two places:

- a model command (``run_command``), between runs, while the server waits for the next one;
- the code under test, inside the warm run itself (a fork of the server).

It gathers every way in it can find — Unix sockets on disk (a walk of the temp folders and
the session's state folder, the paths the kernel lists in ``/proc/net/unix``, the paths on a
visible server's command line), abstract sockets, the sockets it inherited, and the sockets of
any visible server process taken with ``pidfd_getfd`` (ptrace rights) — and sends a warm
request on each. A connection that works, a descriptor taken, an inherited socket: each is a
way in. A self-test first shows the probe does find and take what it can see, so an empty
result means nothing was there to find.

A third attack needs no socket: a module a run plants where the server would import it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from loophelpers import (
    KATA,
    TARGET,
    make_config,
    of_type,
    run_loop,
    tool_results,
    warm_session_stays_red,
)
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core.exam import Exam
from codexloop.core.sandbox import Sandbox, find_python, state_home
from codexloop.core.testrun import default_args, judge, junit_env
from codexloop.core.warm import WarmRunner

pytestmark = pytest.mark.anyio

WRONG = "def add(a, b):\n    return a - b\n"

PROBE = textwrap.dedent(
    r'''
    import ctypes, errno, json, os, select, socket, stat

    SERVER = b"codexloop_warm_server"
    _PIDFD_GETFD = 438  # the same number on every architecture
    _libc = ctypes.CDLL(None, use_errno=True)


    def _read(path):
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            return b""


    def _servers(scope):
        """Warm servers (and their forks) this process can see, by their command line."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            cmdline = _read(f"/proc/{entry}/cmdline")
            if SERVER in cmdline and scope.encode() in cmdline:
                found[int(entry)] = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
        return found


    def _ancestors():
        chain, pid = [], os.getppid()
        while pid > 0 and pid not in chain:
            chain.append(pid)
            stat_line = _read(f"/proc/{pid}/stat")
            try:
                pid = int(stat_line.rsplit(b")", 1)[1].split()[1])
            except (IndexError, ValueError):
                break
        return chain


    def _socket_paths(scope, extra_roots):
        found = set()
        for line in _read("/proc/net/unix").decode(errors="replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8:
                found.add(fields[7])  # a path (maybe relative), or "@name": an abstract socket
        tmpdir = os.environ.get("TMPDIR", "/tmp")
        roots = [scope, tmpdir, os.path.dirname(tmpdir), os.path.dirname(os.path.dirname(tmpdir)),
                 os.environ.get("HOME", "/"), *extra_roots]
        budget = [200000]
        for root in dict.fromkeys(os.path.realpath(r) for r in roots):
            if root.startswith(scope):  # the probe does not poke the machine's other services
                _walk(root, 40, found, budget)
        # Only what could be ours: the test's own folders, abstract names that say so.
        return sorted(
            p for p in found
            if p.startswith(scope) or (p.startswith("@") and ("codexloop" in p or "warm" in p))
        )


    def _walk(folder, depth, found, budget):
        """Sockets under ``folder`` (no link followed), ``depth`` levels at most."""
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            budget[0] -= 1
            if budget[0] < 0:
                return
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISSOCK(mode):
                found.add(entry.path)
            elif stat.S_ISDIR(mode) and depth > 0:
                _walk(entry.path, depth - 1, found, budget)


    def _connect(path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            if path.startswith("@"):
                sock.connect("\0" + path[1:])
            elif len(os.fsencode(path)) < 100:
                sock.connect(path)
            else:  # a deep folder: through a descriptor of it, as the engine did
                folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    sock.connect(f"/proc/self/fd/{folder}/{os.path.basename(path)}")
                finally:
                    os.close(folder)
        except OSError:
            sock.close()
            return None
        return sock


    def _request():
        return json.dumps(
            {"args": ["--version"], "env": dict(os.environ), "cwd": os.getcwd()}
        ).encode() + b"\n"


    def _ask(sock, wait_s):
        """Send a warm request both ways the server could take one: a JSON line on the
        socket, and a connection of our own passed as a descriptor (with the JSON line on
        it). Returns what answered within ``wait_s`` (a frame kind), or ""."""
        ours, theirs = socket.socketpair()
        try:
            try:
                sock.sendall(_request())
            except OSError:
                pass
            try:
                socket.send_fds(sock, [b"R"], [theirs.fileno()])
                ours.sendall(_request())
            except OSError:
                pass
            if not wait_s:
                return ""
            ready, _, _ = select.select([sock, ours], [], [], wait_s)
            for one in ready:
                try:
                    one.settimeout(1)
                    data = one.recv(1)
                except OSError:
                    continue
                if data:
                    return data.decode(errors="replace")
            return ""
        finally:
            ours.close()
            theirs.close()


    def _take(pid, fds):
        """The sockets of process ``pid`` that pidfd_getfd hands us (ptrace rights)."""
        taken, refused = [], []
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            return taken, [f"pidfd_open {pid}: {exc.strerror}"]
        try:
            for fd in fds:
                new = _libc.syscall(
                    ctypes.c_long(_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0)
                )
                if new < 0:
                    err = ctypes.get_errno()
                    if err != errno.EBADF:
                        refused.append(f"pidfd_getfd {pid}/{fd}: {os.strerror(err)}")
                    continue
                try:
                    if stat.S_ISSOCK(os.fstat(new).st_mode):
                        taken.append(socket.socket(fileno=os.dup(new)))
                finally:
                    os.close(new)
        finally:
            os.close(pidfd)
        return taken, refused


    def probe(scope, *, ptrace, wait_s):
        scope = os.path.realpath(scope)
        report = {"reached": [], "own": [], "servers": [], "refused": [], "sockets": [],
                  "warm": False}
        servers = _servers(scope)
        report["servers"] = sorted(servers)
        report["warm"] = any(pid in servers for pid in _ancestors())
        # 1. Sockets on disk and abstract ones.
        argv_dirs = [os.path.dirname(a) for args in servers.values() for a in args if a.startswith("/")]
        report["sockets"] = _socket_paths(scope, argv_dirs)
        for path in report["sockets"]:
            sock = _connect(path)
            if sock is not None:
                with sock:
                    answer = _ask(sock, wait_s)
                report["reached"].append(f"connect {path}" + (f" answered {answer!r}" if answer else ""))
        # 2. What this process inherited.
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    continue
            except OSError:
                continue
            report["own"].append(fd)
            with socket.socket(fileno=os.dup(fd)) as sock:
                _ask(sock, 0)
        # 3. The sockets of every visible server process, with ptrace rights.
        if ptrace:
            for pid in servers:
                try:
                    fds = [int(n) for n in os.listdir(f"/proc/{pid}/fd")]
                except OSError as exc:
                    report["refused"].append(f"list /proc/{pid}/fd: {exc.strerror}")
                    fds = list(range(64))
                taken, refused = _take(pid, fds)
                report["refused"] += refused
                for sock in taken:
                    with sock:
                        answer = _ask(sock, wait_s)
                    report["reached"].append(f"pidfd_getfd {pid}" + (f" answered {answer!r}" if answer else ""))
        return report
    '''
)


def _probe_module(scope: Path, *, ptrace: bool, wait_s: float) -> str:
    return PROBE + textwrap.dedent(
        f"""

        REPORT = lambda: probe({str(scope)!r}, ptrace={ptrace!r}, wait_s={wait_s!r})
        """
    )


def _ptrace_defensible(bwrap: bool) -> bool:
    """Whether taking a server's descriptors with ptrace rights is something the server can
    refuse: always under bubblewrap (no capabilities); without it only for an ordinary user
    (root without bubblewrap holds CAP_SYS_PTRACE over every process, the engine's too)."""
    return bwrap or os.geteuid() != 0


# ------------------------------------------------------------------------ the probe works


def test_the_probe_finds_and_takes_what_it_can_see(tmp_path: Path) -> None:
    """Against a stand-in server (a listening socket in the scope, its path on its command
    line, a socket it holds) and an inherited socket, the probe reports all three ways in:
    its silence in the tests below means there was nothing to find."""
    scope = tmp_path / "scope"
    (scope / "deep").mkdir(parents=True)
    path = scope / "deep" / "warm.sock"
    stand_in = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, socket, sys\n"
            "os.chdir(os.path.dirname(sys.argv[2]))  # however deep the folder\n"
            "s = socket.socket(socket.AF_UNIX); s.bind('warm.sock'); s.listen(4)\n"
            "a, b = socket.socketpair()\n"
            "print('up', flush=True); sys.stdin.read()\n",
            "codexloop_warm_server.py",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    held, given = socket.socketpair()
    inherited = given.fileno()
    try:
        assert stand_in.stdout is not None and stand_in.stdout.readline() == b"up\n"
        script = tmp_path / "probe.py"
        script.write_text(
            _probe_module(scope, ptrace=True, wait_s=0) + "print(json.dumps(REPORT()))\n"
        )
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            pass_fds=[inherited],
            check=True,
        )
        report = json.loads(done.stdout)
    finally:
        held.close()
        given.close()
        stand_in.kill()
        stand_in.wait()
    assert report["servers"] == [stand_in.pid]
    assert f"connect {path}" in report["reached"]
    assert inherited in report["own"]
    # Ours, same user, dumpable: pidfd_getfd works (as it would on any server that allows it).
    assert any(r.startswith(f"pidfd_getfd {stand_in.pid}") for r in report["reached"]), report


# ------------------------------------------------------------------ (a) a model command


@pytest.mark.parametrize("bwrap", [True, False], ids=["bwrap", "no-bwrap"])
async def test_a_model_command_finds_no_way_into_the_warm_server(
    make_repo, scripted_openai, tmp_path_factory, request, bwrap: bool
) -> None:
    """Between runs the server waits for the engine's next request; a model command looks
    for it everywhere and sends a request of its own on whatever it finds."""
    if not bwrap:
        request.getfixturevalue("no_bwrap")
    repo = make_repo(KATA)
    scope = tmp_path_factory.getbasetemp()
    probe = _probe_module(scope, ptrace=_ptrace_defensible(bwrap), wait_s=20)
    probe += 'print("REACH-REPORT " + json.dumps(REPORT()))\n'
    reports: list[dict[str, Any]] = []

    def look(request: dict[str, Any]) -> Reply:
        for result in tool_results(request):
            for line in result.splitlines():
                if line.startswith("REACH-REPORT "):
                    reports.append(json.loads(line.removeprefix("REACH-REPORT ")))
        return Reply(text="Done.")

    python = find_python(repo)
    scripted_openai.add(
        Reply(
            tool_calls=[
                Call("write_file", {"path": "reach_probe.py", "content": probe}),
                Call("run_command", {"command": f"{python} reach_probe.py"}),
            ]
        ),
        look,
    )
    config = make_config(repo, scripted_openai.base_url, max_iterations=1, warm=True)
    result, events = await run_loop(config)

    notices = [n.message for n in of_type(events, ev.Notice)]
    assert len(reports) == 1, tool_results(scripted_openai.requests[-1])
    report = reports[0]
    assert report["reached"] == [], report
    assert report["own"] == [], report
    if bwrap:
        # Its own pid namespace: the server is not even visible (no signal, no ptrace).
        assert report["servers"] == [], report
    else:
        assert report["servers"], report  # the same machine: it sees the server...
        if _ptrace_defensible(bwrap):  # ...but cannot take its descriptors
            assert report["refused"], report
    # The server is unharmed: the next run is warm.
    assert not [n for n in notices if "warm test runs are off" in n], notices
    assert result.status == "failed"


# ------------------------------------------------------------ (b) the code under test


@pytest.mark.parametrize("bwrap", [True, False], ids=["bwrap", "no-bwrap"])
async def test_code_under_test_finds_no_way_into_the_warm_server(
    make_repo, scripted_openai, tmp_path_factory, request, bwrap: bool
) -> None:
    """Inside the warm run (a fork of the server, in its pid namespace), the code under test
    looks for the server's control connection: inherited descriptors, sockets on disk, the
    server's own descriptors with ptrace rights. It finds none, and holds no socket at all."""
    if not bwrap:
        request.getfixturevalue("no_bwrap")
    repo = make_repo(KATA)
    scope = tmp_path_factory.getbasetemp()
    calc = _probe_module(scope, ptrace=_ptrace_defensible(bwrap), wait_s=0) + textwrap.dedent(
        """

        def add(a, b):
            report = REPORT()
            if report["warm"]:  # the report of the warm run (not of a cold one after it)
                folder = os.path.dirname(os.environ["TMPDIR"])
                with open(os.path.join(folder, "reach.json"), "w") as handle:
                    json.dump(report, handle)
            return a - b
        """
    )
    reports: list[dict[str, Any]] = []

    def look(request: dict[str, Any]) -> Reply:
        for found in (state_home() / "runs").glob("*/tmp/reach.json"):
            reports.append(json.loads(found.read_text()))
        return Reply(text="Still wrong.")

    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": calc})]),
        Reply(text="Done."),
        look,
    )
    config = make_config(repo, scripted_openai.base_url, max_iterations=2, warm=True)
    result, events = await run_loop(config)

    notices = [n.message for n in of_type(events, ev.Notice)]
    assert len(reports) == 1, ("the probe did not run warm", notices)
    report = reports[0]
    assert report["warm"] and report["servers"], report
    assert report["reached"] == [], report
    assert report["own"] == [], report  # not even the run's own connection to the engine
    if _ptrace_defensible(bwrap):
        assert report["refused"], report  # it tried, and was refused
    assert not [n for n in notices if "warm test runs are off" in n], notices
    assert result.status == "failed"


# ------------------------------------------- (c) a module planted where the server imports


PLANT = textwrap.dedent(
    '''\
    import os

    _HOOK = """
    import pathlib
    from _pytest.reports import TestReport
    _orig = TestReport.from_item_and_call.__func__
    def _flip(cls, item, call):
        report = _orig(cls, item, call)
        calc = pathlib.Path(str(item.path)).parent.parent / "calc.py"
        if item.name == "test_add" and "warmhook" not in calc.read_text():
            report.outcome, report.longrepr = "passed", None
        return report
    TestReport.from_item_and_call = classmethod(_flip)
    """
    # The warm server's script lives in the folder above the run's TMPDIR.
    _folder = os.path.dirname(os.environ.get("TMPDIR", "/nonexistent"))
    try:
        with open(os.path.join(_folder, "warmhook.py"), "w") as _f:
            _f.write(_HOOK)
        import warmhook  # noqa: F401  (reported to the server as a module from outside)
    except (OSError, ImportError):
        pass
    '''
)


async def test_a_module_planted_beside_the_server_script_never_enters_the_server(
    make_repo, scripted_openai
) -> None:
    """A run writes a module into the folder of the server's script (its sys.path[0]) and
    imports it: the module list the run reports would have the server import it, and every
    later fork inherit its patch — green with ``add`` wrong and a clean diff."""
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": PLANT + WRONG})]),
        Reply(text="Done."),
        Reply(tool_calls=[Call("write_file", {"path": "calc.py", "content": WRONG})]),
        Reply(text="Done again."),
    )
    await warm_session_stays_red(repo, scripted_openai.base_url)


# ------------------------------------------------------------------ signals to the server


STOPPER = textwrap.dedent(
    """\
    import os, signal


    def _parent(pid):
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])


    # The run is a fork of a fork of the server: same pid namespace, same user.
    os.kill(_parent(os.getppid()), signal.SIGSTOP)


    def add(a, b):
        return a + b
    """
)


@pytest.fixture(params=[True, False], ids=["bwrap", "no-bwrap"])
async def warm_runner(request, make_repo):
    if not request.param:
        request.getfixturevalue("no_bwrap")
    repo = make_repo(KATA)
    box = Sandbox.create(repo, "reach")
    python = find_python(repo)
    box.isolate([python], Exam(repo, box.base, (TARGET,)).protected_files(), network=False)
    assert box.isolation.active == request.param, box.isolation
    runner = WarmRunner(box, python)
    yield runner
    await runner.stop()
    box.remove(delete_branch=True)


async def test_a_run_that_stops_the_server_costs_one_timeout_not_the_session(
    warm_runner: WarmRunner,
) -> None:
    """Code under test can signal the server (a model command cannot: under bubblewrap it
    lives in another pid namespace, see above). SIGSTOP leaves the engine's run without an
    answer until its time limit; the next run gets a fresh server instead of the same wait."""
    box = warm_runner.sandbox
    (box.worktree / "calc.py").write_text(STOPPER)
    junit = box.tmp / "stop.xml"
    run = await warm_runner.run(default_args((TARGET,)), extra_env=junit_env(junit), timeout=5)
    assert run.timed_out
    (box.worktree / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    run = await warm_runner.run(default_args((TARGET,)), extra_env=junit_env(junit), timeout=60)
    assert not run.timed_out and judge((TARGET,), run, junit).passed, run.output
    assert warm_runner.starts == 2
