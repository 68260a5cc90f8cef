"""The scanner of green changes: each trick of in-process code is flagged on its line."""

from __future__ import annotations

import difflib
import textwrap

import pytest
from conftest import run_git

from codexloop.core import gitops
from codexloop.core.flags import Flag, for_commit, parse_diff, scan_added, scan_diff, scan_source


def lines_flagged(source: str, path: str = "calc.py") -> dict[int, str]:
    """{line: reason} for a new file."""
    return {f.line: f.reason for f in scan_source(path, textwrap.dedent(source).lstrip("\n"))}


def changed(old: str, new: str, path: str = "calc.py") -> list[Flag]:
    """Flags of a change from ``old`` to ``new`` (a git-like unified diff and the new file)."""
    old, new = textwrap.dedent(old).lstrip("\n"), textwrap.dedent(new).lstrip("\n")
    diff = "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            f"a/{path}",
            f"b/{path}",
        )
    )
    return scan_diff(diff, lambda p: new.encode() if p == path else None)


# Each trick, as a model would write it, flagged on the line that does it.
TRICKS = [
    (
        "always-equal class",
        """
        class Five:
            def __eq__(self, other):
                return True

        def add(a, b):
            return Five()
        """,
        3,
        "__eq__ returns a constant",
    ),
    (
        "always-equal lambda",
        """
        class Any:
            __eq__ = lambda *a: True
        """,
        2,
        "__eq__ returns a constant",
    ),
    (
        "lambda with named arguments",
        """
        class Any:
            __eq__ = lambda self, other: not False
        """,
        2,
        "__eq__ returns a constant",
    ),
    (
        "equal to anything unrecognised",
        """
        class Sneaky:
            def __init__(self, x):
                self.x = x

            def __eq__(self, other):
                if isinstance(other, Sneaky):
                    return self.x == other.x
                return True
        """,
        8,
        "__eq__ returns True for anything",
    ),
    (
        "ignores the other side",
        """
        class Same:
            def __eq__(self, other):
                return self is self
        """,
        3,
        "__eq__ does not depend on what it compares",
    ),
    (
        "__ne__ constant",
        """
        class N:
            def __ne__(self, other):
                return False
        """,
        3,
        "__ne__ returns a constant",
    ),
    (
        "__hash__ constant",
        """
        class H:
            def __hash__(self):
                return 1
        """,
        3,
        "__hash__ returns a constant",
    ),
    (
        "__bool__ constant",
        """
        class B:
            def __bool__(self):
                return True
        """,
        3,
        "__bool__ returns a constant",
    ),
    (
        "__eq__ through a module function",
        """
        def always(a, b):
            return True

        class A:
            __eq__ = always
        """,
        5,
        "__eq__ returns a constant",
    ),
    (
        "__eq__ in a type() dict",
        """
        Any = type("Any", (), {"__eq__": lambda s, o: True})
        """,
        1,
        "__eq__",
    ),
    (
        "__eq__ set on a class at run time",
        """
        import calc
        calc.Result.__eq__ = calc.anything
        """,
        2,
        "replaces __eq__ at run time",
    ),
    (
        "pytest aliased and patched",
        """
        import pytest as p

        def add(a, b):
            return a - b

        p.approx = lambda *a, **k: a[0]
        """,
        6,
        "patches pytest",
    ),
    (
        "_pytest imported",
        """
        from _pytest import runner
        """,
        1,
        "pytest's internals",
    ),
    (
        "_pytest patched through a from-import",
        """
        def add(a, b):
            return a - b
        from _pytest import runner as r
        r.call_and_report = None
        """,
        4,
        "patches _pytest",
    ),
    (
        "getattr of __import__",
        """
        def add(a, b):
            return a - b
        getattr(__import__('pytest'), 'main')
        """,
        3,
        "pytest",
    ),
    (
        "importlib.import_module of _pytest",
        """
        import importlib
        reports = importlib.import_module("_pytest.reports")
        """,
        2,
        "_pytest",
    ),
    (
        "pluggy",
        """
        import pluggy
        """,
        1,
        "pluggy",
    ),
    (
        "pytest imported in the code under test",
        """
        def add(a, b):
            return a - b
        import pytest
        """,
        3,
        "uses pytest in the code under test",
    ),
    (
        "sys.settrace",
        """
        import sys
        def tracer(frame, event, arg):
            return tracer
        sys.settrace(tracer)
        """,
        4,
        "trace or profile",
    ),
    (
        "settrace from-imported under another name",
        """
        from sys import settrace as st
        def go():
            st(None)
        """,
        1,
        "trace or profile",
    ),
    (
        "sys.setprofile via an alias of sys",
        """
        import sys as s
        s.setprofile(lambda *a: None)
        """,
        2,
        "trace or profile",
    ),
    (
        "threading.settrace",
        """
        import threading
        threading.settrace(print)
        """,
        2,
        "trace or profile",
    ),
    (
        "getattr(sys, 'settrace')",
        """
        import sys
        getattr(sys, "settrace")(None)
        """,
        2,
        "trace or profile",
    ),
    (
        "os._exit",
        """
        import os
        os._exit(0)
        """,
        2,
        "os._exit",
    ),
    (
        "atexit",
        """
        import atexit
        """,
        1,
        "atexit",
    ),
    (
        "atexit.register",
        """
        import atexit as ae
        def add(a, b):
            return a - b
        ae.register(print)
        """,
        4,
        "atexit",
    ),
    (
        "sys.modules written",
        """
        import sys
        sys.modules["calc"] = object()
        """,
        2,
        "sys.modules",
    ),
    (
        "sys.modules through an alias",
        """
        import sys
        mods = sys.modules
        mods.update({"calc": None})
        """,
        3,
        "sys.modules",
    ),
    (
        "sys.modules entry deleted",
        """
        from sys import modules
        del modules["calc"]
        """,
        2,
        "sys.modules",
    ),
    (
        "builtins patched",
        """
        import builtins
        builtins.len = lambda x: 5
        """,
        2,
        "builtin",
    ),
    (
        "__builtins__",
        """
        __builtins__["abs"] = lambda x: 5
        """,
        1,
        "__builtins__",
    ),
    (
        "sys.excepthook",
        """
        import sys
        sys.excepthook = lambda *a: None
        """,
        2,
        "replaces sys.excepthook",
    ),
    (
        "PYTEST_ variables",
        """
        import os
        os.environ["PYTEST_ADDOPTS"] = "-p no:cacheprovider"
        """,
        2,
        "PYTEST_",
    ),
    (
        "inspect.stack",
        """
        import inspect
        def add(a, b):
            caller = inspect.stack()[1]
            return 5
        """,
        3,
        "frames",
    ),
    (
        "sys._getframe",
        """
        import sys
        def add(a, b):
            sys._getframe(1).f_globals["add"] = None
            return 5
        """,
        3,
        "frames",
    ),
    (
        "frame globals through a traceback",
        """
        def add(a, b):
            try:
                raise ValueError
            except ValueError as exc:
                exc.__traceback__.tb_frame.f_back.f_globals["expected"] = 1
        """,
        5,
        "frames",
    ),
    (
        "gc.get_referrers",
        """
        import gc
        def add(a, b):
            return gc.get_referrers(add)
        """,
        3,
        "garbage collector",
    ),
    (
        "pytest hook defined",
        """
        def pytest_runtest_makereport(item, call):
            pass
        """,
        1,
        "pytest hook",
    ),
    (
        "unittest.mock.ANY returned",
        """
        from unittest.mock import ANY
        def add(a, b):
            return ANY
        """,
        1,
        "unittest",
    ),
    (
        "patch target in a string",
        """
        from unittest import mock
        mock.patch("_pytest.runner.call_and_report").start()
        """,
        2,
        "pytest's internals",
    ),
    (
        "exec of built code",
        """
        exec("impo" + "rt pytest")
        """,
        1,
        "run time",
    ),
    (
        "import by a computed name",
        """
        import importlib
        name = "py" + "test"
        importlib.import_module(name).exit()
        """,
        3,
        "computed name",
    ),
    (
        "sys.meta_path",
        """
        import sys
        sys.meta_path.insert(0, object())
        """,
        2,
        "import hook",
    ),
    (
        "ctypes",
        """
        import ctypes
        """,
        1,
        "ctypes",
    ),
    (
        "function globals swapped",
        """
        def add(a, b):
            return a - b
        add.__globals__["x"] = 1
        """,
        3,
        "__globals__",
    ),
]


