"""--edit-format and --request-timeout: defaults, precedence, bad values (issue 21)."""

from __future__ import annotations

import pytest
from loophelpers import KATA

from codexloop.core.config import ConfigError, Settings, load_config


def _load(repo, **given):
    given.setdefault("model", "m")
    settings = Settings(targets=("tests/test_calc.py",), repo=repo, **given)
    return load_config(settings, env={"OPENAI_API_KEY": "k"}, cwd=repo)


def test_a_local_endpoint_waits_longer_for_a_request_than_openai(make_repo) -> None:
    repo = make_repo(KATA)
    assert _load(repo, base_url="http://127.0.0.1:8080/v1").request_timeout == 600
    assert _load(repo).request_timeout == 120
    assert (
        _load(repo, base_url="http://127.0.0.1:8080/v1", request_timeout=30).request_timeout == 30
    )


def test_edit_format_defaults_to_auto_and_comes_from_the_project_file(make_repo) -> None:
    repo = make_repo(
        {**KATA, "pyproject.toml": '[tool.codexloop]\nedit_format = "text"\nrequest_timeout = 45\n'}
    )
    config = _load(repo)
    assert (config.edit_format, config.request_timeout) == ("text", 45)
    assert _load(repo, edit_format="tools").edit_format == "tools"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"edit_format": "prose"}, "edit_format must be one of auto, tools, text"),
        ({"request_timeout": 0}, "timeouts must be positive"),
        ({"model": "a,b"}, "--model names 2 models for 1 attempt: give --attempts 2"),
        ({"model": "a,b,c", "attempts": 2}, "--model names 3 models for 2 attempts"),
        ({"attempts": 2, "hints": ("x", "y", "z")}, "3 hints for 2 attempts"),
        ({"attempts": 99}, "--attempts must be between 1 and 16"),
        ({"pick": "worst"}, "pick must be one of first, best"),
    ],
)
def test_bad_values_are_one_clear_line(make_repo, given, message) -> None:
    repo = make_repo(KATA)
    with pytest.raises(ConfigError, match=message):
        _load(repo, **given)
