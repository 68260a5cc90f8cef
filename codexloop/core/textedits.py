"""Edits a model states in its answer's text instead of calling the tools.

Small local models often answer with the fix itself rather than a tool call. When an answer
has no tool call (native or written as text, :mod:`~codexloop.core.textcalls`), these forms are
read from it, in this order:

- **SEARCH/REPLACE** blocks (aider's ``<<<<<<< SEARCH`` / ``=======`` / ``>>>>>>> REPLACE``),
  the file's path on the line before (or before the fence around them);
- a **unified diff** (``--- a/x.py`` / ``+++ b/x.py`` / ``@@``): each hunk is an edit of its
  context and removed lines; line numbers are ignored (small models get them wrong);
- a fenced block **labelled with a project path** — in its info string (```` ```python src/x.py
  ````), in a comment on its first line (``# src/x.py``, dropped from the content), or on the line
  just before the fence (``src/x.py:``, ``**src/x.py**``, or a sentence naming one existing
  file) — is the whole file; for a Python file that already exists and holds definitions the
  block leaves out, only the block's definitions (and imports, constants) go in, replacing
  their namesakes, so an excerpt never deletes the rest of the file;
- a fenced Python block **naming no file** that defines functions or classes: each replaces the
  definition of the same name in the one non-protected project file that has it (found with
  :mod:`ast`; a method is found inside its class); a new name goes to the file of the block's
  other definitions, or to the module the exam imports it from;
- with no fenced edit at all, a **replacement said in prose** with inline code: "replace
  `` `a - b` `` with `` `a + b` ``", "change `` `x` `` to `` `y` ``", "`` `x` `` should be `` `y` ``": an edit
  of the one place in the project's non-protected Python files that holds the old text.

A Python file written whole (or merged) loses a line that imports names from the module itself
(``from textutil import shout`` in ``textutil.py``: small models copy the test's import line
into the module) when the module defines every name it imports: the module could not load with
it, and the model is told the line went.

Nothing is written here: every edit becomes a ``write_file`` or ``edit_file`` call the loop runs
through :class:`~codexloop.core.tools.Tools`, so path confinement and the protected exam hold
(a text edit of a test file is refused like a tool call). Blocks that cannot be what they seem
are left alone: an unclosed fence (a cut answer), a shell or output block, a Python file that
does not parse, an excerpt (``# ... rest of the file ...``) that cannot be merged.

Over 400 lines: every text form of an edit (labelled block, SEARCH/REPLACE, unified diff,
bare definition) is read by one scanner of fences, in one order of precedence.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Protocol

from codexloop.core import pysyntax

_FENCE_OPEN = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`]*?)\s*$")
_PATHLIKE = re.compile(r"^(?:\./)?[\w.\-]+(?:/[\w.\-]+)*\.[A-Za-z][\w]{0,9}$")
_LABEL_KEY = re.compile(r"(?:title|file|filename|path)\s*=\s*[\"']?([^\"'\s]+)", re.IGNORECASE)
_COMMENT_LABEL = re.compile(
    r"^\s*(?:#|//|--|;|/\*|<!--)\s*(?:(?:file(?:name)?|path)\s*:\s*)?(\S+?)\s*(?:\*/|-->)?\s*$",
    re.IGNORECASE,
)
_LINE_LABEL = re.compile(r"^(?:file(?:name)?|path)\s*:\s*", re.IGNORECASE)
_BACKTICKED = re.compile(r"`([^`\s]+)`")
_WORDS = re.compile(r"[\w./\-]+")
_EXCERPT = re.compile(
    r"^\s*(?:#|//)\s*(?:\.\.\.|…|.*\b(?:rest of|existing code|unchanged|remains? the same)\b)",
    re.IGNORECASE | re.MULTILINE,
)
_SR_START = re.compile(r"^\s*<{5,9}\s*SEARCH\b")
_SR_MID = re.compile(r"^\s*={5,9}\s*$")
_SR_END = re.compile(r"^\s*>{5,9}\s*REPLACE\b")
_CODE = r"`([^`\n]+)`"
_PROSE = (
    re.compile(
        rf"\breplac(?:e|es|ed|ing)\s+(?:the\s+\w+\s+)?{_CODE}\s+(?:with|by)\s+{_CODE}", re.I
    ),
    re.compile(
        rf"\bchang(?:e|es|ed|ing)\s+(?:the\s+\w+\s+)?{_CODE}\s+(?:in\s+\S+\s+)?(?:to|into)\s+{_CODE}",
        re.I,
    ),
    re.compile(rf"{_CODE}\s+(?:should|must|needs to)\s+(?:be|become|read)\s+{_CODE}", re.I),
    re.compile(rf"\bfrom\s+{_CODE}\s+to\s+{_CODE}", re.I),
)
MAX_PROSE = 8  # replacements read from one answer's sentences (each is a search of the project)
_PYTHON = frozenset({"python", "py", "python3", "py3", "ipython"})
_NOT_FILES = frozenset(
    {"bash", "sh", "shell", "console", "zsh", "shell-session", "text", "txt", "output", "plaintext"}
)
_EXTENSIONS = {
    "python": (".py", ".pyi"),
    "javascript": (".js", ".mjs", ".cjs", ".jsx"),
    "typescript": (".ts", ".tsx", ".mts", ".cts"),
    "json": (".json",),
    "toml": (".toml",),
    "yaml": (".yaml", ".yml"),
    "markdown": (".md",),
}
_ALIASES = {"py": "python", "python3": "python", "py3": "python", "js": "javascript"}
_ALIASES |= {"ts": "typescript", "yml": "yaml", "md": "markdown"}


class Project(Protocol):
    """What reading edits needs of the sandbox (:class:`~codexloop.core.tools.Tools`)."""

    def read_text(self, raw: str) -> str | None: ...

    def exists(self, raw: str) -> bool: ...

    def protected(self, rel: str) -> bool: ...

    def python_files(self, limit: int = ...) -> list[str]: ...


@dataclass(frozen=True)
class Stated:
    """An edit as the answer states it, before the project is consulted."""

    form: str  # "labelled", "search/replace", "diff", "definitions", "broken"
    path: str | None = None
    content: str = ""  # the whole file (labelled) or the block (definitions)
    old: str = ""  # search/replace, diff hunk
    new: str = ""
    how: str = ""  # how the path was named, or what is wrong (broken)
    strong: bool = True  # the label names the file plainly (not a sentence that mentions it)


@dataclass(frozen=True)
class Planned:
    """One tool call that applies a stated edit, or why it cannot be applied."""

    what: str  # for the model and the developer: "calc.py: the whole file (...)"
    tool: str = ""  # "write_file" | "edit_file"; "" with a problem
    arguments: dict[str, str] = field(default_factory=dict)
    problem: str = ""


# -- reading the text --------------------------------------------------------------------


@dataclass(frozen=True)
class _Fence:
    start: int  # the opening line's index
    end: int  # the closing line's index
    info: str
    body: list[str]


def _fences(lines: Sequence[str]) -> list[_Fence]:
    """Closed fenced blocks (an unclosed one is a cut answer: left out)."""
    found, i = [], 0
    while i < len(lines):
        opened = _FENCE_OPEN.match(lines[i])
        if not opened:
            i += 1
            continue
        marker = opened.group(2)
        close = re.compile(rf"^\s*{re.escape(marker[0])}{{{len(marker)},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), None)
        if end is None:
            break
        found.append(_Fence(i, end, opened.group(3), list(lines[i + 1 : end])))
        i = end + 1
    return found


def _language(info: str) -> str:
    word = info.split()[0].split(":")[0].lower().lstrip("{.") if info.split() else ""
    return _ALIASES.get(word, word)


def _path_token(text: str) -> str | None:
    """``text`` is one project path (markdown decoration allowed), or None."""
    token = text.strip().strip("*`'\"#>:- ").strip()
    token = _LINE_LABEL.sub("", token).strip("*`'\" ")
    return token if _PATHLIKE.match(token) and "://" not in token else None


def _fits(path: str, language: str) -> bool:
    """A block in ``language`` can be the file ``path``."""
    if language in _NOT_FILES:
        return PurePosixPath(path).suffix in (".sh", ".bash", ".txt")
    wanted = _EXTENSIONS.get(language)
    return wanted is None or PurePosixPath(path).suffix in wanted


def _label(
    fence: _Fence, lines: Sequence[str], exists: Callable[[str], bool]
) -> tuple[str, str, list[str], bool] | None:
    """(path, how it was named, the content lines, strong) of a block labelled with a path."""
    info = fence.info
    keyed = _LABEL_KEY.search(info)
    candidates = [keyed.group(1)] if keyed else re.split(r"[\s:]+", info)
    for word in candidates:
        if (path := _path_token(word)) is not None:
            return path, "its info string", fence.body, True
    comment = _COMMENT_LABEL.match(fence.body[0]) if fence.body else None
    if comment is not None and (path := _path_token(comment.group(1))) is not None:
        return path, "the comment on its first line", fence.body[1:], True
    before = _line_before(fence, lines)
    if (path := _path_token(before)) is not None:
        return path, "the line before it", fence.body, True
    named = set(_BACKTICKED.findall(before)) | {w.rstrip(".,:;") for w in _WORDS.findall(before)}
    existing = [w for w in named if _path_token(w) and exists(w)]
    if len(existing) == 1:  # a sentence naming one file of the project
        return existing[0], "the sentence before it", fence.body, False
    return None


def _files_in(path: str, body: Sequence[str]) -> list[tuple[str, list[str]]]:
    """A labelled block that goes on with another file, opened by a comment with its path
    after a blank line (the 1.5B model put ``# tests/test_pages.py`` and the test under its
    fixed ``pages.py``, and the test went into the module): one part per file."""
    parts: list[tuple[str, list[str]]] = [(path, [])]
    for i, line in enumerate(body):
        comment = _COMMENT_LABEL.match(line)
        other = _path_token(comment.group(1)) if comment is not None else None
        if other is not None and other != parts[-1][0] and i > 0 and not body[i - 1].strip():
            parts.append((other, []))
            continue
        parts[-1][1].append(line)
    for _where, lines in parts:
        while lines and not lines[-1].strip():
            lines.pop()
    if len(parts) == 1:
        return parts
    # A part with nothing in it (the label, then at once another file's) is no file.
    return [(where, lines) for where, lines in parts if any(line.strip() for line in lines)]


def _line_before(fence: _Fence, lines: Sequence[str]) -> str:
    """The line just before a fence (one blank line between allowed)."""
    j = fence.start - 1
    if j >= 0 and not lines[j].strip():
        j -= 1
    return lines[j] if j >= 0 else ""


def _search_replace(lines: Sequence[str], fences: Sequence[_Fence], used: set[int]) -> list[Stated]:
    found: list[Stated] = []
    path: str | None = None
    i = 0
    while i < len(lines):
        if not _SR_START.match(lines[i]):
            i += 1
            continue
        mid = next((j for j in range(i + 1, len(lines)) if _SR_MID.match(lines[j])), None)
        end = None
        if mid is not None:
            end = next((j for j in range(mid + 1, len(lines)) if _SR_END.match(lines[j])), None)
        if mid is None or end is None:
            found.append(Stated("broken", how="a SEARCH block without its ======= or REPLACE"))
            break
        path = _sr_path(lines, i) or path
        used.update(range(i, end + 1))
        for fence in fences:
            if fence.start < i < fence.end:
                used.update(range(fence.start, fence.end + 1))
        old, new = "\n".join(lines[i + 1 : mid]), "\n".join(lines[mid + 1 : end])
        if path is None:
            found.append(Stated("broken", how="a SEARCH/REPLACE block with no file path before it"))
        else:
            found.append(Stated("search/replace", path, old=old, new=new))
        i = end + 1
    return found


def _sr_path(lines: Sequence[str], at: int) -> str | None:
    """The path named on the line before a SEARCH marker, or before the fence around it."""
    j = at - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j >= 0 and (opened := _FENCE_OPEN.match(lines[j])):
        for word in re.split(r"[\s:]+", opened.group(3)):
            if (path := _path_token(word)) is not None:
                return path
        j -= 1
        while j >= 0 and not lines[j].strip():
            j -= 1
    return _path_token(lines[j]) if j >= 0 else None


def _diffs(lines: Sequence[str], fences: Sequence[_Fence], used: set[int]) -> list[Stated]:
    found: list[Stated] = []
    i = 0
    while i < len(lines) - 1:
        if i in used or not (lines[i].startswith("--- ") and lines[i + 1].startswith("+++ ")):
            i += 1
            continue
        inside = next((f for f in fences if f.start < i < f.end), None)
        stop = inside.end if inside is not None else len(lines)
        source, target = _diff_path(lines[i][4:]), _diff_path(lines[i + 1][4:])
        j, hunks, hunk = i + 2, [], list[str]()
        while j < stop:
            line = lines[j]
            if line.startswith("--- ") and j + 1 < stop and lines[j + 1].startswith("+++ "):
                break
            if line.startswith("diff --git"):
                break
            if line.startswith("@@"):
                if hunk:
                    hunks.append(hunk)
                hunk = []
            elif line[:1] in (" ", "+", "-", "\\") or not line or inside is not None:
                hunk.append(line)
            else:
                break
            j += 1
        if hunk:
            hunks.append(hunk)
        used.update(range(i, j))
        if inside is not None:
            used.update(range(inside.start, inside.end + 1))
        found.extend(_diff_edits(source, target, hunks))
        i = j
    return found


def _diff_path(raw: str) -> str | None:
    name = raw.split("\t")[0].strip()
    if name == "/dev/null":
        return None
    if name[:2] in ("a/", "b/"):
        name = name[2:]
    return name


def _diff_edits(source: str | None, target: str | None, hunks: list[list[str]]) -> list[Stated]:
    if target is None:
        return [Stated("broken", source, how="a diff that deletes a file (use run_command)")]
    edits = []
    for hunk in hunks:
        old, new = [], []
        for line in hunk:
            if line.startswith("\\"):
                continue
            mark, rest = (line[0], line[1:]) if line[:1] in (" ", "+", "-") else (" ", line)
            if mark != "+":
                old.append(rest)
            if mark != "-":
                new.append(rest)
        while old and new and not old[-1].strip() and not new[-1].strip():
            old, new = old[:-1], new[:-1]
        if source is None:
            edits.append(Stated("labelled", target, content="\n".join(new) + "\n", how="a diff"))
        elif not any(line.strip() for line in old):
            edits.append(Stated("broken", target, how="a diff hunk with no context line"))
        else:
            edits.append(Stated("diff", target, old="\n".join(old), new="\n".join(new)))
    return edits


def find_edits(text: str, exists: Callable[[str], bool]) -> list[Stated]:
    """The edits ``text`` states, in order (``exists``: a path names a project file)."""
    lines = text.splitlines()
    fences = _fences(lines)
    used: set[int] = set()
    stated = _search_replace(lines, fences, used)
    stated += _diffs(lines, fences, used)
    for fence in fences:
        if fence.start in used:
            continue
        language = _language(fence.info)
        labelled = _label(fence, lines, exists)
        if labelled is not None and _fits(labelled[0], language):
            path, how, body, strong = labelled
            for part, (where, part_lines) in enumerate(_files_in(path, body)):
                content = "\n".join(part_lines) + "\n" if part_lines else ""
                how = how if part == 0 else "a comment with its path inside another file's block"
                stated.append(Stated("labelled", where, content=content, how=how, strong=strong))
        elif language in _PYTHON or not language:
            block = textwrap.dedent("\n".join(fence.body)) + "\n"
            if _definitions(block):
                stated.append(Stated("definitions", content=block))
    return stated or _unfenced(lines, fences, exists) or _prose(lines, fences)


MAX_UNFENCED_LINES = 400  # of a file written out without a fence


def _unfenced(
    lines: Sequence[str], fences: Sequence[_Fence], exists: Callable[[str], bool]
) -> list[Stated]:
    """A Python file written out with no fence at all: a comment naming a project file on a
    line of its own, then the code, up to where
    the text stops being Python (Qwen2.5-Coder-1.5B wrote its right fix of money.py so, and it
    was never applied). Prose after the code is left out; code that defines nothing is not a
    file."""
    inside = {i for fence in fences for i in range(fence.start, fence.end + 1)}
    labels = 0
    for i, line in enumerate(lines):
        comment = _COMMENT_LABEL.match(line) if line.startswith("#") else None
        path = _path_token(comment.group(1)) if comment is not None else None
        if i in inside or path is None or not path.endswith(".py") or not exists(path):
            continue
        labels += 1
        if labels > 3:  # each is parsed up to its length: a few are plenty
            break
        body = [text for j, text in enumerate(lines[i + 1 :], i + 1) if j not in inside]
        body = body[:MAX_UNFENCED_LINES]
        while body:
            block = "\n".join(body).strip("\n") + "\n"
            if _definitions(block):
                how = "an unfenced file after a comment with its path"
                return [Stated("labelled", path, content=block, how=how)]
            body.pop()
    return []


def _prose(lines: Sequence[str], fences: Sequence[_Fence]) -> list[Stated]:
    """Replacements said in a sentence with inline code ("replace `a - b` with `a + b`"),
    outside fenced blocks: the old text must look like code (a name in it, 3 characters)."""
    inside = {i for fence in fences for i in range(fence.start, fence.end + 1)}
    prose = "\n".join(line for i, line in enumerate(lines) if i not in inside)
    found: dict[tuple[str, str], Stated] = {}
    for pattern in _PROSE:
        for match in pattern.finditer(prose):
            old, new = match.group(1).strip(), match.group(2).strip()
            if old != new and len(old) >= 3 and re.search(r"[A-Za-z_]", old):
                found.setdefault((old, new), Stated("prose", old=old, new=new, how="a sentence"))
    return list(found.values())[:MAX_PROSE]


# -- Python definitions --------------------------------------------------------------------

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _parse(source: str) -> ast.Module | None:
    try:
        return pysyntax.parse(source)
    except (SyntaxError, ValueError):
        return None


def _definitions(source: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    module = _parse(source)
    return [n for n in module.body if isinstance(n, _DEFS)] if module else []


def _span(node: ast.stmt) -> tuple[int, int]:
    """0-based (first line, line after) of a statement, decorators included."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return first - 1, node.end_lineno or node.lineno


