"""Configuration: command-line flags, then environment, then ``[tool.codexloop]``.

Everything a user can get wrong is checked here, before any model call, and
reported as a :class:`ConfigError` whose message is one clear line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codexloop.core import gitops
from codexloop.core.context import DEFAULT_CONTEXT_TOKENS, MIN_CONTEXT_TOKENS
from codexloop.core.errors import CodexloopError
from codexloop.core.isolation import DEFAULT_MAX_MEMORY_GIB, DEFAULT_TMP_SIZE_MIB
from codexloop.core.limits import DEFAULT_MAX_PROCESSES, MIN_MAX_PROCESSES

OPENAI_HOST = "api.openai.com"
DEFAULT_OPENAI_MODEL = "gpt-5.1-codex"
APIS = ("auto", "responses", "chat")
REASONING = ("low", "medium", "high")
DEFAULT_MAX_ITERATIONS = 10
DEFAULT_COMMAND_TIMEOUT = 120.0
DEFAULT_TEST_TIMEOUT = 600.0
DEFAULT_MAX_TOOL_CALLS = 40
EDIT_FORMATS = ("auto", "tools", "text")
PICKS = ("first", "best")
MAX_ATTEMPTS = 16
# A model request's time limit: OpenAI answers in seconds; a local server on a CPU can take a
# minute before the first byte of a long prompt (and longer while its slot is busy).
DEFAULT_REQUEST_TIMEOUT = 120.0
DEFAULT_LOCAL_REQUEST_TIMEOUT = 600.0

_FILE_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "base_url": str,
    "max_iterations": int,
    "test_cmd": str,
    "command_timeout": (int, float),
    "test_timeout": (int, float),
    "allow_network": bool,
    "warm": bool,
    "max_tool_calls": int,
    "max_processes": int,
    "context_tokens": int,
    "max_memory": int,
    "tmp_size": int,
    "share": list,
    "task": str,
    "api": str,
    "reasoning": str,
    "edit_format": str,
    "request_timeout": (int, float),
    "attempts": int,
    "pick": str,
    "jobs": int,
    "hints": list,
    "max_tokens": int,
    "max_time": (int, float, str),
    "max_cost": (int, float),
    "price_in": (int, float),
    "price_out": (int, float),
    "gates": list,
    "guard": str,
    "ray": str,
}


_EXPECTED = {
    str: "a string",
    int: "a whole number",
    bool: "true or false",
    list: "an array of strings",
}


def _expected(kind: type | tuple[type, ...]) -> str:
    """What a ``[tool.codexloop]`` key takes, in TOML's words."""
    return "a number" if isinstance(kind, tuple) else _EXPECTED.get(kind, kind.__name__)