@pytest.mark.parametrize(
    ("source", "line", "needle"), [t[1:] for t in TRICKS], ids=[t[0] for t in TRICKS]
)
def test_each_trick_is_flagged_on_its_line(source: str, line: int, needle: str) -> None:
    found = lines_flagged(source)
    assert line in found, found
    assert needle in found[line]
    reason = found[line]
    assert reason and "\n" not in reason and len(reason) < 100  # one short plain sentence


INNOCENT = [
    (
        "equality comparing fields",
        """
        from dataclasses import dataclass

        class Money:
            def __init__(self, amount, currency):
                self.amount = amount
                self.currency = currency

            def __eq__(self, other):
                if not isinstance(other, Money):
                    return NotImplemented
                return (self.amount, self.currency) == (other.amount, other.currency)

            def __ne__(self, other):
                return not self == other

            def __hash__(self):
                return hash((self.amount, self.currency))

            def __bool__(self):
                return self.amount != 0
        """,
    ),
    (
        "equality checked field by field",
        """
        class Point:
            def __eq__(self, other):
                if self is other:
                    return True
                if type(other) is not Point:
                    return False
                if self.x != other.x:
                    return False
                return True

            def __lt__(self, other):
                result = (self.x, self.y) < (other.x, other.y)
                return result
        """,
    ),
    (
        "ordinary imports and code",
        """
        import os
        import sys
        import json
        from collections import OrderedDict

        def add(a, b):
            \"\"\"Add two numbers; tested with pytest.\"\"\"
            print(sys.argv, os.getcwd(), json.dumps(OrderedDict()), Path("x"))
            return a + b
        """,
    ),
    (
        "hash is None",
        """
        class Mutable:
            __hash__ = None
        """,
    ),
]


