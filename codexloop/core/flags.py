"""Flags on a green change: what code inside the test process could still fake, shown.

Code that runs inside the test process can always lie: an object whose ``__eq__`` returns
True for anything, a trace function that swaps the test's globals, a patch of pytest that
flips only the target's report. None of it can be blocked without breaking honest code, so
the change that went green is scanned for lines that touch test machinery, and each
finding becomes a :class:`Flag` (path, line, reason) the review marks and ``--accept all``
refuses to apply without ``--accept flagged``.

The scanner is pure and fast, and runs nothing it reads. Python files are parsed whole in
their new version with :mod:`ast`, so aliases (``import pytest as p; p.x = ...``), ``from``
imports, ``getattr``, ``__import__``, ``importlib.import_module`` and ``sys.modules[...]``
lookups are followed to the module they name; other files (and Python that does not parse)
go through text rules on their added lines. Only what the change adds is reported: a line
already in the base is not flagged (except an always-true ``__eq__`` the change produced
by deleting its checks, shown where the lines were removed).

Over 400 lines: one rule set read as a whole (the AST checks and the text rules share
what counts as test machinery); split by rule, a reviewer could not see what is checked.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from codexloop.core import pysyntax

MAX_PARSE_BYTES = 2_000_000
"""A Python file larger than this is not parsed (bounded host-side work): it is flagged."""
MAX_TEXT_LINES = 200_000
"""Added lines of one file the text rules read; a file with more is flagged as too large."""


@dataclass(frozen=True, order=True)
class Flag:
    """One added line that touches test machinery; ``line`` 0 is the file as a whole."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.reason}"
            if self.line
            else f"{self.path}: {self.reason}"
        )


# -- the diff ------------------------------------------------------------------------


@dataclass
class FileDiff:
    """What a diff says about one file: its added lines by new line number, and more."""

    path: str
    added: dict[int, str] = field(default_factory=dict)
    anchors: set[int] = field(default_factory=set)  # new-side lines next to removed ones
    binary: bool = False
    new_file: bool = False
    deleted: bool = False
    mode: str = ""  # the new mode when the diff states one (120000: a symbolic link)


