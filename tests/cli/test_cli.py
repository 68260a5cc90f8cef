"""The command line as a user runs it: a real process, real repositories, the scripted server."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_git
from loophelpers import KATA, TARGET, edit, events_of, start_cli
from loophelpers import run_cli as codexloop
from scripted_openai import Call, Reply, ScriptedOpenAI

from codexloop.core import process
from codexloop.core.sandbox import state_home
from codexloop.core.trace import traces_dir


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("codexloop: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[-1]
    assert done.stdout == ""


def test_headless_red_to_green_prints_one_event_per_line(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="fixed"),
    )
    done = codexloop(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m", cwd=repo
    )
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    types = [e["type"] for e in events]
    for required in (
        "loop_started",
        "iteration_started",
        "model_text",
        "tool_call",
        "tool_result",
        "test_started",
        "test_output",
        "test_finished",
        "loop_finished",
    ):
        assert required in types
    started = events[0]
    assert started["type"] == "loop_started"
    assert started["branch"].startswith("codexloop/") and started["base"] and started["worktree"]
    # The process-count limit in force (or why there is none) is part of the start event.
    assert started["process_limit"]
    if started["max_processes"] is not None:
        assert started["max_processes"] == 1024 and "1024 processes" in started["process_limit"]
    finished = events[-1]
    assert finished == {**finished, "type": "loop_finished", "status": "passed", "iterations": 1}
    tests = [e for e in events if e["type"] == "test_finished"]
    assert [t["passed"] for t in tests] == [False, True]
    assert all(isinstance(t["duration_s"], float) and "exit_code" in t for t in tests)
    assert (repo / "calc.py").read_text() == KATA["calc.py"]  # --accept none: untouched


def test_headless_not_green_within_budget_exits_1(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(text="I cannot."), Reply(text="Still no."))
    done = codexloop(
        TARGET,
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m",
        "--max-iterations",
        "2",
        cwd=repo,
    )
    assert done.returncode == 1, done.stderr
    finished = events_of(done.stdout)[-1]
    assert finished["status"] == "failed" and finished["iterations"] == 2


def test_accept_all_applies_and_keeps_an_unrelated_uncommitted_change(
    make_repo, scripted_openai
) -> None:
    repo = make_repo({**KATA, "notes.txt": "first\n", "other.py": "x = 1\n"})
    (repo / "notes.txt").write_text("first\nmine, uncommitted\n")  # the developer's own work
    scripted_openai.add(
        Reply(
            tool_calls=[
                edit("calc.py", "a - b", "a + b"),
                Call("write_file", {"path": "helpers.py", "content": "HELP = 1\n"}),
            ]
        ),
        Reply(text="fixed"),
    )
    done = codexloop(
        TARGET,
        "--headless",
        "--accept",
        "all",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m",
        cwd=repo,
    )
    assert done.returncode == 0, done.stderr
    applied = [e for e in events_of(done.stdout) if e["type"] == "applied"]
    assert applied and sorted(applied[0]["written"]) == ["calc.py", "helpers.py"]
    assert (repo / "calc.py").read_text().endswith("return a + b\n")
    assert (repo / "helpers.py").read_text() == "HELP = 1\n"
    assert (repo / "notes.txt").read_text() == "first\nmine, uncommitted\n"
    assert (repo / "other.py").read_text() == "x = 1\n"


def test_accept_all_reports_a_conflict_and_forces_nothing(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)

    def developer_edits_meanwhile(request: dict) -> Reply:
        (repo / "calc.py").write_text("def add(a, b):\n    return b + a  # mine\n")
        return Reply(tool_calls=[edit("calc.py", "a - b", "a + b")])

    scripted_openai.add(developer_edits_meanwhile, Reply(text="fixed"))
    done = codexloop(
        TARGET,
        "--headless",
        "--accept",
        "all",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m",
        cwd=repo,
    )
    assert done.returncode == 1
    applied = next(e for e in events_of(done.stdout) if e["type"] == "applied")
    assert applied["conflicts"] and applied["conflicts"][0].startswith("calc.py")
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return b + a  # mine\n"


def test_not_a_git_checkout(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x(): pass\n")
    done = codexloop("test_x.py", "--headless", cwd=tmp_path, env={"OPENAI_API_KEY": "k"})
    assert_one_line_error(done, "not inside a git checkout")


def test_a_target_that_does_not_exist(make_repo) -> None:
    repo = make_repo(KATA)
    done = codexloop(
        "tests/test_nope.py::test_x", "--headless", cwd=repo, env={"OPENAI_API_KEY": "k"}
    )
    assert_one_line_error(done, "tests/test_nope.py::test_x", "does not exist")


def test_no_model_configured_says_how_to_set_one(make_repo) -> None:
    repo = make_repo(KATA)
    done = codexloop(TARGET, "--headless", cwd=repo)
    assert_one_line_error(done, "OPENAI_API_KEY", "--base-url")
    done = codexloop(TARGET, "--headless", "--base-url", "http://127.0.0.1:9/v1", cwd=repo)
    assert_one_line_error(done, "--model", "CODEXLOOP_MODEL", "[tool.codexloop]")


def leftovers(repo: Path) -> list[str]:
    """What a session left: preview branches, worktrees, traces and records."""
    worktrees = state_home() / "worktrees"  # a folder per repository, a worktree per session
    places = [
        *(worktrees.iterdir() if worktrees.is_dir() else []),
        traces_dir(),
        state_home() / "tmp",
        state_home() / "runs",
    ]
    found = [str(p) for place in places if place.is_dir() for p in place.iterdir()]
    return found + run_git(repo, "branch", "--list", "codexloop/*").split()


def test_an_unreachable_endpoint(make_repo) -> None:
    repo = make_repo(KATA)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = codexloop(
        TARGET, "--headless", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m", cwd=repo
    )
    assert_one_line_error(done, "cannot reach the model endpoint", str(port))
    assert done.stdout == ""  # not one event
    assert leftovers(repo) == []  # the set-up made beside the check is gone


@pytest.mark.parametrize("attempts", ["1", "2"])
def test_an_endpoint_refusing_the_key_leaves_nothing(make_repo, scripted_openai, attempts) -> None:
    repo = make_repo(KATA)
    scripted_openai.models_status = 401
    done = codexloop(
        TARGET,
        "--headless",
        "--attempts",
        attempts,
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m",
        cwd=repo,
        env={"OPENAI_API_KEY": "sk-wrong"},
    )
    assert_one_line_error(done, "refused the API key", "401")
    assert done.stdout == ""
    assert scripted_openai.requests == []  # no model request was sent
    assert leftovers(repo) == []


@contextlib.contextmanager
def check_held(repo: Path, scripted: ScriptedOpenAI) -> Iterator[subprocess.Popen[str]]:
    """A headless session whose endpoint check the server holds, once the baseline run made
    beside the check has written its report (polled, with a deadline); released and ended
    when the block is left."""
    scripted.models_gate = gate = threading.Event()
    proc = start_cli(
        TARGET, "--headless", "--base-url", scripted.base_url, "--model", "m", cwd=repo
    )
    try:
        assert scripted.models_asked.wait(60)
        runs = state_home() / "runs"
        deadline = time.monotonic() + 60
        while not list(runs.glob("*/tmp/run/report/junit-*.xml")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.02)
        yield proc
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_while_the_endpoint_check_is_held_is_130_and_leaves_nothing(
    make_repo, scripted_openai
) -> None:
    """Interrupted before any event was shown (the endpoint slow to answer its check): the
    check is not waited for (it would end in "cannot reach" and exit 2 after 5 s), the run
    ends 130, and the set-up made beside the check is gone, as if it never started."""
    repo = make_repo(KATA)
    with check_held(repo, scripted_openai) as proc:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out == "" and "Traceback" not in err
    assert leftovers(repo) == []
    assert scripted_openai.requests == []


def test_a_key_refused_after_the_baseline_ran_leaves_nothing_running_or_kept(
    make_repo, scripted_openai
) -> None:
    """The check fails late, the set-up and the baseline (a warm server up) done beside it: one
    line, exit 2, no event, and neither a branch, a worktree nor a process of the session."""
    repo = make_repo(KATA)
    scripted_openai.models_status = 401
    with check_held(repo, scripted_openai) as proc:
        assert process.session_processes([state_home()])  # the warm server, for one
        assert scripted_openai.models_gate is not None
        scripted_openai.models_gate.set()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "refused the API key" in err
    assert out == "" and leftovers(repo) == []
    assert process.session_processes([state_home()]) == []


def test_the_set_up_runs_beside_the_endpoint_check_and_no_request_comes_before_it(
    make_repo, scripted_openai
) -> None:
    """While the endpoint is slow to answer its check, the sandbox is made and the baseline
    runs; nothing is printed and nothing asked of the model until the check has passed."""
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Fixed."))
    with check_held(repo, scripted_openai) as proc:
        assert scripted_openai.requests == []
        assert scripted_openai.models_gate is not None
        scripted_openai.models_gate.set()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    types = [e["type"] for e in events_of(out)]
    assert types[0] == "loop_started" and types[-1] == "loop_finished"
    assert "test_finished" in types and len(scripted_openai.requests) == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "name the test"),
        ([TARGET, "--max-iterations", "0"], "--max-iterations"),
        ([TARGET, "--test-timeout", "soon"], "--test-timeout"),
        ([TARGET, "--accept", "some"], "--accept"),
        ([TARGET, "--max-processes", "4"], "--max-processes must be at least 16"),
        ([TARGET, "--context-tokens", "100"], "--context-tokens must be at least 2000"),
        ([TARGET, "--max-memory", "-1"], "--max-memory"),
        ([TARGET, "--tmp-size", "-1"], "--tmp-size"),
        ([TARGET, "--frobnicate"], "--frobnicate"),
    ],
)
def test_usage_errors(make_repo, args: list[str], needle: str) -> None:
    repo = make_repo(KATA)
    done = codexloop(*args, cwd=repo, env={"OPENAI_API_KEY": "k"})
    assert_one_line_error(done, needle)


def test_bad_file_config_is_a_config_error(make_repo) -> None:
    repo = make_repo({**KATA, "pyproject.toml": "[tool.codexloop]\nmodle = 'x'\n"})
    done = codexloop(TARGET, "--headless", cwd=repo, env={"OPENAI_API_KEY": "k"})
    assert_one_line_error(done, "unknown key 'modle'")


def test_config_precedence_flags_env_file(make_repo) -> None:
    from codexloop.core.config import Settings, load_config

    repo = make_repo(
        {**KATA, "pyproject.toml": '[tool.codexloop]\nmodel = "from-file"\nmax_iterations = 3\n'}
    )
    base = Settings(targets=(TARGET,), repo=repo, base_url="http://127.0.0.1:1/v1")
    assert load_config(base, env={}, cwd=repo).model == "from-file"
    assert load_config(base, env={"CODEXLOOP_MODEL": "from-env"}, cwd=repo).model == "from-env"
    flagged = Settings(
        targets=(TARGET,), repo=repo, base_url="http://127.0.0.1:1/v1", model="from-flag"
    )
    config = load_config(flagged, env={"CODEXLOOP_MODEL": "from-env"}, cwd=repo)
    assert config.model == "from-flag" and config.max_iterations == 3
    env_url = load_config(
        Settings(targets=(TARGET,), repo=repo), env={"OPENAI_BASE_URL": "http://h/v1"}, cwd=repo
    )
    assert env_url.base_url == "http://h/v1" and env_url.model == "from-file"
    assert config.max_processes == 1024
    limited = make_repo(
        {**KATA, "pyproject.toml": "[tool.codexloop]\nmax_processes = 64\n"}, name="limited"
    )
    keyed = {"OPENAI_API_KEY": "k"}
    from_file = load_config(Settings(targets=(TARGET,), repo=limited), env=keyed, cwd=limited)
    assert from_file.max_processes == 64


def test_help_is_instant_and_names_every_option(tmp_path: Path) -> None:
    done = codexloop("--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in (
        "--task",
        "--test-cmd",
        "--model",
        "--base-url",
        "--max-iterations",
        "--headless",
        "--accept",
        "--repo",
        "--command-timeout",
        "--test-timeout",
        "--allow-network",
    ):
        assert option in done.stdout


def test_core_never_imports_textual() -> None:
    code = (
        "import sys, codexloop.core.loop, codexloop.core.config, codexloop.core.diff, codexloop.cli.headless\n"
        "bad = [m for m in sys.modules if m == 'textual' or m.startswith('textual.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _popen_headless(repo: Path, base_url: str) -> subprocess.Popen[str]:
    return start_cli(
        TARGET,
        "--headless",
        "--base-url",
        base_url,
        "--model",
        "m",
        cwd=repo,
        stdin=subprocess.PIPE,
    )


def _read_until(proc: subprocess.Popen[str], kind: str) -> list[dict]:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1]["type"] == kind:
            return seen
    raise AssertionError(f"no {kind} event before the end: {seen}")


def test_headless_events_flow_live_and_stdin_lines_steer(make_repo, scripted_openai) -> None:
    import threading

    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(
        Reply(text="Thinking hard about this one.", hold=hold),
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="fixed"),
    )
    proc = _popen_headless(repo, scripted_openai.base_url)
    try:
        # The model is still mid-stream (held), yet its first words are already on our side.
        before = _read_until(proc, "model_text")
        assert before[0]["type"] == "loop_started"
        assert proc.stdin is not None
        proc.stdin.write("use the plus operator\n")
        proc.stdin.close()
        hold.set()
        rest = _read_until(proc, "loop_finished")
        assert proc.wait(timeout=30) == 0
    finally:
        hold.set()
        proc.kill()
    assert rest[-1]["status"] == "passed"
    steering = [e for e in before + rest if e["type"] == "user_message"]
    assert [e["text"] for e in steering] == ["use the plus operator"]
    # It reached the model in the very next request.
    assert any(
        "use the plus operator" in str(m.get("content"))
        for m in scripted_openai.requests[1]["messages"]
    )


def test_sigint_stops_cleanly_with_exit_130(make_repo, scripted_openai) -> None:
    import signal
    import threading

    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(Reply(text="A long thought that never ends.", hold=hold))
    proc = _popen_headless(repo, scripted_openai.base_url)
    try:
        _read_until(proc, "model_text")
        proc.send_signal(signal.SIGINT)
        rest = _read_until(proc, "loop_finished")
        assert proc.wait(timeout=30) == 130
    finally:
        hold.set()
        proc.kill()
    assert rest[-1]["status"] == "stopped"
    assert run_git(repo, "branch", "--list", rest[-1]["branch"]).strip()  # the preview branch stays
    assert run_git(repo, "status", "--porcelain") == ""


def test_branches_lists_and_clean_removes_preview_branches(
    make_repo, scripted_openai, tmp_path: Path
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]),
        Reply(text="fixed"),
    )
    done = codexloop(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m", cwd=repo
    )
    started = events_of(done.stdout)[0]
    name = started["branch"].removeprefix("codexloop/")
    scratch = state_home() / "tmp" / name
    assert not scratch.exists()  # the session's scratch folder went with the session
    scratch.mkdir(parents=True)  # as a crashed session would leave it
    (state_home() / "excludes").mkdir(exist_ok=True)
    (state_home() / "excludes" / name).write_text("/node_modules\n")
    listed = codexloop("branches", cwd=repo)
    assert listed.returncode == 0
    assert started["branch"] in listed.stdout and started["worktree"] in listed.stdout
    unknown = codexloop("clean", "codexloop/nope", cwd=repo)
    assert unknown.returncode == 2 and "no preview branch named" in unknown.stderr
    cleaned = codexloop("clean", cwd=repo)
    assert cleaned.returncode == 0 and f"removed {started['branch']}" in cleaned.stdout
    assert run_git(repo, "branch", "--list", "codexloop/*") == ""
    assert not Path(started["worktree"]).exists()
    assert not scratch.exists() and not (state_home() / "excludes" / name).exists()
    assert codexloop("branches", cwd=repo).stdout.strip() == "no preview branches"
    assert codexloop("branches", cwd=tmp_path).returncode == 2  # not a checkout


def test_a_closed_standard_output_stops_the_loop_without_a_traceback(
    make_repo, scripted_openai
) -> None:
    """`codexloop --headless ... | head -1`: the reader goes away; the loop stops cleanly."""
    import threading

    repo = make_repo(KATA)
    hold = threading.Event()
    scripted_openai.add(Reply(text="A thought that goes on. " * 40, hold=hold, chunk_size=8))
    proc = _popen_headless(repo, scripted_openai.base_url)
    try:
        _read_until(proc, "model_text")
        assert proc.stdout is not None
        proc.stdout.close()
        hold.set()  # more events now meet a closed pipe
        assert proc.wait(timeout=60) == 1
        assert proc.stderr is not None
        errors = proc.stderr.read()
    finally:
        hold.set()
        proc.kill()
    assert "standard output was closed; stopping the loop" in errors
    assert "Traceback" not in errors and "BrokenPipe" not in errors
    assert run_git(repo, "status", "--porcelain") == ""


def test_a_sandbox_that_cannot_be_set_up_is_one_line_and_exit_2(
    make_repo, scripted_openai, tmp_path: Path
) -> None:
    """The same sandbox failure ends every front end alike (core/errors.py): exit 2, one line."""
    repo = make_repo(KATA)
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("")
    done = codexloop(
        TARGET,
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m",
        cwd=repo,
        env={"XDG_CACHE_HOME": str(blocked)},
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("codexloop: error: cannot set up the sandbox: "), done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert scripted_openai.requests == []  # no model call


def test_a_repository_owned_by_someone_else_names_the_safe_directory_fix(make_repo) -> None:
    repo = make_repo(KATA)
    owner = {"GIT_TEST_ASSUME_DIFFERENT_OWNER": "1"}  # git's switch for a foreign owner
    done = codexloop(TARGET, "--headless", cwd=repo, env={"OPENAI_API_KEY": "k", **owner})
    assert_one_line_error(done, "dubious ownership", f"safe.directory {repo}")
    for sub in ("branches", "clean"):
        done = codexloop(sub, "--repo", str(repo), cwd=repo, env=owner)
        assert_one_line_error(done, "dubious ownership", f"safe.directory {repo}")


def test_the_app_refuses_an_output_that_is_not_a_terminal(make_repo) -> None:
    """`codexloop TARGET > file` would fill the file with escape codes: one line, exit 2."""
    repo = make_repo(KATA)
    done = codexloop(TARGET, cwd=repo, env={"OPENAI_API_KEY": "k"})  # stdout is a pipe here
    assert_one_line_error(done, "standard output is not a terminal: use --headless")
    assert run_git(repo, "branch", "--list", "codexloop/*") == ""


def test_an_exam_green_at_once_leaves_no_preview_branch(make_repo, scripted_openai) -> None:
    repo = make_repo({**KATA, "calc.py": "def add(a, b):\n    return a + b\n"})
    done = codexloop(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m", cwd=repo
    )
    assert done.returncode == 0, done.stderr
    finished = events_of(done.stdout)[-1]
    assert finished["type"] == "loop_finished" and finished["status"] == "passed"
    assert finished["iterations"] == 0 and scripted_openai.requests == []
    assert run_git(repo, "branch", "--list", "codexloop/*") == ""
    assert not Path(finished["worktree"]).exists()
    assert f"removed {finished['branch']}" in done.stderr


def test_a_session_with_work_keeps_its_preview_branch(make_repo, scripted_openai) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="ok"))
    done = codexloop(
        TARGET, "--headless", "--base-url", scripted_openai.base_url, "--model", "m", cwd=repo
    )
    assert done.returncode == 0, done.stderr
    finished = events_of(done.stdout)[-1]
    assert finished["branch"] in run_git(repo, "branch", "--list", "codexloop/*")
    assert "removed" not in done.stderr


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('max_iterations = "5"', "max_iterations must be a whole number, not a string ('5')"),
        ("max_iterations = true", "max_iterations must be a whole number, not a boolean (True)"),
        ("test_timeout = true", "test_timeout must be a number, not a boolean (True)"),
        ("warm = 1", "warm must be true or false, not an integer (1)"),
        ("model = 4.5", "model must be a string, not a float (4.5)"),
        ('share = "node_modules"', "share must be an array of strings, not a string"),
        ("task = { a = 1 }", "task must be a string, not a table"),
    ],
)
def test_a_config_value_of_the_wrong_type_names_the_expected_type(
    make_repo, line: str, needle: str
) -> None:
    from codexloop.core.config import ConfigError, read_file_config

    repo = make_repo({**KATA, "pyproject.toml": f"[tool.codexloop]\n{line}\n"})
    with pytest.raises(ConfigError) as caught:
        read_file_config(repo)
    assert needle in str(caught.value)


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    done = codexloop("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"codexloop {version('codexloop')}"


@pytest.mark.parametrize("sub", ["branches", "clean"])
def test_subcommand_repo_options_are_explained(tmp_path: Path, sub: str) -> None:
    done = codexloop(sub, "--help", cwd=tmp_path)
    assert done.returncode == 0
    [line] = [
        line for line in done.stdout.splitlines() if "--repo PATH" in line and "usage" not in line
    ]
    assert "git checkout" in line


def test_headless_attempts_race_and_the_winner_is_applied(make_repo, scripted_openai) -> None:
    """Issue 17: ``--attempts 2 --model m1,m2 --accept all``: every line names its attempt, one
    attempt_finished each, one winner, one loop_finished naming the winner's branch."""
    repo = make_repo(KATA)
    scripted_openai.add_for("m1", Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]))
    scripted_openai.add_for("m1", Reply(text="Done."))
    scripted_openai.add_for("m2", Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]))
    scripted_openai.add_for("m2", Reply(text="Fixed."))
    done = codexloop(
        TARGET,
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "m1,m2",
        "--attempts",
        "2",
        "--max-iterations",
        "1",
        "--accept",
        "all",
        cwd=repo,
    )
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert all("attempt" in e for e in events)
    started = [e for e in events if e["type"] == "loop_started"]
    assert sorted((e["attempt"], e["model"]) for e in started) == [(1, "m1"), (2, "m2")]
    finished = {e["attempt"]: e for e in events if e["type"] == "attempt_finished"}
    assert finished[2]["status"] == "passed"
    assert finished[1]["status"] in ("failed", "stopped")  # red, or stopped by a2's green
    [winner] = [e for e in events if e["type"] == "winner"]
    assert winner["attempt"] == 2 and winner["branch"].endswith("/a2")
    assert events[-1]["type"] == "loop_finished" and events[-1]["branch"] == winner["branch"]
    assert [e["type"] for e in events].count("loop_finished") == 1
    [applied] = [e for e in events if e["type"] == "applied"]
    assert applied["written"] == ["calc.py"] and applied["attempt"] == 2
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    # `codexloop branches` shows the race's kept branches together, and its winner.
    session = winner["branch"].rpartition("/")[0]
    listed = codexloop("branches", cwd=repo).stdout.splitlines()
    header = next(n for n, line in enumerate(listed) if line.startswith(session + "/"))
    assert "race:" in listed[header] and listed[header].endswith("winner a2")
    assert any(line.startswith("  a2  ") for line in listed[header + 1 :])