def _toml_type(value: object) -> str:
    """What a TOML value is, in TOML's words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


class ConfigError(CodexloopError):
    """A mistake the user can fix; the message is shown as one line, exit status 2."""


@dataclass(frozen=True)
class Settings:
    """What the command line gave; ``None`` means "not given"."""

    targets: tuple[str, ...]
    repo: Path | None = None
    task: str | None = None
    test_cmd: str | None = None
    model: str | None = None
    base_url: str | None = None
    max_iterations: int | None = None
    command_timeout: float | None = None
    test_timeout: float | None = None
    allow_network: bool | None = None
    warm: bool | None = None
    max_tool_calls: int | None = None
    max_processes: int | None = None
    context_tokens: int | None = None
    max_memory: int | None = None
    share: tuple[str, ...] | None = None
    continue_from: str | None = None
    api: str | None = None
    tmp_size: int | None = None
    reasoning: str | None = None
    edit_format: str | None = None
    request_timeout: float | None = None
    attempts: int | None = None
    pick: str | None = None
    jobs: int | None = None
    hints: tuple[str, ...] | None = None
    max_tokens: int | None = None
    max_time: str | float | None = None
    max_cost: float | None = None
    gates: tuple[str, ...] | None = None
    guard: str | None = None
    ray: str | None = None


@dataclass(frozen=True)
class Config:
    repo: Path
    targets: tuple[str, ...]
    model: str
    base_url: str | None
    api_key: str
    task: str = ""
    test_cmd: str | None = None
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    test_timeout: float = DEFAULT_TEST_TIMEOUT
    allow_network: bool = False
    warm: bool = True
    max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS
    max_processes: int = DEFAULT_MAX_PROCESSES
    context_tokens: int = DEFAULT_CONTEXT_TOKENS
    max_memory: int = DEFAULT_MAX_MEMORY_GIB  # GiB of address space per command; 0: no limit
    share: tuple[str, ...] | None = None  # checkout paths the sandbox sees; None: the default
    continue_from: str | None = None  # a preview branch whose work the sandbox starts with
    target_files: tuple[str, ...] = field(default=())
    api: str = "auto"
    reasoning: str | None = None
    tmp_size: int = DEFAULT_TMP_SIZE_MIB  # MiB of each tmpfs in the sandbox (RAM); 0: no limit
    # How the model's changes arrive: tool calls, edits written as text, or both (auto).
    edit_format: str = "auto"
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT  # seconds for one model request
    # --attempts N: N sandboxes race; the models (``--model a,b``) are spread over them.
    attempts: int = 1
    pick: str = "first"  # first: the first green wins; best: the best of the greens
    jobs: int = 0  # test runs at once across attempts; 0: the CPU count
    hints: tuple[str, ...] = ()  # one approach hint per attempt, in order
    hint: str = ""  # this attempt's hint (set per attempt from ``hints``)
    # Budgets beyond iterations (None: none): tokens in + out, wall seconds, US dollars.
    max_tokens: int | None = None
    max_time: float | None = None
    max_cost: float | None = None
    price_in: float | None = None  # US dollars per million input tokens
    price_out: float | None = None  # ... per million output tokens
    # Commands that must pass (exit 0) in the sandbox once the targets are green, in order.
    gates: tuple[str, ...] = ()
    # The regression guard: a pytest command ("auto": the whole suite) whose tests passing at
    # the baseline must still pass when the targets are green.
    guard: str | None = None
    # Where attempts run (--ray): None in this process; "auto" (RAY_ADDRESS, else a cluster
    # running on this machine, else a new local one) or a cluster's address: Ray actors.
    ray: str | None = None

    @property
    def endpoint(self) -> str:
        return self.base_url or f"https://{OPENAI_HOST}/v1"

    @property
    def models(self) -> tuple[str, ...]:
        """``--model a,b``: the models the attempts are spread over (one: every attempt)."""
        return tuple(m.strip() for m in self.model.split(",") if m.strip()) or (self.model,)

    def for_attempt(self, attempt: int) -> Config:
        """This session's config as attempt ``attempt`` (from 1) runs it: its model, its hint."""
        models = self.models
        hint = self.hints[attempt - 1] if attempt <= len(self.hints) else ""
        return dataclasses.replace(
            self, model=models[(attempt - 1) % len(models)], hint=hint, attempts=1
        )


