"""Many sessions on Ray vs in this process (issue 18): wall time, remote overhead, events/s.

``--tasks`` sessions (the calc kata, each in its own repository) of ``--attempts`` attempts
each, ``--concurrency`` at a time (as ``codexloop batch`` runs them), against a scripted model on loopback whose turns take ``--turn``
seconds; one attempt of each session fixes the kata in its first iteration, the other edits a
comment (``--pick best``: every attempt runs to its end). Run twice: every attempt in this
process, then every attempt a Ray actor on a local cluster (``ray.init(num_cpus=...)``,
started before the clock runs, with a logical CPU for every attempt under way). Printed:

- wall time of each executor, and the ratio;
- per remote attempt: the time to its first event beyond a local attempt's (bundle out,
  actor start, clone on the node), the bundle out, and the branch back (bundle, fetch,
  worktree) — the remote overhead per session;
- events per second carried back: one session whose model streams ``--tokens`` small
  fragments as fast as the server writes them, counted as they arrive here, and whether
  the text came back in the order the model wrote it.

    .venv/bin/python bench/batch.py [--tasks 8] [--attempts 2] [--concurrency 4] [--turn 0.5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from _repo import git_repo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from scripted_openai import Call, Reply, ScriptedOpenAI

from codexloop.core import events as ev
from codexloop.core.config import Settings, load_config
from codexloop.core.executor import new_session
from codexloop.core.loop import Loop, event_channel

KATA = {
    "calc.py": "# calc\ndef add(a, b):\n    return a - b\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}
TARGET = "tests/test_calc.py::test_add"


def slow(reply: Reply, seconds: float) -> Any:
    def turn(_body: dict[str, Any]) -> Reply:
        time.sleep(seconds)
        return reply

    return turn


def script(server: ScriptedOpenAI, model: str, fixes: bool, turn: float) -> None:
    if fixes:
        first = Call("edit_file", {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"})
    else:
        first = Call("edit_file", {"path": "calc.py", "old_text": "# calc", "new_text": "# sum"})
    server.add_for(model, slow(Reply(tool_calls=[first]), turn), slow(Reply(text="Done."), turn))


async def run_all(
    root: Path, server: ScriptedOpenAI, args: argparse.Namespace, ray: str | None
) -> tuple[float, list[Loop], int, list[float]]:
    """Every session at once; wall seconds, every attempt's loop, sessions gone green."""
    sessions = []
    for task in range(args.tasks):
        models = [f"t{task}-{'ray' if ray else 'here'}-a{k}" for k in range(1, args.attempts + 1)]
        for k, model in enumerate(models):
            script(server, model, fixes=k == len(models) - 1, turn=args.turn)
        repo = git_repo(root / f"{'ray' if ray else 'here'}-{task}", KATA)
        settings = Settings(
            targets=(TARGET,),
            repo=repo,
            base_url=server.base_url,
            model=",".join(models),
            attempts=args.attempts,
            pick="best",
            max_iterations=1,
            ray=ray,
        )
        config = load_config(settings, env={}, cwd=repo)
        sessions.append(new_session(config, backoff=(0.0,)))
    green = 0
    firsts: list[float] = []

    limit = anyio.CapacityLimiter(args.concurrency)

    async def one(session: Any) -> None:
        async with limit:
            await run_one(session)

    async def run_one(session: Any) -> None:
        nonlocal green
        send, receive = event_channel()
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, receive, time.perf_counter(), firsts)
            async with send:
                result = await session.run(send, None)
        green += result.status == "passed"

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for session in sessions:
            tg.start_soon(one, session)
    wall = time.perf_counter() - started
    loops = [loop for session in sessions for loop in getattr(session, "loops", [session])]
    return wall, loops, green, firsts


async def drain(receive: Any, started: float, firsts: list[float]) -> None:
    """Every event; the time from the session's start to each attempt's ``loop_started``."""
    async with receive:
        async for event in receive:
            if isinstance(event, ev.LoopStarted):
                firsts.append(time.perf_counter() - started)