_HUNK = re.compile(r"^@@+ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unquote(text: str) -> str:
    """A path as git prints it: C-quoted when it holds special characters."""
    if not (len(text) >= 2 and text.startswith('"') and text.endswith('"')):
        return text
    raw = bytearray()
    body = text[1:-1]
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and i + 3 < len(body) + 1 and body[i + 1 : i + 4].isdigit():
                raw.append(int(body[i + 1 : i + 4], 8) & 0xFF)
                i += 4
                continue
            raw.extend(_ESCAPES.get(nxt, nxt).encode("utf-8", "surrogateescape"))
            i += 2
            continue
        raw.extend(char.encode("utf-8", "surrogateescape"))
        i += 1
    return raw.decode("utf-8", "surrogateescape")


def _strip_prefix(path: str) -> str:
    path = _unquote(path.rstrip("\t"))
    return path[2:] if path[:2] in ("a/", "b/") else path


def _path_of_git_line(rest: str) -> str:
    """The path of ``diff --git a/P b/P`` (no renames: both halves are the same path)."""
    if rest.startswith('"'):
        end = rest.find('" ', 1)
        while end != -1 and rest[end - 1] == "\\":
            end = rest.find('" ', end + 1)
        return _strip_prefix(rest[: end + 1] if end != -1 else rest)
    half = (len(rest) - 1) // 2
    if rest[half : half + 3] == " b/":
        return rest[2:half]
    return _strip_prefix(rest.split(" b/", 1)[0])


def parse_diff(diff: str) -> list[FileDiff]:
    """Each file of a unified diff (git's, or difflib's) with its added lines numbered."""
    files: list[FileDiff] = []
    current: FileDiff | None = None
    old_left = new_left = 0
    new_line = 0
    lines = diff.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if current is not None and (old_left > 0 or new_left > 0):
            if line.startswith("+"):
                current.added[new_line] = line[1:]
                new_line += 1
                new_left -= 1
            elif line.startswith("-"):
                current.anchors.update((new_line - 1, new_line))
                old_left -= 1
            elif line.startswith(" ") or line == "":
                new_line += 1
                old_left -= 1
                new_left -= 1
            # "\ No newline at end of file" and anything odd: no line of either side
            continue
        if line.startswith("diff --git "):
            current = FileDiff(_path_of_git_line(line[len("diff --git ") :]))
            files.append(current)
        elif line.startswith("--- ") and i < len(lines) and lines[i].startswith("+++ "):
            old, new = line[4:], lines[i][4:]
            i += 1
            if current is None or current.added or current.anchors:
                current = FileDiff("")
                files.append(current)
            if new.rstrip("\t") == "/dev/null":
                current.deleted = True
                current.path = current.path or _strip_prefix(old)
            else:
                current.path = _strip_prefix(new.split("\t", 1)[0] if "\t" in new else new)
                if old.rstrip("\t") == "/dev/null":
                    current.new_file = True
        elif current is None:
            continue
        elif line.startswith("new file mode "):
            current.new_file = True
            current.mode = line[len("new file mode ") :].strip()
        elif line.startswith("new mode "):
            current.mode = line[len("new mode ") :].strip()
        elif line.startswith("deleted file mode "):
            current.deleted = True
        elif line.startswith("Binary files ") or line == "GIT binary patch":
            current.binary = True
        elif match := _HUNK.match(line):
            old_left = int(match.group(2)) if match.group(2) is not None else 1
            new_left = int(match.group(4)) if match.group(4) is not None else 1
            new_line = int(match.group(3))
            if new_left == 0:  # lines only removed: after line N of the new side
                current.anchors.update((new_line, new_line + 1))
            old_left = max(old_left, 0)
    return [f for f in files if f.path]


# -- what counts as test machinery ----------------------------------------------------

MACHINERY = frozenset({"pytest", "_pytest", "pluggy"})
# modules whose attributes a change must not overwrite (patches are flagged)
WATCHED = frozenset(sys.stdlib_module_names) | MACHINERY | {"builtins"}
PYTEST_PUBLIC = frozenset(
    {
        "mark", "raises", "fixture", "approx", "param", "skip", "xfail", "fail", "warns",
        "importorskip", "deprecated_call", "MonkeyPatch", "FixtureRequest", "TempPathFactory",
        "CaptureFixture", "LogCaptureFixture", "ExceptionInfo", "RaisesGroup", "RaisesExc",
        "WarningsRecorder", "PytestWarning", "PytestDeprecationWarning", "Cache",
    }
)  # fmt: skip
UNITTEST_PUBLIC = frozenset(
    {
        "mock", "TestCase", "IsolatedAsyncioTestCase", "skip", "skipIf", "skipUnless",
        "expectedFailure", "SkipTest", "main", "addModuleCleanup",
    }
)  # fmt: skip

_TRACE = "sets a trace or profile function (it can change what a test sees)"
_FRAMES = "reads the caller's frames (it can reach into the test's variables)"
_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        (
            "sys.settrace", "sys.setprofile", "sys.monitoring", "threading.settrace",
            "threading.setprofile", "threading.settrace_all_threads",
            "threading.setprofile_all_threads", "_thread.settrace",
        ),
        _TRACE,
    ),
    (
        (
            "sys._getframe", "sys._current_frames", "sys._getframemodulename", "inspect.stack",
            "inspect.currentframe", "inspect.getouterframes", "inspect.getinnerframes",
            "inspect.trace", "traceback.walk_stack", "traceback.walk_tb",
        ),
        _FRAMES,
    ),
    (("os._exit", "posix._exit", "nt._exit", "os.abort"), "ends the process abruptly (os._exit)"),
    (
        ("atexit", "weakref.finalize", "threading._register_atexit"),
        "runs code when the interpreter exits (atexit)",
    ),
    (
        (
            "sys.meta_path", "sys.path_hooks", "sys.path_importer_cache", "importlib.machinery",
            "importlib.abc", "importlib.util.spec_from_file_location",
            "importlib.util.spec_from_loader", "importlib.util.module_from_spec", "runpy",
            "zipimport", "imp",
        ),
        "changes how modules are found or loaded (an import hook)",
    ),
    (
        ("gc.get_referrers", "gc.get_referents", "gc.get_objects"),
        "finds live objects through the garbage collector (gc.get_referrers)",
    ),
    (("ctypes", "_ctypes"), "uses ctypes (it can rewrite the interpreter's memory)"),
    (
        ("types.CodeType", "types.FunctionType", "types.LambdaType", "marshal"),
        "builds functions or code objects by hand",
    ),
    (
        ("builtins.exec", "builtins.eval", "builtins.compile"),
        "runs code built at run time (exec/eval), which no scanner can read",
    ),
    (("builtins.__import__",), "imports a module by a computed name (__import__)"),
    (("sys.addaudithook",), "installs an audit hook"),
)  # fmt: skip

_HOOK_VARS = frozenset({"excepthook", "unraisablehook", "displayhook", "breakpointhook"})
_FRAME_ATTRS = frozenset(
    {
        "f_globals", "f_locals", "f_back", "f_builtins", "f_trace", "tb_frame", "gi_frame",
        "cr_frame", "ag_frame", "__globals__", "__code__", "__builtins__",
    }
)  # fmt: skip
_EQ_LIKE = frozenset({"__eq__", "__le__", "__ge__", "__contains__", "__instancecheck__", "__subclasscheck__"})  # fmt: skip
_NE_LIKE = frozenset({"__ne__", "__lt__", "__gt__"})
_SELF_ONLY = frozenset({"__hash__", "__bool__"})
CONSTANT_DUNDERS = _EQ_LIKE | _NE_LIKE | _SELF_ONLY
_SUSPICIOUS_NAMES = frozenset(
    {
        "__builtins__", "settrace", "setprofile", "_getframe", "f_globals", "f_locals", "f_back",
        "excepthook", "unraisablehook", "get_referrers", "get_referents", "_exit", "meta_path",
        "path_hooks", "__import__", "TestReport", "from_item_and_call", "runtest",
        "pytest_runtest_makereport", "pytest_runtest_protocol", "pytest_pyfunc_call",
        "pytest_runtest_call", "pytest_report_teststatus",
    }
)  # fmt: skip
_STARTUP_FILES = ("conftest.py", "pytest.ini", "pytest.toml", "sitecustomize", "usercustomize")
_MUTATORS = frozenset(
    {"update", "pop", "popitem", "setdefault", "clear", "__setitem__", "__delitem__"}
)
_PATCHERS = frozenset(
    {"patch", "setattr", "delattr", "setitem", "delitem", "object", "dict", "multiple", "setenv"}
)
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+|[A-Za-z_]\w*")
_UNDER_TEST = " in the code under test"
_NAMED_MODULES = MACHINERY | {"atexit", "ctypes", "_ctypes"}  # a string naming one is flagged
_MODULES_REASON = "changes sys.modules (it can swap a module under the test)"

