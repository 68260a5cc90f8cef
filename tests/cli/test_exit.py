"""The command's quick way out (``codexloop.main.leave``): no teardown of the interpreter,
but everything an ordinary exit does that someone relies on still happens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LEAVE = "import atexit, sys\nfrom codexloop.main import leave\n"


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_exit_handlers_run_and_buffered_output_is_written_with_the_exit_status() -> None:
    done = python(
        LEAVE + "atexit.register(lambda: print('handler ran'))\n"
        "sys.stdout.write('buffered, no newline')\nleave(3)\n"
    )
    assert done.returncode == 3
    assert done.stdout == "buffered, no newlinehandler ran\n"


def test_a_thread_that_is_not_a_daemon_is_waited_for(tmp_path: Path) -> None:
    mark = tmp_path / "written"
    done = python(
        LEAVE + "import threading, time\n"
        f"def late():\n    time.sleep(0.3)\n    open({str(mark)!r}, 'w').write('done')\n"
        "threading.Thread(target=late).start()\nleave(0)\n"
    )
    assert done.returncode == 0, done.stderr
    assert mark.read_text() == "done"


def test_temporary_folders_are_removed_as_at_any_exit(tmp_path: Path) -> None:
    done = python(
        LEAVE
        + "import tempfile\nkept = tempfile.TemporaryDirectory(dir=sys.argv[1])\n"
        "print(kept.name)\nleave(0)\n".replace("sys.argv[1]", repr(str(tmp_path)))
    )
    assert done.returncode == 0, done.stderr
    assert not Path(done.stdout.strip()).exists()


def test_a_reader_gone_before_the_last_flush_is_exit_120_without_a_traceback() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", LEAVE + "sys.stdin.readline()\nprint('late')\nleave(0)\n"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # buffered
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: the final flush fails
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 120
    assert "Traceback" not in err


def test_the_command_exits_with_mains_status() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "codexloop", "--no-such-option"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
