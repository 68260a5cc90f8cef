"""The sandbox: a git worktree on a preview branch, and how commands run in it.

The worktree starts from a snapshot of the developer's working tree as it is now
(uncommitted and untracked-not-ignored files included); the developer's checkout
is never written. Commands run with a small, explicit environment (no API keys or
other secrets) and the sandbox's source roots first on ``PYTHONPATH``.

Over 400 lines: the snapshot, the worktree, the environment and the command runner are
the sandbox's one lifecycle; each part needs the others' paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio

from codexloop.core import gitops, limits, process, record, safefs
from codexloop.core.errors import SandboxError
from codexloop.core.isolation import (
    DEFAULT_MAX_MEMORY_GIB,
    DEFAULT_TMP_SIZE_MIB,
    Isolation,
    Layout,
    interpreter_paths,
    path_dirs,
)
from codexloop.core.isolation import probe as probe_isolation
from codexloop.core.process import OutputCallback, RunResult
from codexloop.core.remembered import Remembered, state_home
from codexloop.core.runtree import RunTree

# Variables a command may see. Everything else (API keys, tokens, SSH agent, cloud
# credentials, proxies, GIT_*) is dropped.
_ENV_KEEP = {
    "PATH",
    "LANG",
    "LANGUAGE",
    "TERM",
    "TZ",
    "USER",
    "LOGNAME",
    "SHELL",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "PYENV_VERSION",
    "PYENV_ROOT",
    "COLORTERM",
    "NO_COLOR",
    "FORCE_COLOR",
    "HOME",
}
_ENV_KEEP_PREFIXES = ("LC_",)

# Junk that test runs leave behind and that has no place on the preview branch.
_EXCLUDES = (
    "\n".join(
        [
            "__pycache__/",
            "*.py[cod]",
            ".pytest_cache/",
            ".mypy_cache/",
            ".ruff_cache/",
            ".hypothesis/",
            ".coverage",
            ".coverage.*",
            "htmlcov/",
            "*.egg-info/",
            ".tox/",
            ".nox/",
        ]
    )
    + "\n"
)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:40] or "loop"


def default_shares(repo: Path) -> tuple[str, ...]:
    """What a sandbox shares of the checkout unless told otherwise: ``node_modules`` at the
    root, when it is there and git ignores it (a JavaScript project's tests need it, and a
    worktree, being a checkout, starts without it)."""
    if (repo / "node_modules").is_dir() and gitops.is_ignored(repo, "node_modules"):
        return ("node_modules",)
    return ()


def session_name(targets: tuple[str, ...]) -> str:
    """A readable, unique-enough name: the first target's test and a timestamp."""
    first = targets[0]
    label = first.split("::")[-1] if "::" in first else Path(first).stem
    return f"{_slug(label.split('[')[0])}-{time.strftime('%Y%m%d-%H%M%S')}"


