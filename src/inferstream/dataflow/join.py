"""Fan-in joins: gather the results that belong together, emit one message for them.

A :class:`JoinSpec` says what belongs together (``by``), how many members to wait for
and how long; a :class:`JoinOperator` runs it over one task's messages (see
:mod:`inferstream.dataflow.operator`).

- ``by: parent_id`` gathers the outputs of several stages that each read the same
  input (a broadcast): their key is their ``parent_id``. A dead letter is a copy of
  the input that failed, the would-be parent, so its key is its own id.
- ``by: fanout`` gathers the children of one split: the innermost fan-out frame gives
  the key (the split input), the child's index and how many siblings to wait for. The
  output pops that frame, so a nested split joins back level by level.
- ``by: root_id`` and ``by: attribute:NAME`` gather by the ingest event or a value.

What a member fills: with ``branches``, its branch (the stage of its last lineage
step; for a dead letter the stage that failed), and the join waits for ``expect`` of
them (all, by default); with ``by: fanout``, its index; otherwise the member itself
(a dead letter fills the place of the result it would have been), and the join waits
for ``expect`` members. A dead letter marks its place *failed*: the join then ends as
soon as every place is filled instead of waiting for the timeout, as *partial*.

Time is event time: a join whose earliest member has event time ``t`` expires, as
partial, when the watermark reaches ``t + timeout``. Complete joins go out; partial
ones go out too in ``outer`` mode and to the dead letters in ``inner`` mode. Each
output has a deterministic id from the key. A member for a join already emitted is
*late* (a tombstone per key remembers emitted joins until the watermark passes
``t + 2 * timeout``; a member even later than that opens a new join, whose output
has the same id: upserts by id keep the last), as is a member whose own timeout is
behind the watermark on arrival. A member with an id the join already holds is a
redelivery and is ignored.

The output is a copy of the first result in branch (or index, or event-time) order,
with ``parent_id`` set to the key when joining by parent or fan-out; it carries every
result's predictions (a prediction made before the split, the same in every member,
once) and the union of all members' attributes (the first member's value wins), plus
``join.status`` (``complete`` or ``partial``), ``join.members`` (every member, failed
ones included), and ``join.missing`` and ``join.failed``: comma-separated branch
names or indexes (for a join that counts members, ``join.missing`` is how many).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from inferstream.dataflow.clock import Clock, Schedule
from inferstream.dataflow.operator import Emit, pack, state_key, unpack
from inferstream.dataflow.task import TaskState
from inferstream.envelope import Envelope, derive_id
from inferstream.errors import ConfigError

_OPEN = "join/"  # + key: a join waiting for members
#: Memo: the state key of an open join -> its members' envelopes by place, as they
#: arrived, so that a join is not unpacked from its state while the task stays loaded.
_ENVELOPES = "join:envelopes"
#: Memo: key (as in state keys) -> status of its emitted join, from the tombstones.
_EMITTED = "join:emitted"

Record = dict[str, Any]


@dataclass(frozen=True)
class JoinSpec:
    """What a stage gathers; times in milliseconds of event time."""

    #: ``parent_id``, ``fanout``, ``root_id`` or ``attribute:NAME``.
    by: str = "parent_id"
    #: How many branches (or members) to wait for; None: all ``branches``, or with
    #: ``by: fanout`` the count in the fan-out frame.
    expect: int | None = None
    #: The stages whose results are joined, in output order.
    branches: tuple[str, ...] | None = None
    timeout_ms: int = 0
    #: ``inner``: only complete joins go out; ``outer``: partial ones too.
    mode: Literal["inner", "outer"] = "inner"
    lateness_ms: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.by, str) or not (
            self.by in ("parent_id", "fanout", "root_id")
            or (self.by.startswith("attribute:") and len(self.by) > len("attribute:"))
        ):
            raise ConfigError(
                f"join by must be parent_id, fanout, root_id or attribute:NAME; got {self.by!r}"
            )
        if self.mode not in ("inner", "outer"):
            raise ConfigError(f"join mode must be inner or outer, got {self.mode!r}")
        for name, low in (("timeout_ms", 1), ("lateness_ms", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"a join needs {name} >= {low} (a whole number of milliseconds), "
                    f"e.g. {name}: 30000; got {value!r}"
                )
        self._check_branches()
        self._check_expect()

    def _check_branches(self) -> None:
        if self.branches is None:
            return
        branches = self.branches
        if isinstance(branches, str) or not all(isinstance(b, str) and b for b in branches):
            raise ConfigError("join branches must be a list of stage names")
        if not branches or len(set(branches)) != len(branches):
            raise ConfigError(f"join branches must name distinct stages, got {list(branches)}")
        object.__setattr__(self, "branches", tuple(branches))

    def _check_expect(self) -> None:
        expect = self.expect
        if expect is not None and (isinstance(expect, bool) or not isinstance(expect, int)):
            raise ConfigError(f"join expect must be a whole number >= 1, got {expect!r}")
        if self.by == "fanout":
            if expect is not None or self.branches is not None:
                raise ConfigError(
                    "a join by fanout takes its count from the fan-out frame; "
                    "remove expect and branches"
                )
            return
        if expect is None and self.branches is None:
            raise ConfigError(
                f"a join by {self.by} needs expect (how many members) or branches (which "
                "stages), e.g. branches: [classify, segment]"
            )
        most = len(self.branches) if self.branches is not None else expect
        if expect is not None and not 1 <= expect <= (most or 1):
            raise ConfigError(
                f"join expect must be between 1 and the number of branches ({most}), got {expect}"
            )

    @property
    def timeout_us(self) -> int:
        return self.timeout_ms * 1000


class Place(NamedTuple):
    """Where a member goes: its join's key, the place it fills, its output order."""

    key: str
    slot: str
    #: Sort key of the member in the output (JSON: a list).
    rank: list[Any]
    #: How many places the join waits for.
    need: int
    #: The branch or index named in ``join.failed`` and ``join.missing``.
    label: str


