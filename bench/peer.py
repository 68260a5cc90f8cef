"""Time to green, codexloop against aider, with the same instant scripted model (issue 20).

The calc kata (``add`` returns ``a - b``), or with ``--project tabulate`` a real project (tabulate
0.9.0's module and output tests, vendored in ``bench/projects``, a bug planted in the module's
2,700 lines, ``test/test_output.py::test_plain`` red): the scripted model gets it wrong once, then
right —
a baseline run and two iterations for codexloop (``--headless --accept all``: the fix lands in
the checkout, as aider's does), two edits and two test runs for aider (``--auto-test``, whole
files). Both talk to one scripted OpenAI-compatible server on 127.0.0.1 that answers at once,
so what is timed is each tool's own work: from process start to exit, the fix in the checkout
and the test green. Runs alternate between the tools (``--runs`` each, in one go); printed: each
tool's min and median, the medians of codexloop's milestones (``loop_started``, each test
run's verdict), and the ratio of
the medians. aider is never a dependency: without it (``--aider PATH`` or on PATH) its rows say
so and codexloop is timed alone. The kata's tests run with the kata's own venv, pytest alone
in it (``bench/_venv.py``; ``--own-python``: this interpreter, with every plugin of the
development venv), the same for both tools. codexloop runs as a user's install of it
(``bench/_install.py``: a wheel of the checkout; ``--editable``: the development install, whose
import hook costs every interpreter start ~20 ms).

    .venv/bin/python bench/peer.py [--runs 5] [--aider /path/to/aider] [--own-python]
        [--project calc|tabulate] [--before TREE] [--editable]
    # --before: also an earlier commit's checkout (git worktree add TREE COMMIT)
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _aider import aider_argv
from _install import installed
from _repo import git_repo
from _venv import kata_python

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from scripted_openai import Call, Reply, ScriptedOpenAI

KATA = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}
TARGET = "tests/test_calc.py::test_add"
WRONG = "def add(a, b):\n    return a * b\n"
RIGHT = "def add(a, b):\n    return a + b\n"


@dataclass(frozen=True)
class Project:
    """A task both tools are timed on: the files, the test that defines success, the file the
    fix goes in (planted bug, a wrong fix, the right one) and the test file aider reads."""

    files: dict[str, str]
    target: str
    path: str
    wrong: str
    right: str
    test_file: str
    edits: tuple[tuple[str, str], tuple[str, str]] | None = None  # codexloop's edit_file calls


def tabulate_project() -> Project:
    """tabulate 0.9.0's module and output tests (``bench/projects/tabulate``, MIT), with
    ``MIN_PADDING = 0`` planted: ``test_plain`` fails; 1 is the wrong fix, 2 the right."""
    root = Path(__file__).resolve().parent / "projects" / "tabulate"
    module = (root / "tabulate" / "__init__.py").read_text()
    files = {
        rel: (root / rel).read_text()
        for rel in ("test/common.py", "test/test_output.py", "LICENSE")
    }
    files["tabulate/__init__.py"] = module.replace("MIN_PADDING = 2", "MIN_PADDING = 0", 1)
    return Project(
        files,
        "test/test_output.py::test_plain",
        "tabulate/__init__.py",
        module.replace("MIN_PADDING = 2", "MIN_PADDING = 1", 1),
        module,
        "test/test_output.py",
        (("MIN_PADDING = 0", "MIN_PADDING = 1"), ("MIN_PADDING = 1", "MIN_PADDING = 2")),
    )


CALC = Project(KATA, TARGET, "calc.py", WRONG, RIGHT, "tests/test_calc.py")
PROJECT = CALC  # main() may choose another


def script(server: ScriptedOpenAI) -> None:
    """One codexloop run's turns: it writes the file, or edits it where the project says how."""
    project = PROJECT
    fixes = (
        [
            Call("edit_file", {"path": project.path, "old_text": old, "new_text": new})
            for old, new in project.edits
        ]
        if project.edits
        else [
            Call("write_file", {"path": project.path, "content": text})
            for text in (project.wrong, project.right)
        ]
    )
    server.add_for(
        "codexloop",
        Reply(tool_calls=[fixes[0]]),
        Reply(text="Done."),
        Reply(tool_calls=[fixes[1]]),
        Reply(text="Fixed."),
    )


def script_aider(server: ScriptedOpenAI, model: str) -> None:
    """One aider run's turns, under a model name of its own: whole files, wrong then (once it
    sent the test's output) right. aider also asks, in a thread of its own, for a summary of a
    long chat (a 2,700-line file makes one): answered as such, whenever it comes."""
    project = PROJECT

    def answer(request: dict[str, Any]) -> Reply:
        messages = request.get("messages") or [{}]
        if str(messages[0].get("content", "")).startswith("*Briefly* summarize"):
            return Reply(text="The user asked to make a failing test pass; an edit was made.")
        second = "I ran this command" in str(messages[-1].get("content", ""))
        if project.edits:  # search/replace blocks (aider's diff format), as codexloop's edits
            old, new = project.edits[1 if second else 0]
            block = f"<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n"
            return Reply(text=f"{project.path}\n```python\n{block}```\n")
        fixed = project.right if second else project.wrong
        return Reply(text=f"{project.path}\n```python\n{fixed}```\n")

    server.add_for(model, *[answer] * 6)  # more than a run asks; the next run has its own name


PYTHON = sys.executable  # the kata's interpreter (main() may choose the kata venv's)


def green(repo: Path) -> bool:
    done = subprocess.run(
        [PYTHON, "-B", "-m", "pytest", "-q", "-p", "no:cacheprovider", PROJECT.target],
        cwd=repo,
        capture_output=True,
    )
    return done.returncode == 0 and (repo / PROJECT.path).read_text() == PROJECT.right