SPECIFIC, GENERIC, NAMED = 0, 1, 2  # how telling a finding is: one reason per line, the best


def is_test_file(path: str) -> bool:
    """A test module or conftest, or a file in a tests folder: pytest's API is at home there."""
    pure = PurePosixPath(path)
    name = pure.name
    if name == "conftest.py" or name.startswith("test_") or name.endswith("_test.py"):
        return True
    return any(part in ("tests", "test", "testing") for part in pure.parts[:-1])


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def judge_name(name: str, test_file: bool) -> str | None:
    """Why using (reading, calling, importing) the dotted ``name`` touches test machinery."""
    for prefixes, reason in _RULES:
        if _under(name, prefixes):
            return reason
    parts = name.split(".")
    root = parts[0]
    if root == "_pytest":
        return "uses pytest's internals (_pytest)"
    if root == "pluggy":
        return "uses pluggy, pytest's plugin machinery"
    if root == "pytest":
        if not test_file:
            return f"uses pytest{_UNDER_TEST}"
        if len(parts) > 1 and parts[1] not in PYTEST_PUBLIC:
            return f"uses pytest's machinery ({'.'.join(parts[:2])})"
    if root == "unittest":
        if not test_file:
            return f"uses unittest{_UNDER_TEST}"
        if len(parts) > 1 and parts[1] not in UNITTEST_PUBLIC:
            return f"uses unittest's internals ({'.'.join(parts[:2])})"
    if len(parts) > 1 and root in ("sys", "os", "threading") and parts[1].startswith("_"):
        return f"uses a private part of {root} ({'.'.join(parts[:2])})"
    if root == "__builtins__":
        return "touches __builtins__"
    return None


def judge_store(name: str) -> str | None:
    """Why writing (or deleting) the dotted ``name`` touches test machinery."""
    parts = name.split(".")
    if len(parts) < 2:
        return "touches __builtins__" if name == "__builtins__" else None
    root = parts[0]
    if root == "__builtins__":
        return "touches __builtins__"
    if root not in WATCHED:
        return None
    if name == "sys.modules" or name.startswith("sys.modules."):
        return _MODULES_REASON
    if root == "sys" and parts[1] in _HOOK_VARS:
        return f"replaces sys.{parts[1]}"
    if root == "builtins":
        return f"changes a builtin ({'.'.join(parts[:2])})"
    if root in MACHINERY:
        return f"patches {root} ({'.'.join(parts[:3])})"
    if root == "unittest":
        return f"patches unittest ({'.'.join(parts[:3])})"
    return f"patches the {root} module ({'.'.join(parts[:3])})"


def judge_string(text: str, test_file: bool, patch_target: bool) -> str | None:
    """Why a string constant names test machinery (dynamic lookups, patch targets, env vars)."""
    if "PYTEST_" in text:
        return "uses a PYTEST_* environment variable"
    if "pytest11" in text:
        return "declares a pytest plugin entry point (pytest11)"
    if "_pytest" in text:
        return "names pytest's internals in a string"
    if "pluggy" in text:
        return "names pluggy, pytest's plugin machinery, in a string"
    if "__builtins__" in text:
        return "touches __builtins__"
    if len(text) <= 200:
        stripped = text.strip()
        if stripped in CONSTANT_DUNDERS:
            return f"names {stripped} in a string (it can be replaced at run time)"
        if stripped in _SUSPICIOUS_NAMES:
            return f"names {stripped} in a string (a dynamic lookup)"
        if any(stripped.endswith(f) for f in _STARTUP_FILES) or stripped.endswith(".pth"):
            return f"names {stripped} (a file Python or pytest loads by itself)"
        single = "." not in stripped
        if _DOTTED.fullmatch(stripped) and not (single and stripped not in _NAMED_MODULES):
            reason = judge_store(stripped) if patch_target else None
            return reason or judge_name(stripped, test_file)
    return None


# -- Python, read with ast -----------------------------------------------------------

_DYNAMIC_BUILTINS = frozenset(
    {"__import__", "getattr", "setattr", "delattr", "vars", "exec", "eval", "compile"}
)


@dataclass(frozen=True)
class _Finding:
    start: int
    end: int
    line: int  # the preferred line to report
    reason: str
    rank: int
    structural: bool = False  # also counts when the change only removed lines inside it


def _names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _bound_names(nodes: Sequence[ast.AST]) -> set[str]:
    """Every name the file binds (so ``eval`` defined locally is not the builtin)."""
    bound: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
    return bound


