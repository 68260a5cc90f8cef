"""Reading N blobs of the developer's repository: one git process a blob (the way gitops read
them once, kept here as it was) against gitops.read_blob today (a `git cat-file --batch`,
started once and kept open).

A repository of N small files in one commit; every file is read once by `HEAD:<path>`, as
the exam restore and the flags scan ask. "after" includes opening the repository (one
`git rev-parse`) and starting the reader; "after, warm" reads them all again.

    .venv/bin/python bench/blobs.py [--blobs 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from _repo import git_repo

from codexloop.core import gitops

# ----------------------------------------------------------------- the old way, as it was

_SAFETY = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "gc.auto=0")
_SCRUBBED = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
)


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    merged = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    if env is not None:
        merged.update(env)
    merged["GIT_TERMINAL_PROMPT"] = "0"
    return merged


def _run(
    cwd: Path,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", *_SAFETY, *args],
        cwd=cwd,
        env=_environment(env),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        check=False,
    )


def read_blob_per_process(repo: Path, commit: str, path: str) -> bytes | None:
    """gitops.read_blob as it once was: `git cat-file blob` once a blob."""
    done = _run(repo, ["cat-file", "blob", f"{commit}:{path}"])
    return done.stdout if done.returncode == 0 else None


# ----------------------------------------------------------------- the measurement


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blobs", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = {f"pkg{n // 50}/mod{n}.py": f"X = {n}\n" for n in range(args.blobs)}
        repo = git_repo(Path(tmp), files)
        before, after, warm = [], [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            for rel, text in files.items():
                assert read_blob_per_process(repo, "HEAD", rel) == text.encode()
            before.append(time.perf_counter() - started)

            gitops.close_readers()
            started = time.perf_counter()
            for rel, text in files.items():
                assert gitops.read_blob(repo, "HEAD", rel) == text.encode()
            after.append(time.perf_counter() - started)

            started = time.perf_counter()
            for rel, text in files.items():
                assert gitops.read_blob(repo, "HEAD", rel) == text.encode()
            warm.append(time.perf_counter() - started)
        gitops.close_readers()

    n = args.blobs
    for label, times in (
        ("before: one git process a blob", before),
        ("after: cat-file --batch kept open", after),
        ("after, reader already open", warm),
    ):
        best, median = min(times), statistics.median(times)
        print(
            f"{label:38} {n} blobs  median {median * 1000:8.1f} ms  best {best * 1000:8.1f} ms"
            f"  ({median / n * 1e6:7.1f} us a blob)"
        )
    print(
        f"speed-up (median, reader opened included): {statistics.median(before) / statistics.median(after):.0f}x"
    )


if __name__ == "__main__":
    main()