@pytest.mark.parametrize("source", [t[1] for t in INNOCENT], ids=[t[0] for t in INNOCENT])
def test_innocent_code_is_not_flagged(source: str) -> None:
    assert lines_flagged(source) == {}


def test_a_test_file_may_use_pytest_and_mock() -> None:
    source = """
    import pytest
    from unittest import mock
    from calc import add

    @pytest.mark.parametrize("a", [1, 2])
    def test_add(a, monkeypatch):
        with pytest.raises(TypeError):
            add(a, None)
        with mock.patch("calc.helper"):
            assert add(a, 1) == pytest.approx(a + 1)
    """
    assert lines_flagged(source, "tests/test_more.py") == {}
    hacked = textwrap.dedent(source) + "pytest.main = None\n"
    assert list(lines_flagged(hacked, "tests/test_more.py")) == [11]
    assert "patches pytest" in lines_flagged(hacked, "tests/test_more.py")[11]


def test_only_lines_the_change_adds_are_flagged() -> None:
    old = """
    import sys
    import atexit

    def add(a, b):
        return a - b
    """
    new = """
    import sys
    import atexit

    def add(a, b):
        sys.settrace(None)
        return a + b
    """
    assert [(f.line, "trace" in f.reason) for f in changed(old, new)] == [(5, True)]


def test_an_alias_from_the_base_still_counts() -> None:
    old = """
    import pytest as p

    def add(a, b):
        return a - b
    """
    new = textwrap.dedent(old) + "\np.fail = print\n"
    flags = changed(old, new)
    assert [f.line for f in flags] == [6]
    assert "patches pytest" in flags[0].reason


def test_deleting_the_checks_of_an_eq_is_flagged() -> None:
    old = """
    class Result:
        def __eq__(self, other):
            if self.value != other.value:
                return False
            return True
    """
    new = """
    class Result:
        def __eq__(self, other):
            return True
    """
    flags = changed(old, new)
    assert flags and "__eq__" in flags[0].reason


def test_metadata_config_and_compiled_files_are_flagged() -> None:
    diff = textwrap.dedent(
        """\
        diff --git a/src/evil.dist-info/entry_points.txt b/src/evil.dist-info/entry_points.txt
        new file mode 100644
        --- /dev/null
        +++ b/src/evil.dist-info/entry_points.txt
        @@ -0,0 +1,2 @@
        +[pytest11]
        +evil = evil_plugin
        diff --git a/setup.cfg b/setup.cfg
        --- a/setup.cfg
        +++ b/setup.cfg
        @@ -3,0 +4,2 @@
        +[options.entry_points]
        +pytest11 = evil = evil_plugin
        diff --git a/pyproject.toml b/pyproject.toml
        --- a/pyproject.toml
        +++ b/pyproject.toml
        @@ -1,0 +2 @@
        +addopts = "-p evil"
        diff --git a/calc.cpython-311-x86_64-linux-gnu.so b/calc.cpython-311-x86_64-linux-gnu.so
        new file mode 100644
        Binary files /dev/null and b/calc.cpython-311-x86_64-linux-gnu.so differ
        diff --git a/__pycache__/calc.cpython-311.pyc b/__pycache__/calc.cpython-311.pyc
        new file mode 100644
        Binary files /dev/null and b/__pycache__/calc.cpython-311.pyc differ
        diff --git a/run.sh b/run.sh
        --- a/run.sh
        +++ b/run.sh
        @@ -1,0 +2 @@
        +export PYTEST_DISABLE_PLUGIN_AUTOLOAD=0
        diff --git a/src/zz.pth b/src/zz.pth
        new file mode 100644
        --- /dev/null
        +++ b/src/zz.pth
        @@ -0,0 +1 @@
        +import os
        """
    )
    pyproject = b"[tool.pytest.ini_options]\naddopts = '-p evil'\n"
    flags = scan_diff(diff, lambda p: pyproject if p == "pyproject.toml" else None)
    found = {(f.path, f.line): f.reason for f in flags}
    assert "package metadata" in found[("src/evil.dist-info/entry_points.txt", 1)]
    assert "entry points" in found[("setup.cfg", 4)]
    assert "entry point" in found[("setup.cfg", 5)]
    assert "pytest's configuration" in found[("pyproject.toml", 2)]
    assert "compiled" in found[("calc.cpython-311-x86_64-linux-gnu.so", 0)]
    assert "compiled" in found[("__pycache__/calc.cpython-311.pyc", 0)]
    assert "PYTEST_" in found[("run.sh", 2)]
    assert ".pth" in found[("src/zz.pth", 1)]


