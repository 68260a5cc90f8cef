"""Every text the model reads from the engine: the system prompt and the messages of a session.

Data, not code spread through the loop: each message is a template here, filled by the one
function that needs it. Change a wording here and nowhere else.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from codexloop.core.briefing import Briefing

EXAM_CHARS = 12_000  # of a target file or an exam change shown to the model
PROJECT_FILES_LISTED = 200  # in the first message; the model lists the rest itself
FEEDBACK_HUNK_LINES = 200  # of a rejected hunk quoted back to the model

SYSTEM = """\
You are a coding agent working inside a sandboxed copy of a software project (a git worktree).
Your goal: make the target tests pass. The tests are the specification.

Rules:
- The target test files and the test setup (conftest.py, pytest.ini, tox.ini, setup.cfg, the
  [tool.pytest] section of pyproject.toml, JavaScript test-runner configs, the scripts of
  package.json, and any file the test command runs) are protected: you cannot change them, and
  the engine restores them before every test run. Change the code under test instead.
- Use the tools to read, search and edit files. Paths are relative to the project root.
- run_command runs in the sandbox: time-limited, no network unless the developer allowed it,
  nothing installed outside the project. Use it to explore or try things; the engine runs
  the target tests itself.
- When you think the code is fixed, reply with a short summary and no tool call: the engine then
  runs the tests and tells you the result.
- Keep changes small and focused on what the tests require.
"""

SYSTEM_TEXT = """\
You are a coding agent working inside a sandboxed copy of a software project (a git worktree).
Your goal: make the target tests pass. The tests are the specification.

Rules:
- The target test files and the test setup (conftest.py, pytest.ini, tox.ini, setup.cfg, the
  [tool.pytest] section of pyproject.toml, and any file the test command runs) are protected:
  you cannot change them, and the engine restores them before every test run. Change the code
  under test instead.
- You act by writing tool calls as text: one JSON object per line, for example
  {{"name": "edit_file", "arguments": {{"path": "src/app.py", "old_text": "return a - b", "new_text": "return a + b"}}}}
  The tools (paths relative to the project root):
{tools}
  The engine runs each call and answers with its result.
