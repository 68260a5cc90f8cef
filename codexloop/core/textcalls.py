"""The model's answers acted on: tool calls (native or written as text), edits written as text,
and what the model and the developer are told when an answer changes nothing.

Small local models rarely emit native tool calls. They write the call as text: a JSON object
(or a list of them) with ``name`` and ``arguments`` (or ``parameters``), bare, in a ```` ```json
```` fence, in ``<tool_call>``/``<tools>`` tags, after Llama's ``<|python_tag|>`` or Mistral's
``[TOOL_CALLS]`` marker. :func:`find_calls` reads those for the six tools; they then run exactly
like native calls — same validation, refusals, tool budget, ``tool_call``/``tool_result``
events — and their results come back as a user message (the model sent no call id to answer).
An answer whose text calls changed files ends the turn, as edits written as text do: a model
that writes its calls as text is a small one, and the test run tells it more than it would
find on its own (Qwen2.5-Coder-1.5B fixed a bug with its first call, then wandered on).

:class:`Work` is one turn of the model's work between two test runs. With ``edit_format``
``auto`` an answer's native calls come first, then calls written as text, then edits written
as text (:mod:`~codexloop.core.textedits`; not after this turn changed files through the
tools: the model's last answer is then a summary, not an edit); ``tools`` acts on native calls
only, ``text`` on text forms only.

An answer that changes nothing — no call, no edit, or only refused or failed ones — gets a
message saying what was not applied and how to call the tools (:func:`prompts.nothing_applied`);
from the second such answer in a row the developer gets a ``notice``. A failed call or edit
lets the model try again in the same turn, but the same answer (or the same failing call) given
three times, or five idle answers in a row, end the turn: the engine runs the tests instead of
spending the budget. An answer with no call and no edit ends the turn as it always has, and so
does a ``run_command`` that ran the exam's tests after a change and passed
(:func:`~codexloop.core.testrun.runs_the_exam`): the engine runs the exam at once, before a
model that saw green wanders on and undoes its fix.

Over 400 lines: the readers of text calls and the rules of a turn (idle, repeats, budgets)
judge the same answers; split, the rules would re-read what the readers found.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from weakref import WeakKeyDictionary

import anyio

from codexloop.core import events as ev
from codexloop.core import prompts, pysyntax
from codexloop.core.conversation import Conversation
from codexloop.core.model import CUT_FINISHES, ToolCallRequest, Turn
from codexloop.core.textedits import Planned, excerpt_write, read_edits, without_self_imports
from codexloop.core.timings import Timings
from codexloop.core.tools import TOOL_NAMES, ToolOutcome, Tools

REPEATS_END_TURN = 3  # the same idle answer (or failing call) this often ends the turn
IDLE_ANSWERS_END_TURN = 5  # idle answers in a row within one turn end it too
CALLS_NOTICE = (
    "the model writes its tool calls as text: codexloop runs them like tool calls "
    "(--edit-format tools turns this off)"
)
EDITS_NOTICE = (
    "the model writes its edits as text: codexloop applies them through its tools "
    "(--edit-format tools turns this off)"
)
IDLE_NOTICE = "the model's last {count} answers changed nothing ({what})"
REPEAT_NOTICE = (
    "the model gave the same answer three times and it changed nothing ({what}): running the tests"
)
IDLE_END_NOTICE = "{count} answers in a row changed nothing ({what}): running the tests"
BUDGET_NOTICE = "tool budget of {limit} calls spent; running the tests"
EXAM_PASSED_NOTICE = (
    "the model ran the tests after its change and they passed: the engine runs the exam now"
)


# -- reading calls from text ---------------------------------------------------------------

_THINK = re.compile(r"<(think|thinking)>.*?(?:</\1>|\Z)", re.S | re.I)
_TAGGED = re.compile(
    r"<(tool_call|tools|tool|function_call|toolcall)>(.*?)(?:</\1>|(?=<\1>)|\Z)", re.S | re.I
)
_LLAMA_FUNCTION = re.compile(r"<function=([\w.\-]+)>(.*?)(?:</function>|\Z)", re.S)
_PYTHON_TAG = "<|python_tag|>"
_MISTRAL = "[TOOL_CALLS]"
_MISTRAL_NAMED = re.compile(r"\[TOOL_CALLS\]\s*([\w.\-]+)\s*(?:\[CALL_ID\]\s*\w+\s*)?\[ARGS\]")
_JSON_START = re.compile(r"\{\s*\"|\[\s*\{")
_JSON_FENCE = re.compile(r"```[ \t]*(json|tool_call|tool_code|tool)?[ \t]*\n(.*?)```", re.S | re.I)
_NAME_KEYS = ("name", "tool", "tool_name")
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input", "tool_input")
_DECODER = json.JSONDecoder(strict=False)  # literal newlines in strings: small models write them


@dataclass(frozen=True)
class TextCall:
    """A tool call written as text: the tool's name and its arguments as JSON text."""

    name: str
    arguments: str
    form: str  # "tagged", "llama", "mistral", "fenced", "bare", "pythonic"


