"""The project interpreter's answers, remembered between sessions: asked once, then read
back while the interpreter and every folder it reads are as they were; anything of them
changed (a package installed, a ``.pth`` edited, the interpreter replaced, a user site
appearing) asks again; a failure is never kept; a damaged file is ignored."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from codexloop.core import interpreter, isolation, plugins, warm
from codexloop.core.remembered import Remembered, state_home

CODE = "import sys; print(sys.argv[0] or 'answer')"


class Counted:
    """An interpreter that is ``sys.executable`` with a folder of ours on its path
    (``site``), noting every start in ``runs``."""

    def __init__(self, root: Path, real: str = sys.executable) -> None:
        self.root = root
        self.real = real
        self.site = root / "site"
        self.site.mkdir(parents=True)
        (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
        self.runs = root / "runs"
        self.runs.touch()
        self.python = root / "bin" / "python"
        self.python.parent.mkdir()
        self.write()

    def write(self, extra: str = "") -> None:
        self.python.write_text(
            "#!/bin/sh\n"
            f"echo run >> {self.runs}\n"
            f"{extra}"
            f'PYTHONPATH={self.site} exec {self.real} "$@"\n'
        )
        self.python.chmod(0o755)

    @property
    def count(self) -> int:
        return len(self.runs.read_text().split())

    def ask(self, code: str = CODE, **kwargs: object) -> str | None:
        return interpreter.ask(str(self.python), code, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def counted(tmp_path: Path) -> Counted:
    return Counted(tmp_path / "env")


def test_an_answer_is_asked_once_then_read_back(counted: Counted) -> None:
    first = counted.ask()
    assert first is not None and first.strip() == "-c"
    assert counted.count == 1
    assert counted.ask() == first
    assert counted.count == 1
    assert (state_home() / "interpreters.json").is_file()


def test_each_question_and_mode_is_its_own_answer(counted: Counted) -> None:
    counted.ask()
    counted.ask("print(2)")
    counted.ask(isolated=True)
    assert counted.count == 3
    assert counted.ask("print(2)") == "2\n"
    assert counted.count == 3


def test_a_package_installed_on_the_path_asks_again(counted: Counted) -> None:
    counted.ask()
    (counted.site / "newpkg-1.0.dist-info").mkdir()  # the folder changes
    counted.ask()
    assert counted.count == 2
    counted.ask()
    assert counted.count == 2


def test_a_pth_file_edited_in_place_asks_again(counted: Counted) -> None:
    pth = counted.site / "extra.pth"
    pth.write_text("/nowhere\n")
    counted.ask()
    stamp = pth.stat().st_mtime_ns
    pth.write_text("/elsewhere\n")  # the folder's own mtime stays
    os.utime(pth, ns=(stamp + 10**9, stamp + 10**9))
    counted.ask()
    assert counted.count == 2


def test_the_venv_config_or_the_interpreter_changed_asks_again(counted: Counted) -> None:
    counted.ask()
    (counted.root / "pyvenv.cfg").write_text("home = /usr/local/bin\ninclude = true\n")
    counted.ask()
    assert counted.count == 2
    counted.write(extra="# a new interpreter\n")
    counted.ask()
    assert counted.count == 3


def test_a_user_site_that_appears_asks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interpreter outside a venv reads the user's site folder: its coming counts."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base = Path(sys.base_prefix, "bin", "python3")  # not a venv's: it reads the user site
    counted = Counted(tmp_path / "env", str(base if base.exists() else sys.executable))
    code = "import site; print(site.ENABLE_USER_SITE, site.getusersitepackages())"
    said = counted.ask(code)
    assert said is not None
    enabled, user_site = said.split()
    if enabled != "True":
        pytest.skip("this interpreter reads no user site")
    counted.ask(code)
    assert counted.count == 1
    Path(user_site).mkdir(parents=True)
    counted.ask(code)
    assert counted.count == 2


def test_a_failure_is_never_kept(counted: Counted) -> None:
    assert counted.ask("raise SystemExit(3)") is None
    assert counted.ask("raise SystemExit(3)") is None
    assert counted.count == 2
    assert counted.ask("import time; time.sleep(5)", timeout=0.5) is None
    assert counted.count == 3
    assert interpreter.ask(str(counted.root / "missing" / "python"), CODE) is None


def test_a_damaged_file_is_ignored_and_replaced(counted: Counted) -> None:
    path = state_home() / "interpreters.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    interpreter._memories.clear()
    assert counted.ask() is not None
    assert counted.count == 1
    json.loads(path.read_text())  # whole again


def test_an_entry_that_no_longer_names_its_files_asks_again(counted: Counted) -> None:
    counted.ask()
    path = state_home() / "interpreters.json"
    data = json.loads(path.read_text())
    for entry in data["answers"].values():
        entry["files"] = "planted"
        entry["out"] = "planted\n"
    path.write_text(json.dumps(data))
    interpreter._memories.clear()
    assert counted.ask() != "planted\n"
    assert counted.count == 2


def test_answers_written_side_by_side_are_all_kept(tmp_path: Path) -> None:
    memory = Remembered(tmp_path / "side.json")
    threads = [
        threading.Thread(target=memory.put, args=("kind", f"key{n}", {"n": n})) for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    again = Remembered(tmp_path / "side.json")
    assert [again.get("kind", f"key{n}") for n in range(8)] == [{"n": n} for n in range(8)]


def test_the_sessions_three_questions_read_back_the_same(counted: Counted) -> None:
    """sys.path (isolation), what is installed (plugins) and the package folders (warm)
    parse to the same from the remembered answer as from the interpreter."""
    python = str(counted.python)
    asked = (isolation.sys_path(python), plugins.installed(python), warm.site_packages(python))
    assert counted.count == 3
    assert asked[0] and asked[1].complete and asked[2]
    again = (isolation.sys_path(python), plugins.installed(python), warm.site_packages(python))
    assert counted.count == 3
    assert again == asked