async def stream_rate(root: Path, server: ScriptedOpenAI, tokens: int, ray: str | None) -> Any:
    """Fragments per second carried back from one streaming turn, and whether they came in
    order (the text as the model wrote it)."""
    words = [f"w{n} " for n in range(tokens)]
    server.add_for("stream", Reply(text="".join(words), chunk_size=4), Reply(text="Done."))
    repo = git_repo(root / f"stream-{ray or 'here'}", KATA)
    settings = Settings(
        targets=(TARGET,),
        repo=repo,
        base_url=server.base_url,
        model="stream",
        max_iterations=1,
        ray=ray,
    )
    session = new_session(load_config(settings, env={}, cwd=repo), backoff=(0.0,))
    send, receive = event_channel()
    times: list[float] = []
    text: list[str] = []

    async def collect() -> None:
        async with receive:
            async for event in receive:
                if isinstance(event, ev.ModelText):
                    times.append(time.perf_counter())
                    text.append(event.text)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        async with send:
            await session.run(send, None)
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    return len(times) / span, "".join(text).startswith("".join(words))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--attempts", type=int, default=2)
    parser.add_argument("--turn", type=float, default=0.5, help="seconds per model turn")
    parser.add_argument(
        "--cpus",
        type=int,
        default=0,
        help="the local cluster's num_cpus (an attempt takes one; default: concurrency x "
        "attempts, so every attempt under way runs at once, as in this process)",
    )
    parser.add_argument("--tokens", type=int, default=5000, help="fragments of the stream test")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="sessions at once, as batch --concurrency"
    )
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        print("bench/batch.py needs Ray: pip install 'codexloop[ray]'")
        return 2
    t0 = time.perf_counter()
    args.cpus = args.cpus or args.concurrency * args.attempts
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    print(f"local Ray cluster up in {time.perf_counter() - t0:.1f} s (num_cpus={args.cpus})")
    server = ScriptedOpenAI()
    try:
        with tempfile.TemporaryDirectory(prefix="codexloop-bench-batch-") as tmp:
            root = Path(tmp)
            os.environ["XDG_CACHE_HOME"] = str(root / "cache")
            os.environ["XDG_STATE_HOME"] = str(root / "state")
            here, _, here_green, here_firsts = anyio.run(run_all, root, server, args, None)
            there, there_loops, there_green, _ = anyio.run(run_all, root, server, args, "auto")
            print(
                f"{args.tasks} sessions x {args.attempts} attempts, {args.concurrency} sessions at "
                f"once, {args.turn} s turns: "
                f"in-process {here:.1f} s ({here_green} green), "
                f"Ray {there:.1f} s ({there_green} green), ratio {there / here:.2f}x"
            )
            new = [
                t
                for lp in there_loops
                for t in lp.timings.get("ray to first event (new actor)", [])
            ]
            reused = [
                t
                for lp in there_loops
                for t in lp.timings.get("ray to first event (reused actor)", [])
            ]
            out = [t for lp in there_loops for t in lp.timings.get("ray bundle out", [])]
            back = [t for lp in there_loops for t in lp.timings.get("ray bring back", [])]
            print(
                "per remote attempt (median): to first event, a new actor "
                f"{median(new):.2f} s ({len(new)}), a reused one {median(reused):.2f} s "
                f"({len(reused)}); a local attempt's: {median(here_firsts):.2f} s; bundle out {median(out) * 1000:.0f} ms, "
                f"branch back {median(back) * 1000:.0f} ms"
            )
            rate_here, ok_here = anyio.run(stream_rate, root, server, args.tokens, None)
            rate_there, ok_there = anyio.run(stream_rate, root, server, args.tokens, "auto")
            print(
                f"streamed fragments carried back: in-process {rate_here:,.0f}/s "
                f"(in order: {ok_here}), Ray {rate_there:,.0f}/s (in order: {ok_there})"
            )
    finally:
        server.close()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