def without_thinking(text: str) -> str:
    """``text`` without ``<think>`` blocks (a draft is not a request)."""
    return _THINK.sub("", text)


def _decoded(text: str) -> Iterator[tuple[Any, int, int]]:
    """Every JSON value in ``text`` that starts like an object or a list of objects:
    (value, start, end). What does not decode is skipped."""
    at = 0
    while (found := _JSON_START.search(text, at)) is not None:
        try:
            value, end = _DECODER.raw_decode(text, found.start())
        except ValueError:
            at = found.start() + 1
            continue
        yield value, found.start(), end
        at = end


_TRIPLE_QUOTED = re.compile(r'(?:"""|\'\'\')(.*?)(?:"""|\'\'\')', re.S)


def _repaired(text: str) -> str:
    """JSON as small models get it wrong: Python's triple-quoted strings made JSON strings."""
    return _TRIPLE_QUOTED.sub(lambda m: json.dumps(m.group(1)), text)


def _loads(text: str) -> list[Any]:
    """The values of a tagged call's body: JSON, one or several (triple quotes repaired),
    else a Python literal."""
    values = [value for value, _start, _end in _decoded(text)]
    values = values or [value for value, _start, _end in _decoded(_repaired(text))]
    if values:
        return values
    try:
        return [pysyntax.literal_eval(text.strip())]
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return []


def _unfenced(text: str) -> str:
    found = _JSON_FENCE.search(text)
    return found.group(2) if found else text


def _as_calls(value: Any, form: str, *, loose: bool) -> list[TextCall]:
    """The calls a decoded value holds. ``loose`` (inside tags or after a marker): any name
    is a call (an unknown one is refused by the tools); otherwise the name must be a tool's,
    or the object must hold ``arguments``/``parameters`` beside its name."""
    if isinstance(value, list):
        return [call for item in value for call in _as_calls(item, form, loose=loose)]
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("tool_calls"), list):
        return _as_calls(value["tool_calls"], form, loose=loose)
    function = value.get("function")
    if isinstance(function, dict):
        return _as_calls(function, form, loose=loose)
    name = next((value[k] for k in _NAME_KEYS if isinstance(value.get(k), str)), function)
    if not isinstance(name, str) or not name.strip():
        return []
    name = name.strip().removeprefix("functions.")
    key = next((k for k in _ARGUMENT_KEYS if k in value), None)
    known = name in TOOL_NAMES
    if key is None:
        if not known:
            return []
        skip = {*_NAME_KEYS, "function", "type", "id"}
        arguments: Any = {k: v for k, v in value.items() if k not in skip}
    else:
        if not known and not loose and key not in ("arguments", "parameters"):
            return []
        arguments = value[key]
        if isinstance(arguments, dict) and {"type", "properties"} <= set(arguments):
            return []  # a tool's schema echoed back (Qwen lists them in <tools> tags), no call
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return [TextCall(name, text, form)]


