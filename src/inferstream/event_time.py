"""A producer's event time, held to this host's clock where it enters the pipeline.

An envelope's event time (``created_at_us``) is written by whoever made it: an edge
agent, a scanner's software, a camera. Windows and joins cut by it, and a task's
watermark is the latest event time it has seen minus the lateness
(:mod:`inferstream.dataflow.clock`). So one producer whose clock stepped forward (an
hour, say) would drag the watermark an hour ahead, and every other producer's events
would come in behind it, late: their windows closed before they were counted.

Every entry point that takes a producer's event time therefore holds it to one rule:
no more than ``max_clock_skew_s`` (the pipeline file's setting, default
:data:`DEFAULT_MAX_CLOCK_SKEW_S`) ahead of the clock of the host that ingests it. One
further ahead is refused with the reason: a 400 at the API, a dead letter at the
``check_ingest`` step. An event time in the past is never refused, since an edge
agent's backlog after an outage is just that; an event behind a window's watermark
goes to ``<input>.late`` with the reason, counted, as any late event does. A producer
whose clock stepped *back* therefore sends late events, never lost ones.
"""

from __future__ import annotations

from datetime import UTC, datetime

from inferstream.envelope import now_us
from inferstream.errors import InvalidInput

#: How far ahead of the ingesting host's clock a producer's event time may be. NTP keeps
#: clocks within milliseconds; a minute lets a device without it drift for weeks, and
#: refuses a step of an hour (a time zone or daylight-saving mistake) or of years (a
#: clock reset). A pipeline with windows or joins should set it at or below their
#: smallest ``lateness_ms``: a producer further ahead makes the others' events late.
DEFAULT_MAX_CLOCK_SKEW_S = 60.0


class ClockSkewError(InvalidInput):
    """An event time is further ahead of this host's clock than the pipeline allows."""


def check_event_time(created_at_us: int, max_skew_s: float, *, now: int | None = None) -> None:
    """Refuse ``created_at_us`` when it is before the epoch or more than ``max_skew_s``
    ahead of this host's clock (``now``, in microseconds; the wall clock by default).

    0 is not checked: it means "not given", and the ingesting host stamps its own time.
    """
    if created_at_us < 0:
        raise ClockSkewError(
            f"event time created_at_us {created_at_us} is before 1970; the producer's clock "
            "is wrong: set it (NTP), or leave created_at_us out to be stamped on arrival"
        )
    ahead_us = created_at_us - (now_us() if now is None else now)
    if ahead_us > max_skew_s * 1_000_000:
        raise ClockSkewError(
            f"event time {_iso(created_at_us)} (created_at_us {created_at_us}) is "
            f"{ahead_us / 1e6:.1f} s ahead of this host's clock, more than the "
            f"{max_skew_s:g} s allowed (max_clock_skew_s): the producer's clock is ahead. "
            "Set it right (NTP), then send the item again with its true time"
        )


def _iso(stamp_us: int) -> str:
    try:
        return datetime.fromtimestamp(stamp_us / 1e6, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # past year 9999
        return "beyond the year 9999"


__all__ = ["DEFAULT_MAX_CLOCK_SKEW_S", "ClockSkewError", "check_event_time"]
