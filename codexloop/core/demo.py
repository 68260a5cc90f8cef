"""The demo: a small invoice kata with a failing exam, and a scripted model for it.

The script is a recording like any trace (turns of streamed text and tool calls with
their timing), served through the replay server, so the demo exercises the very path
a live session takes. It is a scripted demo, not a live model, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from codexloop.core.config import Config
from codexloop.core.replay import Fragment, RecordedCall, RecordedTurn

TARGET = "tests/test_invoice.py::test_total_rounds_half_up_to_cents"

INVOICE = '''\
"""Invoices: lines of (quantity, unit price) and their total."""


def total(lines):
    """The amount due, rounded to cents."""
    return round(sum(quantity * float(price) for quantity, price in lines), 2)
'''

TEST_INVOICE = """\
from decimal import Decimal

from invoice import total


def test_total_rounds_half_up_to_cents():
    # The tax office rounds half up, on exact decimal amounts.
    assert total([(1, "0.125")]) == Decimal("0.13")
    assert total([(3, "0.335")]) == Decimal("1.01")
    assert total([(2, "19.99"), (1, "0.02")]) == Decimal("40.00")
"""

FIRST_TRY_OLD = "    return round(sum(quantity * float(price) for quantity, price in lines), 2)\n"
FIRST_TRY_NEW = (
    "    return round(sum(quantity * float(price) for quantity, price in lines) + 1e-9, 2)\n"
)
FIX_OLD = (
    '''"""Invoices: lines of (quantity, unit price) and their total."""


def total(lines):
    """The amount due, rounded to cents."""
'''
    + FIRST_TRY_NEW
)
FIX_NEW = '''"""Invoices: lines of (quantity, unit price) and their total."""

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def total(lines):
    """The amount due, rounded half up to cents, computed on exact decimals."""
    amount = sum((Decimal(quantity) * Decimal(price) for quantity, price in lines), Decimal(0))
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)
'''


def _say(text: str, pace_s: float = 0.012) -> list[Fragment]:
    words = text.split(" ")
    return [
        Fragment(pace_s, word + (" " if i < len(words) - 1 else "")) for i, word in enumerate(words)
    ]


def _call(n: int, name: str, **arguments: str) -> RecordedCall:
    return RecordedCall(f"call_demo_{n}", name, json.dumps(arguments))


def demo_turns() -> list[RecordedTurn]:
    """Red, then green: a plausible first try, the real fix after reading the failure."""
    return [
        RecordedTurn(
            _say(
                "The exam wants half-up rounding to cents. Let me look at how the total is computed."
            ),
            [_call(1, "read_file", path="invoice.py")],
            820,
            24,
        ),
        RecordedTurn(
            _say(
                "Float rounding loses the half cent: 0.125 is stored as 0.12499... "
                "A tiny epsilon should push it over."
            ),
            [
                _call(
                    2,
                    "edit_file",
                    path="invoice.py",
                    old_text=FIRST_TRY_OLD,
                    new_text=FIRST_TRY_NEW,
                )
            ],
            1040,
            61,
        ),
        RecordedTurn(
            _say("Nudged the sum before rounding; that should round 0.125 up."), [], 1120, 14
        ),
        RecordedTurn(
            _say(
                "Still red: the test compares with Decimal, and a float is never equal to "
                "Decimal('0.13'). The total has to be computed on exact decimals and "
                "quantized half up."
            ),
            [_call(3, "edit_file", path="invoice.py", old_text=FIX_OLD, new_text=FIX_NEW)],
            1710,
            188,
        ),
        RecordedTurn(
            _say("Totals are now exact Decimals, rounded half up to cents with quantize."),
            [],
            1930,
            17,
        ),
    ]


REVIEW_PREFIX = "The reviewer rejected this change of "


def answer_review(request: dict[str, Any]) -> RecordedTurn | None:
    """After the recording: answer a rejected hunk the way a model would, as far as a script can.

    The rejected change was reverted in the sandbox; the script says it cannot follow the
    comment, puts the exact-decimal total back (so there is something to review again) and
    ends its turn once the write is done.
    """
    messages = request.get("messages") or []
    if not messages:
        return None
    last = messages[-1]
    if last.get("role") == "tool":
        return RecordedTurn(
            _say("The exact-decimal total is back; the tests decide, then you review again."),
            [],
            2400,
            15,
        )
    comments = [
        str(m.get("content") or "").split("\n", 1)[0].removeprefix(REVIEW_PREFIX)
        for m in messages[-5:]
        if m.get("role") == "user" and str(m.get("content") or "").startswith(REVIEW_PREFIX)
    ]
    if not comments:
        return None
    heard = "; ".join(comments)
    return RecordedTurn(
        _say(
            f"You rejected the change of {heard}. This is a scripted demo, so I cannot act on your words "
            "(a live model would: try codexloop demo --live). I will put the exact-decimal "
            "total back so you can review it again."
        ),
        [_call(100 + len(messages), "write_file", path="invoice.py", content=FIX_NEW)],
        2300,
        160,
    )


def demo_config(repo: Path, base_url: str) -> Config:
    """The kata's session against the scripted model served at ``base_url``."""
    return Config(
        repo=repo,
        targets=(TARGET,),
        target_files=("tests/test_invoice.py",),
        model="scripted-demo",
        base_url=base_url,
        api_key="demo",
        api="chat",
        max_iterations=5,
    )


def make_kata(root: Path) -> Path:
    """A fresh git repository: the invoice code committed, the new exam not yet."""
    repo = root / "invoice-kata"
    (repo / "tests").mkdir(parents=True)
    (repo / "invoice.py").write_text(INVOICE)
    (repo / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "codexloop demo",
        "GIT_AUTHOR_EMAIL": "demo@codexloop.invalid",
        "GIT_COMMITTER_NAME": "codexloop demo",
        "GIT_COMMITTER_EMAIL": "demo@codexloop.invalid",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "Invoices"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    (repo / "tests" / "test_invoice.py").write_text(TEST_INVOICE)  # the fresh, uncommitted exam
    return repo