def _marked(text: str) -> tuple[list[TextCall], list[str]]:
    """Calls in tags or after markers, and descriptions of the ones that cannot be read."""
    calls: list[TextCall] = []
    unreadable: list[str] = []
    for found in _TAGGED.finditer(text):
        body = _unfenced(found.group(2))
        got = [c for v in _loads(body) for c in _as_calls(v, "tagged", loose=True)]
        calls += got
        if not got and body.strip():
            unreadable.append(f"a <{found.group(1)}> block that is not a JSON tool call")
    for found in _LLAMA_FUNCTION.finditer(text):
        body = found.group(2).strip() or "{}"
        calls.append(TextCall(found.group(1), body, "llama"))
    for marker, form in ((_PYTHON_TAG, "llama"), (_MISTRAL, "mistral")):
        if marker not in text:
            continue
        after = text.split(marker, 1)[1]
        named = _MISTRAL_NAMED.search(text) if marker == _MISTRAL else None
        if named is not None:
            values = [v for v, _s, _e in _decoded(text[named.end() :])][:1]
            calls += [TextCall(named.group(1), json.dumps(v), form) for v in values]
            continue
        got = [c for v, _s, _e in _decoded(after) for c in _as_calls(v, form, loose=True)]
        calls += got
        if not got:
            unreadable.append(f"a {marker} call that is not a JSON tool call")
    return calls, unreadable


_PYTHONIC_START = re.compile(
    r"^[ \t]*\[?[ \t]*(" + "|".join(sorted(TOOL_NAMES)) + r")[ \t]*\(", re.M
)


def _pythonic(text: str) -> list[TextCall]:
    """Calls in the Python form Llama 3.x writes, ``[edit_file(path="x.py", old_text="…")]``,
    alone or in a list, each starting a line: a tool's name, keyword arguments with literal
    values, nothing else (a line of code that calls a function of the same name is not one)."""
    calls: list[TextCall] = []
    at = 0
    while (found := _PYTHONIC_START.search(text, at)) is not None:
        at = found.end()
        expression = _balanced(text, found.start())
        if expression is None:
            continue
        try:
            tree = pysyntax.parse(expression.strip(), mode="eval").body
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
        items = tree.elts if isinstance(tree, ast.List) else [tree]
        got = [call for item in items if (call := _pythonic_call(item)) is not None]
        if got and len(got) == len(items):
            calls += got
            at = found.start() + len(expression)
    return calls


def _balanced(text: str, start: int) -> str | None:
    """The text from ``start`` to where its brackets close (strings skipped), or None."""
    depth = 0
    quote = ""
    n = start
    while n < len(text):
        char = text[n]
        if quote:
            if char == "\\":
                n += 1
            elif text.startswith(quote, n):
                n += len(quote) - 1
                quote = ""
        elif text.startswith(('"""', "'''"), n):
            quote = text[n : n + 3]
            n += 2
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return text[start : n + 1]
        n += 1
    return None


def _pythonic_call(node: ast.expr) -> TextCall | None:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return None
    if node.func.id not in TOOL_NAMES or node.args:
        return None
    arguments: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            return None
        try:
            arguments[keyword.arg] = pysyntax.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return TextCall(node.func.id, json.dumps(arguments), "pythonic")


def find_calls(text: str) -> list[TextCall]:
    """The tool calls ``text`` writes out, in order."""
    return _read_calls(text)[0]


def _read_calls(text: str) -> tuple[list[TextCall], list[str]]:
    """(calls, descriptions of attempted calls that cannot be read)."""
    text = without_thinking(text)
    calls, unreadable = _marked(text)
    if calls or unreadable:
        return calls, unreadable
    fences = [(m.start(), m.end()) for m in _JSON_FENCE.finditer(text)]
    for value, start, _end in _decoded(text):
        inside = any(a <= start < b for a, b in fences)
        calls += _as_calls(value, "fenced" if inside else "bare", loose=False)
    if not calls:
        for found in _JSON_FENCE.finditer(text):
            body = found.group(2)
            if not found.group(1) or '"name"' not in body or list(_decoded(body)):
                continue
            repaired = [v for v, _s, _e in _decoded(_repaired(body))]
            got = [c for v in repaired for c in _as_calls(v, "fenced", loose=False)]
            calls += got
            if not got:
                unreadable.append("a JSON block that is not valid JSON")
    if not calls and not unreadable:
        calls = _pythonic(text)
    return calls, unreadable


