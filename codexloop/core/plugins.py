"""What the project's interpreter had installed when the session started.

pytest loads every ``pytest11`` entry point it finds on ``sys.path`` — including one a model
declares in a ``*.dist-info`` folder it writes into ``src/``. So the test run turns autoloading
off (:data:`PLUGIN_ENV`) and names, with ``-p``, each plugin that was installed when the session
started (:func:`pytest_plugin_args`). The same single question to the interpreter gives the
module names a new sandbox module must not shadow (the standard library, installed
distributions' top-level modules; see :mod:`codexloop.core.exam`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

from codexloop.core import interpreter

PLUGIN_GROUP = "pytest11"
PLUGIN_ENV: dict[str, str] = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
PROBE_TIMEOUT_S = 20.0
# Top-level names careless distributions ship by mistake; a project's own ``tests/``, ``src/``
# or ``docs/`` folder must not be mistaken for shadowing them.
_NOT_SHADOWED = frozenset(
    {"tests", "test", "testing", "src", "docs", "doc", "examples", "example", "scripts"}
)

# Runs in the project's interpreter (any Python 3.8+): no sandbox folder on its path.
_PROBE = r"""
import json, sys
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
out = {"stdlib": sorted(getattr(sys, "stdlib_module_names", ())),
       "builtin": sorted(sys.builtin_module_names), "top_level": [], "plugins": []}
try:
    import importlib.metadata as md
except ImportError:
    md = None
SUFFIXES = (".py", ".pyc", ".pyd", ".so")
SKIP = (".dist-info", ".egg-info", ".data", ".pth")
top = set()
seen = set()
for dist in (md.distributions() if md else ()):
    try:
        names = (dist.read_text("top_level.txt") or "").split()
        if not names:
            for file in dist.files or ():
                parts = file.parts
                if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(SKIP):
                    continue
                if len(parts) > 1:
                    names.append(parts[0])
                elif parts[0].endswith(SUFFIXES):
                    names.append(parts[0].split(".")[0])
        top.update(name for name in names if name.isidentifier())
        for ep in dist.entry_points:
            if ep.group == "pytest11" and ep.name not in seen:
                seen.add(ep.name)
                out["plugins"].append([ep.name, ep.value, dist.metadata["Name"] or ""])
    except Exception:
        continue
out["top_level"] = sorted(top)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Plugin:
    """One ``pytest11`` entry point: its name (what ``-p`` loads), its target and owner."""

    name: str
    value: str
    distribution: str = ""


@dataclass(frozen=True)
class Installed:
    """The answer of the project's interpreter, asked once at the start of a session."""

    stdlib: frozenset[str]  # sys.stdlib_module_names and the built-in modules
    top_level: frozenset[str]  # top-level import names of the installed distributions
    plugins: tuple[Plugin, ...]  # the pytest11 entry points, first of each name
    complete: bool = True  # False: the interpreter did not answer; the engine's own view


def installed(python: str, *, timeout: float = PROBE_TIMEOUT_S) -> Installed:
    """Ask ``python`` (the project's interpreter) what it has installed (blocking, bounded).

    It runs without the sandbox on its path, in a neutral folder, with no ``PYTHON*``
    variable of ours. If it cannot answer, the engine's own interpreter gives the module
    names and no plugin is named (pytest then loads only its own plugins: a run may go red,
    never falsely green).
    """
    data = interpreter.ask_json(python, _PROBE, timeout=timeout)
    if not isinstance(data, dict):
        return _own_view()
    stdlib = frozenset(data.get("stdlib") or sys.stdlib_module_names)
    return Installed(
        stdlib=stdlib | frozenset(data.get("builtin") or ()),
        top_level=frozenset(data.get("top_level") or ()) - _NOT_SHADOWED,
        plugins=tuple(Plugin(*(str(part) for part in item)) for item in data.get("plugins") or ()),
    )


def _own_view() -> Installed:
    import importlib.metadata

    top = {name for name in importlib.metadata.packages_distributions() if name.isidentifier()}
    return Installed(
        stdlib=frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names),
        top_level=frozenset(top | {"pytest", "_pytest", "pluggy"}) - _NOT_SHADOWED,
        plugins=(),
        complete=False,
    )


def disabled_plugins(words: Iterable[str]) -> frozenset[str]:
    """The plugins a list of pytest arguments turns off (``-p no:NAME``, ``-pno:NAME``):
    give it the developer's ``addopts`` and test command so :func:`pytest_plugin_args` does
    not switch back on what they switched off."""
    found: set[str] = set()
    pending = False
    for word in words:
        spec = word if pending else word[2:] if word.startswith("-p") and word != "-p" else None
        pending = word == "-p"
        if spec is not None and spec.startswith("no:"):
            found.add(spec[3:])
    return frozenset(found)


def pytest_plugin_args(
    plugins: Iterable[Plugin], *, disabled: Iterable[str] = frozenset()
) -> list[str]:
    """``-p NAME`` for each plugin installed at the start, except those the developer turned
    off. Loaded by entry-point name, a plugin is registered under that name exactly as
    autoloading would (``hasplugin("xdist")`` keeps working). Use with :data:`PLUGIN_ENV`.
    """
    off = set(disabled)
    off |= {f"pytest_{name}" for name in off if not name.startswith("pytest_")}  # as pytest
    args: list[str] = []
    for plugin in plugins:
        if plugin.name in off:
            continue
        args += ["-p", plugin.name]
    return args