def read_file_config(repo: Path) -> dict[str, Any]:
    """``[tool.codexloop]`` of the repository's pyproject.toml, validated."""
    path = repo / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    section = data.get("tool", {}).get("codexloop", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [tool.codexloop] must be a table")
    for key, value in section.items():
        kind = _FILE_KEYS.get(key)
        if kind is None:
            known = ", ".join(sorted(_FILE_KEYS))
            raise ConfigError(f"{path}: unknown key {key!r} in [tool.codexloop] (known: {known})")
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
            raise ConfigError(
                f"{path}: [tool.codexloop] {key} must be {_expected(kind)}, "
                f"not {_toml_type(value)} ({shown})"
            )
    return section


def resolve_targets(
    repo: Path, cwd: Path, targets: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Targets as repo-relative node ids, and the distinct test files they name."""
    if not targets:
        raise ConfigError(
            "no TARGET given: name the test that defines success, e.g. tests/test_x.py::test_y"
        )
    node_ids: list[str] = []
    files: list[str] = []
    for target in targets:
        file_part, sep, rest = target.partition("::")
        path = Path(file_part)
        absolute = path if path.is_absolute() else cwd / path
        absolute = Path(os.path.normpath(absolute))
        if not absolute.exists():
            raise ConfigError(f"target {target!r} does not exist ({absolute} not found)")
        if not absolute.is_file() and sep:
            raise ConfigError(f"target {target!r}: {file_part} is not a file")
        try:
            rel = absolute.relative_to(repo)
        except ValueError:
            raise ConfigError(f"target {target!r} is outside the repository {repo}") from None
        rel_posix = rel.as_posix()
        node_ids.append(rel_posix + (sep + rest if sep else ""))
        if absolute.is_file():
            files.append(rel_posix)
        else:
            files.extend(
                p.relative_to(repo).as_posix()
                for p in sorted(absolute.rglob("*.py"))
                if p.name.startswith("test_") or p.name.endswith("_test.py")
            )
    return tuple(node_ids), tuple(dict.fromkeys(files))


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _preview_branch(repo: Path, name: str) -> str:
    """``codexloop/<name>`` (given with or without its prefix), which must exist."""
    branch = name if name.startswith("codexloop/") else f"codexloop/{name}"
    done = gitops.git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    if not done.strip():
        raise ConfigError(
            f"--continue {name}: no preview branch of that name (see codexloop branches)"
        )
    return branch


def _check_share(repo: Path, item: object) -> str:
    """A path of the checkout to share with the sandbox: relative, inside, present."""
    if not isinstance(item, str) or not item.strip():
        raise ConfigError("share: each entry must be a path relative to the repository")
    path = Path(item)
    resolved = (repo / path).resolve()
    if path.is_absolute() or (resolved != repo and repo not in resolved.parents):
        raise ConfigError(f"share {item!r}: must be a path inside the repository")
    if not resolved.exists():
        raise ConfigError(f"share {item!r}: no such file or folder in {repo}")
    rel = resolved.relative_to(repo).as_posix()
    if rel in (".", ".git") or rel.startswith(".git/"):
        raise ConfigError(f"share {item!r}: the repository itself cannot be shared")
    return rel


def load_config(
    settings: Settings, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Config:
    """Resolve flags, environment and file config into a checked :class:`Config`."""
    env = os.environ if env is None else env
    cwd = (cwd or Path.cwd()).resolve()
    start = (settings.repo if settings.repo is not None else cwd).expanduser()
    start = start if start.is_absolute() else cwd / start
    if not start.exists():
        raise ConfigError(f"--repo {start}: no such directory")
    repo = gitops.toplevel(start)
    if repo is None:
        raise ConfigError(
            f"{start} is not inside a git checkout (codexloop works on a git repository)"
        )
    repo = repo.resolve()
    target_base = cwd if settings.repo is None else start
    targets, target_files = resolve_targets(repo, target_base, settings.targets)

    file_cfg = read_file_config(repo)
    base_url = _first(
        settings.base_url, env.get("OPENAI_BASE_URL") or None, file_cfg.get("base_url")
    )
    api_key = env.get("OPENAI_API_KEY") or ""
    model = _first(settings.model, env.get("CODEXLOOP_MODEL") or None, file_cfg.get("model"))
    if base_url is None and not api_key:
        raise ConfigError(
            "no model configured: set OPENAI_API_KEY for OpenAI, or point --base-url "
            "(or OPENAI_BASE_URL) at an OpenAI-compatible server and name a --model"
        )
    if model is None:
        if base_url is not None and OPENAI_HOST not in base_url:
            raise ConfigError(
                "no model configured: pass --model NAME, set CODEXLOOP_MODEL, or add "
                'model = "NAME" under [tool.codexloop] in pyproject.toml'
            )
        model = DEFAULT_OPENAI_MODEL
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"--base-url {base_url!r} must start with http:// or https://")

    max_iterations = int(
        _first(settings.max_iterations, file_cfg.get("max_iterations"), DEFAULT_MAX_ITERATIONS)
    )
    if max_iterations < 1:
        raise ConfigError("--max-iterations must be at least 1")
    command_timeout = float(
        _first(settings.command_timeout, file_cfg.get("command_timeout"), DEFAULT_COMMAND_TIMEOUT)
    )
    test_timeout = float(
        _first(settings.test_timeout, file_cfg.get("test_timeout"), DEFAULT_TEST_TIMEOUT)
    )
    default_request = (
        DEFAULT_REQUEST_TIMEOUT
        if base_url is None or OPENAI_HOST in base_url
        else DEFAULT_LOCAL_REQUEST_TIMEOUT
    )
    request_timeout = float(
        _first(settings.request_timeout, file_cfg.get("request_timeout"), default_request)
    )
    if command_timeout <= 0 or test_timeout <= 0 or request_timeout <= 0:
        raise ConfigError("timeouts must be positive numbers of seconds")
    max_tool_calls = int(
        _first(settings.max_tool_calls, file_cfg.get("max_tool_calls"), DEFAULT_MAX_TOOL_CALLS)
    )
    if max_tool_calls < 1:
        raise ConfigError("max_tool_calls must be at least 1")
    max_processes = int(
        _first(settings.max_processes, file_cfg.get("max_processes"), DEFAULT_MAX_PROCESSES)
    )
    if max_processes < MIN_MAX_PROCESSES:
        raise ConfigError(f"--max-processes must be at least {MIN_MAX_PROCESSES}")
    context_tokens = int(
        _first(settings.context_tokens, file_cfg.get("context_tokens"), DEFAULT_CONTEXT_TOKENS)
    )
    if context_tokens < MIN_CONTEXT_TOKENS:
        raise ConfigError(f"--context-tokens must be at least {MIN_CONTEXT_TOKENS}")
    max_memory = int(
        _first(settings.max_memory, file_cfg.get("max_memory"), DEFAULT_MAX_MEMORY_GIB)
    )
    if max_memory < 0:
        raise ConfigError("--max-memory must be a number of GiB (0 for no limit)")
    tmp_size = int(_first(settings.tmp_size, file_cfg.get("tmp_size"), DEFAULT_TMP_SIZE_MIB))
    if tmp_size < 0:
        raise ConfigError("--tmp-size must be a number of MiB (0 for no limit)")
    continue_from = None
    if settings.continue_from:
        continue_from = _preview_branch(repo, settings.continue_from)
    share = _first(settings.share, file_cfg.get("share"))
    if share is not None:
        share = tuple(_check_share(repo, item) for item in share)

    api = _first(settings.api, file_cfg.get("api"), "auto")
    if api not in APIS:
        raise ConfigError(f"api must be one of {', '.join(APIS)}, not {api!r}")
    edit_format = _first(settings.edit_format, file_cfg.get("edit_format"), "auto")
    if edit_format not in EDIT_FORMATS:
        raise ConfigError(
            f"edit_format must be one of {', '.join(EDIT_FORMATS)}, not {edit_format!r}"
        )
    attempts = int(_first(settings.attempts, file_cfg.get("attempts"), 1))
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise ConfigError(f"--attempts must be between 1 and {MAX_ATTEMPTS}, not {attempts}")
    pick = _first(settings.pick, file_cfg.get("pick"), "first")
    if pick not in PICKS:
        raise ConfigError(f"pick must be one of {', '.join(PICKS)}, not {pick!r}")
    jobs = int(_first(settings.jobs, file_cfg.get("jobs"), 0))
    if jobs < 0:
        raise ConfigError("--jobs must be a number of test runs at once (0: the CPU count)")
    hints = _first(settings.hints, file_cfg.get("hints"), ())
    if not all(isinstance(h, str) for h in hints):
        raise ConfigError("hints: each entry must be a string (one approach hint per attempt)")
    hints = tuple(" ".join(h.split()) for h in hints)
    models = [m for m in str(model).split(",") if m.strip()]
    if len(models) > attempts:
        raise ConfigError(
            f"--model names {len(models)} models for {attempts} "
            f"attempt{'s' if attempts > 1 else ''}: give --attempts {len(models)} (or more) to "
            "race them, or name one model"
        )
    if len(hints) > attempts:
        raise ConfigError(
            f"{len(hints)} hints for {attempts} attempts: one hint per attempt at most"
        )
    max_tokens = _first(settings.max_tokens, file_cfg.get("max_tokens"))
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError("--max-tokens must be a positive number of tokens")
    max_time = _first(settings.max_time, file_cfg.get("max_time"))
    max_time = None if max_time is None else duration(max_time)
    max_cost = _first(settings.max_cost, file_cfg.get("max_cost"))
    price_in, price_out = file_cfg.get("price_in"), file_cfg.get("price_out")
    if max_cost is not None:
        if max_cost <= 0:
            raise ConfigError("--max-cost must be a positive amount of US dollars")
        if price_in is None or price_out is None:
            raise ConfigError(
                "--max-cost needs the model's prices: set price_in and price_out (US dollars "
                "per million tokens) under [tool.codexloop] in pyproject.toml"
            )
    gates = _first(settings.gates, file_cfg.get("gates"), ())
    if not all(isinstance(g, str) and g.strip() for g in gates):
        raise ConfigError("gates: each entry must be a command (a non-empty string)")
    guard = _first(settings.guard, file_cfg.get("guard"))
    if guard is not None and not str(guard).strip():
        raise ConfigError("guard must be a test command, or auto (the whole pytest suite)")
    ray = _first(settings.ray, file_cfg.get("ray"))
    if ray is not None and not str(ray).strip():
        raise ConfigError('ray must be "auto" or a Ray cluster\'s address (ray://host:10001)')
    reasoning = _first(settings.reasoning, file_cfg.get("reasoning"))
    if reasoning is not None and reasoning not in REASONING:
        raise ConfigError(f"reasoning must be one of {', '.join(REASONING)}, not {reasoning!r}")

    return Config(
        repo=repo,
        api=api,
        reasoning=reasoning,
        edit_format=edit_format,
        request_timeout=request_timeout,
        targets=targets,
        target_files=target_files,
        model=str(model),
        base_url=base_url.rstrip("/") if base_url else None,
        # Local servers (Ollama, llama.cpp...) need no key; the client insists on one.
        api_key=api_key or "codexloop-no-key",
        task=_first(settings.task, file_cfg.get("task"), ""),
        test_cmd=_first(settings.test_cmd, file_cfg.get("test_cmd")),
        max_iterations=max_iterations,
        command_timeout=command_timeout,
        test_timeout=test_timeout,
        warm=bool(_first(settings.warm, file_cfg.get("warm"), True)),
        allow_network=bool(_first(settings.allow_network, file_cfg.get("allow_network"), False)),
        max_tool_calls=max_tool_calls,
        max_processes=max_processes,
        context_tokens=context_tokens,
        max_memory=max_memory,
        share=share,
        continue_from=continue_from,
        tmp_size=tmp_size,
        attempts=attempts,
        pick=str(pick),
        jobs=jobs,
        hints=hints,
        max_tokens=max_tokens,
        max_time=max_time,
        max_cost=None if max_cost is None else float(max_cost),
        price_in=None if price_in is None else float(price_in),
        price_out=None if price_out is None else float(price_out),
        gates=tuple(g.strip() for g in gates),
        guard=None if guard is None else str(guard).strip(),
        ray=None if ray is None else str(ray).strip(),
    )


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def duration(value: object) -> float:
    """Seconds of a duration: a number of seconds, or ``90s``, ``15m``, ``1h30m``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        found = _DURATION.fullmatch(text)
        if not text or found is None or not any(found.groups()):
            raise ConfigError(
                f"max_time {value!r}: give seconds, or a duration like 90s, 15m, 1h30m"
            )
        hours, minutes, secs = (float(g) if g else 0.0 for g in found.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ConfigError(f"max_time {value!r}: must be more than nothing")
    return seconds
