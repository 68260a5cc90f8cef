"""The engine's own CPU for a long streamed answer: a headless session on the calc kata whose
first model turn streams ``--chars`` characters in 7-character chunks (then the fix). Printed
per run: wall time and the CPU of the engine's process (and the children it waited for — git,
the sandbox's commands; not the model worker, which it does not wait for). ``--before TREE``
times an earlier commit's checkout too, alternating (see ``bench/peer.py``).

    .venv/bin/python bench/engine_stream.py [--runs 2] [--chars 200000] [--before TREE]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _repo import git_repo
from peer import KATA, RIGHT, TARGET, codexloop_command

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from scripted_openai import Call, Reply, ScriptedOpenAI


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--before", metavar="TREE")
    args = parser.parse_args()
    variants = {"now": codexloop_command(None)}
    if args.before:
        variants["before"] = codexloop_command(args.before)
    server = ScriptedOpenAI()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    try:
        with tempfile.TemporaryDirectory(prefix="codexloop-stream-") as tmp:
            env["XDG_CACHE_HOME"] = str(Path(tmp, "cache"))
            env["XDG_STATE_HOME"] = str(Path(tmp, "state"))
            for run in range(args.runs):
                for name, command in variants.items():
                    server.add(
                        Reply(text="word " * (args.chars // 5), chunk_size=7),
                        Reply(
                            tool_calls=[Call("write_file", {"path": "calc.py", "content": RIGHT})]
                        ),
                        Reply(text="Fixed."),
                    )
                    repo = git_repo(Path(tmp, f"{name}-{run}"), KATA)
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    started = time.perf_counter()
                    done = subprocess.run(
                        [
                            *command,
                            "--headless",
                            "--model",
                            "m",
                            "--base-url",
                            server.base_url,
                            "--max-iterations",
                            "2",
                            TARGET,
                        ],
                        cwd=repo,
                        env=env,
                        capture_output=True,
                        stdin=subprocess.DEVNULL,
                    )
                    wall = time.perf_counter() - started
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                    print(
                        f"{name:7} wall {wall:5.2f} s   engine CPU {cpu:5.2f} s   exit {done.returncode}"
                    )
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