class _Resolver:
    """Dotted names of expressions, through the file's imports and simple assignments."""

    def __init__(self, nodes: Sequence[ast.AST]) -> None:
        self.aliases: dict[str, set[str]] = {}
        self.bound = _bound_names(nodes)
        assigns: list[tuple[str, ast.expr]] = []
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self._add(alias.asname, alias.name)
                    else:
                        root = alias.name.split(".")[0]
                        self._add(root, root)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                for alias in node.names:
                    if alias.name != "*":
                        self._add(alias.asname or alias.name, f"{node.module}.{alias.name}")
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = node.value
                if value is None:
                    continue
                for target in targets:
                    if isinstance(target, ast.Name):
                        assigns.append((target.id, value))
        for _ in range(3):  # a = b = sys.modules; c = a: a few rounds reach a fixpoint
            changed = False
            for name, value in assigns:
                for dotted in self.resolve_all(value):
                    changed |= self._add(name, dotted)
            if not changed:
                break

    def _add(self, name: str, dotted: str) -> bool:
        known = self.aliases.setdefault(name, set())
        if dotted in known or len(known) >= 8:
            return False
        known.add(dotted)
        return True

    def resolve(self, node: ast.AST) -> str | None:
        found = self.resolve_all(node)
        return min(found) if found else None

    def resolve_all(self, node: ast.AST, depth: int = 0) -> set[str]:
        if depth > 50:
            return set()
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return set(self.aliases[node.id])
            if node.id == "__builtins__":
                return {"__builtins__"}
            if node.id in _DYNAMIC_BUILTINS and node.id not in self.bound:
                return {f"builtins.{node.id}"}
            return set()
        if isinstance(node, ast.Attribute):
            return {f"{b}.{node.attr}" for b in self.resolve_all(node.value, depth + 1)}
        if isinstance(node, ast.Subscript):
            key = _const_str(node.slice)
            if key is not None and "sys.modules" in self.resolve_all(node.value, depth + 1):
                return {key}
            return set()
        if isinstance(node, ast.Call):
            funcs = self.resolve_all(node.func, depth + 1)
            first = node.args[0] if node.args else None
            name = _const_str(first) if first is not None else None
            out: set[str] = set()
            for func in funcs:
                if func in (
                    "builtins.__import__",
                    "importlib.import_module",
                    "importlib.__import__",
                ):
                    if name is not None:
                        fromlist = len(node.args) > 3 or any(
                            k.arg == "fromlist" for k in node.keywords
                        )
                        out.add(
                            name
                            if fromlist or func != "builtins.__import__"
                            else name.split(".")[0]
                        )
                elif func == "builtins.getattr" and len(node.args) >= 2:
                    attr = _const_str(node.args[1])
                    if attr is not None:
                        out |= {f"{b}.{attr}" for b in self.resolve_all(node.args[0], depth + 1)}
                elif func in ("sys.modules.get", "sys.modules.__getitem__") and name is not None:
                    out.add(name)
                elif func == "builtins.vars" and first is not None:
                    out |= {f"{b}.__dict__" for b in self.resolve_all(first, depth + 1)}
            return out
        return set()


def _const_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _index(tree: ast.AST) -> tuple[list[ast.AST], dict[ast.AST, ast.AST]]:
    """Every node (breadth first) and each one's parent: the one walk of the tree."""
    nodes: list[ast.AST] = [tree]
    parents: dict[ast.AST, ast.AST] = {}
    i = 0
    while i < len(nodes):
        node = nodes[i]
        i += 1
        for child in ast.iter_child_nodes(node):
            parents[child] = node
            nodes.append(child)
    return nodes, parents


def _span(node: ast.AST) -> tuple[int, int]:
    start = getattr(node, "lineno", 1)
    return start, getattr(node, "end_lineno", None) or start


