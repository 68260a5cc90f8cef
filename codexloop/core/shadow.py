"""Modules the model adds that would stand in for what the tests import.

The sandbox's source roots come first on ``PYTHONPATH`` (an editable install must not win over
the sandbox), and pytest puts the test folders first on ``sys.path``. A new ``platform.py`` or
``pytest/`` package there replaces the real one; a new ``*.dist-info`` folder declares entry
points pytest loads as plugins. Pure functions of paths: :class:`~codexloop.core.exam.Exam`
supplies the roots, the snapshot's own names and the interpreter's answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

from codexloop.core.plugins import Installed

# What the test process itself imports: refused whether or not the interpreter said so.
PYTEST_OWN = frozenset({"pytest", "_pytest", "pluggy", "py", "iniconfig", "packaging"})
IMPORTABLE = (".py", ".pyc", ".pyw", ".pyd", ".so")
METADATA = (".dist-info", ".egg-info")


def folder(rel: str | PurePosixPath) -> str:
    """The folder of ``rel`` as a posix path, ``""`` for the root."""
    parent = PurePosixPath(rel).parent.as_posix()
    return "" if parent == "." else parent


def ancestors(rel: str) -> list[str]:
    """Every folder above ``rel``, nearest first, the root (``""``) last."""
    return ["" if p.as_posix() == "." else p.as_posix() for p in PurePosixPath(rel).parents]


def under(rel: str, root: str) -> PurePosixPath | None:
    """``rel`` relative to ``root`` (``""``: the sandbox root), or None if outside it."""
    path = PurePosixPath(rel)
    if not root:
        return path
    try:
        return path.relative_to(root)
    except ValueError:
        return None


def top_name(sub: PurePosixPath) -> str:
    """The top-level name a path under a root occupies (``calc.py``, ``calc/x.py``: calc)."""
    return sub.parts[0].split(".")[0] if sub.parts else ""


def module_name(sub: PurePosixPath) -> str | None:
    """The top-level module an importable file under a root defines, or None: ``x.py`` and
    ``x/anything.py`` define ``x``; a data file or a name that is no identifier defines none.
    A folder without Python files is no module that could win over an installed one."""
    if not sub.parts or not sub.name.endswith(IMPORTABLE):
        return None
    name = top_name(sub)
    return name if name.isidentifier() else None


def metadata_folder(rel: str) -> str | None:
    """The ``*.dist-info`` / ``*.egg-info`` folder ``rel`` lies in (or is), or None."""
    parts = PurePosixPath(rel).parts
    for index, part in enumerate(parts):
        if part.endswith(METADATA):
            return "/".join(parts[: index + 1])
    return None


def snapshot_names(files: Iterable[str], roots: Iterable[str]) -> tuple[frozenset[str], ...]:
    """(top-level names under any root, metadata folders) of the developer's snapshot."""
    roots = tuple(roots)
    names: set[str] = set()
    metadata: set[str] = set()
    for rel in files:
        for root in roots:
            sub = under(rel, root)
            if sub is not None and sub.parts:
                names.add(top_name(sub))
        meta = metadata_folder(rel)
        if meta is not None:
            metadata.add(meta)
    return frozenset(names), frozenset(metadata)


def shadowed(name: str, installed: Installed) -> str | None:
    """What a new top-level module ``name`` would replace, or None."""
    if name in PYTEST_OWN:
        return f"`{name}`, which pytest itself imports"
    if name in installed.stdlib:
        return f"the standard library's `{name}`"
    if name in installed.top_level:
        return f"the installed distribution's module `{name}`"
    return None


def reason(
    rel: str,
    roots: Iterable[str],
    installed: Installed,
    existing: frozenset[str],
    existing_metadata: frozenset[str],
) -> str | None:
    """Why creating or changing ``rel`` would let the sandbox stand in for an installed module
    or plugin, or None. A name the developer's snapshot already has is never refused."""
    meta = metadata_folder(rel)
    if meta is not None and meta not in existing_metadata:
        return (
            f"{meta} is distribution metadata: its entry points are loaded by pytest as "
            "plugins; do not create package metadata"
        )
    for root in roots:
        sub = under(rel, root)
        name = module_name(sub) if sub is not None else None
        if name is None or name in existing:
            continue
        what = shadowed(name, installed)
        if what is not None:
            where = f"{root}/" if root else "the project root"
            return (
                f"a new top-level module `{name}` in {where} (a folder the tests import "
                f"from) would shadow {what}; choose another name"
            )
    return None
