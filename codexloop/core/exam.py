"""The exam: target test files and test configuration, protected from the model.

No tool may create, change or delete a protected file, and before every test run
the engine puts them back as the developer has them. The target files are read
from the developer's checkout each time, so an edit of the exam by the developer
is what the next run uses.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from codexloop.core import ahead, gitops, pysyntax, safefs, shadow
from codexloop.core.errors import CodexloopError
from codexloop.core.plugins import Installed, installed
from codexloop.core.sandbox import find_python

# Every file pytest 8 and 9 read for configuration (``_pytest/config/findpaths.py``: pytest 9
# reads pytest.toml and .pytest.toml first), conftest.py, and what Python runs at start-up.
PROTECTED_NAMES = frozenset(
    {
        "pytest.toml",
        ".pytest.toml",
        "pytest.ini",
        ".pytest.ini",
        "tox.ini",
        "setup.cfg",
        "conftest.py",
        "sitecustomize.py",
        "usercustomize.py",
    }
)
PYPROJECT = "pyproject.toml"
# The configuration of linters and type checkers: protected while gates run (``--gate``), so a
# gate is passed by the code, not by loosening the gate (the files, and these sections of
# pyproject.toml). An ignore comment in the code cannot be told from a fix: the diff shows it.
GATE_CONFIG_NAMES = frozenset(
    {
        "ruff.toml",
        ".ruff.toml",
        "mypy.ini",
        ".mypy.ini",
        ".flake8",
        ".pylintrc",
        "pylintrc",
        "pyrightconfig.json",
        ".pre-commit-config.yaml",
        ".editorconfig",
    }
)
# What tools skip: ruff and others honour these, so listing the code in one passes them.
IGNORE_FILES = frozenset({".gitignore", ".ignore", ".rgignore"})
GATE_CONFIG_NAMES |= IGNORE_FILES
GATE_TOOL_SECTIONS = ("ruff", "mypy", "pylint", "pyright", "black", "isort", "flake8")
# Where no configuration file is found, pytest takes the nearest folder above the tests with a
# pyproject.toml (8.1+) or a setup.py as rootdir, and conftest.py files above it are not loaded.
_ROOTDIR_MARKERS = frozenset({PYPROJECT, "setup.py"})
PACKAGE_JSON = "package.json"
# JavaScript test runners' configuration files.
_JS_CONFIG = re.compile(
    r"(?:(?:jest|vitest|ava|playwright|cypress|karma)\.config|karma\.conf|\.mocharc)"
    r"(?:\.[a-z]+)?(?:\.(?:js|cjs|mjs|ts|cts|mts|json|jsonc|yaml|yml))?"
)
# The sections of package.json that decide how tests run.
_PACKAGE_TEST_KEYS = ("scripts", "jest", "mocha", "ava", "vitest")
_MAKEFILES = ("GNUmakefile", "makefile", "Makefile")
MAX_EXAM_BYTES = 50_000_000  # a protected file larger than this is treated as not there


def _package_test_sections(text: str | bytes | None) -> Any:
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return "<invalid JSON>"
    if not isinstance(data, dict):
        return None
    return {key: data.get(key) for key in _PACKAGE_TEST_KEYS}


def command_files(repo: Path, command: str | None) -> tuple[str, ...]:
    """Files of the repository a custom test command names or implies (``make`` reads the
    Makefile): they decide the verdict, so they are part of the exam."""
    if not command:
        return ()
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    root = repo.resolve()
    found: list[str] = []
    for word in words:
        candidates = [word.split("=", 1)[-1]] if "=" in word else [word]
        if PurePosixPath(word).name == "make":
            candidates += list(_MAKEFILES)
        for candidate in candidates:
            if not candidate or candidate.startswith("-"):
                continue
            try:
                path = (root / candidate).resolve()
            except (OSError, RuntimeError):
                continue
            if root in path.parents and path.is_file():
                found.append(path.relative_to(root).as_posix())
    return tuple(dict.fromkeys(found))


def _pytest_section(text: str | bytes | None) -> Any:
    return _tool_sections(text, ("pytest",))


def _tool_sections(text: str | bytes | None, names: tuple[str, ...]) -> Any:
    """The ``[tool.NAME]`` sections of a pyproject.toml (one name: that section alone)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        tools = tomllib.loads(text).get("tool", {})
    except tomllib.TOMLDecodeError:
        return "<invalid TOML>"
    if not isinstance(tools, dict):
        return tools
    if len(names) == 1:
        return tools.get(names[0])
    found = {name: tools[name] for name in names if name in tools}
    return found or None  # none of them: as a file that is not there


