"""The kata's own interpreter: a venv holding pytest alone, as a small project's would.

Made once (``python -m venv`` and ``pip install pytest``, which needs PyPI) under
``~/.cache/codexloop-bench``; both tools a benchmark compares run the kata's tests with it, so
neither pays for the plugins of codexloop's development venv (Textual's snapshot plugin alone
imports Textual into every pytest run). Without PyPI it says so and gives ``None``: the caller
falls back to its own interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HOME = Path.home() / ".cache" / "codexloop-bench"


def kata_python() -> str | None:
    venv = HOME / "kata-venv"
    python = venv / "bin" / "python"
    if (venv / "ready").exists():
        return str(python)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "pytest",
            ],
            check=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"(no kata venv: {exc}; the kata runs with {sys.executable})", file=sys.stderr)
        return None
    (venv / "ready").write_text("")
    return str(python)
