"""The process-count limit: found where the system allows one, enforced, and cleaned up."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from loophelpers import KATA

from codexloop.core import limits
from codexloop.core.exam import Exam
from codexloop.core.limits import ProcessLimit, limit_notes
from codexloop.core.sandbox import Sandbox, find_python
from codexloop.core.testrun import default_args, junit_env
from codexloop.core.warm import WarmRunner

# Forks until refused (or 200 children), then prints how many it got. Children just wait.
FORKER = (
    "import os, sys, time\n"
    "n = 0\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError as exc:\n"
    "        print(exc)\n"
    "        break\n"
    "    if pid == 0:\n"
    "        time.sleep(5)\n"
    "        os._exit(0)\n"
    "    n += 1\n"
    "print('forked', n, flush=True)\n"
)

MOUNTINFO = (
    "25 20 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
    "33 25 0:29 / /sys/fs/cgroup/pids rw,relatime shared:14 - cgroup cgroup rw,pids\n"
    "34 25 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "35 25 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
CGROUP = "8:pids:/user.slice\n4:memory:/x\n0::/\n"
# A container: the hierarchy's /docker/abc is mounted (its mount point has an escaped space).
CONTAINER_MOUNTINFO = "41 30 0:36 /docker/abc /mnt/my\\040cgroups rw - cgroup cgroup rw,pids\n"


def test_the_pids_hierarchy_is_found_in_mountinfo() -> None:
    assert limits.find_pids_cgroup(MOUNTINFO, CGROUP) == Path("/sys/fs/cgroup/pids/user.slice")
    assert limits.find_pids_cgroup(MOUNTINFO, "0::/user.slice\n") is None  # cgroup v2 only
    assert limits.find_pids_cgroup(MOUNTINFO.replace("rw,pids", "rw,cpu"), CGROUP) is None


def test_a_container_mount_root_is_taken_off_our_cgroup_path() -> None:
    found = limits.find_pids_cgroup(CONTAINER_MOUNTINFO, "3:pids:/docker/abc/session\n")
    assert found == Path("/mnt/my cgroups/session")
    assert limits.find_pids_cgroup(CONTAINER_MOUNTINFO, "3:pids:/elsewhere\n") is None


@pytest.mark.parametrize(
    ("release", "per_namespace"),
    [("5.13.19-generic", False), ("5.14.0", True), ("6.18.44-fc-v669", True), ("4.19", False)],
)
def test_rlimit_nproc_is_per_namespace_from_linux_5_14(release: str, per_namespace: bool) -> None:
    assert limits.kernel_counts_nproc_per_namespace(release) is per_namespace


def test_the_rlimit_method_prefixes_ulimit_and_the_others_do_not() -> None:
    assert limits.ProcessLimit("rlimit", 64, "").shell_prefix() == "ulimit -u 64 2>/dev/null; "
    assert limits.ProcessLimit("cgroup", 64, "").shell_prefix() == ""
    assert limits.ProcessLimit("none", None, "").group() is None


@pytest.fixture
def limited(make_repo):
    """A sandbox whose commands may have at most 24 processes, if the system allows a limit."""
    repo = make_repo(KATA)
    box = Sandbox.create(repo, "limited")
    exam = Exam(repo, box.base, ("tests/test_calc.py",))
    box.isolate([find_python(repo)], exam.protected_files(), network=False, max_processes=24)
    if box.limit.method == "none":
        box.remove(delete_branch=True)
        pytest.skip(box.limit.reason)
    yield box
    box.remove(delete_branch=True)


def our_groups(box: Sandbox) -> list[Path]:
    where = box.limit.cgroup
    if where is None:
        return []
    return sorted(where.glob(f"codexloop-{os.getpid()}-*"))


@pytest.mark.anyio
async def test_a_fork_bomb_is_bounded_and_the_model_is_told(limited: Sandbox) -> None:
    script = limited.worktree / "forker.py"
    script.write_text(FORKER)
    result = await limited.run(f"{find_python(limited.repo)} forker.py", timeout=60)
    forked = int(result.output.split("forked", 1)[1].split()[0])
    assert forked < 24
    assert "limit of 24 processes was reached" in result.output
    assert our_groups(limited) == []  # the command's group is gone with it


@pytest.mark.anyio
async def test_a_normal_command_has_no_limit_note(limited: Sandbox) -> None:
    result = await limited.run("echo fine", timeout=30)
    assert result.output.strip() == "fine"
    assert our_groups(limited) == []


@pytest.mark.anyio
async def test_a_warm_run_is_bounded_too(limited: Sandbox) -> None:
    python = find_python(limited.repo)
    test = limited.worktree / "tests" / "test_forks.py"
    test.write_text(  # it fails, so pytest shows what the forker printed
        "import subprocess, sys\n\n\ndef test_forks():\n"
        f"    done = subprocess.run([sys.executable, '-c', {FORKER!r}], capture_output=True, text=True)\n"
        "    print(done.stdout)\n"
        "    assert not done.stdout\n"
    )
    warm = WarmRunner(limited, python)
    try:
        target = ["tests/test_forks.py"]
        run = await warm.run(
            default_args(tuple(target)), extra_env=junit_env(limited.tmp / "j.xml"), timeout=60
        )
        printed = re.search(r"forked (\d+)", run.output)  # the captured output, not the source
        assert printed is not None and int(printed.group(1)) < 24, run.output
        assert "limit of 24 processes was reached" in run.output
        again = await warm.run(
            default_args(("tests/test_calc.py",)),
            extra_env=junit_env(limited.tmp / "k.xml"),
            timeout=60,
        )
        assert "processes was reached" not in again.output  # a new run starts unmarked
    finally:
        await warm.stop()
    if limited.limit.method == "cgroup":
        assert our_groups(limited) == []


@pytest.fixture
def bare_sandbox(make_repo, no_bwrap: Path):
    """A sandbox without bubblewrap: no pid namespace to take leftovers down with it."""
    repo = make_repo(KATA)
    box = Sandbox.create(repo, "bare")
    box.isolate([find_python(repo)], [], network=False)
    assert box.isolation.level == "none"
    yield box
    box.remove(delete_branch=True)


async def assert_an_escapee_is_killed(box: Sandbox) -> None:
    marker = f"codexloop-escapee-{uuid.uuid4().hex}"
    # The command ends only once the escapee is in a session of its own.
    escape = f"setsid bash -c 'echo up > escaped; exec -a {marker} sleep 300' >/dev/null 2>&1"
    result = await box.run(
        f"({escape} &); while [ ! -s escaped ]; do sleep 0.01; done; echo started", timeout=30
    )
    assert "1 process outlived the command and were killed" in result.output
    deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously: wait, bounded
    while _running(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _running(marker)
    assert "outlived" not in (await box.run("echo calm", timeout=30)).output


@pytest.mark.anyio
async def test_without_isolation_an_escaped_process_is_still_killed(bare_sandbox: Sandbox) -> None:
    """A setsid'd process leaves the process group, not the command's cgroup."""
    if bare_sandbox.limit.method != "cgroup":
        pytest.skip(bare_sandbox.limit.reason)
    await assert_an_escapee_is_killed(bare_sandbox)


@pytest.mark.anyio
async def test_with_neither_isolation_nor_a_cgroup_an_escapee_is_found_by_its_environment(
    bare_sandbox: Sandbox,
) -> None:
    """The last line of defence: the run's mark in the environment, looked for in /proc."""
    bare_sandbox.limit = limits.ProcessLimit("none", None, "no limit (forced for this test)")
    await assert_an_escapee_is_killed(bare_sandbox)


