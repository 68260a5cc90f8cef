"""Live output is capped per command like what the model gets: head, a marker, tail.

A command (or a test run, warm or cold) that floods its output must not flood the events,
the trace or the app: what is streamed live is the first ``LIVE_HEAD`` characters, one
marker, and at the end the last part of the output (with how much was left out).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from loophelpers import make_config, of_type, run_loop
from scripted_openai import Call, Reply

from codexloop.core import events as ev
from codexloop.core.process import LIVE_HEAD, LIVE_TAIL, run

pytestmark = pytest.mark.anyio

LINE = "x" * 99  # 100 characters a line with its newline
FLOOD_LINES = 600_000  # 60 MB
FLOOD = (
    f"import sys\nfor i in range({FLOOD_LINES}):\n    sys.stdout.write('{LINE}\\n')\n"
    "sys.stdout.write('{end}\\n')\n"
)
MB = 1 << 20


def flood_script(end: str) -> str:
    return FLOOD.replace("{end}", end)


async def test_a_flood_is_streamed_as_head_marker_and_tail(tmp_path: Path) -> None:
    (tmp_path / "flood.py").write_text(flood_script("LAST LINE OF THE FLOOD"))
    seen: list[str] = []

    async def collect(text: str) -> None:
        seen.append(text)

    result = await run(
        ["python3", "flood.py"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        timeout=120,
        on_output=collect,
    )
    live = "".join(seen)
    assert result.exit_code == 0 and result.truncated
    assert len(live) < LIVE_HEAD + LIVE_TAIL + 1000 < MB
    assert live.startswith(LINE + "\n")
    assert "characters cut" in live  # the count left out, like the model's marker
    assert live.rstrip("\n").endswith("LAST LINE OF THE FLOOD")
    assert result.output.rstrip("\n").endswith("LAST LINE OF THE FLOOD")  # the model's view


async def test_ordinary_output_is_streamed_whole(tmp_path: Path) -> None:
    text = "".join(f"line {i}\n" for i in range(20_000))  # ~200 KB: a long test report
    (tmp_path / "out.txt").write_text(text)
    seen: list[str] = []

    async def collect(chunk: str) -> None:
        seen.append(chunk)

    result = await run(
        ["cat", "out.txt"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
        on_output=collect,
    )
    assert "".join(seen) == text == result.output


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_a_flooding_command_and_test_run_stay_small_in_events_and_trace(
    make_repo, scripted_openai, warm: bool
) -> None:
    test = (
        "import sys\n\n\ndef test_flood():\n"
        f"    for i in range({FLOOD_LINES}):\n        sys.stdout.write('{LINE}\\n')\n"
        "    print('LAST LINE OF THE TEST')\n    assert False\n"
    )
    repo = make_repo(
        {"flood.py": flood_script("LAST LINE OF THE COMMAND"), "tests/test_flood.py": test}
    )
    scripted_openai.add(
        Reply(tool_calls=[Call("run_command", {"command": "python3 flood.py"})]),
        Reply(text="done"),
    )
    overrides: dict[str, object] = {"max_iterations": 1, "warm": warm}
    if not warm:
        overrides["test_cmd"] = (
            f"{sys.executable} -m pytest -q -p no:cacheprovider tests/test_flood.py"
        )
    config = make_config(repo, scripted_openai.base_url, "tests/test_flood.py", **overrides)
    result, events = await run_loop(config)

    assert of_type(events, ev.LoopFinished)[-1].status == "failed"
    assert result.iterations == 1
    assert not any("warm test runs are off" in n.message for n in of_type(events, ev.Notice))
    command = "".join(e.text for e in of_type(events, ev.CommandOutput))
    tested = "".join(e.text for e in of_type(events, ev.TestOutput))
    for live, last in ((command, "LAST LINE OF THE COMMAND"), (tested, "LAST LINE OF THE TEST")):
        assert len(live) < MB
        assert "characters cut" in live
        assert last in live[-LIVE_TAIL:]
    assert "failed" in tested[-2000:]  # pytest's summary, the tail's last line
    assert result.trace is not None and result.trace.stat().st_size < 4 * MB