def free_name(repo: Path, home: Path, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... when a session of that name already has a
    branch or a worktree (two sessions on one test started within the same second), claimed:
    its temp folder ``home/tmp/<name>`` is made here, at once, so two sessions started together
    (of one repository or of several) never share a name, nor the folders and trace named
    after it. Blocking."""
    candidate, number = name, 1
    while True:
        taken = gitops.git(
            repo,
            "rev-parse",
            "--verify",
            "--quiet",
            f"refs/heads/codexloop/{candidate}",
            check=False,
        ).strip() or os.path.lexists(home / "worktrees" / repo_key(repo) / candidate)
        if not taken:
            claim = home / "tmp" / candidate
            claim.parent.mkdir(parents=True, exist_ok=True)
            _own_folders(home / "tmp", claim.parent)
            try:
                claim.mkdir()
            except FileExistsError:
                pass
            else:
                return candidate
        number += 1
        candidate = f"{name}-{number}"


def _own_folders(top: Path, folder: Path) -> None:
    """Every folder from ``top`` down to ``folder`` is a folder, not a link planted there (by
    a command run without isolation): a session's temp folder is never made through one."""
    for part in (folder, *folder.parents):
        if part == top or top not in part.parents:
            break
        if part.is_symlink() or not part.is_dir():
            raise SandboxError(
                f"{part} is not a folder of codexloop's (a link?): remove it and start again"
            )


def repo_key(repo: Path) -> str:
    digest = hashlib.sha1(str(repo).encode()).hexdigest()[:8]
    return f"{_slug(repo.name)}-{digest}"


def find_python(repo: Path) -> str:
    """The interpreter for the project's tests: its own venv if it has one, else ours."""
    for venv in (".venv", "venv", "env"):
        candidate = repo / venv / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    if os.environ.get("VIRTUAL_ENV"):
        candidate = Path(os.environ["VIRTUAL_ENV"]) / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    return sys.executable


def source_roots(root: Path) -> list[Path]:
    """Directories that must shadow an editable install of the project: ``src`` and the root."""
    roots = [root / "src"] if (root / "src").is_dir() else []
    roots.append(root)
    return roots


@dataclass
class Sandbox:
    """One loop's worktree on its preview branch."""

    repo: Path
    worktree: Path
    branch: str
    base: str
    name: str
    exclude_file: Path
    tmp: Path
    isolation: Isolation = field(default_factory=lambda: Isolation("none", "not probed"))
    layout: Layout | None = None
    limit: limits.ProcessLimit = field(
        default_factory=lambda: limits.ProcessLimit("none", None, "not probed")
    )
    max_memory_gib: int = DEFAULT_MAX_MEMORY_GIB  # address space per command; 0: no limit
    shared: tuple[tuple[Path, Path], ...] = ()  # checkout paths visible in the worktree
    left_out: tuple[tuple[str, int], ...] = ()  # big untracked files not in the snapshot

    @classmethod
    def create(
        cls, repo: Path, name: str, base: str | None = None, *, continue_from: str | None = None
    ) -> Sandbox:
        """Snapshot the working tree (or take ``base``) and open a worktree on ``codexloop/<name>``.

        ``continue_from``: a preview branch whose work the new sandbox starts with; its base
        stays that branch's snapshot, so the review shows both sessions' changes. Blocking.
        """
        home = state_home()
        left_out: list[tuple[str, int]] = []
        start = base
        if continue_from is not None:
            base = gitops.snapshot_of(repo, continue_from)
            start = gitops.git(repo, "rev-parse", f"{continue_from}^{{commit}}").strip()
        elif base is None:
            base = start = gitops.snapshot(repo, left_out)
        elif gitops.git(repo, "cat-file", "-t", base, check=False).strip() != "commit":
            raise gitops.GitError(f"commit {base[:12]} is not in the repository {repo}")
        assert start is not None
        name = free_name(repo, home, name)  # its temp folder made: the name is this session's
        worktree = home / "worktrees" / repo_key(repo) / name
        branch = f"codexloop/{name}"
        tmp = home / "tmp" / name
        # A preview branch to continue from holds the model's tree: written by the engine
        # (see write_checkout), not by git's checkout. The snapshot is the developer's own.
        model_tree = continue_from is not None
        try:
            gitops.create_worktree(repo, start, branch, worktree, checkout=not model_tree)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.rmdir()
            raise
        try:
            if model_tree:
                write_checkout(worktree, start)
            exclude = _write_excludes(home)
            # Remembers the checkout before anyone touches it.
            record.recorder(worktree, exclude, fresh_checkout=True)
        except BaseException as exc:
            _undo_create(repo, worktree, branch, tmp, exc)
            raise
        return cls(repo, worktree, branch, base, name, exclude, tmp, left_out=tuple(left_out))

    @classmethod
    def reopen(cls, repo: Path, name: str, branch: str, base: str) -> Sandbox:
        """The sandbox of an earlier session (``codexloop resume``): its worktree as that
        session left it, checked out again on its branch when it was removed. Blocking."""
        home = state_home()
        found = next((b for b in gitops.preview_branches(repo) if b.name == branch), None)
        if found is None:
            raise gitops.GitError(f"the preview branch {branch} is gone")
        fresh = found.worktree is None
        worktree = (
            Path(found.worktree) if found.worktree else (home / "worktrees" / repo_key(repo) / name)
        )
        if fresh:
            if os.path.lexists(worktree):
                raise gitops.GitError(
                    f"{worktree} is in the way of {branch}'s worktree (git no longer knows it "
                    "as one: its .git file is gone or changed): move it away first"
                )
            gitops.open_worktree(repo, branch, worktree, checkout=False)  # the model's tree
            write_checkout(worktree, branch)
        # A worktree whose git link was tampered with stops here, before git runs with it (a
        # copy of the git dir elsewhere, the model's, would bring its own config).
        try:
            gitops.check_own_worktree(repo, worktree)
        except gitops.GitError as exc:
            raise gitops.GitError(
                f"{exc} (its .git file changed): its work is on {branch}; move the folder away "
                "and resume again"
            ) from None
        # What a crashed session left running (a warm server, a command) and its scratch.
        process.kill_session(session_folders(name, worktree))
        discard_scratch(name)
        exclude = _write_excludes(home)
        tmp = home / "tmp" / name
        tmp.mkdir(parents=True, exist_ok=True)
        record.recorder(worktree, exclude, fresh_checkout=fresh)
        return cls(repo, worktree, branch, base, name, exclude, tmp)

    @property
    def recorder(self) -> record.Recorder:
        return record.recorder(self.worktree, self.exclude_file)

    def scan(self, leave_out: Collection[str] = ()) -> record.Scan:
        """The sandbox's files as they would be recorded now, but ``leave_out`` (blocking)."""
        return self.recorder.scan(leave_out)

    def commit(self, message: str) -> str | None:
        """Record the sandbox's state on the preview branch (blocking)."""
        return self.recorder.commit(message)

    def changed_paths(self) -> list[str]:
        return self.recorder.changed_paths(self.base)

    def head(self) -> str:
        gitdir = gitops.worktree_env(self.worktree)["GIT_DIR"]
        return gitops.git(Path(gitdir), "rev-parse", "HEAD", env={"GIT_DIR": gitdir}).strip()

    def environment(
        self,
        extra: Mapping[str, str] | None = None,
        *,
        root: Path | None = None,
        tmp: Path | None = None,
    ) -> dict[str, str]:
        """The small, explicit environment commands get: no secrets. ``root`` and ``tmp``:
        where the command runs and its temp folder, when not the worktree's (the exam's)."""
        root = root or self.worktree
        tmp = tmp or self.tmp
        env = {
            key: value
            for key, value in os.environ.items()
            if key in _ENV_KEEP or key.startswith(_ENV_KEEP_PREFIXES)
        }
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("LANG", "C.UTF-8")
        env["TMPDIR"] = str(tmp)
        if self.isolation.active:
            env["HOME"] = str(tmp / "home")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in source_roots(root))
        env["CODEXLOOP_SANDBOX"] = "1"
        env.pop("PYTHONHOME", None)
        if extra:
            env.update(extra)
        return env

    def command_argv(
        self,
        command: str,
        extra_env: Mapping[str, str] | None = None,
        *,
        place: ExamPlace | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """How a shell command is started in this sandbox (or in ``place``, where the exam
        runs): its argv and environment."""
        shell = shutil.which("bash") or "/bin/sh"
        env = place.environment(extra_env) if place is not None else self.environment(extra_env)
        layout = place.layout() if place is not None else self.layout
        # Hard limits the command cannot raise: a memory bomb gets MemoryError, a fork bomb
        # EAGAIN (when the process limit works through RLIMIT_NPROC).
        prefix = self.limit.shell_prefix()
        if self.max_memory_gib:
            prefix = f"ulimit -v {self.max_memory_gib * 1024 * 1024} 2>/dev/null; {prefix}"
        argv = [shell, "-c", prefix + command]
        if self.isolation.active and layout is not None:
            argv = self.isolation.wrap(argv, layout, env)
            env = {"PATH": env["PATH"]}
        return argv, env

    def process_group(self) -> limits.PidsGroup | None:
        """A pids cgroup for one command, when that is how processes are limited here."""
        try:
            return self.limit.group()
        except OSError:
            return None  # the probe worked, so this is transient: run unlimited this once

    async def run(
        self,
        command: str,
        *,
        timeout: float,
        on_output: OutputCallback | None = None,
        extra_env: Mapping[str, str] | None = None,
        place: ExamPlace | None = None,
    ) -> RunResult:
        """Run a shell command in the worktree (or in ``place``: the exam's run tree)."""
        if place is None:  # git in the worktree reads its index: as the last commit left it
            await anyio.to_thread.run_sync(self.recorder.refresh_index)
        group = self.process_group()
        # Neither a pid namespace nor a cgroup to account for what the command leaves behind:
        # mark its environment, and look for the mark afterwards.
        marker = None if self.isolation.active or group is not None else uuid.uuid4().hex
        argv, env = self.command_argv(
            command,
            {**(extra_env or {}), **({limits.RUN_MARK: marker} if marker else {})},
            place=place,
        )
        if group is not None:
            argv = group.join(argv)
        survivors = 0
        try:
            result = await process.run(
                argv,
                cwd=place.worktree if place is not None else self.worktree,
                env=env,
                timeout=timeout,
                on_output=on_output,
            )
        finally:
            with anyio.CancelScope(shield=True):
                if group is not None:
                    survivors = await group.close()
                elif marker is not None:
                    survivors = await anyio.to_thread.run_sync(limits.kill_marked, marker)
        notes = limits.limit_notes(group, survivors, limit=self.limit, output=result.output)
        return replace(result, output=result.output + notes) if notes else result

    def isolate(
        self,
        pythons: list[str],
        protected: list[str],
        *,
        network: bool,
        max_processes: int = limits.DEFAULT_MAX_PROCESSES,
        max_memory_gib: int = DEFAULT_MAX_MEMORY_GIB,
        shared: tuple[str, ...] | None = None,
        search_path: str | None = None,
        tmp_size_mib: int = DEFAULT_TMP_SIZE_MIB,
    ) -> Isolation:
        """Probe process isolation with this sandbox's exact layout and use it from now on,
        with the best process-count limit the system allows (blocking).

        ``shared``: checkout paths git does not carry that commands need (dependency folders
        such as ``node_modules``); None: the default (see :func:`default_shares`).
        """
        home = self.tmp / "home"
        home.mkdir(parents=True, exist_ok=True)
        readonly = [*interpreter_paths(pythons), *path_dirs(self.environment()["PATH"])]
        common = gitops.worktree_env(self.worktree)["GIT_DIR"]
        readonly.append(Path(common).parent.parent)  # the repository's .git, for git inside
        self.layout = Layout(
            worktree=self.worktree,
            tmp=self.tmp,
            readonly=tuple(dict.fromkeys(readonly)),
            protected=(self.worktree / ".git", *(self.worktree / rel for rel in protected)),
            network=network,
            shared=self._prepare_shares(default_shares(self.repo) if shared is None else shared),
            tmp_size_mib=tmp_size_mib,
        )
        self.isolation = probe_isolation(
            self.layout,
            self.environment(),
            search_path=search_path,
            remembered=Remembered(state_home() / "probes.json"),
        )
        if not self.isolation.active:
            self._link_shares()
        self.limit = limits.probe(max_processes, user_namespace=self.isolation.active)
        self.max_memory_gib = max_memory_gib
        return self.isolation

    def _prepare_shares(self, rels: tuple[str, ...]) -> tuple[tuple[Path, Path], ...]:
        """Empty places in the worktree for the shared paths, kept out of every commit."""
        pairs: list[tuple[Path, Path]] = []
        for rel in rels:
            source, target = self.repo / rel, self.worktree / rel
            if target.exists() or target.is_symlink() or not source.exists():
                continue  # git carries it, or there is nothing to share
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                target.mkdir()
            else:
                target.touch()
            pairs.append((source, target))
        if pairs:
            own = state_home() / "excludes" / self.name
            own.parent.mkdir(parents=True, exist_ok=True)
            listed = "".join(f"/{t.relative_to(self.worktree).as_posix()}\n" for _s, t in pairs)
            own.write_text(_EXCLUDES + listed)
            self.exclude_file = own
            record.recorder(self.worktree, own)  # still before the model's first move
        self.shared = tuple(pairs)
        return self.shared

    def _link_shares(self) -> None:
        """Without bubblewrap there are no bind mounts: symlinks to the checkout instead."""
        for source, target in self.shared:
            if target.is_dir() and not target.is_symlink():
                target.rmdir()
            else:
                target.unlink(missing_ok=True)
            target.symlink_to(source)

    def discard_scratch(self) -> None:
        """The private temp folder (HOME, reports, the warm server's script) and the run tree:
        the session is over; the worktree and its branch stay for reference (blocking)."""
        discard_scratch(self.name)

    def exam_place(self) -> ExamPlace:
        """Where the exam runs: a run tree and a temp folder out of the model's reach."""
        folder = runs_folder(self.name)
        shares = [t.relative_to(self.worktree).as_posix() for _s, t in self.shared]
        gitdir = Path(gitops.worktree_env(self.worktree)["GIT_DIR"])
        place = ExamPlace(self, RunTree(folder / "tree", gitdir, keep=shares), folder / "tmp")
        place.tmp.mkdir(parents=True, exist_ok=True)
        if not self.isolation.active:
            for rel in shares:  # no bind mounts: links to the checkout, as in the worktree
                link = place.worktree / rel
                if not os.path.lexists(link):
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(self.repo / rel)
        return place

    def remove(self, *, delete_branch: bool = False) -> None:
        record.forget(self.worktree)
        gitops.remove_worktree(self.repo, self.worktree, self.branch if delete_branch else None)
        forget_session(self.name)


@dataclass
class ExamPlace:
    """Where the exam runs: the run tree (a clean checkout of the candidate commit, see
    :mod:`codexloop.core.runtree`) and a temp folder, both outside what model commands see.
    Starts processes like a :class:`Sandbox` does (the warm runner takes either)."""

    sandbox: Sandbox
    tree: RunTree
    tmp: Path

    @property
    def worktree(self) -> Path:
        return self.tree.path

    @property
    def isolation(self) -> Isolation:
        return self.sandbox.isolation

    @property
    def limit(self) -> limits.ProcessLimit:
        return self.sandbox.limit

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = self.sandbox.environment(root=self.worktree, tmp=self.tmp)
        # No user site-packages (a model command could have planted a .pth there). Bytecode
        # needs nothing here: the run tree holds no __pycache__ (never recorded, and whatever
        # a run wrote is removed before the next), and PYTHONDONTWRITEBYTECODE is set. (A
        # PYTHONPYCACHEPREFIX would be worse: one folder every run can write, kept between
        # runs, and no cached bytecode for pytest and the standard library.)
        env["PYTHONNOUSERSITE"] = "1"
        if extra:
            env.update(extra)
        return env

    def layout(self) -> Layout | None:
        base = self.sandbox.layout
        if base is None:
            return None
        shared = tuple(
            (s, self.worktree / t.relative_to(self.sandbox.worktree)) for s, t in base.shared
        )
        return replace(base, worktree=self.worktree, tmp=self.tmp, protected=(), shared=shared)

    def command_argv(
        self, command: str, extra_env: Mapping[str, str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        return self.sandbox.command_argv(command, extra_env, place=self)

    def process_group(self) -> limits.PidsGroup | None:
        return self.sandbox.process_group()

    async def run(
        self,
        command: str,
        *,
        timeout: float,
        on_output: OutputCallback | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> RunResult:
        return await self.sandbox.run(
            command, timeout=timeout, on_output=on_output, extra_env=extra_env, place=self
        )


def _undo_create(
    repo: Path, worktree: Path, branch: str, tmp: Path | None, error: BaseException
) -> None:
    """A create that failed after the worktree was made leaves nothing behind: not the worktree,
    not its branch, not the temp folder it made. What cannot be removed is said on ``error``
    (which the caller raises: the cause the developer needs to see)."""
    try:
        record.forget(worktree)
        gitops.remove_worktree(repo, worktree, branch)
        if tmp is not None:
            safefs.remove_tree(tmp)
    except Exception as cleanup:  # the first error is the one to report
        error.add_note(f"codexloop: the half-made sandbox {worktree} ({branch}) stays: {cleanup}")


def _write_excludes(home: Path) -> Path:
    """The exclude file every sandbox's recorder reads, written when it is not as it should be."""
    exclude = home / "exclude"
    if not exclude.exists() or exclude.read_text() != _EXCLUDES:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text(_EXCLUDES)
    return exclude


def session_folders(name: str, worktree: Path | None) -> list[Path]:
    """Where a session's processes run (its scratch, its run tree, its worktree): what a
    crashed session left running is found by them."""
    folders = [state_home() / "tmp" / name, runs_folder(name)]
    return folders if worktree is None else [*folders, Path(worktree)]


def write_checkout(worktree: Path, commit: str) -> None:
    """The files of ``commit`` in a worktree git made without checking them out, written from
    the object store by the engine's own writer (the run tree's), and the worktree's index set
    to it (objects only). A model-written tree checked out by git would have its
    ``.gitattributes`` route files through filters of the developer's git configuration (a
    git-lfs smudge fetching from a URL the model's ``.lfsconfig`` names): here no attribute,
    filter or hook of the tree is read; the files are the blobs as committed (an LFS file is
    its pointer). Blocking."""
    gitdir = Path(gitops.worktree_env(worktree)["GIT_DIR"])
    entries = record.tree_entries(gitdir, commit)
    for rel in entries:  # a tree made in the object store by hand can hold any name
        why = next((w for part in rel.split("/") if (w := record.refused_name(part))), None)
        if why is not None:  # (no NUL: ls-tree -z ends each path with one)
            raise gitops.GitError(f"{commit[:12]} holds a path git refuses ({rel!r}: {why})")
    gitops.git(gitdir, "read-tree", commit, env={"GIT_DIR": str(gitdir)})  # git checks too
    RunTree(worktree, gitdir, keep={".git"}).reconcile(entries)


def runs_folder(name: str) -> Path:
    """A session's run tree and the temp folder of its test runs."""
    return state_home() / "runs" / name


def discard_scratch(name: str) -> None:
    """A session's scratch: its temp folder (HOME, the warm server's script), its run tree."""
    safefs.remove_tree(state_home() / "tmp" / name)
    safefs.remove_tree(runs_folder(name))


def forget_session(name: str) -> None:
    """What codexloop keeps of a session besides its worktree: scratch, exclude file."""
    discard_scratch(name)
    (state_home() / "excludes" / name).unlink(missing_ok=True)