@pytest.mark.parametrize(
    ("path", "line", "needle"),
    [
        (".gitattributes", "* filter=lfs diff=lfs merge=lfs -text", "filters"),
        ("assets/.gitattributes", "*.bin filter=crypt", "filters"),
        (".lfsconfig", "[lfs]\n\turl = https://example.invalid/lfs", "git-lfs"),
        (".gitmodules", '[submodule "x"]\n\turl = https://example.invalid/x', "submodules"),
    ],
)
def test_files_that_steer_the_developers_git_are_flagged(path: str, line: str, needle: str) -> None:
    """Accepted, they would steer the developer's git (filters run on checkout, where git-lfs
    fetches with their credentials, where submodules come from): shown for review."""
    flags = changed("", line + "\n", path)
    assert flags and all(f.path == path for f in flags)
    assert needle in flags[0].reason


def test_text_rules_for_python_that_does_not_parse() -> None:
    flags = scan_added([("calc.py", {7: "    sys.settrace(tracer", 8: "def add(a, b):"})])
    assert [(f.line, "trace" in f.reason) for f in flags] == [(7, True)]


def test_a_conftest_and_a_shadowing_module_are_flagged() -> None:
    assert 1 in lines_flagged("import os\n", "sub/conftest.py")
    assert "shadow" in lines_flagged("x = 1\n", "src/pytest.py")[1]
    assert "shadow" in lines_flagged("x = 1\n", "platform.py")[1]


def test_parse_diff_numbers_added_lines_and_quoted_paths() -> None:
    diff = (
        'diff --git "a/sp ace\\303\\251.py" "b/sp ace\\303\\251.py"\n'
        '--- "a/sp ace\\303\\251.py"\n'
        '+++ "b/sp ace\\303\\251.py"\n'
        "@@ -1,2 +1,3 @@\n"
        " keep\n"
        "-old\n"
        "+new\n"
        "++++ plus\n"
    )
    (file,) = parse_diff(diff)
    assert file.path == "sp aceé.py"
    assert file.added == {2: "new", 3: "+++ plus"}


def test_for_commit_reads_the_new_versions_from_git(make_repo) -> None:
    repo = make_repo({"calc.py": "import pytest as p\n\ndef add(a, b):\n    return a - b\n"})
    base = gitops.snapshot(repo)
    worktree = repo.parent / "wt"
    gitops.create_worktree(repo, base, "codexloop/flags", worktree)
    (worktree / "calc.py").write_text(
        "import pytest as p\n\ndef add(a, b):\n    return a - b\n\np.exit = None\n"
    )
    (worktree / "tests").mkdir()
    (worktree / "tests" / "test_calc.py").write_text("import sys\nsys.settrace(None)\n")
    run_git(worktree, "add", "-A")
    run_git(worktree, "commit", "-qm", "model")
    head = run_git(worktree, "rev-parse", "HEAD").strip()
    flags = for_commit(repo, base, head, leave_out=["tests/test_calc.py"])
    assert [(f.path, f.line) for f in flags] == [("calc.py", 6)]
    assert "patches pytest" in flags[0].reason
    assert run_git(repo, "status", "--porcelain") == ""  # nothing touched
    assert str(flags[0]).startswith("calc.py:6: ")


def test_scanning_is_bounded_for_huge_files() -> None:
    big = "x = 1\n" * 400_000  # 2.4 MB
    flags = scan_source("calc.py", big)
    assert flags and "too large" in flags[0].reason


def test_deep_nesting_does_not_crash() -> None:
    source = "x = " + "(" * 5000 + "1" + ")" * 5000 + "\nimport atexit\n"
    flags = scan_source("calc.py", source)
    assert any("atexit" in f.reason for f in flags)


def test_a_large_clean_file_has_no_flags() -> None:
    source = "\n".join(
        f"def f{i}(a, b):\n    return sorted([a, b])[0] + {i}\n" for i in range(1000)
    )
    assert scan_source("calc.py", source) == []