# -- acting on answers -----------------------------------------------------------------------


@dataclass
class Answers:
    """What the model's answers did, across the turns of one session."""

    idle_streak: int = 0  # answers in a row that changed nothing
    repeats: Counter[str] = field(default_factory=Counter)  # idle answers and failing calls
    told: set[str] = field(default_factory=set)  # the notices given once
    example: str | None = None  # the project file the "how to" example names
    by_text: bool = False  # the model has acted through calls or edits written as text
    touched: dict[str, None] = field(default_factory=dict)  # files its calls changed, in order
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def progressed(self) -> None:
        self.idle_streak = 0
        self.repeats.clear()

    @property
    def repeating(self) -> bool:
        """An idle answer or a failing call came again since the last answer that changed
        something: a server answering the same prompt the same way will go on doing so."""
        return any(count >= 2 for count in self.repeats.values())


_SESSIONS: WeakKeyDictionary[Conversation, Answers] = WeakKeyDictionary()


def answers_of(conversation: Conversation) -> Answers:
    """The session's record of answers (one conversation, one session)."""
    return _SESSIONS.setdefault(conversation, Answers())


@dataclass(frozen=True)
class _Done:
    """What one call or edit of an answer did."""

    ok: bool
    key: str  # failing calls repeat by this
    line: str  # for the model, when nothing was applied


def _target(arguments: str) -> str:
    try:
        args = json.loads(arguments)
    except ValueError:
        return ""
    if not isinstance(args, dict):
        return ""
    value = next((args[k] for k in ("path", "pattern", "command") if k in args), "")
    text = str(value).splitlines()[0] if str(value).strip() else ""
    return text[:80]


def _first_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _command(arguments: str) -> str:
    try:
        command = json.loads(arguments).get("command", "")
    except (json.JSONDecodeError, AttributeError):
        return ""
    return command if isinstance(command, str) else ""


def _as_excerpt(call: TextCall, tools: Tools) -> tuple[str, str, str]:
    """A ``write_file`` written as text whose content leaves out definitions the module has
    is an excerpt (Qwen2.5-Coder-1.5B wrote the fixed function alone, the file lost the other
    one the exam imports, and the right fix was undone as a setback): its definitions go in,
    the rest of the file stays; one that holds none of the module's functions is not run
    (:func:`~codexloop.core.textedits.excerpt_write`). A line importing from the module itself
    goes. The arguments to run, what the model is told of it ("" when nothing changed), and
    why it is not run ("": it is)."""
    if call.name != "write_file":
        return call.arguments, "", ""
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        return call.arguments, "", ""
    if not isinstance(arguments, dict):
        return call.arguments, "", ""
    path, content = arguments.get("path"), arguments.get("content")
    if not isinstance(path, str) or not isinstance(content, str):
        return call.arguments, "", ""
    planned = excerpt_write(path, content, tools)
    if planned is not None and planned.problem:
        return call.arguments, "", planned.problem
    text, note = content, ""
    if planned is not None:
        text, note = planned.arguments["content"], prompts.EXCERPT_MERGED.format(done=planned.what)
    text, dropped = without_self_imports(path, text)
    if dropped:
        note += prompts.SELF_IMPORT_LEFT_OUT.format(lines="; ".join(dropped))
    if not note:
        return call.arguments, "", ""
    return json.dumps({**arguments, "content": text}), note, ""


def _is_example(call: TextCall) -> bool:
    """The how-to example's call, copied as it is (its placeholders for old and new text)."""
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        return False
    return isinstance(arguments, dict) and (
        arguments.get("old_text") == prompts.EXAMPLE_OLD
        or arguments.get("new_text") == prompts.EXAMPLE_NEW
    )


ECHO_CHARS = 120
"""An answer whose first this many characters (spaces aside) stand in the engine's last
message repeats it rather than answering it."""