def _assigned(node: ast.stmt) -> str | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return target.id if isinstance(target, ast.Name) else None
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _named(body: Sequence[ast.stmt]) -> dict[str, ast.stmt]:
    named: dict[str, ast.stmt] = {}
    for node in body:
        name = node.name if isinstance(node, _DEFS) else _assigned(node)
        if name is not None:
            named[name] = node
    return named


def _reindented(lines: Sequence[str], indent: str) -> list[str]:
    body = textwrap.dedent("\n".join(lines)).split("\n")
    return [indent + line if line.strip() else "" for line in body]


class _Merge:
    """A Python source with definitions put in: replaced where it has them, added where not."""

    def __init__(self, source: str, module: ast.Module) -> None:
        self.lines = source.split("\n")
        self.module = module
        self.changes: list[tuple[int, int, list[str]]] = []  # (start, end, new lines)
        self.done: list[str] = []

    def put(self, node: ast.stmt, block: Sequence[str], where: ast.ClassDef | None = None) -> None:
        """Put ``node`` (its text in ``block``) at module level, or in class ``where``."""
        body = where.body if where is not None else self.module.body
        name = node.name if isinstance(node, _DEFS) else _assigned(node)
        if name is None:
            return
        start, end = _span(node)
        text = list(block[start:end])
        existing = _named(body).get(name)
        if existing is not None:
            if (
                isinstance(node, ast.ClassDef)
                and isinstance(existing, ast.ClassDef)
                and not set(_named(existing.body)) <= set(_named(node.body))
            ):
                for member in node.body:  # an excerpt of the class: its members go in
                    self.put(member, block, existing)
                return
            at, upto = _span(existing)
            indent = self.lines[at][: len(self.lines[at]) - len(self.lines[at].lstrip())]
            self.changes.append((at, upto, _reindented(text, indent)))
            self.done.append(f"{name} replaced")
        elif where is not None:
            last = _span(where.body[-1])[1]
            first = self.lines[_span(where.body[0])[0]]
            indent = first[: len(first) - len(first.lstrip())]
            self.changes.append((last, last, ["", *_reindented(text, indent)]))
            self.done.append(f"{name} added to {where.name}")
        elif isinstance(node, _DEFS):
            end_of_file = len(self.lines)
            while end_of_file and not self.lines[end_of_file - 1].strip():
                end_of_file -= 1
            self.changes.append((end_of_file, end_of_file, ["", "", *text]))
            self.done.append(f"{name} added")
        else:
            self.after_imports(text)
            self.done.append(f"{name} added")

    def after_imports(self, text: Sequence[str]) -> None:
        """Lines put after the module's imports (or its docstring)."""
        after = 0
        for node in self.module.body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            if isinstance(node, ast.Import | ast.ImportFrom) or (docstring and after == 0):
                after = _span(node)[1]
        self.changes.append((after, after, list(text)))

    def imports(self, block_module: ast.Module, block: Sequence[str]) -> None:
        have = {ast.dump(n) for n in self.module.body if isinstance(n, ast.Import | ast.ImportFrom)}
        for node in block_module.body:
            if isinstance(node, ast.Import | ast.ImportFrom) and ast.dump(node) not in have:
                start, end = _span(node)
                self.after_imports(block[start:end])

    def result(self) -> str:
        lines = list(self.lines)
        for start, end, new in sorted(self.changes, key=lambda c: (c[0], c[1]), reverse=True):
            lines[start:end] = new
        return "\n".join(lines)


