"""Event-time windows: gather a key's messages over a span of time, emit one message each.

A :class:`WindowSpec` says how to cut time (tumbling, hopping or session windows), how
to group messages (the key) and what to keep of them; a :class:`WindowOperator` runs it
over one task's messages (see :mod:`inferstream.dataflow.operator`).

Time is event time, the envelopes' ``created_at_us``. Tumbling and hopping windows are
aligned to the epoch: a window starts at a multiple of the hop (the size, for tumbling)
and covers ``[start, start + size)``. A session gathers events closer than ``gap`` to
one another and covers ``[first event, last event + gap)``: that end is when the
session became final, so it is the session's ``window.end_us`` and its output's event
time, like the end of any other window.

A window closes, and emits its one output, when the watermark reaches its end
(:mod:`inferstream.dataflow.clock`); windows closing together go out in order of
(end, key). A message arriving after all its windows closed is emitted as *late*, with
the reason, never dropped. A message is counted once per window however often the bus
delivers it (members are deduplicated by envelope id).

The output carries the kept members as an ``EnvelopeBatch`` in its payload (content
type :data:`ENVELOPES_CONTENT_TYPE`). Members lose their inline and tensor payload
bytes first, keeping content type, predictions, attributes and claim-check references:
a window of a few hundred images would otherwise be a message of a few hundred images,
beyond what a bus carries well, while what a window is for (counting, summarising
predictions) needs no pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from inferstream.dataflow.clock import NO_WATERMARK, Clock, Schedule
from inferstream.dataflow.operator import Emit, pack, state_key, unpack
from inferstream.dataflow.task import TaskState
from inferstream.envelope import (
    SCHEMA_VERSION,
    Envelope,
    EnvelopeBatch,
    derive_id,
)
from inferstream.errors import ConfigError

#: Content type of a window's output payload: a serialised ``EnvelopeBatch``.
ENVELOPES_CONTENT_TYPE = "application/x-inferstream-envelopes"
WindowKind = Literal["tumbling", "hopping", "session"]

_LENGTHS = {"tumbling": ("size_ms",), "hopping": ("size_ms", "hop_ms"), "session": ("gap_ms",)}
_ENTRY = "window/"  # + key: the key's open windows (and, for sessions, its last close)
_CLOSED = "closed"  # the schedule entry <state key>#closed: when to forget a session's close

Record = dict[str, Any]


@dataclass(frozen=True)
class WindowSpec:
    """How a stage cuts its input into windows; lengths in milliseconds of event time."""

    kind: WindowKind
    size_ms: int = 0
    #: Hopping: a window starts every ``hop_ms`` (at most ``size_ms``).
    hop_ms: int = 0
    #: Session: events closer than this belong to one session.
    gap_ms: int = 0
    #: How far out of order events may arrive and still count.
    lateness_ms: int = 0
    #: ``partition_key``, ``source``, ``attribute:NAME`` or ``none`` (one window for all).
    key: str = "partition_key"
    #: ``all`` members, the ``latest_by:ATTR`` member per value of ATTR, or only a ``count``.
    keep: str = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in _LENGTHS:
            raise ConfigError(
                f"window kind must be tumbling, hopping or session, got {self.kind!r}"
            )
        for name in ("size_ms", "hop_ms", "gap_ms", "lateness_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a whole number of milliseconds >= 0")
        self._check_lengths()
        _check_choice("key", self.key, ("partition_key", "source", "none"), "attribute:")
        _check_choice("keep", self.keep, ("all", "count"), "latest_by:")

    def _check_lengths(self) -> None:
        needed = _LENGTHS[self.kind]
        for name in ("size_ms", "hop_ms", "gap_ms"):
            value = getattr(self, name)
            if name in needed and value == 0:
                raise ConfigError(
                    f"a {self.kind} window needs {name} > 0, e.g. {name}: 60000"
                    + (f" ({', '.join(needed)} are needed)" if len(needed) > 1 else "")
                )
            if name not in needed and value != 0:
                raise ConfigError(
                    f"{name} does not apply to {self.kind} windows (they take "
                    f"{', '.join(needed)}); remove it or change kind"
                )
        if self.kind == "hopping" and self.hop_ms > self.size_ms:
            raise ConfigError(
                f"hop_ms ({self.hop_ms}) must be at most size_ms ({self.size_ms}), or some "
                "events would fall in no window"
            )

    @property
    def size_us(self) -> int:
        return self.size_ms * 1000

    @property
    def hop_us(self) -> int:
        """Distance between window starts (the size, for tumbling windows)."""
        return (self.hop_ms or self.size_ms) * 1000

    @property
    def gap_us(self) -> int:
        return self.gap_ms * 1000

    def key_of(self, env: Envelope) -> str:
        """The window key of ``env`` (a missing attribute is the empty key)."""
        if self.key == "none":
            return ""
        if self.key == "source":
            return env.source
        if self.key.startswith("attribute:"):
            return env.attributes.get(self.key.removeprefix("attribute:"), "")
        return env.partition_key


def _check_choice(name: str, value: Any, fixed: Sequence[str], prefix: str) -> None:
    if isinstance(value, str) and (
        value in fixed or (value.startswith(prefix) and len(value) > len(prefix))
    ):
        return
    choices = ", ".join([*fixed, f"{prefix}NAME"])
    raise ConfigError(f"window {name} must be one of {choices}; got {value!r}")


class WindowOperator:
    """Runs a :class:`WindowSpec` over one task's messages."""

    def __init__(self, spec: WindowSpec, stage: str, topics: Sequence[str]) -> None:
        self.spec = spec
        self.stage = stage
        self.clock = Clock(topics, spec.lateness_ms * 1000)
        # Fixed windows: one end per bucket. Sessions end anywhere: small buckets keep
        # the partly due one that is read again on each message small.
        width = spec.hop_us if spec.kind != "session" else spec.gap_us // 16
        self.schedule = Schedule("window:due", width)

    def on_message(self, task: TaskState, topic: str, env: Envelope) -> list[Emit]:
        before, after = self.clock.observe(task, topic, env.created_at_us)
        add = self._add_to_session if self.spec.kind == "session" else self._add_to_fixed
        late = add(task, self.spec.key_of(env), env, before)
        emits = [Emit("late", env, reason=late, topic=topic)] if late else []
        return emits + self._close(task, after)

    def on_idle(self, task: TaskState, topic: str, now_us: int) -> list[Emit]:
        return self._close(task, self.clock.idle(task, topic, now_us))

    def open_count(self, task: TaskState) -> int:
        return sum(len(task.get(k)["windows"]) for k in task.keys(_ENTRY))

    def _add_to_fixed(self, task: TaskState, key: str, env: Envelope, watermark: int) -> str:
        """Put ``env`` in its open windows; the reason it is late when none is open."""
        t, size = env.created_at_us, self.spec.size_us
        newest = t - t % self.spec.hop_us
        starts = range(newest, t - size, -self.spec.hop_us)
        if newest + size <= watermark:
            return (
                f"window [{newest}, {newest + size}) us of key {key!r} already closed: "
                f"the event time is {t} us, the watermark {watermark} us "
                f"(lateness {self.spec.lateness_ms} ms)"
            )
        name, entry = _entry(task, key)
        packed = _Packed(env)
        for start in starts:
            if start + size <= watermark:
                break  # this and every older window closed; the newer ones took it
            if str(start) not in entry["windows"]:
                entry["windows"][str(start)] = _new_record(start, start + size)
                self.schedule.add(task, f"{name}#{start}", start + size)
            self._admit(entry["windows"][str(start)], env, packed)
        task.put(name, entry)
        return ""

    def _add_to_session(self, task: TaskState, key: str, env: Envelope, watermark: int) -> str:
        """Put ``env`` in its session, merging the sessions it bridges; or say why late."""
        t, gap = env.created_at_us, self.spec.gap_us
        if t + gap <= watermark:
            return (
                f"a session of key {key!r} holding event time {t} us would end at "
                f"{t + gap} us, behind the watermark {watermark} us"
            )
        name, entry = _entry(task, key)
        closed = entry.get("closed_end", NO_WATERMARK)
        if t < closed:
            return (
                f"event time {t} us belongs to the session of key {key!r} that closed at "
                f"{closed} us (watermark {watermark} us)"
            )
        windows = entry["windows"]
        touching = [s for s in windows.values() if s["start"] - gap < t < s["last"] + gap]
        if any(env.id in s["ids"] for s in touching):
            return ""  # a duplicate: already counted
        session = _new_record(t, t + gap, last=t)
        self._admit(session, env, _Packed(env))
        for other in touching:
            del windows[str(other["start"])]
            self.schedule.remove(task, f"{name}#{other['start']}", other["end"])
            self._merge(session, other)
        windows[str(session["start"])] = session
        self.schedule.add(task, f"{name}#{session['start']}", session["end"])
        task.put(name, entry)
        return ""

    def _admit(self, record: Record, env: Envelope, packed: _Packed) -> None:
        """Add a member to a window, unless it has it already; pack it if it is kept."""
        ident, t = env.id, env.created_at_us
        if ident in record["ids"]:
            return
        record["ids"][ident] = t
        if record["first"] is None or [t, ident] < record["first"][:2]:
            record["first"] = [t, ident, packed.text]
        if self.spec.keep == "all":
            record["members"][ident] = packed.text
        elif self.spec.keep != "count":
            attribute = self.spec.keep.removeprefix("latest_by:")
            if _keep_latest(record, env.attributes.get(attribute, ""), ident):
                record["members"][ident] = packed.text

    def _merge(self, into: Record, other: Record) -> None:
        """Fold session ``other`` into ``into``."""
        into["start"] = min(into["start"], other["start"])
        into["last"] = max(into["last"], other["last"])
        into["end"] = into["last"] + self.spec.gap_us
        into["ids"].update(other["ids"])
        if other["first"][:2] < into["first"][:2]:
            into["first"] = other["first"]
        if self.spec.keep == "all":
            into["members"].update(other["members"])
        for value, ident in other["latest"].items():
            if _keep_latest(into, value, ident):
                into["members"][ident] = other["members"][ident]

    def _close(self, task: TaskState, watermark: int) -> list[Emit]:
        """Emit every window the watermark has passed, in order of (end, key)."""
        due = []
        for end, item in self.schedule.pop_due(task, watermark):
            name, _, start = item.rpartition("#")
            entry = task.get(name)
            if start == _CLOSED:
                del entry["closed_end"]
                _store(task, name, entry)
            else:
                due.append((end, entry["key"], name, start))
        emits = []
        for end, key, name, start in sorted(due):
            entry = task.get(name)
            record = entry["windows"].pop(start)
            if self.spec.kind == "session":
                self._remember_close(task, name, entry, end, watermark)
            _store(task, name, entry)
            emits.append(Emit("out", self._output(key, record)))
        return emits

    def _remember_close(
        self, task: TaskState, name: str, entry: Record, end: int, watermark: int
    ) -> None:
        """Remember that a key's session closed at ``end`` until no message can reach it.

        A message that is not late has ``t + gap > watermark``; once ``end + gap`` is
        behind the watermark, no such message falls before ``end``. The key's previous
        close is forgotten by now: a later session started at least ``gap`` after it
        ended (or they would be one), so it ends at least ``gap`` after it too.
        """
        if end + self.spec.gap_us > watermark:
            entry["closed_end"] = end
            self.schedule.add(task, f"{name}#{_CLOSED}", end + self.spec.gap_us)

    def _output(self, key: str, record: Record) -> Envelope:
        """The one message of a closed window."""
        first = unpack(record["first"][2])
        start, end = record["start"], record["end"]
        out = Envelope(
            schema_version=SCHEMA_VERSION,
            id=derive_id(f"{key}\x1f{start}", self.stage, 0),
            root_id=first.root_id,
            tenant=first.tenant,
            partition_key=first.partition_key,
            source=first.source,
            trace_id=first.trace_id,
            created_at_us=end,
            ingested_at_us=first.ingested_at_us,
        )
        # The worker appends this stage's lineage step (with its clock and name): an
        # operator reads no clock, so a replay makes byte-identical outputs.
        out.lineage.extend(first.lineage)
        out.attributes.update(
            {
                "window.kind": self.spec.kind,
                "window.key": key,
                "window.start_us": str(start),
                "window.end_us": str(end),
                "window.count": str(len(record["ids"])),
            }
        )
        kept = sorted(record["members"], key=lambda ident: (record["ids"][ident], ident))
        batch = EnvelopeBatch(envelopes=[unpack(record["members"][i]) for i in kept])
        out.payload.content_type = ENVELOPES_CONTENT_TYPE
        out.payload.inline = batch.SerializeToString(deterministic=True)
        return out


