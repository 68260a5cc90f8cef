"""``codexloop batch FILE --ray`` (issue 18): three tasks, two at a time, each task's session
an actor on a real local cluster (the test process's, joined through ``RAY_ADDRESS``)."""

from __future__ import annotations

import threading

import pytest
from batch_tasks import ADD, FILES, FIXED, MUL, SUB, ends, fix, most_at_once, write_tasks
from conftest import run_git
from loophelpers import events_of, run_cli

pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]


def test_a_batch_of_three_on_ray_two_at_a_time(ray_cluster, make_repo, scripted_openai) -> None:
    repo = make_repo(FILES)
    both = threading.Event()  # tasks 1 and 2 hold their first turns until both have asked
    scripted_openai.add_for("t1", *fix("calc.py", hold=both))
    scripted_openai.add_for("t2", *fix("sub.py", hold=both))
    scripted_openai.add_for("t3", *fix("mul.py"))
    tasks = write_tasks(
        repo,
        {"targets": [ADD], "model": "t1"},
        {"targets": [SUB], "model": "t2"},
        {"targets": [MUL], "model": "t3"},
    )

    def release_both() -> None:
        scripted_openai.wait_for_requests(2, timeout=170)
        both.set()

    release = threading.Thread(target=release_both)
    release.start()
    try:
        done = run_cli(
            "batch",
            str(tasks),
            "--ray",
            "--concurrency",
            "2",
            "--headless",
            "--base-url",
            scripted_openai.base_url,
            cwd=repo,
            env={"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address},
            timeout=240,
        )
    finally:
        both.set()
        release.join()
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert most_at_once(events) == 2
    finished = ends(events)
    assert {task: e["status"] for task, e in finished.items()} == {
        1: "passed",
        2: "passed",
        3: "passed",
    }
    # Each ran on Ray (said once it started) and its fix came home on its own branch.
    said = [e for e in events if e["type"] == "notice" and "runs on Ray" in e["message"]]
    assert sorted(e["task"] for e in said) == [1, 2, 3]
    for task, path in ((1, "calc.py"), (2, "sub.py"), (3, "mul.py")):
        assert run_git(repo, "show", f"{finished[task]['branch']}:{path}") == FIXED[path]
    assert (repo / "calc.py").read_text() == FILES["calc.py"]