class ExamError(CodexloopError):
    """The exam can never pass, whatever the model does (a target that collects no test, a
    target file with a syntax error): said before the first model call, exit 2."""


def syntax_error(root: Path, target_files: Iterable[str]) -> str | None:
    """Where the first target file that is Python but does not parse has its syntax error."""
    for rel in target_files:
        if not rel.endswith(".py"):
            continue
        try:
            source = safefs.read_file(root, rel, limit=MAX_EXAM_BYTES)
        except OSError:
            continue  # not there or not a regular file: pytest will say so
        try:
            pysyntax.check(source, rel)
        except SyntaxError as exc:
            where = f"{rel}:{exc.lineno}" if exc.lineno else rel
            return f"the exam has a syntax error at {where}: {exc.msg}"
        except ValueError:  # null bytes
            return f"the exam has a syntax error at {rel}: it holds null bytes"
    return None


@dataclass
class Exam:
    """Knows which files are protected and how to restore them in a sandbox."""

    repo: Path
    base: str
    target_files: tuple[str, ...]
    from_checkout: bool = True  # False for a replay: the exam as it was recorded
    command_files: tuple[str, ...] = ()  # what a custom test command names (see command_files)
    gated: bool = False  # gates run (--gate): the linters' configuration is protected too
    guard_files: frozenset[str] = frozenset()  # the regression guard's test files (--guard)
    _targets: frozenset[str] = field(init=False)
    _files: list[str] | None = field(init=False, default=None)
    _installed: Installed | None = field(init=False, default=None, repr=False)
    _snapshot_names: dict[tuple[str, ...], tuple[frozenset[str], ...]] = field(
        init=False, default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        self._targets = frozenset(self.target_files)

    def set_targets(self, target_files: tuple[str, ...]) -> None:
        self.target_files = target_files
        self._targets = frozenset(target_files)

    def protection(self, rel: str) -> str | None:
        """Why ``rel`` (posix, relative to the sandbox root) may not be touched, or None."""
        path = PurePosixPath(rel)
        if path.parts and path.parts[0] == ".git":
            return "the sandbox's git metadata is off limits"
        if rel in self._targets:
            return "it is a target test file (the exam)"
        if path.name in PROTECTED_NAMES:
            return f"{path.name} is test configuration"
        if path.suffix == ".pth":
            return ".pth files change how Python starts"
        if path.name.startswith("__init__.") and shadow.folder(rel) in self.target_folders():
            return "it makes a package of the target tests (pytest imports it before them)"
        if _JS_CONFIG.fullmatch(path.name):
            return f"{path.name} is test configuration"
        if rel in self.command_files:
            return "the test command runs it"
        if rel in self.guard_files:
            return "it is a test the regression guard runs (--guard)"
        if self.gated and path.name in GATE_CONFIG_NAMES:
            return f"{path.name} configures a gate (--gate)"
        if self.gated and path.suffix == ".pyi" and rel[:-1] in self.snapshot_files():
            return f"a stub beside {rel[:-1]} is what a type-checking gate reads instead of it"
        return None

    def check_write(self, rel: str, old: bytes | None, new: bytes | None) -> str | None:
        """Refusal reason for changing ``rel`` from ``old`` to ``new`` (None: allowed)."""
        reason = self.protection(rel) or self.config_change(rel, old, new)
        if reason is None and new is not None:
            reason = self.shadowing(rel)
        return reason

    def config_change(self, rel: str, old: bytes | None, new: bytes | None) -> str | None:
        """Why going from ``old`` to ``new`` in a file that is only partly test configuration
        changes the exam, or None: the pytest sections of any pyproject.toml, a rootdir
        marker created or removed above the target tests, package.json's test sections."""
        name = PurePosixPath(rel).name
        if name == PYPROJECT and _pytest_section(old) != _pytest_section(new):
            return "the [tool.pytest] section of pyproject.toml is test configuration"
        if (
            self.gated
            and name == PYPROJECT
            and _tool_sections(old, GATE_TOOL_SECTIONS) != _tool_sections(new, GATE_TOOL_SECTIONS)
        ):
            sections = ", ".join(f"[tool.{n}]" for n in GATE_TOOL_SECTIONS)
            return f"the {sections} sections of pyproject.toml configure the gates (--gate)"
        if (
            name in _ROOTDIR_MARKERS
            and (old is None) != (new is None)
            and shadow.folder(rel) in self.target_folders()
        ):
            return f"a {name} in a folder above the target tests decides pytest's rootdir"
        if rel == PACKAGE_JSON and _package_test_sections(old) != _package_test_sections(new):
            return "the scripts and test-runner sections of package.json are test configuration"
        return None

    def guard(self, classnames: Iterable[str]) -> None:
        """Protect the files of the tests the regression guard reported (JUnit classnames:
        ``tests.test_shop.TestCart`` is ``tests/test_shop.py``; a folder with a dot in its
        name, ``tests/api.v2/test_x.py``, reads the same way; a guard run from a subfolder
        reports paths below it, so a file whose path ends with the module's is it too);
        blocking."""
        by_module: dict[str, list[str]] = {}
        for rel in self.snapshot_files():
            if rel.endswith(".py"):
                dotted = rel[: -len(".py")].replace("/", ".")
                by_module.setdefault(dotted, []).append(rel)
        found = set(self.guard_files)
        below: dict[str, list[str]] = {}  # module -> files whose dotted path ends with it

        def ending_with(module: str) -> list[str]:
            if module not in below:
                tail = "." + module
                below[module] = [
                    rel
                    for dotted, rels in by_module.items()
                    if dotted.endswith(tail)
                    for rel in rels
                ]
            return below[module]

        for classname in dict.fromkeys(classnames):
            parts = classname.split(".")
            for end in range(len(parts), 0, -1):
                module = ".".join(parts[:end])
                matches = by_module.get(module) or ending_with(module)
                if matches:
                    found.update(matches)
                    break
        self.guard_files = frozenset(found)

    def target_folders(self) -> frozenset[str]:
        """The folders of the target test files and every folder above them (root: "")."""
        return frozenset(folder for rel in self.target_files for folder in shadow.ancestors(rel))

    def installed(self) -> Installed:
        """What the project's interpreter has installed: asked once per session (blocking)."""
        if self._installed is None:
            self._installed = ahead.take(installed, find_python(self.repo))
        return self._installed

    def import_roots(self) -> list[str]:
        """Folders the tests import top-level modules from: the sandbox root and ``src``
        (first on PYTHONPATH), the target folders and the conftest.py folders (pytest puts
        them first on sys.path)."""
        conftests = {
            shadow.folder(rel)
            for rel in self.snapshot_files()
            if PurePosixPath(rel).name == "conftest.py"
        }
        return sorted({"", "src", *self.target_folders(), *conftests})

    def shadowing(self, rel: str) -> str | None:
        """Why a new ``rel`` would shadow the standard library, pytest or an installed
        distribution (or declare plugins as distribution metadata), or None. Names the
        developer's snapshot has are never refused (blocking: asks the interpreter once)."""
        if shadow.metadata_folder(rel) is None and not rel.endswith(shadow.IMPORTABLE):
            return None  # no module, no metadata: nothing to look up
        roots = self.import_roots()
        key = tuple(roots)
        if key not in self._snapshot_names:
            self._snapshot_names[key] = shadow.snapshot_names(self.snapshot_files(), roots)
        names, metadata = self._snapshot_names[key]
        meta = shadow.metadata_folder(rel)
        subs = [sub for root in roots if (sub := shadow.under(rel, root)) is not None]
        new_names = {shadow.module_name(sub) for sub in subs} - {None} - names
        if (meta is None or meta in metadata) and not new_names:
            return None  # the developer's own names: no need to ask the interpreter
        return shadow.reason(rel, roots, self.installed(), names, metadata)

    def shadowing_paths(self, paths: Iterable[str]) -> list[tuple[str, str]]:
        """The paths among ``paths`` (the sandbox's files) a command made that shadow an
        installed module or declare plugins, with why: remove them before a test run."""
        found: list[tuple[str, str]] = []
        for rel in paths:
            reason = self.shadowing(rel)
            if reason is not None:
                found.append((rel, reason))
        return found

    def snapshot_files(self) -> list[str]:
        """Every file of the snapshot (blocking; listed once, the snapshot never changes)."""
        if self._files is None:
            listing = gitops.git(self.repo, "ls-tree", "-r", "-z", "--name-only", self.base)
            self._files = [rel for rel in listing.split("\0") if rel]
        return self._files

    def protected_files(self) -> list[str]:
        """Protected files present in the snapshot, the targets first (blocking)."""
        found = [
            rel
            for rel in self.snapshot_files()
            if rel not in self._targets and self.protection(rel)
        ]
        return [*self.target_files, *found]

    def original(self, rel: str) -> bytes | None:
        """The developer's version: their checkout for target files, the snapshot for config.

        The checkout is read without following links and only if the target is a regular
        file there (a link or anything else: the snapshot's version)."""
        if rel in self._targets and self.from_checkout:
            data = safefs.read_regular(self.repo, rel, limit=MAX_EXAM_BYTES)
            if data is not None:
                return data
        return gitops.read_blob(self.repo, self.base, rel)

    def restore(self, worktree: Path, changed: list[str]) -> list[str]:
        """Put every protected file back as the developer has it; return what was restored.

        ``changed`` are the paths that differ from the snapshot; target files are always
        checked, since the developer may have edited them in the checkout. The worktree is
        the model's: nothing in it is followed. A symlink, FIFO or folder where a protected
        file belongs, or a symlink or file where one of its folders belongs, is removed
        itself (never what it points to) and the exam written in its place.
        """
        restored: list[str] = []
        for rel in sorted(set(changed) | self._targets):
            partial = self.protection(rel) is None  # a file only partly test configuration
            name = PurePosixPath(rel).name
            if partial and name not in (PYPROJECT, PACKAGE_JSON, *_ROOTDIR_MARKERS):
                continue
            try:
                found = safefs.kind(worktree, rel)
            except safefs.UnsafePath:
                found = "other"  # a folder on the way is a link or a file: replace it
            current = (
                safefs.read_regular(worktree, rel, limit=MAX_EXAM_BYTES)
                if found == "file"
                else None
            )
            clean = found is None or (found == "file" and current is not None)
            wanted = self.original(rel)
            if partial:
                if clean and self.config_change(rel, wanted, current) is None:
                    continue
            elif clean and current == wanted:
                continue
            self._replace(worktree, rel, wanted)
            restored.append(rel)
        return restored

    @staticmethod
    def _replace(worktree: Path, rel: str, content: bytes | None) -> None:
        if content is None:
            safefs.remove(worktree, rel)
        else:
            safefs.remove(worktree, rel)  # a folder, link or FIFO there goes first
            safefs.write_file(worktree, rel, content, replace_parents=True)
