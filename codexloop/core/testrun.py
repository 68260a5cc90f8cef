"""The exam's verdict: run the test command, parse pytest's JUnit XML, digest failures.

Green is decided here, never by the model: the command exited 0 *and* every target
was collected, ran and passed. No tests collected, skipped, deselected or xfail
targets are red.

Over 400 lines: the verdict (JUnit, exit code, canary, digest) is one rule, "green is
decided here"; its parts are read together when that rule is checked.
"""

from __future__ import annotations

import re
import secrets
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from codexloop.core import safefs
from codexloop.core.process import RunResult, plain_text
from codexloop.core.words import counted

DIGEST_CHARS = 6_000
FAILURE_CHARS = 2_500


@dataclass(frozen=True)
class Case:
    classname: str
    name: str
    outcome: str  # passed | failed | error | skipped
    message: str = ""
    detail: str = ""

    @property
    def label(self) -> str:
        return f"{self.classname}::{self.name}" if self.classname else self.name


@dataclass(frozen=True)
class Verdict:
    passed: bool
    summary: str  # one line for people
    digest: str  # what the model reads when red
    cases: tuple[Case, ...] = field(default=())
    tampered: str | None = None  # why the run's results cannot be trusted
    reported: bool = True  # the run wrote a JUnit report


@dataclass(frozen=True)
class Canary:
    """Two tests of the engine's own in every pytest run, with random names and values the
    model never sees before the run: one must pass, one must fail with ``token`` in its
    message. A run that reports them otherwise (a patched report, a patched ``runtest``, a
    forged or rewritten report file) is not the tests' own verdict.

    They come from a plugin module (``-p`` in ``PYTEST_ADDOPTS``, so any test command that
    runs pytest loads it, wherever it runs pytest from) that adds the two tests after
    collection, last, past ``-k`` and deselection: no test file, no argument that would
    change the rootdir or override ``testpaths``. The terminal shows nothing of them, and the
    one that must fail does not change pytest's exit status (``pytest a && pytest b`` still
    runs ``b``).
    """

    module: str
    passing: str
    failing: str
    token: str

    @classmethod
    def new(cls) -> Canary:
        tag = secrets.token_hex(6)
        return cls(
            f"codexloop_canary_{tag}",
            f"test_{secrets.token_hex(5)}",
            f"test_{secrets.token_hex(5)}",
            secrets.token_hex(8),
        )

    @property
    def filename(self) -> str:
        return f"{self.module}.py"

    def source(self) -> str:
        a, b = secrets.randbelow(10**6), secrets.randbelow(10**6)
        names = (self.passing, self.failing)
        return f"""\
import pytest

_NAMES = {names!r}


def _passing():
    assert {a} + {b} == {a + b}


def _failing():
    pytest.fail({self.token!r}, pytrace=False)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    for name, function in zip(_NAMES, (_passing, _failing)):
        items.append(pytest.Function.from_parent(session, name=name, callobj=function))


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session):
    yield
    # The developer's count: progress ([100%]) and "no tests collected" as without us.
    ours = sum(1 for item in session.items if item.name in _NAMES and item.parent is session)
    session.testscollected = max(0, session.testscollected - ours)


_reporter = []


def pytest_configure(config):
    _reporter.append(config.pluginmanager.get_plugin("terminalreporter"))


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    if nodeid.rsplit("::", 1)[-1] in _NAMES:
        reported = getattr(_reporter[0] if _reporter else None, "_progress_nodeids_reported", None)
        if isinstance(reported, set):
            reported.discard(nodeid)


_failed = set()
_others_failed = []


def pytest_runtest_logreport(report):
    if report.failed:
        ours = report.nodeid.rsplit("::", 1)[-1] in _NAMES
        (_failed.add(report.nodeid) if ours else _others_failed.append(report.nodeid))


def pytest_report_teststatus(report, config):
    if report.nodeid.rsplit("::", 1)[-1] in _NAMES:
        return "", "", ""
    return None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if exitstatus == pytest.ExitCode.TESTS_FAILED and _failed and not _others_failed:
        no_tests = session.testscollected == 0
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED if no_tests else pytest.ExitCode.OK
"""

    def addopts(self) -> str:
        """What ``PYTEST_ADDOPTS`` gains: the canary's module as a plugin."""
        return f"-p {self.module}"

    def check(self, cases: list[Case]) -> str | None:
        """Why the canary's results are wrong (None: they are right)."""
        ours = {c.name: c for c in cases if c.name in (self.passing, self.failing)}
        passing, failing = ours.get(self.passing), ours.get(self.failing)
        if passing is None or failing is None:
            if any(c.outcome in ("failed", "error") for c in self.strip(cases)):
                return None  # stopped before them (-x, --maxfail): the run is red anyway
            return "the engine's canary tests are missing from the report"
        if passing.outcome != "passed":
            return f"the canary test that must pass came out {passing.outcome}"
        if failing.outcome != "failed" or self.token not in failing.message + failing.detail:
            return (
                f"the canary test that must fail came out {failing.outcome}: "
                "test results were altered inside the test process"
            )
        return None

    def strip(self, cases: list[Case]) -> list[Case]:
        return [c for c in cases if c.name not in (self.passing, self.failing)]


