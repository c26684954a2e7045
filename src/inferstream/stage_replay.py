"""Replaying one stage while the rest of the pipeline keeps running: the admin's side.

:func:`replay_stage` asks the stage's workers to leave their consumer group (through
the :class:`~inferstream.replays.ReplayBoard`, see :mod:`inferstream.replays` for the
whole conversation), waits until :meth:`~inferstream.bus.base.Bus.members` says the
group is empty, moves its offsets, resets its durable state and lets the workers
resume. It works the same on both buses; on Kafka it is the only way, since the
broker refuses to move the offsets of a group that has members.

If a member does not leave within the timeout (a worker of an older inferstream
that does not watch the board, or a stuck one), nothing is moved: the request is
still marked applied, so the workers that did leave resume where they were, and
:class:`ReplayNotApplied` says so. Seeking anyway is not an option: Kafka would
refuse, and the embedded bus would move a group whose stateful members keep state
from before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime

from inferstream.bus import Bus, SeekTarget, SeekToTimestamp
from inferstream.dataflow.state_store import StateStore
from inferstream.errors import BusError, InferstreamError
from inferstream.replays import POLL_S, ReplayBoard

log = logging.getLogger(__name__)

Progress = Callable[[str], object]


class ReplayNotApplied(InferstreamError):
    """A replay did not (fully) happen; the message says what moved and what to do."""


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """A replay that was applied: the group's offsets moved and its state was reset."""

    group: str
    topics: tuple[str, ...]
    #: Where the group resumes, as text (``earliest``, ``offset 12``, an ISO time).
    target: str
    #: The request's number on the board.
    generation: int
    #: From the request to the end, mostly waiting for the workers to leave.
    took_s: float


def describe_target(target: SeekTarget | SeekToTimestamp) -> str:
    """``target`` as a person reads it: earliest, latest, offset N or an ISO time."""
    if isinstance(target, SeekToTimestamp):
        return datetime.fromtimestamp(target.ms / 1000, tz=UTC).isoformat()
    if isinstance(target, int):
        return f"offset {target}"
    return target


def replay_stage(
    bus: Bus,
    board: ReplayBoard,
    state_reset: Callable[[str], object],
    *,
    group: str,
    topics: Sequence[str],
    target: SeekTarget | SeekToTimestamp,
    timeout_s: float = 60.0,
    progress: Progress = log.info,
) -> ReplayOutcome:
    """Move the running ``group`` to ``target`` on ``topics`` and reset its state.

    ``state_reset(group)`` forgets the group's durable state (a no-op for a stateless
    stage). Raises :class:`ReplayNotApplied` when the group did not empty within
    ``timeout_s`` or its offsets could not be moved; the workers resume either way.
    """
    text = describe_target(target)
    started = time.monotonic()
    generation = board.request(group, topics, text)
    progress(f"asked the workers of group {group} to pause (replay {generation})")
    try:
        _move_when_empty(
            bus, group, list(topics), target=target, deadline=started + timeout_s,
            progress=progress,
        )  # fmt: skip
        state_reset(group)
    finally:
        board.mark_applied(group, generation)
    progress(f"done: the workers of group {group} resume from {text}")
    return ReplayOutcome(group, tuple(topics), text, generation, time.monotonic() - started)


def replay_stage_in_store(
    bus: Bus,
    store_url: str,
    *,
    group: str,
    topics: Sequence[str],
    target: SeekTarget | SeekToTimestamp,
    timeout_s: float = 60.0,
    progress: Progress = log.info,
) -> ReplayOutcome:
    """:func:`replay_stage` with the board and the stage's state in ``store_url``'s database.

    The state is always reset: a group that has none loses nothing.
    """
    with ExitStack() as stack:
        board = ReplayBoard(store_url)
        stack.callback(board.close)
        state = StateStore(store_url)
        stack.callback(state.close)
        return replay_stage(
            bus, board, state.reset, group=group, topics=topics, target=target,
            timeout_s=timeout_s, progress=progress,
        )  # fmt: skip


def _move_when_empty(
    bus: Bus,
    group: str,
    topics: list[str],
    *,
    target: SeekTarget | SeekToTimestamp,
    deadline: float,
    progress: Progress,
) -> None:
    """Seek ``group`` on each topic once it has no members; wait again if one rejoins.

    A worker started during the replay joins, sees the request and leaves again; on
    Kafka a seek that meets it fails, so the wait starts over until the deadline.
    """
    moved: list[str] = []
    while True:
        _wait_until_empty(bus, group, deadline, moved)
        progress(f"group {group} is empty; moving its offsets on {', '.join(topics)}")
        try:
            for topic in topics:
                if topic not in moved:
                    bus.seek_group(group, topic, target)
                    moved.append(topic)
            return
        except BusError as exc:
            if time.monotonic() >= deadline:
                raise _not_applied(group, moved, f"moving the offsets failed: {exc}") from exc
            progress(f"could not move the offsets yet ({exc}); waiting for the group again")


def _wait_until_empty(bus: Bus, group: str, deadline: float, moved: list[str]) -> None:
    while (members := bus.members(group)) > 0:
        if time.monotonic() >= deadline:
            raise _not_applied(
                group,
                moved,
                f"{members} member(s) of the group did not leave in time; they may be "
                "workers of an older inferstream without live replay (restart them) or stuck",
            )
        time.sleep(POLL_S)


def _not_applied(group: str, moved: list[str], why: str) -> ReplayNotApplied:
    where = (
        f"only {', '.join(moved)} moved (the state was not reset)"
        if moved
        else "nothing was moved and the workers resume where they were"
    )
    return ReplayNotApplied(
        f"replay of group {group} not applied: {why}; {where}; run the replay again"
    )