def _docstrings(nodes: Sequence[ast.AST]) -> set[ast.AST]:
    """String statements: docstrings and the like, which do nothing."""
    return {
        node.value
        for node in nodes
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


class _PythonScan:
    def __init__(self, tree: ast.Module, path: str) -> None:
        self.tree = tree
        self.test_file = is_test_file(path)
        self.nodes, self.parents = _index(tree)
        self.resolver = _Resolver(self.nodes)
        self.findings: list[_Finding] = []
        self.functions = {
            n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }

    def add(
        self,
        node: ast.AST,
        reason: str,
        rank: int = SPECIFIC,
        line: int | None = None,
        structural: bool = False,
    ) -> None:
        start, end = _span(node)
        self.findings.append(_Finding(start, end, line or start, reason, rank, structural))

    def run(self) -> list[_Finding]:
        skip = _docstrings(self.nodes)
        for node in self.nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._name(node, alias.name)
            elif isinstance(node, ast.ImportFrom):
                if not node.level and node.module:
                    self._name(node, node.module, only_root=True)
                    for alias in node.names:
                        self._name(node, f"{node.module}.{alias.name}")
            elif isinstance(node, ast.Attribute | ast.Name):
                self._reference(node)
            elif isinstance(node, ast.Subscript):
                self._subscript(node)
            elif isinstance(node, ast.Call):
                self._call(node)
            elif isinstance(node, ast.Constant) and node not in skip:
                self._constant(node)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self._function(node)
            elif isinstance(node, ast.ClassDef):
                self._class(node)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == "pytest_plugins":
                        self.add(node, "loads pytest plugins (pytest_plugins)")
        return self.findings

    def _name(self, node: ast.AST, name: str, only_root: bool = False) -> None:
        if only_root and name.split(".")[0] not in MACHINERY | {"unittest", "ctypes", "_ctypes"}:
            return
        if only_root and name.split(".")[0] in ("pytest", "unittest") and self.test_file:
            return  # `from pytest import X` is judged by X
        reason = judge_name(name, self.test_file)
        if reason:
            self.add(node, reason)

    def _reference(self, node: ast.Attribute | ast.Name) -> None:
        parent = self.parents.get(node)
        if isinstance(node, ast.Attribute):
            if node.attr in _FRAME_ATTRS:
                self.add(node, f"reaches into frames or function internals (.{node.attr})")
            if isinstance(node.ctx, ast.Store | ast.Del):
                if node.attr in CONSTANT_DUNDERS:
                    self.add(node, f"replaces {node.attr} at run time")
                elif node.attr == "__class__":
                    self.add(node, "changes an object's class at run time")
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return  # judged as part of the longer name
        if isinstance(node.ctx, ast.Store | ast.Del):
            if isinstance(node, ast.Attribute):
                for dotted in sorted(self.resolver.resolve_all(node)):
                    reason = judge_store(dotted)
                    if reason:
                        self.add(node, reason)
                        break
            return
        for dotted in sorted(self.resolver.resolve_all(node)):
            if dotted.startswith("builtins.") and dotted.split(".")[1] in ("getattr", "vars"):
                continue
            reason = judge_name(dotted, self.test_file)
            if reason:
                generic = dotted == "builtins.__import__" or reason.endswith(_UNDER_TEST)
                self.add(node, reason, GENERIC if generic else SPECIFIC)
                break

    def _subscript(self, node: ast.Subscript) -> None:
        if not isinstance(node.ctx, ast.Store | ast.Del):
            if self.resolver.resolve(node) is not None:
                self._judge_resolved(node)
            return
        for dotted in sorted(self.resolver.resolve_all(node.value)):
            if dotted == "sys.modules":
                self.add(node, _MODULES_REASON)
                return
            owner = dotted.removesuffix(".__dict__")
            if dotted.endswith(".__dict__") or dotted == "__builtins__":
                reason = judge_store(f"{owner}.{_const_str(node.slice) or 'item'}")
                if reason:
                    self.add(node, reason)
                    return

    def _judge_resolved(self, node: ast.AST) -> None:
        parent = self.parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return
        for dotted in sorted(self.resolver.resolve_all(node)):
            reason = judge_name(dotted, self.test_file)
            if reason:
                self.add(node, reason)
                return

    def _call(self, node: ast.Call) -> None:
        self._judge_resolved(node)
        funcs = self.resolver.resolve_all(node.func)
        first = node.args[0] if node.args else None
        for func in sorted(funcs):
            if func in ("builtins.setattr", "builtins.delattr") and first is not None:
                attr = _const_str(node.args[1]) if len(node.args) > 1 else None
                if attr in CONSTANT_DUNDERS:
                    self.add(node, f"replaces {attr} at run time")
                    return
                for owner in sorted(self.resolver.resolve_all(first)):
                    if attr is None and owner.split(".")[0] in WATCHED | {"__builtins__"}:
                        self.add(node, f"patches {owner} by a computed name")
                        return
                    reason = judge_store(f"{owner}.{attr}")
                    if reason:
                        self.add(node, reason)
                        return
            elif func == "builtins.getattr" and first is not None and len(node.args) > 1:
                if _const_str(node.args[1]) is None:
                    for owner in sorted(self.resolver.resolve_all(first)):
                        if owner.split(".")[0] in WATCHED | {"__builtins__"}:
                            self.add(node, f"looks up part of {owner} by a computed name", GENERIC)
                            return
            elif func in ("importlib.import_module", "builtins.__import__") and first is not None:
                if _const_str(first) is None:
                    self.add(node, "imports a module by a computed name", GENERIC)
                    return
            elif func.rpartition(".")[2] in _MUTATORS:
                owner = func.rpartition(".")[0]
                if owner == "sys.modules":
                    self.add(node, _MODULES_REASON)
                    return
                if owner.endswith(".__dict__"):
                    reason = judge_store(owner.removesuffix(".__dict__") + ".item")
                    if reason:
                        self.add(node, reason)
                        return

    def _constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str):
            return
        parent = self.parents.get(node)
        patch_target = False
        if isinstance(parent, ast.Call):
            func = parent.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            patch_target = name in _PATCHERS
        reason = judge_string(value, self.test_file, patch_target)
        if reason:
            telling = any(word in value for word in ("_pytest", "pluggy", "PYTEST_", "pytest11"))
            self.add(node, reason, SPECIFIC if telling else NAMED)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        name = node.name
        if name.startswith("pytest_") and not (self.test_file and name == "pytest_generate_tests"):
            self.add(node, f"defines a pytest hook ({name})", line=node.lineno)

    def _class(self, node: ast.ClassDef) -> None:
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                if item.name in CONSTANT_DUNDERS:
                    self._dunder(item.name, item, item)
            elif isinstance(item, ast.Assign | ast.AnnAssign):
                targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in CONSTANT_DUNDERS:
                        self._dunder_value(target.id, item)

    def _dunder_value(self, name: str, item: ast.Assign | ast.AnnAssign) -> None:
        value = item.value
        if isinstance(value, ast.Lambda):
            self._dunder(name, value, item)
        elif isinstance(value, ast.Name) and value.id in self.functions:
            self._dunder(name, self.functions[value.id], item)
        elif isinstance(value, ast.Constant) and value.value is not None:
            self.add(item, f"{name} is set to a constant", structural=True)

    def _dunder(
        self, name: str, fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, where: ast.AST
    ) -> None:
        verdict = _constant_dunder(name, fn)
        if verdict is None:
            return
        reason, line = verdict
        if where is fn or isinstance(fn, ast.Lambda):
            start, end = _span(where)
            self.findings.append(_Finding(start, end, line or start, reason, SPECIFIC, True))
            return
        for node, preferred in ((where, None), (fn, line)):  # the binding, and the function
            start, end = _span(node)
            self.findings.append(_Finding(start, end, preferred or start, reason, SPECIFIC, True))


