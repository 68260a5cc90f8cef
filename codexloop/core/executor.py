"""Where a session runs: the one place that builds it, for every front end.

A session is one :class:`~codexloop.core.loop.Loop`, or with ``--attempts N`` a
:class:`~codexloop.core.race.Race` of N. Where each attempt runs is the executor's choice:
in this process (the default), or with ``--ray`` as a Ray actor on a cluster
(:mod:`codexloop.core.ray_executor`, imported only then, so nothing else here needs Ray).
Either way the front ends read the same events and send the same commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from codexloop.core.config import Config, ConfigError
from codexloop.core.loop import Loop
from codexloop.core.model import BACKOFF_S
from codexloop.core.race import Race

if TYPE_CHECKING:
    from codexloop.core.model_host import ModelClient
    from codexloop.core.resume import SessionRecord

RAY_MISSING = (
    "--ray needs Ray, which is not installed: pip install 'codexloop[ray]' (or pip install ray)"
)


def attempt_kind(config: Config) -> type[Loop]:
    """What runs one attempt: a :class:`Loop` here, or its Ray stand-in (``--ray``)."""
    if config.ray is None:
        return Loop
    try:
        from codexloop.core.ray_executor import RemoteLoop
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "ray":
            raise ConfigError(RAY_MISSING) from None
        raise
    return RemoteLoop


def prepare(config: Config, *, sessions: int = 1) -> None:
    """``--ray``: Ray imported and the cluster joined now (blocking), before any screen opens
    (Ray's start needs the real standard streams, which a full-screen app has taken over), and
    an actor started for each attempt of the first ``sessions`` sessions, beside what comes
    before them."""
    if config.ray is None:
        return
    attempt_kind(config)  # Ray missing: a ConfigError
    from codexloop.core.ray_executor import connect, prewarm

    connect(config.ray)
    prewarm(config.attempts * sessions)


def new_session(
    config: Config,
    *,
    client: ModelClient | None = None,
    review: bool = False,
    accept_all: bool = False,
    accept_flagged: bool = False,
    write_trace: bool = True,
    resumed: SessionRecord | None = None,
    name: str | None = None,
    backoff: tuple[float, ...] = BACKOFF_S,
) -> Loop | Race:
    """The session ``config`` asks for. ``review``: a green waits for the developer's review
    (the app; a race's first green only with ``--pick first``: with ``best`` the review opens
    on the winner when every attempt is over). A resumed session runs here, as one loop."""
    kind = Loop if resumed is not None else attempt_kind(config)
    if config.attempts > 1 and resumed is None:
        return Race(
            config,
            client=client,
            name=name,
            review=review and config.pick == "first",
            accept_all=accept_all,
            accept_flagged=accept_flagged,
            write_trace=write_trace,
            backoff=backoff,
            kind=kind,
        )
    return kind(
        config,
        client=client,
        name=name,
        review=review,
        accept_all=accept_all,
        accept_flagged=accept_flagged,
        write_trace=write_trace,
        backoff=backoff,
        resumed=resumed,
    )
