"""The model's tools, bound to one sandbox.

Every path is relative to the sandbox root and confined to it: absolute paths,
``..`` and symlinks that lead outside are refused, and so is any change to the
exam. Files are read and written through core/safefs: no symlink is followed at any
component, only regular files are opened (a FIFO, socket or device gets a clear
error), writes replace the name atomically (never writing through a link or a hard
link), and sizes are bounded. ``list_files`` shows a symlink as ``name -> target``
without following it; ``grep`` skips links and special files. Every failure becomes a
clear result the model can read; nothing raises.

Over 400 lines: six tools bound to one sandbox share its confinement checks, size bounds and
result shapes; the schema the model reads sits beside the code that honours it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import anyio

from codexloop.core import pysyntax, safefs
from codexloop.core.events import printable
from codexloop.core.exam import Exam
from codexloop.core.process import RunResult, plain_text
from codexloop.core.textedits import self_imports
from codexloop.core.words import counted

MAX_READ_CHARS = 100_000
MAX_RESULT_CHARS = 16_000
MAX_LIST = 1_000
MAX_GREP = 200
MAX_FILE_BYTES = 8_000_000  # read_file, write_file, edit_file: larger files are refused
MAX_GREP_FILE = 2_000_000  # grep skips larger files
MAX_GREP_BYTES = 64_000_000  # and stops reading after this many bytes in one search
MAX_WALK = 50_000  # entries one list_files or grep walks at most
SKIP_DIRS = frozenset(
    {
        ".git",
        "__pycache__",
        ".venv",
        "venv",
        "node_modules",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
    }
)

CommandRunner = Callable[[str], Awaitable[RunResult]]


def _fn(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


_PATH = {"type": "string", "description": "path relative to the project root"}

TOOL_SCHEMAS: list[dict[str, Any]] = [
    _fn("read_file", "Read a text file of the project.", {"path": _PATH}, ["path"]),
    _fn(
        "write_file",
        "Create or overwrite a file with the given content.",
        {"path": _PATH, "content": {"type": "string"}},
        ["path", "content"],
    ),
    _fn(
        "edit_file",
        "Replace old_text by new_text in a file. old_text must match exactly once "
        "(include surrounding lines to make it unique).",
        {"path": _PATH, "old_text": {"type": "string"}, "new_text": {"type": "string"}},
        ["path", "old_text", "new_text"],
    ),
    _fn(
        "list_files",
        "List the project's files (ignored files left out), optionally under a folder.",
        {"path": {"type": "string", "description": "folder relative to the project root"}},
        [],
    ),
    _fn(
        "grep",
        "Search the project's files for a regular expression; answers path:line: text.",
        {"pattern": {"type": "string"}, "path": {"type": "string"}},
        ["pattern"],
    ),
    _fn(
        "run_command",
        "Run a shell command in the project root (sandboxed, time-limited, no network). "
        "The tests are run by the engine after your turn; you need not run them yourself.",
        {"command": {"type": "string"}},
        ["command"],
    ),
]
TOOL_NAMES = frozenset(t["function"]["name"] for t in TOOL_SCHEMAS)


class ToolError(Exception):
    """A refusal or failure; the message goes back to the model."""


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    content: str  # what the model reads
    summary: str  # one line for people
    refused: bool = False
    changed: tuple[str, ...] = field(default=())


def self_import_note(rel: str, source: str) -> str:
    """A note for a Python module that imports names from itself (small models copy the
    test's ``from calc import add`` into ``calc.py``): it cannot import, so say why."""
    try:
        tree = pysyntax.parse(source) if rel.endswith(".py") else None
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return ""
    for node in self_imports(rel, tree) if tree is not None else ():
        shown = ", ".join(alias.name for alias in node.names)
        return (
            f". Warning: {rel} imports from itself (from {node.module} import {shown}): "
            "a module cannot import its own names while it loads. Define them in it "
            "instead, and remove that line"
        )
    return ""


def _cut(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} characters cut ...]\n{text[-half:]}"