def _walk_own(fn: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's body, not those of functions or classes nested in it."""
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            todo.extend(ast.iter_child_nodes(node))


def _tainted(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, params: set[str]) -> set[str]:
    """Names whose value depends on ``params`` (a few rounds of simple data flow)."""
    tainted = set(params)
    flows: list[tuple[set[str], set[str]]] = []
    for node in _walk_own(fn):
        if isinstance(node, ast.Assign):
            flows.append(
                (_names_in(node.value), set().union(*(_names_in(t) for t in node.targets)))
            )
        elif isinstance(node, ast.AugAssign | ast.AnnAssign | ast.NamedExpr) and node.value:
            flows.append((_names_in(node.value), _names_in(node.target)))
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            flows.append((_names_in(node.iter), _names_in(node.target)))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            flows.append((_names_in(node.context_expr), _names_in(node.optional_vars)))
    for _ in range(5):
        before = len(tainted)
        for sources, targets in flows:
            if sources & tainted:
                tainted |= targets
        if len(tainted) == before:
            break
    return tainted


def _constant_dunder(
    name: str, fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
) -> tuple[str, int | None] | None:
    """Why a comparison/hash/truth method does not depend on its operands (None: it does)."""
    args = fn.args
    positional = [a.arg for a in [*args.posonlyargs, *args.args]]
    varargs = {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    operands = set(positional[:1] if name in _SELF_ONLY else positional[1:2]) | varargs
    if isinstance(fn, ast.Lambda):
        returns: list[tuple[ast.expr, ast.AST]] = [(fn.body, fn)]
    else:
        returns = [(n.value, n) for n in _walk_own(fn) if isinstance(n, ast.Return) and n.value]
    deciding = [
        (value, node)
        for value, node in returns
        if not (isinstance(value, ast.Name) and value.id == "NotImplemented")
    ]
    if not deciding:
        return None
    tainted = _tainted(fn, operands)
    guarded = _guarded_returns(fn, tainted) if not isinstance(fn, ast.Lambda) else set()
    depends = [node for value, node in deciding if _names_in(value) & tainted or node in guarded]
    first_line = getattr(deciding[0][1], "lineno", None)
    what = "what it compares" if name not in _SELF_ONLY else "the object"
    if not depends:
        constant = all(_is_constant(v) for v, _ in deciding)
        if constant:
            return f"{name} returns a constant (it ignores {what})", first_line
        return f"{name} does not depend on {what}", first_line
    dangerous = True if name in _EQ_LIKE else False if name in _NE_LIKE else None
    if dangerous is None:
        return None
    loose = [node for value, node in deciding if _truth(value) is dangerous and node not in guarded]
    answers_other_way = any(
        _truth(v) is (not dangerous) or (isinstance(v, ast.Name) and v.id == "NotImplemented")
        for v, _ in returns
    )
    if loose and not answers_other_way:
        verdict = "True" if dangerous else "False"
        return (
            f"{name} returns {verdict} for anything it does not recognise",
            getattr(loose[0], "lineno", None),
        )
    return None


def _is_constant(node: ast.expr) -> bool:
    return not _names_in(node) - {"True", "False", "None", "bool", "int"} and not any(
        isinstance(n, ast.Attribute | ast.Call)
        and not (isinstance(n, ast.Call) and _is_call_of_constant(n))
        for n in ast.walk(node)
    )


def _is_call_of_constant(node: ast.Call) -> bool:
    return isinstance(node.func, ast.Name) and node.func.id in ("bool", "int")


def _truth(node: ast.expr) -> bool | None:
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _truth(node.operand)
        return None if inner is None else not inner
    return None


def _guarded_returns(fn: ast.AST, tainted: set[str]) -> set[ast.AST]:
    """Returns directly under a test (if/while/match/except) that depends on ``tainted``."""
    guarded: set[ast.AST] = set()
    for node in _walk_own(fn):
        test: ast.AST | None = None
        bodies: list[list[ast.stmt]] = []
        if isinstance(node, ast.If | ast.While):
            test, bodies = node.test, [node.body, node.orelse]
        elif isinstance(node, ast.Match):
            test, bodies = node.subject, [c.body for c in node.cases]
        elif isinstance(node, ast.Try):
            test, bodies = node, [h.body for h in node.handlers]
        if test is None or not (_names_in(test) & tainted):
            continue
        for body in bodies:
            guarded.update(s for s in body if isinstance(s, ast.Return))
    return guarded


def scan_python(
    path: str, source: bytes | str, touched: set[int], removed: set[int]
) -> list[Flag] | None:
    """Findings of one Python file on ``touched`` lines (None: it does not parse)."""
    try:
        tree = pysyntax.parse(source, filename=path, type_comments=False)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    try:
        findings = _PythonScan(tree, path).run()
    except RecursionError:
        return None
    flags: list[tuple[int, int, str]] = []
    for f in findings:
        lines = touched | removed if f.structural else touched
        if f.line in lines:
            flags.append((f.line, f.rank, f.reason))
            continue
        inside = [n for n in lines if f.start <= n <= f.end]
        if inside:
            flags.append((min(inside), f.rank, f.reason))
    return _best_per_line(path, flags)


def _best_per_line(path: str, found: Iterable[tuple[int, int, str]]) -> list[Flag]:
    best: dict[int, tuple[int, str]] = {}
    for line, rank, reason in found:
        if line not in best or rank < best[line][0]:
            best[line] = (rank, reason)
    return [Flag(path, line, reason) for line, (_rank, reason) in sorted(best.items())]


# -- other files: text rules --------------------------------------------------------

_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"junit|<testcase|<testsuite|testsuites|codexloop", re.IGNORECASE),
        "names the test report or the engine's own tests",
    ),
    (re.compile(r"PYTEST_[A-Z_]*"), "uses a PYTEST_* environment variable"),
    (re.compile(r"pytest11"), "declares a pytest plugin entry point (pytest11)"),
    (re.compile(r"\b_pytest\b"), "names pytest's internals (_pytest)"),
    (re.compile(r"\bpluggy\b"), "names pluggy, pytest's plugin machinery"),
    (re.compile(r"\b(sitecustomize|usercustomize)\b"), "names a module Python runs at start-up"),
)
# Code under test has no business with the test report or the engine's canary tests: reading
# or rewriting the JUnit report from inside the test process (a thread that edits it after
# pytest wrote it) is one of the lies no outside check can see.
_REPORT = re.compile(r"junit|<testcase|<testsuite|testsuites|codexloop", re.IGNORECASE)
_REPORT_REASON = "names the test report or the engine's own tests"


