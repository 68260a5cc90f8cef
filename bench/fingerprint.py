"""What a warm run pays before it starts: the test-configuration fingerprint.

A repository of N source files in nested packages (each with a conftest.py every 50
folders). The first fingerprint walks the tree; later ones, given the sandbox's changed
paths (as the loop gives them), read only the configuration files found then.

    .venv/bin/python bench/fingerprint.py [--files 20000] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _repo import git_repo

from codexloop.core.sandbox import Sandbox
from codexloop.core.warm import WarmRunner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = {"pyproject.toml": "[project]\nname = 'big'\n"}
        for n in range(args.files):
            folder = f"pkg{n // 1000}/sub{n // 20}"
            files[f"{folder}/mod{n}.py"] = f"X = {n}\n"
            if n % 1000 == 0:
                files[f"{folder}/conftest.py"] = "import pytest\n"
        repo = git_repo(Path(tmp), files)
        box = Sandbox.create(repo, "bench-fingerprint")
        runner = WarmRunner(box, sys.executable)
        try:
            walk, given = [], []
            for _ in range(args.runs):
                started = time.perf_counter()
                runner._fingerprint()  # no changed paths: a walk every time (the old way)
                walk.append(time.perf_counter() - started)
            for _ in range(args.runs):
                started = time.perf_counter()
                runner._fingerprint(["pkg1/sub50/mod1000.py"])
                given.append(time.perf_counter() - started)
        finally:
            box.remove(delete_branch=True)
    print(f"{args.files} files, {len(runner._known_config or [])} configuration files")
    print(f"walk every run        median {statistics.median(walk) * 1000:7.1f} ms")
    print(f"changed paths given   median {statistics.median(given) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
