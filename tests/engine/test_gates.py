"""Gates (``--gate CMD``): commands that must pass once the targets are green, judged by exit
code in the sandbox, fed back when red; their configuration is protected while they run."""

from __future__ import annotations

import pytest
from loophelpers import (
    KATA,
    TARGET,
    edit,
    events_of,
    make_config,
    of_type,
    run_cli,
    run_loop,
    user_texts,
)
from scripted_openai import Reply

from codexloop.core import events as ev
from codexloop.core.config import ConfigError, Settings, load_config
from codexloop.core.exam import GATE_CONFIG_NAMES, Exam

pytestmark = pytest.mark.anyio

NO_TODO = "if grep -n TODO calc.py; then exit 1; fi"


async def test_a_green_run_that_fails_a_gate_is_red_and_the_model_reads_why(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a + b  # TODO: overflow")]),
        Reply(text="Fixed."),
        Reply(tool_calls=[edit("calc.py", "a + b  # TODO: overflow", "a + b")]),
        Reply(text="No TODO left."),
    )
    config = make_config(repo, scripted_openai.base_url, gates=("true", NO_TODO))
    result, events = await run_loop(config)
    assert result.status == "passed" and result.iterations == 2
    gates = [
        (g.iteration, g.command, g.passed, g.exit_code) for g in of_type(events, ev.GateFinished)
    ]
    assert gates == [
        (1, "true", True, 0),
        (1, NO_TODO, False, 1),
        (2, "true", True, 0),
        (2, NO_TODO, True, 0),
    ]
    finished = of_type(events, ev.IterationFinished)
    assert [f.passed for f in finished] == [False, True]
    told = user_texts(scripted_openai.requests[2])
    assert f"The target tests pass, but the gate `{NO_TODO}` failed (exit code 1)" in told
    assert "2:    return a + b  # TODO: overflow" in told  # the gate's own output
    assert "$ " + NO_TODO in "".join(e.text for e in of_type(events, ev.TestOutput))


async def test_a_gate_that_never_passes_ends_red_and_the_green_commit_is_not_kept_as_green(
    make_repo, scripted_openai
) -> None:
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Done."))
    config = make_config(repo, scripted_openai.base_url, gates=("exit 3",), max_iterations=1)
    result, events = await run_loop(config)
    assert result.status == "failed" and result.green is None
    [gate] = of_type(events, ev.GateFinished)
    assert not gate.passed and gate.exit_code == 3


def test_the_gates_configuration_is_protected_only_while_gates_run(make_repo) -> None:
    repo = make_repo(
        {**KATA, "pyproject.toml": '[project]\nname = "x"\n\n[tool.ruff]\nline-length = 99\n'}
    )
    gated = Exam(repo, "HEAD", ("tests/test_calc.py",), gated=True)
    plain = Exam(repo, "HEAD", ("tests/test_calc.py",))
    for name in sorted(GATE_CONFIG_NAMES):
        for rel in (name, f"sub/{name}"):
            assert gated.check_write(rel, None, b"ignore = ['ALL']\n") is not None, rel
            assert plain.check_write(rel, None, b"ignore = ['ALL']\n") is None, rel
    old = (repo / "pyproject.toml").read_bytes()
    loosened = old.replace(b"line-length = 99", b"line-length = 99\nignore = ['ALL']")
    reason = gated.check_write("pyproject.toml", old, loosened)
    assert reason is not None and "[tool.ruff]" in reason
    added = old + b"\n[tool.mypy]\nignore_errors = true\n"
    assert gated.check_write("pyproject.toml", old, added) is not None
    assert plain.check_write("pyproject.toml", old, loosened) is None
    # The rest of pyproject.toml stays the model's to change.
    assert gated.check_write("pyproject.toml", old, old.replace(b'"x"', b'"y"')) is None


def test_gates_come_from_the_command_line_or_pyproject(make_repo) -> None:
    repo = make_repo(KATA)
    pyproject = repo / "pyproject.toml"
    pyproject.write_text('[tool.codexloop]\ngates = ["ruff check .", "mypy"]\n')
    assert load_config(
        Settings(targets=(TARGET,), repo=repo, model="m", base_url="http://127.0.0.1:9/v1"), env={}
    ).gates == (
        "ruff check .",
        "mypy",
    )
    given = Settings(
        targets=(TARGET,),
        repo=repo,
        model="m",
        base_url="http://127.0.0.1:9/v1",
        gates=("make lint",),
    )
    assert load_config(given, env={}).gates == ("make lint",)
    pyproject.write_text('[tool.codexloop]\ngates = ["ok", ""]\n')
    with pytest.raises(ConfigError, match="gates: each entry must be a command"):
        load_config(
            Settings(targets=(TARGET,), repo=repo, model="m", base_url="http://127.0.0.1:9/v1"),
            env={},
        )


def test_headless_gates_are_events_on_the_wire(make_repo, scripted_openai) -> None:
    """``--gate`` as a user gives it (twice): each one's ``gate_finished`` on standard output."""
    repo = make_repo(KATA)
    scripted_openai.add(Reply(tool_calls=[edit("calc.py", "a - b", "a + b")]), Reply(text="Done."))
    done = run_cli(
        TARGET,
        "--headless",
        "--base-url",
        scripted_openai.base_url,
        "--model",
        "scripted-model",
        "--gate",
        "true",
        "--gate",
        NO_TODO,
        cwd=repo,
    )
    assert done.returncode == 0, done.stderr
    gates = [e for e in events_of(done.stdout) if e["type"] == "gate_finished"]
    assert [(g["command"], g["passed"], g["exit_code"]) for g in gates] == [
        ("true", True, 0),
        (NO_TODO, True, 0),
    ]
