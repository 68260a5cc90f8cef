"""First minute: the scripted demo from a wheel install, and replaying a recorded session."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import run_git
from loophelpers import KATA, drive_review, edit, events_of, make_config, run_cli, run_loop
from scripted_openai import Reply

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh venv holding codexloop from its wheel (not the editable checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root / "dist"),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = (root / "dist").glob("codexloop-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # Dependencies (textual, openai, pytest...) from our environment, without its editable codexloop.
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(venv / "bin" / "python")


def test_the_wheel_is_what_runs(wheel_python: str, tmp_path: Path) -> None:
    code = (
        "import codexloop, importlib.resources as r; print(codexloop.__file__); "
        "print(r.files('codexloop.tui').joinpath('app.tcss').is_file())"
    )
    done = subprocess.run(
        [wheel_python, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    location, has_css = done.stdout.split()
    assert "site-packages" in location and str(ROOT) not in location
    assert has_css == "True"


def test_demo_goes_red_then_green_from_a_wheel_with_no_key(
    wheel_python: str, tmp_path: Path
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state")}
    env_clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    done = subprocess.run(
        [wheel_python, "-m", "codexloop", "demo", "--headless", "--speed", "max"],
        cwd=tmp_path,
        env={**env_clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert events[0]["type"] == "loop_started" and events[0]["model"] == "scripted-demo"
    assert [e["passed"] for e in events if e["type"] == "test_finished"] == [False, False, True]
    assert events[-1]["type"] == "loop_finished" and events[-1]["status"] == "passed"
    assert "kata repository at" in done.stderr


def test_replay_reproduces_the_recorded_outcomes(
    make_repo, scripted_openai, tmp_path: Path
) -> None:
    import anyio

    repo = make_repo(KATA)
    scripted_openai.add(
        Reply(tool_calls=[edit("calc.py", "a - b", "a * b")]),
        Reply(text="multiplied"),
        Reply(tool_calls=[edit("calc.py", "a * b", "a + b")]),
        Reply(text="added"),
    )
    result, _ = anyio.run(run_loop, make_config(repo, scripted_openai.base_url))
    assert result.trace is not None and result.status == "passed"
    # The developer moves on: the checkout changes, yet the replay starts from the recorded state.
    (repo / "calc.py").write_text("def add(a, b):\n    raise NotImplementedError\n")
    done = run_cli("replay", str(result.trace), "--headless", "--speed", "max", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert [e["passed"] for e in events if e["type"] == "test_finished"] == [False, False, True]
    assert "diverged" not in done.stderr
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    raise NotImplementedError\n"
    # The replay's copy of the branch is not kept: the recorded session's own is all there is.
    branches = run_git(
        repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/codexloop/"
    ).split()
    assert branches == [result.branch]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"type": "trace_header", "version": 99}\n', "newer codexloop"),
        ('{"type": "trace_header", "version": 1}\n{not json\n', "line 2 is not valid JSON"),
        ('{"type": "model_text", "text": "x"}\n', "not a codexloop trace"),
        ('{"type": "trace_header", "version": 1}\n', "lacks the repository"),
    ],
)
def test_a_trace_that_cannot_be_replayed_gets_one_clear_line(
    tmp_path: Path, content: str, needle: str
) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(content)
    done = run_cli("replay", str(trace), "--headless", cwd=tmp_path)
    assert done.returncode == 2
    assert needle in done.stderr and "Traceback" not in done.stderr


def test_a_missing_trace(tmp_path: Path) -> None:
    done = run_cli("replay", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert done.returncode == 2 and "no such trace" in done.stderr


@pytest.mark.anyio
async def test_the_demo_answers_a_rejected_hunk_and_offers_a_new_review(tmp_path: Path) -> None:
    """The first minute includes the feedback path: reject with a comment, review again."""
    from codexloop.core import events as ev
    from codexloop.core.demo import answer_review, demo_config, demo_turns, make_kata
    from codexloop.core.diff import changes
    from codexloop.core.loop import Loop
    from codexloop.core.model import make_client
    from codexloop.core.replay import ReplayServer

    repo = make_kata(tmp_path)
    with ReplayServer(demo_turns(), model="scripted-demo", after=answer_review) as server:
        config = demo_config(repo, server.base_url)
        loop = Loop(config, client=make_client(server.base_url, "demo"), review=True)
        reviews: list[ev.ReviewReady] = []

        def review(event: ev.ReviewReady, seen: list[ev.Event]) -> ev.Command:
            reviews.append(event)
            if len(reviews) > 1:
                return ev.Finish()
            assert loop.sandbox is not None
            [change] = changes(repo, loop.sandbox.base, event.commit or "HEAD")
            return ev.Feedback((ev.Rejection("invoice.py", change.hunks[0], "keep floats"),))

        result, seen = await drive_review(loop, review)
    assert result.status == "passed" and len(reviews) == 2
    said = "".join(e.text for e in seen if isinstance(e, ev.ModelText))
    assert "You rejected the change of invoice.py: keep floats." in said
    assert [e.passed for e in seen if isinstance(e, ev.TestFinished)] == [False, False, True, True]


def _leftovers(root: Path) -> list[str]:
    """What is left under ``root``'s temp folder and codexloop's cache and state."""
    found = []
    for folder in ("tmp", "cache/codexloop/worktrees", "state/codexloop/traces"):
        place = root / folder
        if place.exists():
            found += [str(p.relative_to(root)) for p in place.iterdir()]
    return found


def _demo_env(root: Path) -> dict[str, str]:
    (root / "tmp").mkdir()
    return {
        "TMPDIR": str(root / "tmp"),
        "XDG_CACHE_HOME": str(root / "cache"),
        "XDG_STATE_HOME": str(root / "state"),
    }


def test_the_demo_leaves_nothing_behind(tmp_path: Path) -> None:
    """No kata folder in the temp folder, no worktree, no trace, once the demo is over."""
    done = run_cli("demo", "--headless", "--speed", "max", cwd=tmp_path, env=_demo_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "kata repository at" in done.stderr
    assert _leftovers(tmp_path) == []


def test_the_demo_keeps_its_kata_when_asked(tmp_path: Path) -> None:
    done = run_cli(
        "demo", "--headless", "--speed", "max", "--keep", cwd=tmp_path, env=_demo_env(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    [kata] = (tmp_path / "tmp").iterdir()
    assert (kata / "invoice-kata" / ".git").is_dir()


def test_the_demo_refuses_an_output_that_is_not_a_terminal_before_making_anything(
    tmp_path: Path,
) -> None:
    done = run_cli("demo", cwd=tmp_path, env=_demo_env(tmp_path))  # stdout is a pipe here
    assert done.returncode == 2
    assert (
        done.stderr.strip() == "codexloop: error: standard output is not a terminal: use --headless"
    )
    assert done.stdout == "" and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({}, "demo --live needs OPENAI_API_KEY or OPENAI_BASE_URL"),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, "no model configured"),
    ],
)
def test_a_live_demo_without_a_model_leaves_no_kata(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    done = run_cli("demo", "--live", "--headless", cwd=tmp_path, env={**_demo_env(tmp_path), **env})
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("codexloop: error: ") and needle in last
    assert "Traceback" not in done.stderr
    assert _leftovers(tmp_path) == []
