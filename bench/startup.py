"""Start-up: ``codexloop --help``, the app's first frame and a headless session's first event.

--help is timed as a whole process. The first frame is timed in a fresh interpreter,
from its start to the app's first screen refresh (imports, CSS, compose and mount
included), with the app on a small repository and the loop not started. The headless first
event is ``loop_started`` of ``codexloop --headless`` on the calc kata against a scripted
endpoint (as ``bench/peer.py`` runs it), from process start to the line read. All three with
this venv's codexloop (the development install; ``bench/peer.py`` times a user's install).

    .venv/bin/python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _repo import git_repo

FIRST_FRAME = r"""
import time
t0 = time.perf_counter()
import asyncio, sys
from pathlib import Path
from codexloop.core.config import Settings, load_config
from codexloop.tui.app import CodexloopApp

repo = Path(sys.argv[1])
config = load_config(Settings(targets=("tests/test_calc.py::test_add",), repo=repo,
                              base_url="http://127.0.0.1:9/v1", model="m"), env={}, cwd=repo)

async def main():
    app = CodexloopApp(config, autostart=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        print(time.perf_counter() - t0)

asyncio.run(main())
"""


def make_repo(root: Path) -> Path:
    return git_repo(
        root,
        {
            "calc.py": "def add(a, b):\n    return a - b\n",
            "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    exe = Path(sys.executable).with_name("codexloop")
    helps = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        helps.append(time.perf_counter() - started)
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp))
        for _ in range(runs):
            started = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", FIRST_FRAME, str(repo)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            total = time.perf_counter() - started
            frames.append((float(out.strip().splitlines()[-1]), total))
    print(
        f"codexloop --help               median {statistics.median(helps) * 1000:6.0f} ms  ({runs} runs)"
    )
    inside = statistics.median(f[0] for f in frames) * 1000
    whole = statistics.median(f[1] for f in frames) * 1000
    print(f"app first frame (in process)   median {inside:6.0f} ms  (imports, CSS, compose, mount)")
    print(f"app first frame (whole process) median {whole:5.0f} ms  (interpreter start included)")
    first = headless_first_events(runs, [str(exe)])
    print(
        f"headless first event          median {statistics.median(first) * 1000:6.0f} ms  "
        "(loop_started, whole process; the first run also learns what later ones remember)"
    )


def headless_first_events(runs: int, command: list[str]) -> list[float]:
    """Seconds from process start to ``loop_started`` of ``runs`` headless sessions."""
    import os

    import peer

    server = peer.ScriptedOpenAI()
    seen = []
    try:
        with tempfile.TemporaryDirectory(prefix="codexloop-startup-") as tmp:
            os.environ["XDG_CACHE_HOME"] = str(Path(tmp, "cache"))
            os.environ["XDG_STATE_HOME"] = str(Path(tmp, "state"))
            for run in range(runs):
                peer.script(server)
                repo = make_repo(Path(tmp, f"headless-{run}"))
                _wall, marks = peer.run_codexloop(repo, server.base_url, command)
                seen.append(marks["loop_started"])
    finally:
        server.close()
    return seen


if __name__ == "__main__":
    main()