def _report_lines(diff: FileDiff, touched: Iterable[int]) -> list[tuple[int, int, str]]:
    return [(n, SPECIFIC, _REPORT_REASON) for n in touched if _REPORT.search(diff.added[n])]


_PY_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(set|get)?(settrace|setprofile)\b|sys\.monitoring"), _TRACE),
    (re.compile(r"\bos\._exit\b|\b_exit\s*\("), "ends the process abruptly (os._exit)"),
    (re.compile(r"\batexit\b"), "runs code when the interpreter exits (atexit)"),
    (re.compile(r"sys\.modules"), _MODULES_REASON),
    (re.compile(r"__builtins__|\bbuiltins\b"), "touches builtins"),
    (re.compile(r"excepthook"), "replaces sys.excepthook"),
    (re.compile(r"_getframe|inspect\.(stack|currentframe)|\bf_(globals|locals|back)\b"), _FRAMES),
    (re.compile(r"gc\.get_referr"), "finds live objects through the garbage collector"),
    (
        re.compile(
            r"def\s+__(eq|ne|hash|bool)__|__(eq|ne|hash|bool)__\s*=|lambda\s*\*\w*\s*:\s*(True|False)"
        ),
        "redefines equality, hashing or truth",
    ),
    (re.compile(r"\bpytest\b"), "uses pytest"),
)
_PYTEST_CONFIG = frozenset({"pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml"})
_SECTIONED = frozenset({"pyproject.toml", "setup.cfg", "tox.ini"})
_SECTION = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
COMPILED = (".so", ".pyd", ".pyc", ".pyo", ".dll", ".dylib", ".whl", ".egg")


def _section_reason(section: str) -> str | None:
    name = section.strip().strip('"').lower()
    if name in ("pytest", "tool:pytest") or name.startswith("tool.pytest"):
        return "changes pytest's configuration"
    if "entry_points" in name or "entry-points" in name or name.startswith("tool.poetry.plugins"):
        return "declares entry points (pytest loads plugins from them)"
    return None


