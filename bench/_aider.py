"""aider's command line as the benchmarks run it: one model on an OpenAI-compatible server,
whole-file edits (or ``edit_format``), its own test loop (``--auto-test``), nothing committed, no prompts."""

from __future__ import annotations


def aider_argv(
    aider: str,
    url: str,
    model: str,
    test: str,
    read: str,
    message: str,
    *files: str,
    edit_format: str = "whole",
) -> list[str]:
    """``aider`` on ``model`` at ``url``, testing with ``test``, ``read`` in its chat read-only,
    ``files`` editable, asked ``message`` (add options after it)."""
    return [
        aider,
        "--model",
        f"openai/{model}",
        "--openai-api-base",
        url,
        "--openai-api-key",
        "x",
        "--edit-format",
        edit_format,
        "--yes-always",
        "--no-auto-commits",
        "--no-show-model-warnings",
        "--test-cmd",
        test,
        "--auto-test",  # up to 3 reflections on a red test: aider's own cap (no flag)
        "--no-check-update",
        "--analytics-disable",
        "--no-show-release-notes",
        "--no-gitignore",
        "--read",
        read,
        "--message",
        message,
        *files,
    ]