def echoes(answer: str, message: str) -> bool:
    """Does ``answer`` open by repeating ``message`` (the engine's last message)?"""
    start = " ".join(answer.split())[:ECHO_CHARS]
    return len(start) >= ECHO_CHARS and start in " ".join(message.split())


def _key(text: str) -> str:
    return "answer:" + " ".join(text.split())


class Work:
    """One turn of the model's work: its answers acted on until the turn is over."""

    def __init__(
        self,
        tools: Tools,
        conversation: Conversation,
        *,
        edit_format: str,
        limit: int,
        emit: ev.Emit,
        set_state: ev.SetState,
        timings: Timings,
        runs_the_exam: Callable[[str], bool] = lambda command: False,
        code_paths: Sequence[str] = (),
    ) -> None:
        self.tools = tools
        self.code_paths = tuple(code_paths)
        """The project files the exam imports: the first is the file the examples name."""
        self.runs_the_exam = runs_the_exam
        """Whether a ``run_command`` ran the exam's tests: passing after a change, it ends the
        turn (a small model that saw them pass tends to wander on and undo its fix)."""
        self.exam_passed = False
        self.conversation = conversation
        self.edit_format = edit_format
        self.limit = limit
        self.calls_left = limit
        self.emit = emit
        self.set_state = set_state
        self.timings = timings
        self.answers = answers_of(conversation)
        self.changed = False  # something in the sandbox changed during this turn
        self.idle = 0  # idle answers in a row in this turn
        self.answered = 0  # answers in this turn

    async def act(self, turn: Turn) -> bool:
        """Act on one answer; True when the turn is over (the engine runs the tests)."""
        self.answered += 1
        if turn.tool_calls:
            return await self._native(turn)
        if self.edit_format != "tools" and turn.finish_reason not in CUT_FINISHES:
            text = without_thinking(turn.text)
            calls, unreadable = _read_calls(text)
            copied = [c for c in calls if _is_example(c)]
            calls = [c for c in calls if c not in copied]
            unreadable += [prompts.EXAMPLE_COPIED.format(call=c.name) for c in copied]
            if calls:
                return await self._text_calls(turn.text, calls, unreadable)
            if self.edit_format == "text" or not self.changed:
                planned = await anyio.to_thread.run_sync(read_edits, text, self.tools)
                if planned:
                    return await self._text_edits(turn.text, planned)
            if unreadable:  # a call was meant, and nothing else can be applied
                return await self._text_calls(turn.text, [], unreadable)
        return await self._plain(turn.text, cut=turn.finish_reason in CUT_FINISHES)

    # -- one call, native or not -----------------------------------------------------------

    async def _run(self, name: str, arguments: str, call_id: str) -> ToolOutcome:
        await self.emit(ev.ToolCall(name, arguments, call_id))
        if self.calls_left <= 0:
            await self.emit(ev.ToolResult(name, False, "tool budget spent", call_id))
            content = prompts.TOOL_BUDGET_SPENT.format(limit=self.limit)
            return ToolOutcome(False, content, "tool budget spent")
        self.calls_left -= 1
        await self.set_state("tool")
        with self.timings.timed(f"tool {name}"):
            outcome = await self.tools.execute(name, arguments)
        await self.emit(ev.ToolResult(name, outcome.ok, outcome.summary, call_id, outcome.refused))
        if outcome.changed or name == "run_command":
            await self.emit(ev.SandboxChanged(outcome.changed))
        self.answers.touched.update(dict.fromkeys(outcome.changed))
        if name == "run_command" and outcome.ok and self.changed:
            self.exam_passed = self.exam_passed or self.runs_the_exam(_command(arguments))
        if outcome.changed or (name == "run_command" and outcome.ok):
            self.changed = True
        return outcome

    async def _answered(
        self, name: str, arguments: str, call_id: str, summary: str, content: str
    ) -> ToolOutcome:
        """A call the engine answers without running it: shown as called and failed."""
        await self.emit(ev.ToolCall(name, arguments, call_id))
        await self.emit(ev.ToolResult(name, False, summary, call_id))
        return ToolOutcome(False, content, summary)

    async def _not_written(
        self, name: str, arguments: str, call_id: str, problem: str
    ) -> ToolOutcome:
        """A call written as text that the engine does not run, and why."""
        said = f"not run: {problem}"
        return await self._answered(name, arguments, call_id, said, said)

    async def _not_run(self, call: ToolCallRequest) -> ToolOutcome:
        """``--edit-format text``: a native call is answered, not run."""
        content = prompts.TEXT_ONLY.format(call=prompts.example_call(await self._example())[1])
        summary = "not run (--edit-format text)"
        return await self._answered(call.name, call.arguments, call.id, summary, content)

    # -- the forms of an answer --------------------------------------------------------------

    async def _native(self, turn: Turn) -> bool:
        done = []
        for call in turn.tool_calls:
            if self.edit_format == "text":
                outcome = await self._not_run(call)
            else:
                outcome = await self._run(call.name, call.arguments, call.id)
            self.conversation.tool_result(call.id, outcome.content)
            done.append(self._done(call.name, call.arguments, outcome))
        return await self._after_calls(done, said="")

    async def _text_calls(self, text: str, calls: list[TextCall], unreadable: list[str]) -> bool:
        if calls:
            self.answers.by_text = True
            await self._tell_once(CALLS_NOTICE)
        results, done = [], []
        changed = False
        for call in calls:
            arguments, note, problem = await anyio.to_thread.run_sync(_as_excerpt, call, self.tools)
            call_id = f"text-{next(self.answers.ids)}"
            if problem:
                outcome = await self._not_written(call.name, arguments, call_id, problem)
            else:
                outcome = await self._run(call.name, arguments, call_id)
            described = f"{call.name} {_target(call.arguments)}".strip()
            content = outcome.content + note
            results.append(prompts.TEXT_CALL_RESULT.format(call=described, content=content))
            done.append(self._done(call.name, call.arguments, outcome))
            changed = changed or bool(outcome.changed)
        done += [_Done(False, _key(text), problem) for problem in unreadable]
        said = prompts.TEXT_CALLS_RAN.format(results="".join(results)) if results else ""
        if changed and not self.exam_passed and self.calls_left > 0:
            # As edits written as text: a change ends the turn, and the tests judge it now.
            self.answers.progressed()
            self.conversation.say(said + prompts.TEXT_CALLS_CHANGED)
            return True
        return await self._after_calls(done, said=said)

    async def _text_edits(self, text: str, planned: list[Planned]) -> bool:
        self.answers.by_text = True
        await self._tell_once(EDITS_NOTICE)
        applied: list[str] = []
        failed: list[str] = []
        for edit in planned:
            if edit.problem:
                failed.append(prompts.TEXT_EDIT_LINE.format(what=edit.what, result=edit.problem))
                continue
            arguments = json.dumps(edit.arguments)
            outcome = await self._run(edit.tool, arguments, f"text-{next(self.answers.ids)}")
            line = prompts.TEXT_EDIT_LINE.format(what=edit.what, result=outcome.content)
            (applied if outcome.ok else failed).append(line)
        if applied:
            self.answers.progressed()
            message = prompts.TEXT_EDITS_APPLIED + "".join(applied)
            if failed:
                message += prompts.TEXT_EDITS_FAILED + "".join(failed)
            self.conversation.say(message.rstrip())
            return True
        failures = [line.removeprefix("- ").rstrip() for line in failed]
        message, over = await self._nothing([_key(text)], failures)
        self._say_idle(message)
        return over

    async def _plain(self, text: str, *, cut: bool = False) -> bool:
        """No call, no edit: the model is done when this turn changed something. When it
        changed nothing and was the turn's first answer, it hears so and answers once more (a
        small model asked to say what is wrong often stops at saying it); after that, or after
        calls, a plain answer ends the turn. The answer stays in the conversation: what it says
        is wrong is worth reading again. An answer cut off for its length ends the turn."""
        if self.changed:
            self.answers.progressed()
            return True
        ending = cut or self.answered > 1
        message, over = await self._nothing([_key(text)], [], ending=ending, plain=True)
        if echoes(text, self.conversation.last_user_text()):
            # It wrote the engine's message out again (Qwen2.5-Coder-1.5B did, from the red
            # message's "The code as it is now..."): not shown back to it, and it is told.
            self._say_idle(f"{prompts.ECHOED}\n{message}")
        else:
            self.conversation.say(message, idle=True)
        return over

    # -- judging -------------------------------------------------------------------------------

    def _done(self, name: str, arguments: str, outcome: ToolOutcome) -> _Done:
        described = f"{name} {_target(arguments)}".strip()
        return _Done(
            outcome.ok,
            f"call:{name}:{arguments}",
            f"{described}: {_first_line(outcome.content)}",
        )

    async def _after_calls(self, done: list[_Done], *, said: str) -> bool:
        if self.exam_passed:
            if said:
                self.conversation.say(said)
            self.answers.progressed()
            await self.emit(ev.Notice("info", EXAM_PASSED_NOTICE))
            return True
        if self.calls_left <= 0:
            if said:
                self.conversation.say(said)
            await self.emit(ev.Notice("warning", BUDGET_NOTICE.format(limit=self.limit)))
            return True
        if any(d.ok for d in done):
            self.answers.progressed()
            if said:
                self.conversation.say(said)
            return False
        message, over = await self._nothing(
            [d.key for d in done], [d.line for d in done], what="only failed or refused calls"
        )
        self._say_idle(f"{said}\n\n{message}" if said else message)
        return over

    async def _nothing(
        self,
        keys: list[str],
        failures: list[str],
        *,
        ending: bool = False,
        what: str = "",
        plain: bool = False,
    ) -> tuple[str, bool]:
        """An answer that changed nothing: the message to the model, and whether the turn is
        over; the developer hears of it from the second time in a row."""
        answers = self.answers
        answers.idle_streak += 1
        self.idle += 1
        answers.repeats.update(keys)
        repeated = not ending and max(answers.repeats[k] for k in keys) >= REPEATS_END_TURN
        worn_out = not ending and self.idle >= IDLE_ANSWERS_END_TURN
        what = what or ("edits that were not applied" if failures else "no tool call, no edit")
        if answers.idle_streak >= 2:
            if repeated:
                notice = REPEAT_NOTICE.format(what=what)
            elif worn_out:
                notice = IDLE_END_NOTICE.format(count=self.idle, what=what)
            else:
                notice = IDLE_NOTICE.format(count=answers.idle_streak, what=what)
            await self.emit(ev.Notice("warning", notice))
        message = prompts.nothing_applied(
            failures,
            repeated=repeated,
            testing=ending or not plain,
            edit_format=self.edit_format,
            path=await self._example(),
        )
        return message, ending or repeated or worn_out

    def _say_idle(self, message: str) -> None:
        """The note on an answer that changed nothing, in place of a text answer (which the
        model is not shown again: :meth:`Conversation.forget_idle_answer`)."""
        self.conversation.forget_idle_answer()
        self.conversation.say(message, idle=True)

    async def _tell_once(self, notice: str) -> None:
        if notice not in self.answers.told:
            self.answers.told.add(notice)
            await self.emit(ev.Notice("info", notice))

    async def _example(self) -> str:
        """A project file for the "how to" example: the first the exam imports, else the
        first one of the code under test."""
        if self.answers.example is None and self.code_paths:
            self.answers.example = self.code_paths[0]
        if self.answers.example is None:
            self.answers.example = await anyio.to_thread.run_sync(_example_path, self.tools)
        return self.answers.example


def _example_path(tools: Tools) -> str:
    files = tools.python_files(limit=500)
    code = [
        rel
        for rel in files
        if not tools.protected(rel)
        and not PurePosixPath(rel).name.startswith("test")
        and "tests" not in PurePosixPath(rel).parts
    ]
    if code:
        return min(code, key=lambda rel: (rel.endswith("__init__.py"), rel.count("/"), rel))
    return files[0] if files else "src/module.py"