def _sections(text: str) -> dict[int, str]:
    """The section each line of an ini or toml file belongs to."""
    section = ""
    out: dict[int, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        match = _SECTION.match(line)
        if match:
            section = match.group(1)
        out[number] = section
    return out


# Files in the tree that steer git on the developer's machine once the change is theirs.
_GIT_CONTROL = {
    ".gitattributes": "changes .gitattributes (which filters and drivers of your git "
    "configuration run on which files: git-lfs, git-crypt)",
    ".lfsconfig": "changes .lfsconfig (where git-lfs fetches and pushes, with your credentials)",
    ".gitmodules": "changes .gitmodules (where submodules are cloned from)",
}


def _file_reason(diff: FileDiff) -> str | None:
    """A reason that holds for the file as a whole, from its name, mode or kind."""
    pure = PurePosixPath(diff.path)
    name = pure.name
    parts = pure.parts
    if diff.mode == "120000":
        return "adds a symbolic link"
    if diff.mode == "160000":
        return "adds a nested repository (a submodule)"
    if any(p.endswith((".dist-info", ".egg-info")) for p in parts[:-1]) or name.endswith(
        (".egg-info", ".egg-link")
    ):
        return "adds package metadata (pytest loads plugins from its entry points)"
    if name == "entry_points.txt":
        return "declares entry points (pytest loads plugins from them)"
    if name.endswith(".pth"):
        return "adds a .pth file (Python runs its import lines at start-up)"
    if name.lower().endswith(COMPILED):
        return "adds compiled code (it cannot be reviewed)"
    if diff.binary:
        return "adds a binary file (it cannot be reviewed)"
    if name in _GIT_CONTROL:
        return _GIT_CONTROL[name]
    if name in ("sitecustomize.py", "usercustomize.py"):
        return f"adds {name} (Python runs it at start-up)"
    if name == "conftest.py":
        return "changes a conftest.py (pytest loads it by itself)"
    if name in _PYTEST_CONFIG:
        return "changes pytest's configuration"
    if any(p in MACHINERY for p in parts[:-1]) or (
        pure.stem in MACHINERY | {"py"} and name.endswith(".py")
    ):
        return "adds a module named like pytest's own (it can shadow the real one)"
    top_level = len(parts) == 1 or (len(parts) == 2 and parts[0] in ("src", "lib"))
    if (
        diff.new_file
        and top_level
        and name.endswith(".py")
        and pure.stem in sys.stdlib_module_names
    ):
        return f"adds a module named like the standard library's {pure.stem} (it can shadow it)"
    return None


def _is_python(path: str, content: bytes | None) -> bool:
    if path.endswith((".py", ".pyi", ".pyw")):
        return True
    return bool(content and content.startswith(b"#!") and b"python" in content.split(b"\n", 1)[0])


def scan_file_diff(diff: FileDiff, content: bytes | None) -> list[Flag]:
    """Flags of one file of a change; ``content``: its new version, when known."""
    if diff.deleted:
        return []
    touched = set(diff.added)
    first = min(touched, default=0)
    found: list[tuple[int, int, str]] = []
    whole = _file_reason(diff)
    if whole:
        found.append((first, SPECIFIC, whole))
    if diff.binary or diff.mode in ("120000", "160000"):
        return _best_per_line(diff.path, found)
    if content is None and diff.new_file and touched == set(range(1, len(touched) + 1)):
        content = "\n".join(diff.added[n] for n in sorted(touched)).encode(
            "utf-8", "surrogateescape"
        )
    if _is_python(diff.path, content) and content is not None:
        if len(content) > MAX_PARSE_BYTES:
            found.append((first, SPECIFIC, "is too large to check for test-machinery tricks"))
        else:
            flags = scan_python(diff.path, content, touched, diff.anchors)
            if flags is not None:
                found.extend((f.line, GENERIC, f.reason) for f in flags)
                found.extend(_report_lines(diff, touched))
                return _best_per_line(diff.path, found)
    if len(touched) > MAX_TEXT_LINES:
        found.append((first, SPECIFIC, "is too large to check for test-machinery tricks"))
        return _best_per_line(diff.path, found)
    rules = _TEXT_RULES
    if _is_python(diff.path, content):
        rules = _TEXT_RULES + _PY_TEXT_RULES
    name = PurePosixPath(diff.path).name
    sections = (
        _sections(content.decode("utf-8", "replace")) if content and name in _SECTIONED else {}
    )
    for number in sorted(touched):
        text = diff.added[number]
        if name in _SECTIONED:
            section = sections.get(number)
            if section is None:  # no content: the line itself may be a section header
                match = _SECTION.match(text)
                section = match.group(1) if match else ""
            reason = _section_reason(section)
            if reason:
                found.append((number, SPECIFIC, reason))
                continue
        for pattern, reason in rules:
            if pattern.search(text):
                if reason == "uses pytest" and is_test_file(diff.path):
                    continue
                found.append((number, GENERIC, reason))
                break
    return _best_per_line(diff.path, found)


def scan_diff(diff: str, read: Callable[[str], bytes | None] | None = None) -> list[Flag]:
    """Flags of a whole change, from its unified diff; ``read(path)`` gives new versions."""
    flags: list[Flag] = []
    for file in parse_diff(diff):
        if file.deleted:
            continue
        content = None
        if (
            read is not None
            and not file.binary
            and (
                _is_python(file.path, None)
                or PurePosixPath(file.path).name in _SECTIONED
                or (file.added and file.added.get(1, "").startswith("#!"))
            )
        ):
            content = read(file.path)
        flags.extend(scan_file_diff(file, content))
    return flags


def scan_source(path: str, source: str, added: Iterable[int] | None = None) -> list[Flag]:
    """Flags of one file given whole; ``added``: its added line numbers (None: all of them)."""
    lines = source.split("\n")
    numbers = set(range(1, len(lines) + 1)) if added is None else set(added)
    diff = FileDiff(
        path, {n: lines[n - 1] for n in numbers if 0 < n <= len(lines)}, new_file=added is None
    )
    return scan_file_diff(diff, source.encode("utf-8", "surrogateescape"))


def scan_added(items: Iterable[tuple[str, Mapping[int, str]]]) -> list[Flag]:
    """Flags from (path, {line number: added text}) alone: text rules, and ast where whole."""
    flags: list[Flag] = []
    for path, added in items:
        numbers = set(added)
        whole = numbers == set(range(1, len(numbers) + 1))
        flags.extend(scan_file_diff(FileDiff(path, dict(added), new_file=whole), None))
    return flags


def for_commit(repo: Path, base: str, head: str, leave_out: Sequence[str] = ()) -> list[Flag]:
    """Flags of ``base..head`` in ``repo`` (blocking: git runs; call it from a worker thread).

    ``leave_out``: paths not to scan (the exam, which only the developer changes).
    """
    from codexloop.core import gitops
    from codexloop.core.diff import commits_diff

    options = ["--no-textconv", "--no-renames", "--unified=0", "--src-prefix=a/", "--dst-prefix=b/"]
    text = commits_diff(repo, base, head, options, leave_out)
    return scan_diff(text, lambda path: gitops.read_blob(repo, head, path))
