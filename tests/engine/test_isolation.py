"""A hostile suite: model-written commands and tests run on the developer's machine.

Each case asserts containment under bubblewrap. In CI bubblewrap is installed by
.ci/run, so these run for real there; elsewhere they are skipped when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from loophelpers import KATA

from codexloop.core.exam import Exam
from codexloop.core.sandbox import Sandbox, find_python

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        shutil.which("bwrap") is None and not os.environ.get("CI"),
        reason="bubblewrap is not installed (CI installs it)",
    ),
]


@pytest.fixture
def sandbox(make_repo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    fake_home = tmp_path / "home"
    (fake_home / ".ssh").mkdir(parents=True)
    (fake_home / ".ssh" / "id_rsa").write_text("PRIVATE KEY")
    monkeypatch.setenv("HOME", str(fake_home))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/agent.sock")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    repo = make_repo(KATA)
    box = Sandbox.create(repo, "hostile")
    exam = Exam(repo, box.base, ("tests/test_calc.py",))
    isolation = box.isolate([find_python(repo)], exam.protected_files(), network=False)
    assert isolation.level == "full", isolation.reason
    yield box
    box.remove(delete_branch=True)


async def run(box: Sandbox, command: str, timeout: float = 30):
    return await box.run(command, timeout=timeout)


async def test_secrets_in_home_are_hidden(sandbox: Sandbox) -> None:
    home = os.environ["HOME"]
    result = await run(sandbox, f"cat {home}/.ssh/id_rsa; ls -a {home}; echo HOME=$HOME")
    assert "PRIVATE KEY" not in result.output
    assert "No such file" in result.output
    assert f"HOME={sandbox.tmp / 'home'}" in result.output


async def test_api_keys_are_not_in_the_environment(sandbox: Sandbox) -> None:
    result = await run(
        sandbox, "env; cat /proc/$PPID/environ /proc/1/environ 2>/dev/null | tr '\\0' '\\n'"
    )
    for secret in ("sk-very-secret", "aws-secret", "SSH_AUTH_SOCK", "OPENAI_API_KEY"):
        assert secret not in result.output


async def test_no_process_of_the_host_is_visible(sandbox: Sandbox) -> None:
    result = await run(
        sandbox, f"test -e /proc/{os.getpid()}/environ && echo VISIBLE || echo hidden"
    )
    assert result.output.strip() == "hidden"


async def test_no_network_not_even_the_hosts_loopback(sandbox: Sandbox) -> None:
    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"REACHED")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        # Only the host's loopback is tried: no traffic to any other address, ever.
        probe = (
            "import socket\n"
            "try:\n"
            f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            "    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(100))\n"
            "except OSError as e:\n"
            "    print('blocked', type(e).__name__)\n"
            "print('interfaces', sorted(open('/proc/net/dev').read().split()[20::17]))\n"
            "print('routes', len(open('/proc/net/route').read().splitlines()) - 1)\n"
        )
        script = sandbox.tmp / "net.py"
        script.write_text(probe)
        result = await run(sandbox, f"{sys.executable} {script}")
        assert "REACHED" not in result.output
        assert "blocked" in result.output, result.output
        assert "interfaces ['lo:']" in result.output  # no way out to any other address
        assert "routes 0" in result.output
    finally:
        server.shutdown()


async def test_writes_outside_the_worktree_fail(sandbox: Sandbox) -> None:
    checkout = sandbox.repo
    home = os.environ["HOME"]
    result = await run(
        sandbox,
        f"echo x > {checkout}/calc.py; echo x > {home}/owned; echo x > /etc/owned; "
        f"echo x > /usr/owned; echo done",
    )
    assert "done" in result.output
    assert (checkout / "calc.py").read_text() == KATA["calc.py"]
    assert not Path(home, "owned").exists()
    assert not Path("/etc/owned").exists() and not Path("/usr/owned").exists()


async def test_a_symlink_out_of_the_sandbox_cannot_be_written_through(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    victim = sandbox.repo / "calc.py"
    result = await run(sandbox, f"ln -s {victim} link.py && echo pwned > link.py; cat link.py")
    assert victim.read_text() == KATA["calc.py"]
    assert "pwned" not in victim.read_text()
    assert result.exit_code is not None


async def test_the_exam_and_git_pointer_are_read_only_inside(sandbox: Sandbox) -> None:
    result = await run(
        sandbox, "echo 'def test_add(): pass' > tests/test_calc.py; echo x > .git; echo ok"
    )
    assert (sandbox.worktree / "tests/test_calc.py").read_text() == KATA["tests/test_calc.py"]
    assert (sandbox.worktree / ".git").read_text().startswith("gitdir:")
    assert "Read-only file system" in result.output


async def test_no_process_outlives_its_command(sandbox: Sandbox) -> None:
    marker = f"codexloop-survivor-{uuid.uuid4().hex}"
    result = await run(
        sandbox, f"(exec -a {marker} setsid nohup sleep 300 >/dev/null 2>&1 &); echo started"
    )
    assert "started" in result.output

    def survivors() -> list[Path]:
        return [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]

    deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously: wait, bounded
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert survivors() == []


def _cmdline_has(proc: Path, needle: str) -> bool:
    try:
        return needle in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


async def test_a_command_ignoring_sigterm_is_killed_at_its_timeout(sandbox: Sandbox) -> None:
    result = await run(sandbox, "trap '' TERM; sleep 300", timeout=1)
    assert result.timed_out
    assert "time limit" in result.output


async def test_a_flood_and_a_huge_line_are_capped(sandbox: Sandbox) -> None:
    flood = await run(sandbox, "yes", timeout=60)
    assert flood.killed_for_output or flood.truncated
    assert len(flood.output) < 1_100_000
    line = await run(sandbox, "head -c 100000000 /dev/zero | tr '\\0' 'a'", timeout=60)
    assert "characters cut" in line.output or line.killed_for_output
    assert len(line.output) < 1_100_000


async def test_a_memory_bomb_is_bounded(sandbox: Sandbox) -> None:
    result = await run(sandbox, f"{sys.executable} -c 'a = bytearray(16 * 1024**3); print(len(a))'")
    assert "MemoryError" in result.output
    assert result.exit_code != 0


async def test_osc_52_never_reaches_the_terminal(sandbox: Sandbox) -> None:
    seen: list[str] = []

    async def collect(text: str) -> None:
        seen.append(text)

    result = await sandbox.run(
        "printf 'a\\033]52;c;ZXZpbA==\\007b\\033[31mred\\033[0m'", timeout=10, on_output=collect
    )
    assert "\x1b]52" not in result.output and "\x1b]52" not in "".join(seen)
    assert "ab\x1b[31mred\x1b[0m" in result.output


def test_without_bubblewrap_the_level_is_none_and_says_why(make_repo, no_bwrap: Path) -> None:
    repo = make_repo(KATA)
    box = Sandbox.create(repo, "degraded")
    isolation = box.isolate([find_python(repo)], [], network=False)
    assert isolation.level == "none"
    assert "bubblewrap (bwrap) is not installed" in isolation.reason


def test_off_linux_the_level_is_none_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from codexloop.core import isolation

    monkeypatch.setattr(isolation.sys, "platform", "darwin")
    layout = isolation.Layout(worktree=Path("/nowhere"), tmp=Path("/nowhere/tmp"))
    found = isolation.probe(layout, {})
    assert found.level == "none" and "not available on darwin" in found.reason


def test_a_socket_is_available_to_the_host_side() -> None:
    # Sanity: the host itself can open loopback sockets, so the network test above means something.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert s.getsockname()[1] > 0


async def test_a_command_failing_for_lack_of_network_says_so(sandbox: Sandbox) -> None:
    from codexloop.core.tools import Tools

    exam = Exam(sandbox.repo, sandbox.base, ("tests/test_calc.py",))

    async def run_command(command: str):
        return await sandbox.run(command, timeout=30)

    tools = Tools(sandbox.worktree, exam, run_command, network_off=True)
    # Name resolution fails at once inside the sandbox: no packet leaves it.
    code = "import socket; socket.getaddrinfo('pypi.org', 443)"
    outcome = await tools.execute(
        "run_command", json.dumps({"command": f'{sys.executable} -c "{code}"'})
    )
    assert not outcome.ok
    assert "the sandbox has no network access; this is not an outage" in outcome.content
