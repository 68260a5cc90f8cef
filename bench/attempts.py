"""Attempts racing: time to first green and memory, N = 1, 2, 4, 8 (issue 17).

A scripted model on loopback whose every turn takes ``--turn`` seconds (model-bound turns):
one attempt's script fixes the calc kata in its first iteration; every other attempt's
script never does (each iteration it edits a comment and says it is done). With
``--pick first``, time to first green for N attempts is compared with the winning attempt
running alone, and the memory of the whole process tree (the engine and every sandbox's
processes, sampled every 50 ms) with one attempt's. One attempt runs as the command line runs
it (a plain session, warm test runs); a race's attempts share one baseline run and run their
tests cold, at most ``--jobs`` (the CPU count) at once.

    .venv/bin/python bench/attempts.py [--turn 2.0] [--runs 3] [--sizes 1,2,4,8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from _repo import git_repo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from scripted_openai import Call, Reply, ScriptedOpenAI

from codexloop.core import events as ev
from codexloop.core.config import Settings, load_config
from codexloop.core.loop import Loop, event_channel
from codexloop.core.race import Race

KATA = {
    "calc.py": "# calc\ndef add(a, b):\n    return a - b\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}
ITERATIONS = 6


def slow(reply: Reply, seconds: float) -> Any:
    """A turn that takes ``seconds`` before it answers (the server answers in threads)."""

    def turn(_body: dict[str, Any]) -> Reply:
        time.sleep(seconds)
        return reply

    return turn


def tree_rss_mb() -> float:
    """Resident memory of this process and every descendant, in MB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, ppid = int(entry), int(fields.get("PPid", "0").strip())
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / 1024


async def one_race(attempts: int, turn_s: float) -> tuple[float, float, str]:
    """(seconds to the winner, peak MB of the process tree, the winner's branch)."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        os.environ["XDG_STATE_HOME"] = str(Path(tmp) / "state")
        repo = git_repo(Path(tmp), KATA)
        server = ScriptedOpenAI()
        models = [f"a{n}" for n in range(1, attempts + 1)]
        winner = models[-1]  # the last to start: no head start from its position
        for model in models:
            if model == winner:
                fix = Call(
                    "edit_file", {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"}
                )
                server.add_for(model, slow(Reply(tool_calls=[fix]), turn_s))
                server.add_for(model, slow(Reply(text="Fixed."), turn_s))
                continue
            for i in range(ITERATIONS):
                comment = Call(
                    "edit_file",
                    {
                        "path": "calc.py",
                        "old_text": f"# calc{'!' * i}\n",
                        "new_text": f"# calc{'!' * (i + 1)}\n",
                    },
                )
                server.add_for(model, slow(Reply(tool_calls=[comment]), turn_s))
                server.add_for(model, slow(Reply(text="Done."), turn_s))
        config = load_config(
            Settings(
                targets=("tests/test_calc.py::test_add",),
                repo=repo,
                base_url=server.base_url,
                model=",".join(models),
                max_iterations=ITERATIONS,
                attempts=attempts,
            ),
            env={},
            cwd=repo,
        )
        # One attempt runs as the command line runs it: a plain session (warm test runs).
        race: Race | Loop = (
            Race(config, write_trace=False) if attempts > 1 else Loop(config, write_trace=False)
        )
        send, receive = event_channel()
        won_at = 0.0
        peak = 0.0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss_mb())
                time.sleep(0.05)

        async def collect() -> None:
            nonlocal won_at
            async with receive:
                async for event in receive:
                    ended = isinstance(event, ev.AttemptFinished | ev.LoopFinished)
                    if ended and event.status == "passed" and not won_at:
                        won_at = time.perf_counter()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            async with send:
                result = await race.run(send)
        done.set()
        sampler.join()
        server.close()
        if result.status != "passed":
            raise SystemExit(f"N={attempts}: no green ({result.reason})")
        return won_at - started, peak, result.branch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turn", type=float, default=2.0, help="seconds per model turn")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="1,2,4,8")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    print(f"model turn {args.turn:.1f} s; {os.cpu_count()} CPUs; median of {args.runs} runs")
    base_time = 0.0
    race_sizes: dict[int, float] = {}
    for n in sizes:
        times, mems = [], []
        for _ in range(args.runs):
            seconds, peak, _branch = anyio.run(one_race, n, args.turn)
            times.append(seconds)
            mems.append(peak)
        t, m = statistics.median(times), statistics.median(mems)
        base_time = base_time or t
        extra = ""
        if n > 1:
            race_sizes[n] = m
            smallest = min(race_sizes)
            if n > smallest:
                per = (m - race_sizes[smallest]) / (n - smallest)
                extra = f"; {per:5.1f} MB per attempt beyond {smallest}"
        print(
            f"N={n}: first green after {t:6.2f} s ({t / base_time:4.2f}x the first size), "
            f"peak tree RSS {m:6.1f} MB{extra}"
        )


if __name__ == "__main__":
    main()