def merge(source: str, block: str, *, into: str | None = None) -> tuple[str, list[str]] | None:
    """``source`` with ``block``'s definitions, imports and constants put in (``into``: as
    members of that class), and what was done; None when either does not parse."""
    module, block_module = _parse(source), _parse(block)
    if module is None or block_module is None:
        return None
    block_lines = block.split("\n")
    merged = _Merge(source, module)
    merged.imports(block_module, block_lines)
    where = next((n for n in module.body if isinstance(n, ast.ClassDef) and n.name == into), None)
    for node in block_module.body:
        merged.put(node, block_lines, where)
    if not merged.done:
        return None
    return merged.result(), merged.done


def self_imports(rel: str, module: ast.Module) -> list[ast.ImportFrom]:
    """The top-level ``from <this module> import …`` lines of the Python file ``rel``."""
    if not rel.endswith(".py"):
        return []
    dotted = rel[:-3].replace("/", ".").removesuffix(".__init__")
    names = {dotted, dotted.removeprefix("src.")}  # the full name: compat/json.py is not json
    return [
        node
        for node in module.body
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in names
    ]


def without_self_imports(rel: str, content: str) -> tuple[str, list[str]]:
    """``content`` without its lines importing from the module itself names the module
    defines (they only stop it loading), and those lines; a line that also brings a name
    from elsewhere (a submodule of a package) stays."""
    module = _parse(content)
    if module is None:
        return content, []
    defined = set(_named(module.body))
    lines = content.split("\n")
    dropped: list[str] = []
    for node in reversed(self_imports(rel, module)):
        start, end = _span(node)
        alone = not lines[start][: node.col_offset].strip() and not (
            lines[end - 1][node.end_col_offset or 0 :].strip()
        )
        if alone and all(alias.name in defined and alias.asname is None for alias in node.names):
            dropped.insert(0, " ".join(line.strip() for line in lines[start:end]))
            blank_after = end < len(lines) and not lines[end].strip()
            if blank_after and (start == 0 or not lines[start - 1].strip()):
                end += 1  # no blank line left where the import stood
            del lines[start:end]
    return "\n".join(lines), dropped


