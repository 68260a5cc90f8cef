"""Cold vs warm re-run of one test in a repo whose third-party imports take a second.

The project's venv holds a package whose import costs ~1 s (standing in for pandas,
django, numpy...). A cold run starts the interpreter and imports everything; a warm
run forks the preloaded server.

    .venv/bin/python bench/warm.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import anyio
from _repo import git_repo

from codexloop.core.exam import Exam
from codexloop.core.sandbox import Sandbox, find_python
from codexloop.core.testrun import default_args, default_command, judge, junit_env
from codexloop.core.warm import WarmRunner

TARGETS = ("tests/test_report.py::test_summary",)


def make_repo(root: Path) -> Path:
    repo = git_repo(
        root,
        {
            ".gitignore": ".venv/\n",
            "report.py": "import heavylib\n\n\ndef summary(xs):\n    return heavylib.total(xs)\n",
            "tests/test_report.py": (
                "from report import summary\n\n\ndef test_summary():\n    assert summary([1, 2, 3]) == 6\n"
            ),
        },
    )
    venv = repo / ".venv"  # ignored: the project's own interpreter, with a heavy package
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # pytest
    (site / "heavylib.py").write_text(
        "import time\n\ntime.sleep(1.0)  # a heavy import\n\ntotal = sum\n"
    )
    return repo


async def measure(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        repo = make_repo(Path(tmp))
        box = Sandbox.create(repo, "bench-warm")
        python = find_python(repo)
        box.isolate(
            [python],
            Exam(repo, box.base, ("tests/test_report.py",)).protected_files(),
            network=False,
        )
        junit = box.tmp / "junit.xml"
        cold_times, warm_times = [], []
        for _ in range(runs):
            started = time.perf_counter()
            result = await box.run(
                default_command(python, TARGETS), timeout=120, extra_env=junit_env(junit)
            )
            cold_times.append(time.perf_counter() - started)
            assert judge(TARGETS, result, junit).passed, result.output
        warm = WarmRunner(box, python)
        first = None
        for i in range(runs + 1):
            started = time.perf_counter()
            result = await warm.run(default_args(TARGETS), extra_env=junit_env(junit), timeout=120)
            elapsed = time.perf_counter() - started
            assert judge(TARGETS, result, junit).passed, result.output
            if i == 0:
                first = elapsed  # server start + the run that teaches it the imports
            else:
                warm_times.append(elapsed)
        await warm.stop()
        box.remove(delete_branch=True)
    cold = statistics.median(cold_times) * 1000
    hot = statistics.median(warm_times) * 1000
    print(f"isolation: {box.isolation.level}")
    print(f"cold re-run            median {cold:7.0f} ms  ({runs} runs)")
    print(f"warm first run         {first * 1000:14.0f} ms  (server start, learns the imports)")
    print(f"warm re-run            median {hot:7.0f} ms  ({runs} runs)")
    print(f"cold / warm            {cold / hot:14.1f} x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    anyio.run(measure, parser.parse_args().runs)


if __name__ == "__main__":
    main()
