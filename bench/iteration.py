"""Engine overhead per iteration: everything but the model's time and the test's own run.

An instant scripted model (loopback server in a process of its own, no delay) keeps a small pytest repo red for
N iterations with one edit each, then fixes it. For every iteration:

    overhead = iteration wall time - model time - test command time

where model time runs from each model request to its usage event, and test command
time is the test run's own duration as the runner measured it.

    .venv/bin/python bench/iteration.py [--iterations 30] [--kata-venv]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from _repo import git_repo
from _server import server_process
from _venv import kata_python

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core.config import Settings, load_config
from codexloop.core.loop import Loop, event_channel


def make_repo(root: Path) -> Path:
    return git_repo(
        root,
        {
            "calc.py": "OFFSET = 1\n\n\ndef add(a, b):\n    return a + b + OFFSET\n",
            "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
        },
    )


def _name(event: ev.Event) -> str:
    state = f"({event.state})" if isinstance(event, ev.StateChanged) else ""
    return type(event).__name__ + state


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


async def measure(iterations: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        os.environ["XDG_STATE_HOME"] = str(Path(tmp) / "state")
        repo = make_repo(Path(tmp))
        replies: list[Reply] = []
        for i in range(1, iterations + 1):
            new = "OFFSET = 0" if i == iterations else f"OFFSET = {i + 1}"
            edit = {"path": "calc.py", "old_text": f"OFFSET = {i}", "new_text": new}
            replies += [Reply(tool_calls=[Call("edit_file", edit)]), Reply(text="try")]
        with server_process(replies) as base_url:
            config = load_config(
                Settings(
                    targets=("tests/test_calc.py::test_add",),
                    repo=repo,
                    base_url=base_url,
                    model="scripted",
                    max_iterations=iterations,
                ),
                env={},
                cwd=repo,
            )
            send, receive = event_channel()
            loop = Loop(config)
            stamps: list[tuple[float, ev.Event]] = []

            async def collect() -> None:
                async with receive:
                    async for event in receive:
                        stamps.append((time.perf_counter(), event))

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                async with send:
                    result = await loop.run(send)
            total = time.perf_counter() - started

    overheads, model_times, test_times, walls = [], [], [], []
    it_start = model_start = 0.0
    model_time = 0.0
    test_time = 0.0
    for stamp, event in stamps:
        if isinstance(event, ev.IterationStarted):
            it_start, model_time, test_time = stamp, 0.0, 0.0
        elif isinstance(event, ev.ModelTurnStarted):
            model_start = stamp
        elif isinstance(event, ev.Usage):
            model_time += stamp - model_start
        elif isinstance(event, ev.TestFinished) and event.iteration > 0:
            test_time = event.duration_s
        elif isinstance(event, ev.IterationFinished):
            wall = stamp - it_start
            walls.append(wall)
            model_times.append(model_time)
            test_times.append(test_time)
            overheads.append(wall - model_time - test_time)
    ms = [o * 1000 for o in overheads]
    print(f"status {result.status} after {result.iterations} iterations, {total:.2f} s in all")
    print(f"iteration wall time   p50 {percentile(walls, 50) * 1000:7.1f} ms")
    print(f"  model (loopback)    p50 {percentile(model_times, 50) * 1000:7.1f} ms")
    print(f"  test command        p50 {percentile(test_times, 50) * 1000:7.1f} ms")
    print(
        f"engine overhead       p50 {percentile(ms, 50):7.1f} ms   p99 {percentile(ms, 99):7.1f} ms"
        f"   mean {statistics.mean(ms):7.1f} ms"
    )
    print("where the engine's time goes (median per call, calls):")
    for phase, times in sorted(result.timings.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {phase:28s} {statistics.median(times) * 1000:7.1f} ms  x{len(times)}")
    print("between events (median gap per iteration, the largest first):")
    gaps: dict[str, list[float]] = {}
    inside = False
    for (before, first), (after, second) in itertools.pairwise(stamps):
        if isinstance(first, ev.IterationStarted):
            inside = True
        if isinstance(first, ev.IterationFinished):
            inside = False
        if inside and not isinstance(first, ev.ModelText | ev.ModelTurnStarted):
            key = f"{_name(first)} -> {_name(second)}"
            gaps.setdefault(key, []).append((after - before) * 1000)
    per_iteration = {k: sum(v) / max(1, len(walls)) for k, v in gaps.items()}
    for key, total_ms in sorted(per_iteration.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {key:52s} {total_ms:7.1f} ms  x{len(gaps[key])}")
    print(
        f"iterations per minute, model time excluded: {60 / statistics.mean([w - m for w, m in zip(walls, model_times, strict=True)]):.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument(
        "--kata-venv",
        action="store_true",
        help="run the repo's tests with a venv holding pytest alone (bench/_venv.py), as a "
        "small project's own; default: this interpreter, every dev plugin loaded",
    )
    args = parser.parse_args()
    if args.kata_venv and (python := kata_python()) is not None:
        os.environ["VIRTUAL_ENV"] = str(Path(python).parent.parent)  # find_python takes it
    anyio.run(measure, args.iterations)


if __name__ == "__main__":
    main()