def _no_self_imports(planned: Planned) -> Planned:
    path, content = planned.arguments.get("path", ""), planned.arguments.get("content")
    if planned.tool != "write_file" or content is None:
        return planned
    kept, dropped = without_self_imports(path, content)
    if not dropped:
        return planned
    what = f"{planned.what}; left out {'; '.join(dropped)}: a module cannot import from itself"
    return Planned(what, "write_file", {**planned.arguments, "content": kept})


# -- planning against the project ----------------------------------------------------------


def plan_edits(stated: Sequence[Stated], project: Project) -> list[Planned]:
    """Each stated edit as the tool call that applies it (blocking: reads project files)."""
    planned: list[Planned] = []
    index: _Index | None = None
    for edit in stated:
        if edit.form == "broken":
            planned.append(Planned(edit.path or "an edit", problem=edit.how))
        elif edit.form in ("search/replace", "diff"):
            planned.append(_replace(edit, project))
        elif edit.form == "prose":
            index = index or _Index(project)
            planned.extend(_prose_plan(edit, index, project))
        elif edit.form == "labelled" and (edit.strong or not project.protected(edit.path or "")):
            planned.append(_whole(edit, project))
        else:
            index = index or _Index(project)
            block = edit.content
            planned.extend(_definitions_plan(block, index, project))
    return [_no_self_imports(p) for p in planned]