class Refused(ToolError):
    """The call breaks a rule (outside the sandbox, protected file)."""


class Tools:
    """Executes tool calls inside ``root``."""

    def __init__(
        self,
        root: Path,
        exam: Exam,
        run_command: CommandRunner,
        *,
        network_off: bool = False,
        max_memory_gib: int = 0,
    ) -> None:
        self.root = root.resolve()
        self.exam = exam
        self.run_command = run_command
        self.network_off = network_off
        self.max_memory_gib = max_memory_gib
        self.veto: Callable[[str, bytes], str | None] | None = None
        """Why a write would make a change again that was undone as a setback (the loop's
        :class:`~codexloop.core.setbacks.Undoings`), or None."""

    # -- paths -----------------------------------------------------------------

    def resolve(self, raw: object) -> tuple[str, Path]:
        """(posix relative path, absolute path) confined to the root, or raise Refused."""
        if not isinstance(raw, str) or not raw.strip():
            raise ToolError("path must be a non-empty string")
        text = raw.strip()
        if "\x00" in text:
            raise Refused("path contains a NUL byte")
        pure = PurePosixPath(text.replace("\\", "/"))
        if pure.is_absolute() or text.startswith("~"):
            raise Refused(
                f"{raw}: absolute paths are outside the sandbox; use a path relative to the project root"
            )
        parts: list[str] = []
        for part in pure.parts:
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise Refused(f"{raw}: leads outside the sandbox")
                parts.pop()
                continue
            parts.append(part)
        # A symlink may lead elsewhere inside the sandbox, never out of it. The file
        # operations then use the real path and follow no link at all (core/safefs), so
        # a link swapped in meanwhile is refused, not followed.
        lexical = self.root.joinpath(*parts)
        real = Path(os.path.realpath(lexical))
        if real != self.root and self.root not in real.parents:
            raise Refused(f"{raw}: a symlink that leads outside the sandbox")
        rel = real.relative_to(self.root).as_posix()
        return rel or ".", real

    def _guard(self, rel: str, old: bytes | None, new: bytes | None) -> None:
        reason = self.exam.check_write(rel, old, new)
        if reason is not None:
            raise Refused(
                f"{rel} is protected: {reason}. The tests define success and cannot be "
                "changed; change the code under test instead."
            )
        if new is not None and self.veto is not None and (why := self.veto(rel, new)):
            raise Refused(why)

    # -- what edits written as text need to know (core/textedits; blocking) --------

    def read_text(self, raw: str) -> str | None:
        """A project file's text (UTF-8), or None: missing, outside, not a regular file,
        too large, binary or not UTF-8. Nothing is refused here: the edit itself is."""
        try:
            rel, _path = self.resolve(raw)
            if self._kind(rel) != "file":
                return None
            data = self._read(rel)
            return None if b"\x00" in data[:8000] else data.decode("utf-8")
        except (ToolError, OSError, UnicodeError):
            return None

    def exists(self, raw: str) -> bool:
        """``raw`` names a regular file of the project."""
        try:
            rel, _path = self.resolve(raw)
            return self._kind(rel) == "file"
        except (ToolError, OSError):
            return False

    def protected(self, rel: str) -> bool:
        """The exam's protection covers ``rel`` (a change of it would be refused)."""
        return self.exam.protection(rel) is not None

    def python_files(self, limit: int = 2_000) -> list[str]:
        """The project's Python files (links and ignored folders left out), at most ``limit``."""
        try:
            entries, _stopped = self._walk(".")
        except ToolError:
            return []
        found = [
            e.rel
            for e in entries
            if e.kind == "file" and e.rel.endswith(".py") and e.size <= MAX_GREP_FILE
        ]
        return found[:limit]

    # -- dispatch --------------------------------------------------------------

    async def execute(self, name: str, arguments: str) -> ToolOutcome:
        """Run one tool call; the result is valid UTF-8 whatever the file names (a name that
        is not UTF-8 would otherwise make the next request to the model unencodable)."""
        outcome = await self._execute(name, arguments)
        content, summary = printable(outcome.content), printable(outcome.summary)
        if content is outcome.content and summary is outcome.summary:
            return outcome
        return dataclasses.replace(outcome, content=content, summary=summary)

    async def _execute(self, name: str, arguments: str) -> ToolOutcome:
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolOutcome(
                False,
                f"error: the arguments are not valid JSON ({exc}); "
                "send a JSON object matching the tool's schema",
                "malformed arguments",
            )
        if not isinstance(args, dict):
            return ToolOutcome(
                False, "error: the arguments must be a JSON object", "malformed arguments"
            )
        if name not in TOOL_NAMES:
            known = ", ".join(sorted(TOOL_NAMES))
            return ToolOutcome(
                False, f"error: no tool named {name!r} (tools: {known})", "unknown tool"
            )
        try:
            if name == "run_command":
                return await self._run_command(args)
            handler = getattr(self, f"_{name}")
            result: ToolOutcome = await anyio.to_thread.run_sync(handler, args)
            return result
        except Refused as exc:
            return ToolOutcome(False, f"refused: {exc}", f"refused: {exc}", refused=True)
        except ToolError as exc:
            return ToolOutcome(False, f"error: {exc}", str(exc))
        except (OSError, UnicodeError) as exc:
            return ToolOutcome(False, f"error: {exc}", str(exc))

    @staticmethod
    def _str_arg(args: dict[str, Any], key: str, *, required: bool = True) -> str:
        value = args.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise ToolError(f"argument {key!r} must be a string")
        return value

    # -- tools -----------------------------------------------------------------

    def _kind(self, rel: str) -> safefs.Kind | None:
        """What ``rel`` is, links not followed (None: missing)."""
        try:
            return safefs.kind(self.root, rel)
        except safefs.UnsafePath as exc:
            raise Refused(str(exc)) from None

    @staticmethod
    def _special(rel: str, kind: safefs.Kind | None) -> None:
        if kind not in (None, "file", "dir"):
            raise ToolError(
                f"{rel} is {safefs.describe(kind)}, not a regular file: the tools only read "
                "and write regular files"
            )

    def _read(self, rel: str, limit: int = MAX_FILE_BYTES) -> bytes:
        try:
            return safefs.read_file(self.root, rel, limit=limit)
        except safefs.FileTooLarge as exc:
            raise ToolError(
                f"{rel} is too large to read whole ({exc.size} bytes); "
                "use grep, or run_command with head, tail or sed"
            ) from None
        except safefs.NotRegularFile as exc:
            raise ToolError(str(exc)) from None
        except safefs.UnsafePath as exc:
            raise Refused(str(exc)) from None

    def _write(self, rel: str, data: bytes) -> None:
        try:
            safefs.write_file(self.root, rel, data)
        except safefs.UnsafePath as exc:
            raise Refused(str(exc)) from None

    def _read_file(self, args: dict[str, Any]) -> ToolOutcome:
        rel, _path = self.resolve(args.get("path"))
        kind = self._kind(rel)
        if kind == "dir":
            raise ToolError(f"{rel} is a folder; use list_files")
        if kind is None:
            raise ToolError(f"{rel} does not exist")
        self._special(rel, kind)
        data = self._read(rel)
        if b"\x00" in data[:8000]:
            raise ToolError(f"{rel} is a binary file ({len(data)} bytes)")
        text = data.decode("utf-8", errors="replace")
        lines = text.count("\n") + (not text.endswith("\n") and bool(text))
        return ToolOutcome(True, _cut(text, MAX_READ_CHARS), f"{rel} ({lines} lines)")

    def _write_file(self, args: dict[str, Any]) -> ToolOutcome:
        rel, _path = self.resolve(args.get("path"))
        content = self._str_arg(args, "content")
        kind = self._kind(rel)
        if kind == "dir":
            raise ToolError(f"{rel} is a folder")
        self._special(rel, kind)
        old = self._read(rel) if kind == "file" else None
        new = content.encode()
        if old == new:
            raise ToolError(f"{rel} already holds exactly this content: nothing changed")
        self._guard(rel, old, new)
        self._write(rel, new)
        verb = "updated" if old is not None else "created"
        return ToolOutcome(
            True,
            f"{verb} {rel} ({len(new)} bytes){self_import_note(rel, content)}",
            f"{verb} {rel} ({content.count(chr(10)) + 1} lines)",
            changed=(rel,),
        )

    def _edit_file(self, args: dict[str, Any]) -> ToolOutcome:
        rel, _path = self.resolve(args.get("path"))
        old_text = self._str_arg(args, "old_text")
        new_text = self._str_arg(args, "new_text")
        kind = self._kind(rel)
        self._special(rel, kind)
        if kind != "file":
            raise ToolError(f"{rel} does not exist; use write_file to create it")
        if not old_text:
            raise ToolError("old_text is empty; give the exact text to replace")
        if old_text == new_text:
            raise ToolError("new_text is the same as old_text: nothing would change")
        data = self._read(rel)
        text = data.decode("utf-8", errors="strict")
        count = text.count(old_text)
        if count > 1:
            lines = _match_lines(text, old_text)
            raise ToolError(
                f"old_text matches {count} times in {rel} (lines {', '.join(map(str, lines))}); "
                "include more surrounding lines so it matches exactly once"
            )
        if count == 1:
            start = text.index(old_text)
            match = Match(start, start + len(old_text), new_text)
        else:
            near = near_match(text, old_text, new_text)
            if near is None:
                raise ToolError(f"old_text not found in {rel}. {_near_miss(text, old_text)}")
            if isinstance(near, str):
                raise ToolError(f"old_text {near} in {rel}; copy the exact text from read_file")
            match = near
        updated = text[: match.start] + match.new_text + text[match.end :]
        self._guard(rel, data, updated.encode())
        self._write(rel, updated.encode())
        line = text.count("\n", 0, match.start) + 1
        removed = len(text[match.start : match.end].splitlines())
        added = len(match.new_text.splitlines())
        summary = f"edited {rel}:{line} (-{removed} +{added} lines)"
        note = self_import_note(rel, updated)
        if not match.forgiven:
            return ToolOutcome(True, f"edited {rel} at line {line}{note}", summary, changed=(rel,))
        return ToolOutcome(
            True,
            f"edited {rel} at line {line}{note}. Note: old_text did not match exactly; it matched "
            f"once when {match.forgiven} is ignored, so that text of the file was replaced "
            "(next time copy old_text exactly from read_file)",
            summary[:-1] + f", near match: {match.forgiven})",
            changed=(rel,),
        )

    def _walk(self, rel: str) -> tuple[list[safefs.Entry], bool]:
        """Files and symlinks under ``rel`` (links not followed, special files left out),
        and whether the walk stopped at MAX_WALK entries."""

        def skip(name: str) -> bool:
            return name in SKIP_DIRS or name.endswith(".egg-info")

        try:
            entries = list(safefs.walk(self.root, rel, skip_dir=skip, limit=MAX_WALK))
        except FileNotFoundError:
            raise ToolError(f"{rel} does not exist") from None
        except safefs.UnsafePath as exc:
            raise Refused(str(exc)) from None
        found = [
            e
            for e in entries
            if e.kind in ("file", "symlink") and e.rel.rsplit("/", 1)[-1] != ".git"
        ]
        return found, len(entries) >= MAX_WALK

    def _list_files(self, args: dict[str, Any]) -> ToolOutcome:
        raw = self._str_arg(args, "path", required=False) or "."
        rel, _base = self.resolve(raw)
        entries, stopped = self._walk(rel)
        # A symlink is shown as `name -> target`: its text, never what it points to.
        files = [e.rel if e.kind == "file" else f"{e.rel} -> {e.link}" for e in entries]
        shown = files[:MAX_LIST]
        more = (
            f"\n[... {counted(len(files) - MAX_LIST, 'more file')}]"
            if len(files) > MAX_LIST
            else ""
        )
        if stopped:
            more += f"\n[stopped after {MAX_WALK} entries: give a folder to list]"
        return ToolOutcome(
            True,
            "\n".join(shown) + more or "(no files)",
            f"{counted(len(files), 'file')} under {rel}",
        )

    def _grep(self, args: dict[str, Any]) -> ToolOutcome:
        pattern = self._str_arg(args, "pattern")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ToolError(f"invalid regular expression: {exc}") from None
        raw = self._str_arg(args, "path", required=False) or "."
        rel, _base = self.resolve(raw)
        kind = self._kind(rel)
        if kind is None:
            raise ToolError(f"{rel} does not exist")
        self._special(rel, kind)
        entries, stopped = self._walk(rel)
        hits: list[str] = []
        budget = MAX_GREP_BYTES
        for entry in entries:
            # Links are not followed: what a link inside the sandbox points to is searched
            # under its own name; what is outside is not searched at all.
            if entry.kind != "file" or entry.size > MAX_GREP_FILE or entry.size > budget:
                continue
            try:
                data = safefs.read_file(self.root, entry.rel, limit=MAX_GREP_FILE)
            except OSError:
                continue
            budget -= len(data)
            if b"\x00" in data[:8000]:
                continue
            for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                if regex.search(line):
                    hits.append(f"{entry.rel}:{number}: {line[:300]}")
                    if len(hits) >= MAX_GREP:
                        break
            if len(hits) >= MAX_GREP:
                break
        found = len(hits)  # the notes below are no matches
        if found >= MAX_GREP:
            hits.append(f"[stopped at {MAX_GREP} matches]")
        elif stopped:
            hits.append(f"[searched the first {MAX_WALK} entries only: give a folder]")
        return ToolOutcome(
            True,
            "\n".join(hits) or "no matches",
            f"{counted(found, 'match', 'matches')} for /{pattern}/",
        )

    async def _run_command(self, args: dict[str, Any]) -> ToolOutcome:
        command = self._str_arg(args, "command")
        if not command.strip():
            raise ToolError("command is empty")
        result = await self.run_command(command)
        if result.timed_out:
            status = "timed out"
        elif result.exit_code is None:
            status = "killed"
        else:
            status = f"exit code {result.exit_code}"
        content = f"[{status}, {result.duration_s:.1f} s]\n{_cut(plain_text(result.output))}"
        if self.network_off and _looks_like_no_network(result.output):
            content += "\n[note: the sandbox has no network access; this is not an outage]"
        if self.max_memory_gib and _looks_like_out_of_memory(result.output):
            content += (
                f"\n[note: sandboxed commands may reserve at most {self.max_memory_gib} GiB of "
                "address space (the developer can change it with --max-memory)]"
            )
        first = command.strip().splitlines()[0][:80]
        return ToolOutcome(result.exit_code == 0, content, f"$ {first} → {status}")


