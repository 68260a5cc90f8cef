"""The project code the exam imports, for the model's first message.

A small model that has to guess the code under test guesses wrong (an ``old_text`` that is
not there, a function written twice): the first message shows it. The target test files'
imports are resolved with :mod:`ast` to files of the project (the folders pytest imports
from: the root, ``src``, the test folders), relative imports included; standard library and
installed packages are not the project's and are left out. Small files are shown whole,
large ones as an outline of their signatures, all within a budget of characters. A name the
exam imports from a project module that does not define it (``from textutil import slugify``
with no ``slugify`` in ``textutil.py``) is named as a gap: the function the test wants is
missing, and a small model reading only the ``ImportError`` tends to "fix" the import in the
test instead. Blocking (reads files): call it from a worker thread.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from codexloop.core import pysyntax, safefs

BUDGET_CHARS = 12_000  # of module sources in the first message, all files together
WHOLE_CHARS = 4_000  # a file up to this size is shown whole, a larger one as an outline
MAX_FILES = 12
_READ_LIMIT = 1 << 20  # a file larger than this is not read at all


@dataclass(frozen=True)
class Shown:
    """One module as the first message shows it."""

    path: str
    text: str  # the source, or its outline
    whole: bool
    lines: int


@dataclass(frozen=True)
class Briefing:
    modules: tuple[Shown, ...] = ()
    missing: tuple[str, ...] = ()  # dotted names imported from a project package, not found
    left_out: tuple[str, ...] = ()  # paths found but past the budget
    undefined: tuple[tuple[str, str], ...] = ()  # (name, path): imported, not defined there


def imported_modules(
    worktree: Path,
    target_files: Sequence[str],
    files: Iterable[str],
    roots: Sequence[str],
    *,
    budget: int = BUDGET_CHARS,
) -> Briefing:
    """The project modules the target files import, read from ``worktree`` (``files``: the
    project's files; ``roots``: folders top-level imports resolve from, in order)."""
    known = set(files)
    targets = set(target_files)
    found: list[str] = []
    missing: list[str] = []
    undefined: list[tuple[str, str]] = []
    for target in target_files:
        source = _read(worktree, target)
        if source is None:
            continue
        try:
            tree = pysyntax.parse(source)
        except (SyntaxError, ValueError):
            continue
        for name, folder in imports(tree, target):
            path = _resolve(name, folder, roots, known)
            if path is None:
                if _package_known(name, folder, roots, known):
                    missing.append(name)
                continue
            if path not in targets and path not in found:
                found.append(path)
        undefined += [
            gap for gap in _undefined(worktree, tree, target, roots, known) if gap not in undefined
        ]
    shown: list[Shown] = []
    left_out: list[str] = []
    remaining = budget
    for path in found:
        source = _read(worktree, path) if len(shown) < MAX_FILES else None
        if source is None:
            left_out.append(path)
            continue
        if not source.strip():
            continue  # an empty __init__.py says nothing
        lines = source.count("\n") + (not source.endswith("\n") and bool(source))
        if len(source) <= min(WHOLE_CHARS, remaining):
            shown.append(Shown(path, source, True, lines))
            remaining -= len(source)
            continue
        sketch = outline(source)
        if sketch and len(sketch) <= remaining:
            shown.append(Shown(path, sketch, False, lines))
            remaining -= len(sketch)
        else:
            left_out.append(path)
    return Briefing(tuple(shown), tuple(dict.fromkeys(missing)), tuple(left_out), tuple(undefined))


def _undefined(
    worktree: Path, tree: ast.Module, target: str, roots: Sequence[str], known: set[str]
) -> list[tuple[str, str]]:
    """``(name, path)`` of each ``from module import name`` whose module is a file of the
    project that neither defines, assigns nor imports ``name`` (nor is a package with a
    submodule of that name); a module with a star import or ``__getattr__`` may have anything."""
    here = PurePosixPath(target).parent
    gaps: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        folder = None
        if node.level:
            base = here
            for _ in range(node.level - 1):
                base = base.parent
            folder = base.as_posix()
        path = _resolve(node.module, folder, roots, known)
        source = _read(worktree, path) if path is not None else None
        if path is None or source is None:
            continue
        names = _top_level_names(source)
        if names is None:
            continue
        for alias in node.names:
            submodule = _resolve(f"{node.module}.{alias.name}", folder, roots, known)
            if alias.name != "*" and alias.name not in names and submodule is None:
                gaps.append((alias.name, path))
    return gaps


def _top_level_names(source: str) -> set[str] | None:
    """What a module binds at its top level (also inside ``if``/``try`` blocks); None when
    it cannot be known (it does not parse, star-imports, or has a module ``__getattr__``)."""
    try:
        module = pysyntax.parse(source)
    except (SyntaxError, ValueError):
        return None
    names: set[str] = set()
    pending: list[ast.stmt] = list(module.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, ()):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
        else:
            for child in ast.walk(node):
                if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                    names.add(child.id)
    return None if "__getattr__" in names else names


def _read(worktree: Path, rel: str) -> str | None:
    try:
        data = safefs.read_regular(worktree, rel, limit=_READ_LIMIT)
    except (OSError, safefs.FileTooLarge, safefs.NotRegularFile):
        return None
    if data is None or b"\x00" in data[:8000]:
        return None
    return data.decode("utf-8", errors="replace")


def imports(tree: ast.Module, target: str) -> list[tuple[str, str | None]]:
    """``(dotted name, folder)`` of each import: ``folder`` is where a relative import
    starts (a path in the project), None for an absolute one. ``from a import b`` gives
    ``a`` and ``a.b`` (``b`` may be a submodule)."""
    here = PurePosixPath(target).parent
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            folder: str | None = None
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.parent
                folder = base.as_posix()
            module = node.module or ""
            if module:
                found.append((module, folder))
            found.extend(
                (f"{module}.{alias.name}" if module else alias.name, folder)
                for alias in node.names
                if alias.name != "*"
            )
    return found


def _resolve(name: str, folder: str | None, roots: Sequence[str], known: set[str]) -> str | None:
    parts = name.split(".")
    for root in [folder] if folder is not None else roots:
        base = PurePosixPath(root or ".").joinpath(*parts).as_posix().removeprefix("./")
        for candidate in (f"{base}.py", f"{base}/__init__.py"):
            if candidate in known:
                return candidate
    return None


def _package_known(name: str, folder: str | None, roots: Sequence[str], known: set[str]) -> bool:
    """Does the first part of ``name`` resolve to a package of the project (so the rest is
    the project's to have)? ``from pkg import name`` with ``name`` not a module is no gap:
    only a dotted module path whose package exists counts."""
    parent, _, _last = name.rpartition(".")
    if not parent:
        return False
    path = _resolve(parent, folder, roots, known)
    return path is not None and path.endswith("__init__.py")


def outline(source: str) -> str:
    """The signatures of a module's classes and functions (decorators, first docstring
    line) and its top-level assignments, bodies as ``...``; the source's head when it does
    not parse."""
    try:
        tree = pysyntax.parse(source)
    except (SyntaxError, ValueError):
        return source[:1_000] + "\n[... does not parse; read_file shows it whole]"
    lines = source.splitlines()
    out: list[str] = []
    _outline(tree.body, lines, out, top=True)
    return "\n".join(out) + ("\n" if out else "")


def _outline(body: list[ast.stmt], lines: list[str], out: list[str], *, top: bool) -> None:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            body_start = node.body[0].lineno
            header = lines[first - 1 : max(body_start - 1, node.lineno)]
            out.extend(header)
            if body_start == node.lineno:
                continue  # a one-line definition is its own outline
            indent = " " * (node.body[0].col_offset)
            doc = ast.get_docstring(node)
            if doc:
                out.append(f'{indent}"""{doc.strip().splitlines()[0]}"""')
            if isinstance(node, ast.ClassDef):
                before = len(out)
                _outline(node.body, lines, out, top=False)
                if len(out) == before and not doc:
                    out.append(f"{indent}...")
            else:
                out.append(f"{indent}...")
        elif isinstance(node, ast.Assign | ast.AnnAssign) and (top or node.col_offset):
            line = lines[node.lineno - 1]
            out.append(line if len(line) <= 100 else line[:97] + "...")