class JoinOperator:
    """Runs a :class:`JoinSpec` over one task's messages."""

    def __init__(self, spec: JoinSpec, stage: str, topics: Sequence[str]) -> None:
        self.spec = spec
        self.stage = stage
        self.clock = Clock(topics, spec.lateness_ms * 1000)
        # Open joins by timeout; emitted joins (tombstones: "<status>/<key>") by when they
        # are forgotten. Apart, each gets its entries in order of due time as event time
        # moves on; buckets of 1/128 of the timeout keep what a commit rewrites small.
        width = spec.timeout_us // 128
        self.timeouts = Schedule("join:due", width)
        self.tombstones = Schedule("join:done", width)
        self._ranks = {branch: rank for rank, branch in enumerate(spec.branches or ())}

    def on_message(self, task: TaskState, topic: str, env: Envelope) -> list[Emit]:
        before, after = self.clock.observe(task, topic, env.created_at_us)
        return self._admit(task, topic, env, before) + self._expire(task, after)

    def on_idle(self, task: TaskState, topic: str, now_us: int) -> list[Emit]:
        return self._expire(task, self.clock.idle(task, topic, now_us))

    def open_count(self, task: TaskState) -> int:
        return sum(1 for _ in task.keys(_OPEN))

    def _admit(self, task: TaskState, topic: str, env: Envelope, watermark: int) -> list[Emit]:
        place = self._place(env)
        if isinstance(place, str):
            return [Emit("dead", env, reason=place)]
        quoted = state_key("", place.key)
        late = self._late_reason(task, place.key, quoted, env, watermark)
        if late:
            return [Emit("late", env, reason=late, topic=topic)]
        name = _OPEN + quoted
        join = task.get(name) or {"key": place.key, "need": place.need, "members": {}}
        held = join["members"].get(place.slot)
        if held is not None:
            if held["id"] == env.id:
                return []  # a redelivery
            reason = (
                f"the join of {place.key!r} already has {held['id']} for {place.label!r}; "
                "each branch must send one message per key"
            )
            return [Emit("dead", env, reason=reason)]
        return self._add(task, name, join, place, env)

    def _add(
        self, task: TaskState, name: str, join: Record, place: Place, env: Envelope
    ) -> list[Emit]:
        """Add a new member to its join: wait for the others, or finish the join."""
        failed = env.HasField("error")
        member: Record = {"id": env.id, "rank": place.rank, "label": place.label, "failed": failed}
        join["members"][place.slot] = member
        arrived = task.memo.get(_ENVELOPES)
        if arrived is None:
            arrived = task.memo[_ENVELOPES] = {}
        arrived.setdefault(name, {})[place.slot] = env
        t = env.created_at_us
        opened = min(join.get("opened", t), t)
        if len(join["members"]) < join["need"]:
            member["env"] = pack(env)  # only a join that waits keeps its members
            self._open_until(task, name, join, opened)
            task.put(name, join)
            return []
        if "opened" in join:
            self.timeouts.remove(task, name, join["opened"] + self.spec.timeout_us)
        join["opened"] = opened
        task.delete(name)  # nothing in the store when it opened in this batch
        return [self._finish(task, name, join)]

    def _open_until(self, task: TaskState, name: str, join: Record, opened: int) -> None:
        """Set when the join opened (its earliest member), and so when it times out."""
        timeout = self.spec.timeout_us
        if "opened" in join:
            if opened == join["opened"]:
                return
            self.timeouts.remove(task, name, join["opened"] + timeout)
        join["opened"] = opened
        self.timeouts.add(task, name, opened + timeout)

    def _place(self, env: Envelope) -> Place | str:
        """Where ``env`` goes, or why it cannot be joined."""
        spec = self.spec
        if spec.by == "fanout":
            return _fanout_place(env)
        key = _key(spec.by, env)
        if not key:
            what = f"attribute {spec.by[len('attribute:') :]!r}" if ":" in spec.by else spec.by
            return f"envelope {env.id} has no {what} to join by"
        failed = env.HasField("error")
        branch = env.error.stage if failed else _last_stage(env)
        if spec.branches is None:
            # A failure fills the place of the result it would have been (its first).
            slot = derive_id(env.id, branch, 0) if failed else env.id
            return Place(key, slot, [env.created_at_us, slot], spec.expect or 1, branch)
        rank = self._ranks.get(branch)
        if rank is None:
            return (
                f"envelope {env.id} comes from stage {branch!r}, not one of the join's "
                f"branches ({', '.join(spec.branches)}); add it to branches or route it "
                "elsewhere"
            )
        return Place(key, branch, [rank, ""], spec.expect or len(spec.branches), branch)

    def _late_reason(
        self, task: TaskState, key: str, quoted: str, env: Envelope, watermark: int
    ) -> str:
        status = self._emitted(task).get(quoted)
        if status is not None:
            return f"the join of {key!r} was already emitted ({status})"
        if env.created_at_us + self.spec.timeout_us <= watermark:
            return (
                f"event time {env.created_at_us} us + timeout {self.spec.timeout_ms} ms is "
                f"behind the watermark {watermark} us: its join would have timed out"
            )
        return ""

    def _emitted(self, task: TaskState) -> dict[str, str]:
        """Keys whose join was emitted and is not forgotten yet, with its status."""
        emitted: dict[str, str] | None = task.memo.get(_EMITTED)
        if emitted is None:  # the task was loaded: read the tombstones once
            emitted = task.memo[_EMITTED] = {}
            for _due, tombstone in self.tombstones.entries(task):
                status, _, quoted = tombstone.partition("/")
                emitted[quoted] = status
        return emitted

    def _expire(self, task: TaskState, watermark: int) -> list[Emit]:
        """Emit every join the watermark has timed out, in order of (deadline, key), and
        forget the tombstones it has passed (those of these joins too, if due)."""
        expired = [(name, task.get(name)) for _due, name in self.timeouts.pop_due(task, watermark)]
        emits = []
        for name, join in sorted(expired, key=lambda nj: (nj[1]["opened"], nj[1]["key"])):
            task.delete(name)
            emits.append(self._finish(task, name, join))
        for _due, tombstone in self.tombstones.pop_due(task, watermark):
            self._emitted(task).pop(tombstone.partition("/")[2], None)
        return emits

    def _finish(self, task: TaskState, name: str, join: Record) -> Emit:
        """The output of a join that is complete or over, and its tombstone."""
        places = sorted(join["members"].items(), key=lambda item: item[1]["rank"])
        members = [member for _, member in places]
        failed = [m["label"] for m in members if m["failed"]]
        missing = self._missing(join)
        complete = not failed and len(members) >= join["need"]
        status = "complete" if complete else "partial"
        out = self._output(join["key"], members, _envelopes(task, name, places))
        attributes = out.attributes  # set one by one: a map's update() loops in Python
        attributes["join.status"] = status
        attributes["join.members"] = str(len(members))
        attributes["join.missing"] = ",".join(missing)
        attributes["join.failed"] = ",".join(failed)
        quoted = name[len(_OPEN) :]
        self.tombstones.add(task, f"{status}/{quoted}", join["opened"] + 2 * self.spec.timeout_us)
        self._emitted(task)[quoted] = status
        if complete or self.spec.mode == "outer":
            return Emit("out", out)
        reason = f"join incomplete: missing {', '.join(missing) or 'none'}, "
        return Emit("dead", out, reason=reason + f"failed {', '.join(failed) or 'none'}")

    def _missing(self, join: Record) -> list[str]:
        """Places not filled: branch names, indexes, or (members only) how many."""
        filled = join["members"]
        if self.spec.by == "fanout":
            return [str(i) for i in range(join["need"]) if str(i) not in filled]
        if self.spec.branches is not None:
            return [b for b in self.spec.branches if b not in filled]
        short = join["need"] - len(filled)
        return [str(short)] if short > 0 else []

    def _output(self, key: str, members: list[Record], envs: list[Envelope]) -> Envelope:
        """A copy of the first result (in branch or index order) carrying everyone's
        predictions and attributes."""
        results = [env for env, m in zip(envs, members, strict=True) if not m["failed"]]
        source = (results or envs)[0]
        out = Envelope()
        out.CopyFrom(source)
        out.ClearField("error")
        out.id = derive_id(key, self.stage, 0)
        if self.spec.by == "fanout":
            del out.fanout[-1]
        if self.spec.by in ("parent_id", "fanout"):
            out.parent_id = key
        if results:
            _add_predictions(out, results[1:])
        else:
            del out.predictions[:]
        if any(env.attributes for env in envs if env is not source):
            attributes: dict[str, str] = {}
            for env in envs:  # the first member (in output order) with a name gives its value
                for name, value in env.attributes.items():
                    attributes.setdefault(name, value)
            out.attributes.clear()
            for name, value in attributes.items():
                out.attributes[name] = value
        return out