def default_args(targets: tuple[str, ...]) -> list[str]:
    """pytest's arguments: the targets, quiet, with colours, no cache written into the sandbox."""
    return ["-q", "--color=yes", "-p", "no:cacheprovider", "--rootdir=.", *targets]


def default_command(python: str, targets: tuple[str, ...]) -> str:
    return shlex.join([python, "-m", "pytest", *default_args(targets)])


def runs_the_exam(command: str, targets: tuple[str, ...], test_cmd: str | None) -> bool:
    """Whether a model's ``run_command`` ran the exam's tests: the configured test command, or
    pytest on a target (a target file or node id, a folder holding one, or no path at all:
    the whole suite). Its passing ends the model's turn: the engine runs the exam then."""
    if test_cmd is not None and " ".join(command.split()) == " ".join(test_cmd.split()):
        return True
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    if any(w in ("|", "||", "&&", ";") or w.endswith(";") for w in words):
        return False  # a pipeline or a list: its exit status is not pytest's alone
    runner = next(
        (n for n, w in enumerate(words) if w in ("pytest", "py.test") or w.endswith("/pytest")),
        None,
    )
    if runner is None:
        return False
    arguments = words[runner + 1 :]
    paths = [
        w.split("::")[0].rstrip("/") for w in arguments if not w.startswith("-") and _is_path(w)
    ]
    if not paths:
        return True
    files = {t.split("::")[0] for t in targets}
    return any(p in files or any(f.startswith(p + "/") for f in files) or p == "." for p in paths)


def _is_path(word: str) -> bool:
    return "/" in word or word.endswith(".py") or "::" in word or word == "."


def junit_env(junit_path: Path) -> dict[str, str]:
    """Ask any pytest the command starts for a JUnit report, without touching the command."""
    return {"PYTEST_ADDOPTS": f"--junitxml={junit_path} -o junit_family=xunit1"}


MAX_REPORT_BYTES = 64 << 20

# pytest's JUnit writer cannot put control characters in XML: it writes them out as text
# (``bin_xml_escape``: ESC becomes ``#x1B``), so a run with ``--color=yes`` leaves
# ``#x1B[91m- 3.50 EUR#x1B[39;49;00m`` in failure messages. These are the characters it
# writes that way; they are turned back and dropped with every escape sequence.
_XML_ESCAPED = re.compile(r"#x(0[0-8BCEF]|1[0-9A-F]|7F)")


def report_text(text: str) -> str:
    """A message or detail of a JUnit report as a model should read it: the control
    characters pytest wrote out as ``#xNN`` and every escape sequence gone."""
    if "#x" not in text:
        return plain_text(text)
    return plain_text(_XML_ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text))


