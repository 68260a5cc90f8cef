"""Running one command: streamed output, limits, and what may reach the terminal."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from codexloop.core.process import run, sanitize_terminal

pytestmark = pytest.mark.anyio
ENV = {"PATH": os.environ["PATH"]}


def alive(pid: int) -> bool:
    """True while the process runs (a zombie nobody reaped yet counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def dies(pid: int, within: float = 5.0) -> bool:
    """Wait (bounded) for a killed process to be gone: SIGKILL delivery is asynchronous."""
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def test_output_streams_and_the_exit_code_is_kept(tmp_path: Path) -> None:
    pieces: list[str] = []

    async def collect(text: str) -> None:
        pieces.append(text)

    result = await run(
        ["bash", "-c", "echo one; echo two >&2; exit 3"],
        cwd=tmp_path,
        env=ENV,
        timeout=10,
        on_output=collect,
    )
    assert result.exit_code == 3
    assert "".join(pieces) == result.output == "one\ntwo\n"


async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {marker}; trap '' TERM; sleep 30"
    result = await run(["bash", "-c", script], cwd=tmp_path, env=ENV, timeout=0.5)
    assert result.timed_out and result.exit_code is None
    assert "time limit" in result.output
    assert dies(int(marker.read_text()))


async def test_a_background_job_does_not_outlive_its_command(tmp_path: Path) -> None:
    marker = tmp_path / "bg.pid"
    result = await run(
        ["bash", "-c", f"sleep 30 & echo $! > {marker}"], cwd=tmp_path, env=ENV, timeout=10
    )
    assert result.exit_code == 0
    assert dies(int(marker.read_text()))


async def test_a_flood_is_cut_to_head_and_tail(tmp_path: Path) -> None:
    result = await run(
        ["bash", "-c", "seq 1 200000"], cwd=tmp_path, env=ENV, timeout=30, keep=10_000
    )
    assert result.truncated
    assert result.output.startswith("1\n2\n3\n")
    assert result.output.rstrip().endswith("199999\n200000")
    assert "characters cut" in result.output
    assert len(result.output) < 11_000


async def test_endless_output_is_killed_past_the_hard_limit(tmp_path: Path) -> None:
    result = await run(
        ["bash", "-c", "yes"], cwd=tmp_path, env=ENV, timeout=30, keep=1000, hard_limit=1 << 20
    )
    assert result.killed_for_output
    assert "killed after" in result.output


async def test_a_missing_program_is_a_result_not_an_exception(tmp_path: Path) -> None:
    result = await run(["/nonexistent/program"], cwd=tmp_path, env=ENV, timeout=5)
    assert result.exit_code is None
    assert "could not start" in result.output


def test_terminal_sequences_that_act_on_the_terminal_are_stripped() -> None:
    clipboard = "\x1b]52;c;ZXZpbA==\x07"
    title = "\x1b]0;pwned\x1b\\"
    clear = "\x1b[2J\x1b[H"
    colour = "\x1b[31mred\x1b[0m"
    text = f"a{clipboard}b{title}c{clear}d{colour}\x07"
    assert sanitize_terminal(text) == f"abcd{colour}"
    assert sanitize_terminal("plain\ttext\r\n") == "plain\ttext\r\n"