@dataclass(frozen=True)
class Match:
    """Where ``old_text`` is in a file (character offsets) and what replaces it."""

    start: int
    end: int
    new_text: str
    forgiven: str = ""  # what differed in a near match ("quote style", "indentation", ...)


_QUOTES = str.maketrans("'", '"')


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


_LINE_TIERS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("trailing spaces", str.rstrip),
    ("indentation", str.strip),
    ("indentation and quote style", lambda line: line.strip().translate(_QUOTES)),
)


def near_match(text: str, old_text: str, new_text: str) -> Match | str | None:
    """The one place ``old_text`` matches once what small models get wrong is ignored: the
    quote style (``'`` for ``"``), then, line by line, trailing spaces and indentation (spaces
    inside a line are not forgiven: they can matter).
    None when nothing is near; a reason when a near match is not unique (looser kinds are
    not tried then: a guess between two places is no help)."""
    quoted_text, quoted_old = text.translate(_QUOTES), old_text.translate(_QUOTES)
    count = quoted_text.count(quoted_old)
    if count == 1:
        start = quoted_text.index(quoted_old)
        return Match(start, start + len(old_text), new_text, "quote style")
    if count > 1:
        return f"matches {count} times once quote style is ignored"
    old_lines = _trimmed(old_text.splitlines())
    if not old_lines:
        return None
    lines = text.splitlines(keepends=True)
    bare = [line.rstrip("\r\n") for line in lines]
    width = len(old_lines)
    for why, norm in _LINE_TIERS:
        want = [norm(line) for line in old_lines]
        if not any(want):
            continue
        found = [
            i
            for i in range(len(bare) - width + 1)
            if all(norm(bare[i + k]) == want[k] for k in range(width))
        ]
        if len(found) > 1:
            return f"matches {len(found)} times once {why} is ignored"
        if found:
            at = found[0]
            start = sum(len(line) for line in lines[:at])
            end = start + sum(len(line) for line in lines[at : at + width])
            last = lines[at + width - 1]
            ending = last[len(last.rstrip("\r\n")) :]
            newline = "\r\n" if last.endswith("\r\n") else "\n"
            new_lines = _trimmed(new_text.splitlines())
            if why != "trailing spaces":
                new_lines = _reindent(new_lines, old_lines, bare[at : at + width])
            replacement = newline.join(new_lines) + ending if new_lines else ""
            return Match(start, end, replacement, why)
    return None