def _prose_plan(edit: Stated, index: _Index, project: Project) -> list[Planned]:
    """The one place in the project's non-protected Python files that holds the old text (as
    whole words at its ends); a sentence whose code is found nowhere or in several places
    is no edit (prose quotes values and names all the time)."""
    edge = (
        r"\b" if re.match(r"\w", edit.old) else "",
        r"\b" if re.search(r"\w$", edit.old) else "",
    )
    pattern = re.compile(edge[0] + re.escape(edit.old) + edge[1])
    places = [
        rel
        for rel in index.files
        if edit.old in (index.source(rel) or "") and not project.protected(rel)
        for _ in pattern.finditer(index.source(rel) or "")
    ]
    if len(places) != 1:
        return []
    what = f"{places[0]}: `{edit.old}` replaced by `{edit.new}` (said in a sentence)"
    args = {"path": places[0], "old_text": edit.old, "new_text": edit.new}
    return [Planned(what, "edit_file", args)]


def _replace(edit: Stated, project: Project) -> Planned:
    path = edit.path or ""
    what = f"{path}: " + ("a diff hunk" if edit.form == "diff" else "a SEARCH/REPLACE block")
    if edit.old.strip():
        args = {"path": path, "old_text": edit.old, "new_text": edit.new}
        return Planned(what, "edit_file", args)
    if not project.exists(path) or not (project.read_text(path) or "").strip():
        return Planned(what, "write_file", {"path": path, "content": edit.new + "\n"})
    return Planned(what, problem="its SEARCH part is empty: give the exact lines to replace")


