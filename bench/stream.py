"""How fast can the app absorb a model stream? The real app, headless, a synthetic stream.

Drives :class:`codexloop.tui.app.CodexloopApp` with ``App.run_test`` (no loop, no model):
``ModelText`` events of ~4-character tokens go into the main screen's event pump at a target
rate, exactly as the engine sends them. Screen updates are rendered to terminal escape
sequences and thrown away, so the cost of drawing is counted too.

Prints, for the rate run: tokens/s absorbed, token-arrival-to-screen lag p50/p99/max
(from the moment a token enters the event channel to the end of the screen refresh that
shows it), and peak RSS growth; for the memory run: RSS growth after a million tokens.

    .venv/bin/python bench/stream.py                      # 5,000 tok/s for 20 s, then 1M tokens
    .venv/bin/python bench/stream.py --rate 20000 --seconds 5 --million 0
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from codexloop.core import events as ev
from codexloop.core.config import Config
from codexloop.core.loop import event_channel
from codexloop.tui.app import CodexloopApp

WORDS = (
    " the", " code", " test", " add", " fix", " def", " self", " case", " None", " int",
    " str", " data", " list", " call", " file", " path", " line", " that", " with", " from",
    " is", " it", " in", " to", ".", ",", "()", " ==", " +=", " for",
)  # fmt: skip


def tokens(seed: int = 7) -> Any:
    """An endless, deterministic stream of ~4-character tokens with a newline now and then."""
    rng = random.Random(seed)
    while True:
        for _ in range(rng.randint(6, 30)):
            yield rng.choice(WORDS)
        yield "\n" if rng.random() < 0.8 else ".\n\n"


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class BenchApp(CodexloopApp):
    """The app, with its screen updates rendered to escape sequences (then dropped)."""

    bytes_out = 0

    def _display(self, screen: Any, renderable: Any) -> None:  # private Textual hook
        if renderable is not None and hasattr(renderable, "render_segments"):
            self.bytes_out += len(renderable.render_segments(self.console))


def kata_config(root: Path) -> Config:
    (root / "tests").mkdir(parents=True, exist_ok=True)
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "tests" / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    )
    return Config(
        repo=root,
        targets=("tests/test_calc.py::test_add",),
        model="bench",
        base_url="http://127.0.0.1:9/v1",
        api_key="bench",
        target_files=("tests/test_calc.py",),
    )


async def stream(
    config: Config, rate: float, count: int, *, sample_every: int = 1, size: tuple[int, int]
) -> dict[str, float]:
    """Send ``count`` tokens at ``rate`` tokens/s; measure lag on every ``sample_every``-th."""
    app = BenchApp(config, autostart=False)
    send, receive = event_channel()
    sent_at = array("d")
    refreshes: list[tuple[int, float]] = []
    source = tokens()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        pump = app.main.pump
        fed = 0  # tokens the pump took in
        shown = 0  # tokens painted onto the panes by the last flush
        feed, flush = pump.feed, pump.flush

        def counting_feed(event: ev.Event) -> None:
            nonlocal fed
            feed(event)
            if type(event) is ev.ModelText:
                fed += 1

        def on_refresh(flushed: int) -> None:
            refreshes.append((flushed, time.perf_counter()))

        def hooked_flush() -> None:
            # After a flush that put new tokens on the panes: note when the screen shows them.
            nonlocal shown
            flush()
            if shown != fed:
                shown = fed
                app.call_after_refresh(on_refresh, shown)

        pump.feed = counting_feed  # type: ignore[method-assign]
        pump.flush = hooked_flush  # type: ignore[method-assign]
        consumer = asyncio.create_task(pump.consume(receive))
        rss_before = rss_mb()
        start = time.perf_counter()
        sent = 0
        chars = 0
        while sent < count:
            due = count if rate <= 0 else min(count, int((time.perf_counter() - start) * rate) + 1)
            burst_end = min(due, sent + 2_000)
            while sent < burst_end:
                token = next(source)
                chars += len(token)
                if sent % sample_every == 0:
                    sent_at.append(time.perf_counter())
                send.send_nowait(ev.ModelText(token))
                sent += 1
            await asyncio.sleep(0.001 if rate > 0 else 0)
        feed_end = time.perf_counter()
        while not refreshes or refreshes[-1][0] < count:
            await asyncio.sleep(0.005)
        end = refreshes[-1][1]
        rss_after = rss_mb()
        model_lines = app.main.model_pane.line_count
        await send.aclose()
        await consumer
        await pilot.pause()
    lags: list[float] = []
    index = 0
    for sample, when in enumerate(sent_at):
        token_index = sample * sample_every
        while refreshes[index][0] <= token_index:
            index += 1
        lags.append(refreshes[index][1] - when)
    lags.sort()
    return {
        "tokens": count,
        "chars": chars,
        "feed_s": feed_end - start,
        "total_s": end - start,
        "absorbed_tps": count / (end - start),
        "lag_p50_ms": lags[len(lags) // 2] * 1000,
        "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000,
        "lag_max_ms": lags[-1] * 1000,
        "refreshes": len(refreshes),
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "model_lines": model_lines,
        "bytes_out": app.bytes_out,
    }


def report(title: str, r: dict[str, float]) -> None:
    print(f"== {title}")
    print(
        f"  {r['tokens']:,.0f} tokens ({r['chars']:,.0f} chars) fed in {r['feed_s']:.1f}s, "
        f"all on screen after {r['total_s']:.1f}s: {r['absorbed_tps']:,.0f} tokens/s absorbed"
    )
    print(
        f"  arrival-to-screen lag: p50 {r['lag_p50_ms']:.1f} ms, p99 {r['lag_p99_ms']:.1f} ms, "
        f"max {r['lag_max_ms']:.1f} ms ({r['refreshes']:,.0f} screen refreshes, "
        f"{r['bytes_out'] / 1e6:.1f} MB of escape sequences)"
    )
    print(
        f"  RSS {r['rss_before_mb']:.1f} MB -> {r['rss_after_mb']:.1f} MB "
        f"(growth {r['rss_after_mb'] - r['rss_before_mb']:+.1f} MB); "
        f"model pane holds {r['model_lines']:,.0f} lines (bounded)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5_000, help="tokens/s (default 5000)")
    parser.add_argument("--seconds", type=float, default=20, help="duration (default 20)")
    parser.add_argument(
        "--million", type=int, default=1_000_000, help="tokens of the memory run (0: skip)"
    )
    parser.add_argument(
        "--million-rate", type=float, default=50_000, help="tokens/s of the memory run"
    )
    parser.add_argument("--size", default="120x40", help="terminal size (default 120x40)")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="codexloop-bench-") as tmp:
        config = kata_config(Path(tmp))
        start_peak = peak_rss_mb()
        count = int(args.rate * args.seconds)
        result = asyncio.run(stream(config, args.rate, count, size=(width, height)))
        report(f"{args.rate:,.0f} tokens/s for {args.seconds:.0f}s at {args.size}", result)
        target = (
            result["lag_p99_ms"] < 50 and result["rss_after_mb"] - result["rss_before_mb"] < 100
        )
        print(f"  target (lag p99 < 50 ms, growth < 100 MB): {'met' if target else 'MISSED'}")
        if args.million:
            result = asyncio.run(
                stream(
                    config,
                    args.million_rate,
                    args.million,
                    sample_every=100,
                    size=(width, height),
                )
            )
            report(f"{args.million:,} tokens at {args.million_rate:,.0f} tokens/s", result)
        print(
            f"peak RSS of the process: {peak_rss_mb():.1f} MB "
            f"(at start of the runs {start_peak:.1f} MB)"
        )


if __name__ == "__main__":
    main()