def _running(marker: str) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(
                errors="replace"
            ):
                return True
        except OSError:
            continue
    return False


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("setpriv") is None
    or shutil.which("bwrap") is None
    or not Path(SYSTEM_PYTHON).exists()
    or not limits.kernel_counts_nproc_per_namespace(),
    reason="needs root (to act as another user), setpriv, bwrap, /usr/bin/python3, Linux 5.14+",
)
def test_rlimit_counts_only_the_sandboxs_processes() -> None:
    """The premise of the rlimit method, checked on this kernel as an unprivileged user:
    with 30 processes of the user running outside, a sandbox limited to 20 still gets ~18."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    outside = [subprocess.Popen([*nobody, "sleep", "30"]) for _ in range(30)]
    try:
        prefix = limits.ProcessLimit("rlimit", 20, "").shell_prefix()
        done = subprocess.run(
            [
                *nobody,
                "bwrap",
                "--unshare-user",
                "--unshare-pid",
                "--die-with-parent",
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--",
                "bash",
                "-c",
                f"{prefix}{SYSTEM_PYTHON} -c {shlex.quote(FORKER)}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        forked = int(done.stdout.split("forked", 1)[1].split()[0])
        assert 10 <= forked < 20
    finally:
        for process in outside:
            process.kill()
            process.wait()


# -- the address-space limit ----------------------------------------------------------------------


@pytest.fixture
def plain_sandbox(make_repo):
    repo = make_repo(KATA)
    box = Sandbox.create(repo, "memory")
    yield box
    box.remove(delete_branch=True)


@pytest.mark.anyio
async def test_the_address_space_limit_is_set_and_can_be_lifted(plain_sandbox: Sandbox) -> None:
    from codexloop.core.tools import Tools

    box = plain_sandbox
    python = find_python(box.repo)
    box.isolate([python], [], network=False, max_memory_gib=1)
    assert (await box.run("ulimit -v", timeout=30)).output.strip() == str(1024 * 1024)
    exam = Exam(box.repo, box.base, ("tests/test_calc.py",))

    async def run_command(command: str):
        return await box.run(command, timeout=30)

    tools = Tools(box.worktree, exam, run_command, max_memory_gib=1)
    bomb = json.dumps({"command": f"{python} -c 'bytearray(2 * 1024**3)'"})
    outcome = await tools.execute("run_command", bomb)
    assert "MemoryError" in outcome.content
    assert "at most 1 GiB of address space" in outcome.content and "--max-memory" in outcome.content
    box.isolate([python], [], network=False, max_memory_gib=0)
    assert (await box.run("ulimit -v", timeout=30)).output.strip() == "unlimited"


def test_without_proc_the_environment_mark_finds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no /proc: commands still run, the process group being the only net."""

    def no_proc(path: str) -> None:
        raise FileNotFoundError(path)

    monkeypatch.setattr(limits.os, "scandir", no_proc)
    assert limits.kill_marked("anything") == 0


@pytest.mark.parametrize(
    ("method", "output", "noted"),
    [
        ("rlimit", "BlockingIOError: [Errno 11] Resource temporarily unavailable", True),
        ("rlimit", "bash: fork: retry: Resource temporarily unavailable", True),
        ("rlimit", "Error: spawn EAGAIN", True),
        ("rlimit", "RuntimeError: can't start new thread", True),
        ("rlimit", "1 passed in 0.05s", False),
        ("none", "BlockingIOError: [Errno 11] Resource temporarily unavailable", False),
    ],
)
def test_under_ulimit_a_refused_fork_in_the_output_is_explained(
    method: str, output: str, noted: bool
) -> None:
    """RLIMIT_NPROC keeps no count of the forks it refused: the note comes from what the
    command printed (a pids cgroup's count is checked by the tests above, as root)."""
    limit = ProcessLimit(method, 24 if method == "rlimit" else None, "")  # type: ignore[arg-type]
    said = limit_notes(None, 0, limit=limit, output=output)
    assert ("limit of 24 processes was reached" in said) is noted