EXCERPT_NOT_WRITTEN = "the block is an excerpt ('...'), not the whole file: not written"
SAME_CODE = "only blank lines or trailing spaces would change"


def _same_code(source: str, other: str) -> bool:
    """The two sources differ in blank lines and trailing spaces at most: a text edit that
    changes only those changes nothing (comments count: a test or a linter may read them). The
    1.5B model wrote its unchanged module back with one blank line more, and the tests ran
    again for nothing."""

    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.splitlines() if line.strip()]

    return source == other or lines(source) == lines(other)


def _whole(edit: Stated, project: Project) -> Planned:
    path = edit.path or ""
    what = f"{path}: the whole file (the path was in {edit.how})"
    content = edit.content
    if not path.endswith(".py"):
        return Planned(what, "write_file", {"path": path, "content": content})
    try:
        module = pysyntax.parse(content)
    except (SyntaxError, ValueError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, SyntaxError) else ""
        return Planned(what, problem=f"the block is not valid Python{where}: not written")
    source = project.read_text(path)
    if source == content:
        return Planned(what, problem=f"the block is what {path} already holds: nothing to change")
    if source is not None and _same_code(source, content):
        return Planned(what, problem=f"{path} already holds this code ({SAME_CODE})")
    old_module = _parse(source) if source is not None else None
    if source is not None and old_module is not None and not _defines(module):
        defined = [n.name for n in old_module.body if isinstance(n, _DEFS)]
        if defined:
            return _no_definitions(what, path, source, content, defined)
    if source is not None and old_module is not None and _leaves_out(old_module, module):
        merged = merge(source, content)
        if merged is not None:
            text, done = merged
            what = f"{path}: {', '.join(done)} (the block leaves out the rest of the file)"
            if _same_code(source, text):
                return Planned(what, problem=f"{path} already holds this code ({SAME_CODE})")
            return Planned(what, "write_file", {"path": path, "content": text})
    if _EXCERPT.search(content) and source is not None:
        return Planned(what, problem=EXCERPT_NOT_WRITTEN)
    return Planned(what, "write_file", {"path": path, "content": content})


