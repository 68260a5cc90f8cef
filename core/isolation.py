"""Process isolation for every command and test run: bubblewrap where the OS allows it.

Inside: the whole system read-only, fresh ``/dev`` and ``/proc``, empty tmpfs over
``/tmp``, ``/var/tmp``, ``/run`` and the home directory (hiding ``~/.ssh``, cloud
credentials, agent sockets, codexloop's own config), the interpreter, venv and
toolchain paths re-exposed read-only, the worktree and a private temp folder
writable, the exam files and the worktree's ``.git`` pointer read-only, no network
unless asked for, and only the environment we pass.

Levels: ``full`` (all of the above), ``reduced`` (the host's ``/proc`` had to be
bound because mounting a fresh one was refused, as in some containers), ``none``
(no bubblewrap or no user namespaces: commands run in the worktree alone). A
start-up probe runs the exact flag set once and says which level is in force, and why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Level = Literal["full", "reduced", "none"]

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


@dataclass(frozen=True)
class Isolation:
    level: Level
    reason: str
    bwrap: str | None = None
    fresh_proc: bool = True
    masked: tuple[Path, ...] = field(default=())

    @property
    def active(self) -> bool:
        return self.level != "none"

    def wrap(self, argv: Sequence[str], layout: Layout, env: Mapping[str, str]) -> list[str]:
        """``argv`` under bubblewrap (or unchanged when there is no isolation)."""
        if self.bwrap is None:
            return list(argv)
        return [
            self.bwrap,
            *bwrap_flags(layout, env, fresh_proc=self.fresh_proc, masked=self.masked),
            "--",
            *argv,
        ]


def masked_roots() -> tuple[Path, ...]:
    """Folders hidden behind an empty tmpfs."""
    roots = [Path("/tmp"), Path("/var/tmp"), Path("/run"), Path.home()]
    return tuple(dict.fromkeys(p for p in roots if p.is_dir()))


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def bwrap_flags(
    layout: Layout, env: Mapping[str, str], *, fresh_proc: bool, masked: Sequence[Path]
) -> list[str]:
    flags = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
    ]
    flags += ["--proc", "/proc"] if fresh_proc else ["--ro-bind", "/proc", "/proc"]
    if not layout.network:
        flags.append("--unshare-net")
    for root in masked:
        flags += ["--tmpfs", str(root)]
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
        paths.extend(_sys_path(python))
    paths += [Path(sys.prefix), Path(os.path.realpath(sys.base_prefix))]
    return list(dict.fromkeys(p for p in paths if p.exists()))


def _sys_path(python: str) -> list[Path]:
    code = "import json, sys; print(json.dumps([p for p in sys.path if p]))"
    try:
        done = subprocess.run(
            [python, "-I", "-c", code],
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
        entries = json.loads(done.stdout) if done.returncode == 0 else []
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return [Path(os.path.realpath(p)) for p in entries if Path(p).is_dir()]


def path_dirs(path_variable: str) -> list[Path]:
    """The PATH's folders, and where their symlinks really lead (pyenv shims, ~/.local/bin)."""
    found: list[Path] = []
    for entry in path_variable.split(os.pathsep):
        if entry and Path(entry).is_dir():
            found.append(Path(entry))
            found.append(Path(os.path.realpath(entry)))
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    if Path(pyenv).is_dir() and any(str(p).startswith(pyenv) for p in found):
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


def probe(layout: Layout, env: Mapping[str, str], *, search_path: str | None = None) -> Isolation:
    """Run the exact flag set once and say which level of isolation is in force."""
    if not sys.platform.startswith("linux"):
        return Isolation(
            "none",
            f"process isolation uses Linux namespaces (bubblewrap), not available on "
            f"{sys.platform}: commands run in the worktree only",
        )
    bwrap = shutil.which(
        "bwrap", path=search_path if search_path is not None else os.environ.get("PATH")
    )
    if bwrap is None:
        return Isolation(
            "none",
            "bubblewrap (bwrap) is not installed: commands run in the worktree only "
            "(install the bubblewrap package for process isolation)",
        )
    masked = masked_roots()
    reasons: list[str] = []
    for fresh_proc in (True, False):
        argv = [
            bwrap,
            *bwrap_flags(layout, env, fresh_proc=fresh_proc, masked=masked),
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
                return Isolation(
                    "full",
                    "bubblewrap: read-only system, private home and tmp, no secrets"
                    + ("" if layout.network else ", no network"),
                    bwrap,
                    True,
                    masked,
                )
            return Isolation(
                "reduced", f"bubblewrap without a fresh /proc ({reasons[0]})", bwrap, False, masked
            )
        reasons.append(_classify(done.stderr))
        if "proc" not in done.stderr.lower():
            break
    return Isolation(
        "none", f"bubblewrap is unusable here: {reasons[0]}; commands run in the worktree only"
    )
