"""codexloop installed as a user installs it, for the benchmarks that time a whole process.

The development venv holds codexloop as an editable install, whose import hook is set up by
every interpreter the venv starts (~20 ms of each start, ``python -X importtime -c pass``): a
cost no user's ``pip install codexloop`` has. Here a checkout (this one, or an earlier commit's
worktree) is built into a wheel and installed, without its dependencies, into a venv of its own
under ``~/.cache/codexloop-bench`` (made once per source: keyed by the files' contents); the
dependencies are this venv's, on the path through a ``.pth`` line (which loads none of their
own ``.pth`` files, so not the editable hook). Building needs setuptools in this venv (the
development install has it), no network.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from _venv import HOME

_SOURCES = ("pyproject.toml", "README.md")


def installed(tree: Path) -> Path:
    """The ``codexloop`` executable of ``tree``'s source, installed as a user would have it."""
    tree = tree.resolve()
    files = sorted(
        [tree / name for name in _SOURCES]
        + [
            p
            for p in (tree / "codexloop").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes())
    venv = HOME / f"installed-{digest.hexdigest()[:16]}"
    executable = venv / "bin" / "codexloop"
    if (venv / "ready").exists():
        return executable
    shutil.rmtree(venv, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="codexloop-build-") as tmp:
        source = Path(tmp, "source")
        for path in files:  # built from a copy: setuptools writes build/ and egg-info beside it
            target = source / path.relative_to(tree)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        quiet = {"check": True, "stdout": subprocess.DEVNULL}
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
        subprocess.run(
            [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp, str(source)], **quiet
        )
        wheel = next(Path(tmp).glob("codexloop-*.whl"))
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **quiet)
        python = venv / "bin" / "python"
        subprocess.run(
            [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
            **quiet,
        )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "codexloop_bench_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    (venv / "ready").write_text("")
    return executable