def _no_definitions(what: str, path: str, source: str, content: str, defined: list[str]) -> Planned:
    """A block for a file that defines functions or classes, defining none itself: a part of
    the file (a constant put in, the rest kept), never the whole of it. Qwen2.5-Coder-1.5B
    wrote ``# money.py`` and the module's docstring alone, six iterations in a row: written
    whole, it deleted ``format_price``, the exam stopped collecting, the file was put back."""
    merged = merge(source, content)
    if merged is not None and not _same_code(source, merged[0]):
        text, done = merged
        what = f"{path}: {', '.join(done)} (the block holds none of the file's functions)"
        return Planned(what, "write_file", {"path": path, "content": text})
    if _EXCERPT.search(content):
        return Planned(what, problem=EXCERPT_NOT_WRITTEN)
    names = ", ".join(defined[:6]) + (", …" if len(defined) > 6 else "")
    return Planned(
        what,
        problem=f"the block holds none of {path}'s functions or classes ({names}): it is not "
        f"the whole file, and written as one it would delete them; not written. Write the "
        f"whole new {path}, with all of them and your change, in one fenced block",
    )


def excerpt_write(path: str, content: str, project: Project) -> Planned | None:
    """A whole-file write of an existing Python module, written as text, that is a part of
    it: one that leaves out definitions the module has (a small model writes the function it
    fixed, not the file) is merged — the module with the given definitions, imports and
    constants put in, the rest kept (the write's ``what`` says what was done); one that
    defines nothing, for a module that defines something, is merged when it is a constant,
    else refused (:func:`_no_definitions`). None: the content is written as it is (it is the
    whole file, or either side is not Python that parses)."""
    if not path.endswith(".py"):
        return None
    source = project.read_text(path)
    old_module = _parse(source) if source is not None else None
    module = _parse(content)
    if source is None or old_module is None or module is None:
        return None
    defined = [n.name for n in old_module.body if isinstance(n, _DEFS)]
    if defined and not _defines(module):
        planned = _no_definitions(path, path, source, content, defined)
        return None if planned.arguments.get("content") == content else planned
    if not _leaves_out(old_module, module):
        return None
    merged = merge(source, content)
    if merged is None or merged[0] == source:
        return None
    return Planned(", ".join(merged[1]), "write_file", {"path": path, "content": merged[0]})


def _defines(module: ast.Module) -> bool:
    return any(isinstance(n, _DEFS) for n in module.body)


def _leaves_out(old_module: ast.Module, module: ast.Module) -> bool:
    """Does ``module``, Python that defines something, leave out a definition the old module
    has: a top-level one, or a method of a class it gives again (the 1.5B model rewrote
    ``stack.py`` with its new ``peek`` and without ``__len__``)?"""
    given = _named([n for n in module.body if isinstance(n, _DEFS)])
    if not given:
        return False
    kept = _named([n for n in old_module.body if isinstance(n, _DEFS)])
    if not set(kept) <= set(given) or _header_left_out(old_module, module):
        return True
    for name, node in kept.items():
        again = given[name]
        if not (isinstance(node, ast.ClassDef) and isinstance(again, ast.ClassDef)):
            continue
        if not set(_named(node.body)) <= set(_named(again.body)):
            return True
    return False


def _header_left_out(old_module: ast.Module, module: ast.Module) -> bool:
    """Does ``module`` leave out an import or a constant the module has, or its docstring
    when it gives none? ``Change format_price in money.py to:`` and the function alone,
    written whole, lost the module's docstring (its imports, in a module with some)."""
    have = {ast.dump(n) for n in module.body if isinstance(n, ast.Import | ast.ImportFrom)}
    named = _named(module.body)
    for node in old_module.body:
        if isinstance(node, ast.Import | ast.ImportFrom) and ast.dump(node) not in have:
            return True
        name = _assigned(node)
        if name is not None and name not in named:
            return True
    return ast.get_docstring(old_module) is not None and ast.get_docstring(module) is None