- Or write a whole new file in a fenced code block whose first line is a comment with its path
  (# src/app.py); or a SEARCH/REPLACE block, or a unified diff.
- run_command runs in the sandbox: time-limited, no network. The engine runs the target tests
  itself after your turn.
- When you think the code is fixed, reply with a short summary and no tool call: the engine then
  runs the tests and tells you the result.
- Keep changes small and focused on what the tests require.
"""


def system(edit_format: str, tools: Sequence[dict[str, Any]]) -> str:
    """The system prompt: the tools are the server's to describe (native calls), or listed
    here when the model writes its calls as text (``--edit-format text``: no tool is sent)."""
    if edit_format != "text":
        return SYSTEM
    lines = []
    for tool in tools:
        function = tool["function"]
        parameters = function["parameters"]
        required = set(parameters.get("required", ()))
        names = ", ".join(
            name if name in required else f"{name}?" for name in parameters["properties"]
        )
        lines.append(f"  - {function['name']}{{{names}}}: {function['description']}")
    return SYSTEM_TEXT.format(tools="\n".join(lines))


TASK = "Task from the developer: {task}\n"
HINT = "Approach to take: {hint}\n"
CONTINUED = (
    "This sandbox continues the work of an earlier session ({session}): the code already holds "
    "its changes.\n"
)
TARGETS = "Target tests (all must pass): {targets}"
TEST_COMMAND = (
    "Test command: {command}\nThe engine runs it after each of your turns and tells you the "
    "result: you do not need to run it yourself.\n"
)
PROJECT_FILES = "Project files:\n{listing}\n"
MORE_FILES = "\n[... {count} more: use list_files]"
EXAM_FILE = "--- {path} (protected) ---\n{source}"
MODULES = "\nProject code the tests import (change it with the tools):"
MODULE_FILE = "--- {path} ---\n{source}"
MODULE_OUTLINE = "--- {path} (outline of its {lines} lines: read_file shows it whole) ---\n{source}"
MODULES_LEFT_OUT = "[also imported, not shown: {paths}]"
MODULES_MISSING = "Imported by the tests but not in the project yet: {names}"
UNDEFINED = "The tests import {name} from {path}, which does not define it yet."
BASELINE = "\nThe tests are red now:\n{digest}"
# Last in the first message and in every red run's message: what to do, said where a small
# model reads it (at the end), and a sentence of diagnosis before the change, which makes
# small models change the right line far more often than a bare "fix it".
ASK = (
    "\nChange {code} so that the tests pass (the tests are right and cannot be changed). "
    "Say in one sentence what is wrong, then make the change."
)
ASK_CODE_NAMED = 3  # files named in the ask; more are "the code under test"
CUT = "\n[... cut ...]"

RED = "{digest}\n{ask}"
SETBACK = (
    "Your change stopped the target tests from running ({ran} ran, {before} before it){cause}. "
    "The engine put {paths} back as {when}; the same change again will be refused. What your "
    "change caused:\n{digest}\n\n{advice}"
    "Fix the code so the tests pass, starting from the files as they are now."
)
SETBACK_MISSING = (
    "{module} is not installed here and is not part of the project: use only the standard "
    "library and the project's own code.\n"
)
EXAM_CHANGED = (
    "The developer changed the exam (the tests that define success). The change:\n"
    "{diff}\nThe new version is what the next test run uses."
)
STEERING = "Message from the developer: {text}"
ANSWER_CUT = (
    "Your last answer ran past {limit} characters and was cut off (no tool call of it was run). "
    "Keep answers short and make changes with the tools."
)
ANSWER_REPEATED = (
    "Your last answer repeated the same text over and over and was cut off (nothing of it was "
    "run). Answer briefly: say what is wrong, then make one change."
)
TOOL_BUDGET_SPENT = (
    "not executed: the budget of {limit} tool calls for this iteration is spent; the tests run now"
)
REJECTED = "The reviewer rejected this change of {path}"
REJECTED_HUNK = "\n```diff\n{hunk}\n```"
REVERTED = "\nIt has been reverted in the sandbox."
NOT_REVERTED = "\nIt could not be reverted automatically: undo it yourself."


def clipped(text: str, limit: int = EXAM_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + CUT


def plain_command(targets: Sequence[str], test_cmd: str | None) -> str:
    """The test command as the model reads it: the developer's own, or ``pytest TARGETS``
    (the engine's own options and interpreter path are nobody's business but its own)."""
    return test_cmd or shlex.join(["pytest", *targets])


@dataclass(frozen=True)
class FirstMessage:
    """The first message in named sections (``(kind, text)``), so that the conversation can
    shorten the parts the model needs least when it outgrows the context: kinds are
    ``task``, ``continued``, ``targets``, ``command``, ``files``, ``modules``, ``exam`` and
    ``baseline``."""

    sections: tuple[tuple[str, str], ...]

    @property
    def text(self) -> str:
        return "\n".join(text for _kind, text in self.sections)


def first_message(
    *,
    task: str | None,
    continue_from: str | None,
    targets: Sequence[str],
    test_command: str,
    files: Sequence[str],
    exam: Sequence[tuple[str, str]],
    digest: str,
    modules: Briefing | None = None,
    hint: str = "",
) -> FirstMessage:
    """The session's first message: task, targets, the test command as the developer would
    type it (:func:`plain_command`), project files, the project code the exam imports, the
    exam as the developer has it (``(path, source)``) and the baseline's failure."""
    parts: list[tuple[str, str]] = []
    if task:
        parts.append(("task", TASK.format(task=task)))
    if hint:
        parts.append(("hint", HINT.format(hint=hint)))
    if continue_from:
        parts.append(("continued", CONTINUED.format(session=continue_from)))
    parts.append(("targets", TARGETS.format(targets=", ".join(targets))))
    parts.append(("command", TEST_COMMAND.format(command=test_command)))
    listing = "\n".join(files[:PROJECT_FILES_LISTED])
    if len(files) > PROJECT_FILES_LISTED:
        listing += MORE_FILES.format(count=len(files) - PROJECT_FILES_LISTED)
    parts.append(("files", PROJECT_FILES.format(listing=listing)))
    parts.extend(
        ("exam", EXAM_FILE.format(path=path, source=clipped(source))) for path, source in exam
    )
    if modules is not None and (modules.modules or modules.missing):
        parts.append(("modules", imported_code(modules)))
    parts.append(("baseline", BASELINE.format(digest=digest)))
    parts.append(("ask", ask(code_paths(modules), modules.undefined if modules else ())))
    return FirstMessage(tuple(parts))


def code_paths(modules: Briefing | None) -> tuple[str, ...]:
    """The project files the exam imports (shown, or missing a name it imports)."""
    if modules is None:
        return ()
    paths = [shown.path for shown in modules.modules]
    paths += [path for _name, path in modules.undefined if path not in paths]
    return tuple(dict.fromkeys(paths))


def ask(paths: Sequence[str], undefined: Sequence[tuple[str, str]] = ()) -> str:
    """What the model is asked to do, last in a message: the names the tests import and the
    code does not define yet, and the files to change (when the exam imports a few)."""
    lines = [UNDEFINED.format(name=name, path=path) for name, path in undefined]
    code = " and ".join(paths) if 0 < len(paths) <= ASK_CODE_NAMED else "the code under test"
    lines.append(ASK.format(code=code).lstrip("\n"))
    return "\n" + "\n".join(lines)


GUARD_RED = (
    "The target tests pass, but your change broke tests that passed before (the regression "
    "guard, {command}):\n{broken}\n\nChange the code so that these pass again and the target "
    "tests still pass. The guard's tests are protected: change the code, not them."
)
GUARD_PROBLEM = (
    "The target tests pass, but the regression guard's run cannot be trusted ({problem}). "
    "Its output:\n{output}"
)
GUARD_CASE = "## {label}: {message}\n{detail}"
GUARD_CHARS = 6_000


def guard_red(
    broken: Sequence[tuple[str, str, str]], problem: str | None, output: str, command: str = ""
) -> str:
    """What the model reads when the regression guard fails: the tests it broke
    (``(label, message, detail)``), or why the guard's run is not a verdict."""
    if problem is not None:
        tail = output[-GUARD_CHARS:] if len(output) > GUARD_CHARS else output
        return GUARD_PROBLEM.format(problem=problem, output=tail.rstrip() or "(none)")
    blocks: list[str] = []
    budget = GUARD_CHARS
    for label, message, detail in broken:
        block = GUARD_CASE.format(label=label, message=message, detail=detail[:1_500].rstrip())
        if len(block) > budget:
            blocks.append(f"[... {len(broken) - len(blocks)} more]")
            break
        blocks.append(block)
        budget -= len(block)
    return GUARD_RED.format(command=command or "--guard", broken="\n".join(blocks))


GATE_RED = (
    "The target tests pass, but the gate `{command}` failed ({how}). Its output:\n{output}\n\n"
    "Change the code so that the gate passes too, and the tests still pass. Do not silence the "
    "gate (no ignore comments, no change of its configuration): the developer reviews the diff."
)
GATE_OUTPUT_CHARS = 6_000


def gate_red(command: str, exit_code: int | None, timed_out: bool, output: str) -> str:
    """What the model reads of a gate that failed after a green run of the targets."""
    how = "it ran out of time" if timed_out else f"exit code {exit_code}"
    tail = output if len(output) <= GATE_OUTPUT_CHARS else "[...]\n" + output[-GATE_OUTPUT_CHARS:]
    return GATE_RED.format(command=command, how=how, output=tail.rstrip() or "(none)")


NOW_HEAD = "The code as it is now, with your changes so far (the tests below ran on it):"
NOW_PUT_BACK = "The code as it is now, your last change put back (the tests below ran before that):"
NOW_FILE = "--- {path} ---\n{source}"
NOW_LEFT_OUT = "[also changed, not shown: {paths}]"
NOW_CHARS = 8_000  # of changed files shown in a red message, all together


def red(digest: str, paths: Sequence[str], now: Sequence[tuple[str, str]] = ()) -> str:
    """What the model reads of a red test run: the files as they are now (``now``: ``(path,
    source)`` of the files its changes touched, for a model that starts each iteration
    afresh), the failure, then what to do."""
    return showing(now, RED.format(digest=digest, ask=ask(paths)))


def setback(
    *,
    ran: int,
    before: int,
    paths: Sequence[str],
    when: str,
    cause: str,
    module: str,
    digest: str,
    now: Sequence[tuple[str, str]] = (),
) -> str:
    """What the model reads when its change was undone as a setback (``cause``: the error
    line; ``module``: the module found missing, if that was it; ``now``: as for :func:`red`)."""
    text = SETBACK.format(
        ran=ran,
        before=before,
        cause=f": {cause}" if cause else "",
        paths=", ".join(paths) or "nothing",
        when=when,
        digest=digest,
        advice=SETBACK_MISSING.format(module=module) if module else "",
    )
    return showing(now, text, head=NOW_PUT_BACK)


def showing(now: Sequence[tuple[str, str]], text: str, *, head: str = NOW_HEAD) -> str:
    """``text`` after the files of ``now`` (``(path, source)``), as many as fit."""
    if not now:
        return text
    shown, left_out, budget = [head], [], NOW_CHARS
    for path, source in now:
        if len(source) <= budget:
            shown.append(NOW_FILE.format(path=path, source=source.rstrip("\n")))
            budget -= len(source)
        else:
            left_out.append(path)
    if left_out:
        shown.append(NOW_LEFT_OUT.format(paths=", ".join(left_out)))
    return "\n".join(shown) + "\n\n" + text


RESUMED = (
    "[The session was interrupted here and has been resumed. The code is as the work so far "
    "left it (changes of an unfinished turn included); the test command was run again.]"
)


def resumed(digest: str, paths: Sequence[str]) -> str:
    """The first thing a resumed session says: it was interrupted, and how the tests stand."""
    return f"{RESUMED}\n\n{red(digest, paths)}"


def imported_code(briefing: Briefing) -> str:
    """The project code the exam imports, as the first message shows it."""
    blocks = [MODULES] if briefing.modules else []
    for shown in briefing.modules:
        template = MODULE_FILE if shown.whole else MODULE_OUTLINE
        blocks.append(template.format(path=shown.path, source=shown.text, lines=shown.lines))
    if briefing.left_out:
        blocks.append(MODULES_LEFT_OUT.format(paths=", ".join(briefing.left_out)))
    if briefing.missing:
        blocks.append(MODULES_MISSING.format(names=", ".join(briefing.missing)))
    return "\n".join(blocks)


def rejection(
    path: str, comment: str | None, hunk_lines: Sequence[str] | None, reverted: bool
) -> str:
    """What the model reads of one hunk the reviewer rejected."""
    text = REJECTED.format(path=path)
    text += f": {comment}" if comment else "."
    if hunk_lines is not None:
        lines = list(hunk_lines)
        if len(lines) > FEEDBACK_HUNK_LINES:
            more = len(lines) - FEEDBACK_HUNK_LINES
            lines = [*lines[:FEEDBACK_HUNK_LINES], f"[... {more} more lines ...]"]
        text += REJECTED_HUNK.format(hunk="\n".join(lines))
    return text + (REVERTED if reverted else NOT_REVERTED)


# Tool calls and edits written as text, and answers that change nothing (core/textcalls).
TEXT_CALLS_RAN = "The engine ran the tool calls written in your answer:\n{results}"
EXCERPT_MERGED = (
    "\n(the content left out definitions the file has: merged instead — {done}; the rest of "
    "the file is kept)"
)
SELF_IMPORT_LEFT_OUT = "\n(left out {lines}: a module cannot import from itself)"
TEXT_CALLS_CHANGED = "\n\nThey changed the code: the tests run next."
TEXT_CALL_RESULT = "\n--- {call}\n{content}"
TEXT_EDITS_APPLIED = "The engine applied the edits written in your answer (the tests run next):\n"
TEXT_EDITS_FAILED = "Not applied:\n"
TEXT_EDIT_LINE = "- {what}: {result}\n"
TEXT_ONLY = (
    "not run: this session reads tool calls from the text of your answer only "
    "(--edit-format text); write the call as JSON on a line of its own, for example:\n{call}"
)
NOTHING_PLAIN = (
    "Your last answer changed no file: it had no tool call and no edit the engine could apply, "
    "so the tests below ran on unchanged code."
)
NOTHING_PLAIN_YET = (
    "Your last answer changed no file: it had no tool call and no edit the engine could apply. "
    "Make the change now."
)
# A first answer that only said what is wrong, from a model that may write its edits as text:
# one concrete thing to write. Qwen2.5-Coder-1.5B, told "make the change now" with the ways to
# call the tools, answered "I will provide the necessary code" and stopped, six times a run.
NOTHING_PLAIN_WRITE = (
    "Your last answer changed no file. Now write the whole new {path} in one fenced code block "
    "whose first line is the comment # {path} — the engine writes it to the file."
)
ECHOED = (
    "Your answer repeated the engine's message instead of answering it. Do not repeat it: "
    "say in one sentence what is wrong, then change the code."
)
NOTHING_FAILED = "Nothing in the project changed: nothing of your last answer was applied.\n"
NOTHING_REPEATED = (
    "You gave the same answer three times and it changed nothing: the engine runs the tests "
    "now. Do something different."
)
HOW_TOOLS = (
    "To change a file, call a tool: edit_file replaces old_text (copied exactly from the file) "
    "by new_text, write_file writes a whole file. For example, call edit_file with {arguments}"
)
HOW_AUTO = (
    "To change a file, call a tool (edit_file replaces old_text, copied exactly from the file, "
    "by new_text; write_file writes a whole file), or write the call as JSON on a line of its "
    "own, for example:\n{call}\nor write the whole new file in a fenced code block whose first "
    "line is a comment with its path (# {path})."
)
HOW_TEXT = (
    "To change a file, write a tool call as JSON on a line of its own, for example:\n{call}\n"
    "or write the whole new file in a fenced code block whose first line is a comment with its "
    "path (# {path})."
)


EXAMPLE_OLD = "the exact lines to replace"  # placeholders: a model that copies the example
EXAMPLE_NEW = "the lines that replace them"  # as it is is told so (textcalls)
EXAMPLE_ARGUMENTS = (
    '{{"path": {path}, "old_text": "' + EXAMPLE_OLD + '", "new_text": "' + EXAMPLE_NEW + '"}}'
)
EXAMPLE_COPIED = (
    "{call}: not run, it is the example from the instructions: old_text must be lines copied "
    "from the file, new_text what replaces them"
)
EXAMPLE_CALL = '{{"name": "edit_file", "arguments": {arguments}}}'


def example_call(path: str) -> tuple[str, str]:
    """(the arguments, the whole call as JSON) of a one-line ``edit_file`` example on ``path``."""
    quoted = '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
    arguments = EXAMPLE_ARGUMENTS.format(path=quoted)
    return arguments, EXAMPLE_CALL.format(arguments=arguments)


def how_to_edit(edit_format: str, path: str) -> str:
    """How to make a change the engine applies, with a one-line example on ``path``."""
    arguments, call = example_call(path)
    if edit_format == "tools":
        return HOW_TOOLS.format(arguments=arguments)
    template = HOW_TEXT if edit_format == "text" else HOW_AUTO
    return template.format(call=call, path=path)


def nothing_applied(
    failures: Sequence[str],
    *,
    repeated: bool,
    edit_format: str,
    path: str,
    testing: bool = True,
) -> str:
    """An answer that changed nothing: what was not applied (``failures``, one line each;
    none: the answer asked for nothing; ``testing``: the tests run now on unchanged code),
    and how to change a file."""
    if repeated:
        head = NOTHING_REPEATED
    elif failures:
        head = NOTHING_FAILED + "".join(f"- {line}\n" for line in failures)
    else:
        if not testing and edit_format != "tools":
            return NOTHING_PLAIN_WRITE.format(path=path)
        head = NOTHING_PLAIN if testing else NOTHING_PLAIN_YET
    return f"{head.rstrip()}\n{how_to_edit(edit_format, path)}"