def _trimmed(lines: list[str]) -> list[str]:
    """Without the blank lines at either end."""
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _reindent(new_lines: list[str], old_lines: list[str], file_lines: list[str]) -> list[str]:
    """``new_lines`` moved to the file's indentation: each line takes the indentation the file
    has where old_text had the same line (or the line at the same position), shifted by how
    much the model indented it differently from that old line."""
    stripped_old = [line.strip() for line in old_lines]
    result = []
    for k, line in enumerate(new_lines):
        if not line.strip():
            result.append("")
            continue
        same = line.strip()
        j = stripped_old.index(same) if same in stripped_old else min(k, len(old_lines) - 1)
        old_indent, file_indent, own = _indent(old_lines[j]), _indent(file_lines[j]), _indent(line)
        if own.startswith(old_indent):
            result.append(file_indent + own[len(old_indent) :] + line.lstrip())
        elif old_indent.startswith(own):
            less = len(old_indent) - len(own)
            result.append(file_indent[: max(len(file_indent) - less, 0)] + line.lstrip())
        else:
            result.append(file_indent + line.lstrip())
    return result


def _match_lines(text: str, needle: str) -> list[int]:
    lines, start = [], 0
    while (index := text.find(needle, start)) != -1:
        lines.append(text.count("\n", 0, index) + 1)
        start = index + 1
    return lines[:10]


