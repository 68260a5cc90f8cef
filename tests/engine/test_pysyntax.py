"""Python's parser, one call at a time (CPython 3.11's AST constructor is not thread-safe:
python/cpython#106905; two race attempts parsing at once killed one with SystemError)."""

from __future__ import annotations

import re
from pathlib import Path

import codexloop


def test_no_module_of_ours_parses_without_the_lock() -> None:
    root = Path(codexloop.__file__).parent
    unlocked = re.compile(r"\bast\.(parse|literal_eval)\(|(?<![\w.])compile\(")
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in root.rglob("*.py")
        if path.name not in ("pysyntax.py", "warm_server.py")  # (the server is its own process)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if unlocked.search(line)
    ]
    assert offenders == []
