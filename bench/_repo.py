"""A small git repository for a benchmark, committed once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_repo(root: Path, files: dict[str, str]) -> Path:
    """``root/repo`` holding ``files`` ({relative path: text}), in one commit."""
    repo = root / "repo"
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    identity = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost"}
    env = {
        **os.environ,
        **identity,
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return repo
