"""Python's parser, one call at a time.

CPython 3.11's AST constructor keeps its recursion depth in per-interpreter state, so two
threads parsing at once can make it raise ``SystemError: AST constructor recursion depth
mismatch`` (python/cpython#106905). Seen here when the two attempts of a race parsed source
in their worker threads at the same moment: one attempt died of it. Every parse of ours —
engine threads, the event loop, the app — goes through this lock.
"""

from __future__ import annotations

import ast
import threading
from typing import Any

_LOCK = threading.Lock()


def parse(source: str | bytes, filename: str = "<unknown>", mode: str = "exec", **kw: Any) -> Any:
    with _LOCK:
        return ast.parse(source, filename, mode, **kw)


def literal_eval(node_or_string: str | ast.AST) -> Any:
    with _LOCK:
        return ast.literal_eval(node_or_string)


def check(source: str | bytes, filename: str) -> None:
    """Compile ``source`` to find its syntax errors (raises ``SyntaxError``)."""
    with _LOCK:
        compile(source, filename, "exec", dont_inherit=True)