class _Index:
    """Where the project's Python files define each top-level name and each method."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.files = project.python_files()
        self._sources: dict[str, str | None] = {}

    def source(self, rel: str) -> str | None:
        if rel not in self._sources:
            self._sources[rel] = self.project.read_text(rel)
        return self._sources[rel]

    def defining(self, name: str) -> tuple[list[str], list[tuple[str, str]]]:
        """Files defining ``name`` at top level, and (file, class) pairs with a method of it."""
        pattern = re.compile(rf"^\s*(?:async\s+def|def|class)\s+{re.escape(name)}\b", re.M)
        top, methods = [], []
        for rel in self.files:
            source = self.source(rel)
            if source is None or not pattern.search(source):
                continue
            module = _parse(source)
            if module is None:
                continue
            if name in _named([n for n in module.body if isinstance(n, _DEFS)]):
                top.append(rel)
            for node in module.body:
                if isinstance(node, ast.ClassDef) and name in _named(node.body):
                    methods.append((rel, node.name))
        return top, methods

    def imported_classes(self) -> list[tuple[str, str]]:
        """(file, class) of each class the exam imports from a project module."""
        found: list[tuple[str, str]] = []
        for rel, name in self._imports():
            module = _parse(self.source(rel) or "")
            body = module.body if module is not None else []
            if any(isinstance(n, ast.ClassDef) and n.name == name for n in body):
                found.append((rel, name))
        return list(dict.fromkeys(found))

    def _imports(self) -> list[tuple[str, str]]:
        """(project file, name) of every ``from module import name`` in a protected file."""
        found = []
        for rel in self.files:
            if not self.project.protected(rel):
                continue
            module = _parse(self.source(rel) or "")
            for node in ast.walk(module) if module else ():
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    home = self._module_file(node.module)
                    if home is not None:
                        found += [(home, alias.name) for alias in node.names]
        return found

    def _module_file(self, module: str) -> str | None:
        base = module.replace(".", "/")
        options = [f"{base}.py", f"{base}/__init__.py"]
        options += [f"src/{option}" for option in options]
        found = [o for o in options if o in self.files]
        return found[0] if len(found) == 1 else None

    def imported_from(self, name: str) -> str | None:
        """The project file of the module a protected file (the exam) imports ``name`` from."""
        return next((home for home, imported in self._imports() if imported == name), None)


def _is_method(node: ast.stmt) -> bool:
    """A function whose first parameter is ``self`` (or ``cls``): it belongs in a class."""
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    params = [*node.args.posonlyargs, *node.args.args]
    return bool(params) and params[0].arg in ("self", "cls")


def _definitions_plan(block: str, index: _Index, project: Project) -> list[Planned]:
    """A block naming no file: each definition goes to the one file that has it."""
    nodes = _definitions(block)
    lines = block.split("\n")
    targets: dict[tuple[str, str | None], list[ast.stmt]] = {}
    homeless: list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef] = []
    problems: list[Planned] = []
    for node in nodes:
        top, methods = index.defining(node.name)
        free = [rel for rel in top if not project.protected(rel)]
        if len(free) == 1 or (not free and len(top) == 1):
            targets.setdefault(((free or top)[0], None), []).append(node)
        elif len(free) > 1:
            problems.append(
                Planned(
                    f"{node.name}: a block naming no file",
                    problem=f"{node.name} is defined in {', '.join(free)}: name the file "
                    "(a comment with its path on the block's first line)",
                )
            )
        elif not top and len(methods) == 1 and not isinstance(node, ast.ClassDef):
            targets.setdefault(methods[0], []).append(node)
        else:
            homeless.append(node)
    files = {rel for rel, _cls in targets}
    for node in homeless:
        if _is_method(node):  # `def peek(self)`: into the one class the exam imports
            classes = index.imported_classes()
            if len(classes) == 1:
                targets.setdefault(classes[0], []).append(node)
                continue
        home = next(iter(files)) if len(files) == 1 else index.imported_from(node.name)
        if home is None:
            problems.append(
                Planned(
                    f"{node.name}: a block naming no file",
                    problem=f"no project file defines {node.name}: name the file it belongs in "
                    "(a comment with its path on the block's first line)",
                )
            )
        else:
            targets.setdefault((home, None), []).append(node)
    planned = []
    for (rel, cls), group in targets.items():
        source = index.source(rel)
        if source is None:
            continue
        part = "\n".join("\n".join(lines[slice(*_span(node))]) for node in sorted(group, key=_span))
        imports = [
            n for n in pysyntax.parse(block).body if isinstance(n, ast.Import | ast.ImportFrom)
        ]
        prefix = "\n".join("\n".join(lines[slice(*_span(n))]) for n in imports)
        merged = merge(source, f"{prefix}\n{part}\n" if prefix else part + "\n", into=cls)
        if merged is None:
            continue
        text, done = merged
        where = f"{rel}" + (f" (class {cls})" if cls else "")
        if _same_code(source, text):
            problems.append(
                Planned(
                    f"{where}: {', '.join(done)}",
                    problem=f"the file already holds this code ({SAME_CODE})",
                )
            )
            continue
        planned.append(
            Planned(
                f"{where}: {', '.join(done)} (from a block naming no file)",
                "write_file",
                {"path": rel, "content": text},
            )
        )
    return planned + problems


def read_edits(text: str, project: Project) -> list[Planned]:
    """The edits ``text`` states, planned as tool calls (blocking)."""
    stated = find_edits(text, project.exists)
    return plan_edits(stated, project) if stated else []
