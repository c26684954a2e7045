"""Where a replay moves a consumer group, read from what a person typed, in one place.

``earliest``, ``latest``, an offset, or a time with a zone (ISO 8601): the command
line (``inferstream replay --to``) and the API (``POST /v1/admin/replay``) both go
through :func:`seek_target`, so they accept exactly the same targets.
"""

from __future__ import annotations

from datetime import datetime

from inferstream.bus.base import SeekTarget, SeekToTimestamp
from inferstream.errors import InferstreamError

#: Offsets are int64 in Kafka; the largest accepted is well inside that.
MAX_OFFSET = 10**18


class InvalidSeekTarget(InferstreamError):
    """The replay target is none of earliest, latest, an offset or a time with a zone."""


def seek_target(value: str | int | datetime) -> SeekTarget | SeekToTimestamp:
    """The bus's seek target for ``value``; :class:`InvalidSeekTarget` with what to write."""
    if isinstance(value, str):
        value = _from_text(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidSeekTarget(
                f"replay target {value.isoformat()} has no time zone; add one, e.g. +00:00"
            )
        # Before the epoch nothing was written: the same as earliest.
        return SeekToTimestamp(max(0, int(value.timestamp() * 1000)))
    if value == "earliest":
        return "earliest"
    if value == "latest":
        return "latest"
    if isinstance(value, int) and 0 <= value <= MAX_OFFSET:
        return value
    raise InvalidSeekTarget(f"replay target {value!r} is out of range (offsets 0 to {MAX_OFFSET})")


def _from_text(text: str) -> str | int | datetime:
    if text in ("earliest", "latest"):
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidSeekTarget(
            f"replay target {text[:64]!r}: use earliest, latest, an offset (e.g. 1200) or "
            "a time with a zone (e.g. 2026-11-22T10:00:00+00:00)"
        ) from exc