MILESTONES = ("loop_started", "baseline verdict", "iteration 1 verdict", "iteration 2 verdict")


def codexloop_command(tree: str | None, *, editable: bool = False) -> list[str]:
    """``codexloop`` of this checkout or of another one's source ``tree`` (an earlier commit,
    for a before/after in one run), installed as a user installs it (``bench/_install.py``);
    ``editable``: this checkout's development install instead."""
    if editable and tree is None:
        return [str(Path(sys.executable).with_name("codexloop"))]
    return [str(installed(Path(tree) if tree else Path(__file__).resolve().parent.parent))]


def run_codexloop(repo: Path, url: str, command: list[str]) -> tuple[float, dict[str, float]]:
    """Wall seconds to exit, and to each of :data:`MILESTONES` (as the events are read)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["VIRTUAL_ENV"] = str(Path(PYTHON).parent.parent)  # the kata's interpreter runs its tests
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            *command,
            "--headless",
            "--accept",
            "all",
            "--model",
            "codexloop",
            "--base-url",
            url,
            PROJECT.target,
        ],
        cwd=repo,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    seen: dict[str, float] = {}
    for line in proc.stdout:
        event = json.loads(line)
        if event["type"] == "loop_started":
            seen["loop_started"] = time.perf_counter() - started
        elif event["type"] == "test_finished":
            name = (
                f"iteration {event['iteration']} verdict"
                if event["iteration"]
                else "baseline verdict"
            )
            seen[name] = time.perf_counter() - started
    proc.wait()
    return time.perf_counter() - started, seen


def run_aider(aider: str, repo: Path, url: str, model: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            *aider_argv(
                aider,
                url,
                model,
                # -B: no bytecode written. The two scripted edits have the same size and land
                # in the same second: a cached calc.pyc would pass for the new source and the
                # right fix would test red (codexloop's runs never keep bytecode).
                f"{PYTHON} -B -m pytest -q -p no:cacheprovider {PROJECT.target}",
                PROJECT.test_file,
                f"Make the failing test pass: {PROJECT.target}",
                PROJECT.path,
                edit_format="diff" if PROJECT.edits else "whole",
            ),
            "--no-pretty",
            "--map-tokens",
            "0",
        ],
        cwd=repo,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    return time.perf_counter() - started


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:10} not run"
    return f"{name:10} min {min(values):6.2f} s   median {statistics.median(values):6.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--aider", default=shutil.which("aider"), help="aider (default: PATH)")
    parser.add_argument(
        "--own-python", action="store_true", help="run the kata's tests with this interpreter"
    )
    parser.add_argument(
        "--project",
        choices=("calc", "tabulate"),
        default="calc",
        help="the calc kata, or tabulate 0.9.0 with a planted bug (bench/projects)",
    )
    parser.add_argument(
        "--before",
        metavar="TREE",
        help="also time the codexloop of this checkout (an earlier commit), alternating",
    )
    parser.add_argument(
        "--editable",
        action="store_true",
        help="time this checkout's development (editable) install, not a user's install of it",
    )
    args = parser.parse_args()
    if args.aider and not shutil.which(args.aider):
        parser.error(f"--aider {args.aider}: no such executable (leave it out to skip aider)")
    global PYTHON, PROJECT
    PROJECT = tabulate_project() if args.project == "tabulate" else CALC
    PYTHON = (None if args.own_python else kata_python()) or sys.executable
    server = ScriptedOpenAI()
    variants = {"codexloop": codexloop_command(None, editable=args.editable)}
    if args.before:
        variants["before"] = codexloop_command(args.before)
    if args.editable:  # its bytecode written first: with PYTHONDONTWRITEBYTECODE set, a stale
        import codexloop  # cache would be timed compiling (installs have theirs from pip)

        compileall.compile_dir(Path(codexloop.__file__).parent, quiet=1)
    walls: dict[str, list[float]] = {name: [] for name in variants}
    marks: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    theirs: list[float] = []
    failures: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="codexloop-peer-") as tmp:
            os.environ["XDG_CACHE_HOME"] = str(Path(tmp, "cache"))
            os.environ["XDG_STATE_HOME"] = str(Path(tmp, "state"))
            for run in range(args.runs):
                for variant, command in variants.items():
                    script(server)
                    repo = git_repo(Path(tmp, f"{variant}-{run}"), PROJECT.files)
                    wall, seen = run_codexloop(repo, server.base_url, command)
                    for name, at in seen.items():
                        marks[variant].setdefault(name, []).append(at)
                    if green(repo):
                        walls[variant].append(wall)
                    else:
                        failures.append(f"{variant} run {run + 1}")
                if args.aider:
                    repo = git_repo(Path(tmp, f"aider-{run}"), PROJECT.files)
                    script_aider(server, f"aider-{run}")
                    wall = run_aider(args.aider, repo, server.base_url, f"aider-{run}")
                    if green(repo):
                        theirs.append(wall)
                    else:
                        failures.append(f"aider run {run + 1}")
    finally:
        server.close()
    print(f"{args.project}, wrong then right, instant scripted model, {args.runs} runs each")
    print(f"(the kata's tests run with {PYTHON})")
    for variant in variants:
        print(summary(variant, walls[variant]))
        print(
            "           medians: "
            + ", ".join(
                f"{name} {statistics.median(marks[variant][name]):.2f} s"
                for name in MILESTONES
                if marks[variant].get(name)
            )
        )
    print(summary("aider", theirs) if args.aider else "aider      not installed: not run")
    mine = walls["codexloop"]
    if mine and theirs:
        ratio = statistics.median(theirs) / statistics.median(mine)
        print(f"aider / codexloop (medians): {ratio:.2f}x")
    if failures:
        print(f"not green: {', '.join(failures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