def _add_predictions(out: Envelope, others: list[Envelope]) -> None:
    """Append the predictions of ``others`` that ``out`` (a copy of the first result)
    lacks: each result carries the predictions made before the split too, which are
    the same message in every member and are kept once."""
    if not others:
        return
    kept = list(out.predictions)
    for env in others:
        new = [p for p in env.predictions if p not in kept]
        kept += new
        out.predictions.extend(new)


def _envelopes(task: TaskState, name: str, places: list[tuple[str, Record]]) -> list[Envelope]:
    """The envelopes of a finished join's members, in the order of ``places``: as they
    arrived while the task stayed loaded, else unpacked from the state."""
    arrived: dict[str, Envelope] = task.memo.get(_ENVELOPES, {}).pop(name, {})
    envs = []
    for slot, member in places:
        env = arrived.get(slot)
        envs.append(env if env is not None and env.id == member["id"] else unpack(member["env"]))
    return envs


def _key(by: str, env: Envelope) -> str:
    if by == "parent_id":
        # A dead letter is the input that failed: the parent its result would have had.
        return env.id if env.HasField("error") else env.parent_id
    if by == "root_id":
        return env.root_id
    return env.attributes.get(by.removeprefix("attribute:"), "")


def _fanout_place(env: Envelope) -> Place | str:
    if not env.fanout:
        return (
            f"envelope {env.id} has no fan-out frame to join by; a join by fanout gathers "
            "the outputs of a stage that splits its input"
        )
    frame = env.fanout[-1]
    if frame.index >= frame.count:
        return f"envelope {env.id} has fan-out index {frame.index} of only {frame.count}"
    index = str(frame.index)
    return Place(frame.parent_id, index, [frame.index, ""], frame.count, index)


def _last_stage(env: Envelope) -> str:
    return env.lineage[-1].stage if env.lineage else ""