def parse_junit(path: Path) -> list[Case] | None:
    """The test cases of a JUnit report, or None when there is none to trust: the file is
    read as a regular file only (a link or FIFO the run left in its place is not opened:
    it could lead out of the sandbox or block), and at most :data:`MAX_REPORT_BYTES`."""
    try:
        data = safefs.read_regular(path.parent, path.name, limit=MAX_REPORT_BYTES)
        if data is None:
            return None
        root = ET.fromstring(data)
    except (OSError, ET.ParseError, ValueError):
        return None
    cases: list[Case] = []
    for element in root.iter("testcase"):
        outcome, message, detail = "passed", "", ""
        for child_tag in ("failure", "error", "skipped"):
            child = element.find(child_tag)
            if child is not None:
                outcome = "failed" if child_tag == "failure" else child_tag
                message = report_text(child.get("message", ""))
                detail = report_text(child.text or "").strip()
                break
        cases.append(
            Case(element.get("classname", ""), element.get("name", ""), outcome, message, detail)
        )
    return cases


def _module_of(file_rel: str) -> str:
    return ".".join(PurePosixPath(file_rel).with_suffix("").parts)


def cases_for_target(target: str, cases: list[Case]) -> list[Case]:
    """The JUnit test cases a pytest node id (or file, or folder) stands for.

    Node ids are relative to the repository; a custom test command that runs pytest from a
    subfolder (``cd backend && pytest``) reports them relative to that folder: when nothing
    matches, the target's leading folders are dropped one by one.
    """
    file_part, separator, rest = target.partition("::")
    parts = PurePosixPath(file_part).parts
    for start in range(len(parts)):
        found = _cases_for(str(PurePosixPath(*parts[start:])) + separator + rest, cases)
        if found:
            return found
    return []


def _cases_for(target: str, cases: list[Case]) -> list[Case]:
    file_part, _, rest = target.partition("::")
    if file_part.endswith(".py"):
        module = _module_of(file_part)
    else:  # a folder
        prefix = _module_of(file_part.rstrip("/")) + "."
        return [c for c in cases if c.classname.startswith(prefix)]
    if not rest:
        return [c for c in cases if c.classname == module or c.classname.startswith(module + ".")]
    *classes, func = rest.split("::")
    classname = ".".join([module, *classes])
    if "[" in func:
        return [c for c in cases if c.classname == classname and c.name == func]
    if not classes:
        # test_fn or a class name given as the last part (file.py::TestX)
        by_class = [c for c in cases if c.classname == f"{module}.{func}"]
        if by_class:
            return by_class
    return [
        c
        for c in cases
        if c.classname == classname and (c.name == func or c.name.startswith(func + "["))
    ]


def uncollected(targets: tuple[str, ...], verdict: Verdict) -> str | None:
    """Why a red baseline can never turn green: a target that collects no test, in a run
    that reported and had no collection error (an error there may come from the code under
    test — a test importing what does not exist yet — which is the model's to fix)."""
    if verdict.passed or not verdict.reported:
        return None
    cases = list(verdict.cases)
    if any(c.outcome == "error" and not c.classname for c in cases):
        return None  # a collection error: pytest could not import a test module
    for target in targets:
        if not cases_for_target(target, cases):
            hint = (
                "name a test file or test, not the code under test"
                if "::" not in target and not PurePosixPath(target).name.startswith("test")
                else "check the test's name, e.g. with pytest --collect-only"
            )
            return f"target '{target}' collects no test ({hint})"
    return None


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... cut ...]\n{text[-half:]}"


def _by_exit_code(run: RunResult) -> Verdict:
    if run.exit_code == 0:
        return Verdict(True, "exit code 0 (no JUnit report: judged by the exit code)", "")
    summary = f"exit code {run.exit_code} (no JUnit report: judged by the exit code)"
    return Verdict(
        False,
        summary,
        f"The test command failed ({summary}). Its output:\n{_cut(run.output, DIGEST_CHARS)}",
    )