def _near_miss(text: str, needle: str) -> str:
    """Point the model at the closest region of the file."""
    squashed = " ".join(needle.split())
    lines = text.splitlines()
    if squashed and squashed in " ".join(text.split()):
        return "It matches if whitespace is ignored: copy the exact indentation from read_file."
    want = needle.splitlines() or [needle]
    width = len(want)
    best, best_at = 0.0, -1
    for i in range(max(len(lines) - width + 1, 1)):
        window = "\n".join(lines[i : i + width])
        score = difflib.SequenceMatcher(None, window, needle, autojunk=False).quick_ratio()
        if score > best:
            best, best_at = score, i
    if best_at < 0 or best < 0.5:
        return "Read the file again and copy the exact text."
    excerpt = "\n".join(lines[best_at : best_at + width])
    return f"The closest text is at line {best_at + 1}:\n{_cut(excerpt, 2000)}"


_NO_NET = re.compile(
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"Could not resolve host|getaddrinfo failed|nodename nor servname",
    re.IGNORECASE,
)


_NO_MEMORY = re.compile(
    r"MemoryError|Cannot allocate memory|could not allocate memory|out of memory"
    r"|Could not reserve enough space|std::bad_alloc|failed to reserve",
    re.IGNORECASE,
)


def _looks_like_out_of_memory(output: str) -> bool:
    return bool(_NO_MEMORY.search(output))


def _looks_like_no_network(output: str) -> bool:
    return bool(_NO_NET.search(output))