def _entry(task: TaskState, key: str) -> tuple[str, Record]:
    """The state key of ``key``'s windows, and its value."""
    name = state_key(_ENTRY, key)
    entry: Record = task.get(name) or {"key": key, "windows": {}}
    return name, entry


def _store(task: TaskState, name: str, entry: Record) -> None:
    if entry["windows"] or "closed_end" in entry:
        task.put(name, entry)
    else:
        task.delete(name)


def _new_record(start: int, end: int, last: int | None = None) -> Record:
    record: Record = {"start": start, "end": end, "ids": {}, "first": None}
    record.update({"members": {}, "latest": {}})
    if last is not None:
        record["last"] = last
    return record


def _keep_latest(record: Record, value: str, ident: str) -> bool:
    """Make ``ident`` the member for ``value`` if it is the latest (event time, id), and
    say whether it is: the caller then keeps it in ``members``."""
    ids = record["ids"]
    old = record["latest"].get(value)
    if old is not None and (ids[old], old) >= (ids[ident], ident):
        return False
    if old is not None:
        del record["members"][old]
    record["latest"][value] = ident
    return True


class _Packed:
    """A member as it is kept: packed without inline or tensor payload bytes (see the
    module docstring), once, and only if a window keeps it."""

    def __init__(self, env: Envelope) -> None:
        self._env = env

    @functools.cached_property
    def text(self) -> str:
        env = self._env
        if env.payload.WhichOneof("body") in ("inline", "tensor"):
            stripped = Envelope()
            stripped.CopyFrom(env)
            stripped.payload.ClearField("body")
            return pack(stripped)
        return pack(env)