def judge(
    targets: tuple[str, ...],
    run: RunResult,
    junit_path: Path,
    *,
    strict: bool = True,
    canary: Canary | None = None,
) -> Verdict:
    """Decide green or red from the exit code and the JUnit report, and digest any failure.

    ``strict``: a run without a JUnit report is red (the default pytest command always
    writes one, and so does any run once an earlier run of the session did). A custom test
    command that runs no pytest (``npm test``, ``make check``) writes none: with ``strict``
    off it is judged by its exit code alone. ``canary``: the engine's own tests in this run;
    wrong results for them make the run red, with :attr:`Verdict.tampered` saying why.
    """
    run = replace(run, output=plain_text(run.output))  # what the model reads: no colours
    if run.timed_out:
        return Verdict(
            False,
            "timed out",
            "The test run timed out and was killed.\n" + _cut(run.output, DIGEST_CHARS),
        )
    cases = parse_junit(junit_path)
    if cases is None and not strict:
        return replace(_by_exit_code(run), reported=False)
    if cases is None:
        reason = f"exit code {run.exit_code}, no test report"
        return Verdict(
            False,
            reason,
            f"The test run gave no report ({reason}): a run that ends before pytest "
            f"finished is red. Output:\n{_cut(run.output, DIGEST_CHARS)}",
            reported=False,
        )
    if canary is not None:
        tampered = canary.check(cases)
        if tampered is not None:
            return Verdict(
                False,
                "results tampered with",
                f"The test results cannot be trusted ({tampered}). The engine checks every run "
                "with tests of its own; code that patches pytest, the test report or the "
                "process's exit makes the run red. Fix the code under test instead.",
                tuple(canary.strip(cases)),
                tampered=tampered,
            )
        cases = canary.strip(cases)
    problems: list[str] = []
    for target in targets:
        matched = cases_for_target(target, cases)
        if not matched:
            problems.append(f"{target}: not collected (no test ran)")
        for case in matched:
            if case.outcome == "skipped":
                problems.append(
                    f"{case.label}: skipped or xfail ({case.message or 'no reason'}) counts as not passed"
                )
    failing = [c for c in cases if c.outcome in ("failed", "error")]
    passed_count = sum(c.outcome == "passed" for c in cases)
    green = run.exit_code == 0 and not failing and not problems and passed_count > 0
    summary = f"{passed_count} passed, {len(failing)} failed"
    if problems and not failing:
        summary += f", {counted(len(problems), 'target problem')}"
    if green:
        return Verdict(True, summary, "", tuple(cases))
    parts = [f"The tests are red ({summary}, exit code {run.exit_code})."]
    parts.extend(f"- {p}" for p in problems)
    budget = DIGEST_CHARS
    for case in failing:
        detail = _cut(project_frames(case.detail), FAILURE_CHARS)
        block = f"\n## {case.label} {case.outcome.upper()}: {case.message}\n{detail}"
        if len(block) > budget:
            parts.append(f"\n[{len(failing)} failures in all; the rest left out]")
            break
        parts.append(block)
        budget -= len(block)
    if not failing:
        parts.append("\nOutput:\n" + _cut(run.output, DIGEST_CHARS // 2))
    return Verdict(False, summary, "\n".join(parts), tuple(cases))


_FOREIGN_FRAME = re.compile(r"^/\S+:\d+: in \S+$")  # pytest names project files relatively
_IMPORT_HINT = "Hint: make sure your test modules/packages have valid Python names."


def project_frames(detail: str) -> str:
    """A failure's traceback without the frames of the standard library and installed
    packages (their absolute paths and source lines: ``importlib/__init__.py:126: in
    import_module``) and without pytest's hint on module names, which a small model took for
    the fault; the terminal pane keeps the whole output."""
    kept: list[str] = []
    foreign = False
    for line in detail.split("\n"):
        if _FOREIGN_FRAME.match(line):
            foreign = True
            continue
        if foreign and line.startswith(" "):
            continue
        foreign = False
        if line.strip() != _IMPORT_HINT:
            kept.append(line)
    return "\n".join(kept)
