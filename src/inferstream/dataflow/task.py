"""The state of one task: a stage's consumer group on one partition number.

A stateful stage splits its work into *tasks*, one per partition number: task ``p``
sees partition ``p`` of every input topic (inputs of a stateful stage have equal
partition counts and are assigned co-partitioned, so every message of one key meets
the same task). A task's state is what survives a crash or a move to another
worker:

- ``values``: keyed JSON values written by operators and stateful steps;
- ``offsets``: per input topic, the next offset whose effect is *not* yet in
  ``values``; a redelivered message below it was already applied and is skipped,
  so a redelivered batch never counts twice;
- ``version``: bumped by every commit; a commit that finds another version in the
  store was overtaken by a newer owner and is refused (fencing).

Values must be JSON-serialisable (dicts, lists, strings, numbers, booleans, None).
Beside them, :attr:`TaskState.memo` holds what operators derive from the values to
save work (an index, parsed envelopes); it is never stored, so it starts empty
whenever a task is loaded and must be rebuildable from the values alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskState:
    """In-memory view of one task's state, with the changes since the last commit."""

    group: str
    partition: int
    #: Version of the stored state this view was loaded from (0: never stored).
    version: int = 0
    #: Input topic -> next offset not yet applied to ``values``.
    offsets: dict[str, int] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    #: Derived from ``values`` by operators, by a name of their own; never stored.
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _written: set[str] = field(default_factory=set, repr=False)
    _deleted: set[str] = field(default_factory=set, repr=False)
    #: Keys put since the last commit that the store does not hold: deleting one
    #: needs no DELETE (a join that opens and completes within one batch).
    _unstored: set[str] = field(default_factory=set, repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def put(self, key: str, value: Any) -> None:
        if key not in self.values and key not in self._deleted:
            self._unstored.add(key)
        self.values[key] = value
        self._written.add(key)
        self._deleted.discard(key)

    def delete(self, key: str) -> None:
        # Membership, not the popped value: a stored None must be deleted too.
        if key not in self.values:
            return
        del self.values[key]
        self._written.discard(key)
        if key in self._unstored:
            self._unstored.discard(key)
        else:
            self._deleted.add(key)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, in sorted order (deterministic iteration)."""
        return iter(sorted(k for k in self.values if k.startswith(prefix)))

    def applied(self, topic: str, offset: int) -> bool:
        """Whether the message at ``offset`` of ``topic`` is already in this state."""
        return offset < self.offsets.get(topic, 0)

    def advance(self, topic: str, offset: int) -> None:
        """Record that the message at ``offset`` of ``topic`` is now in this state."""
        if offset + 1 > self.offsets.get(topic, 0):
            self.offsets[topic] = offset + 1

    def changes(self) -> tuple[dict[str, Any], set[str]]:
        """Values written and keys deleted since the last :meth:`mark_committed`."""
        return {k: self.values[k] for k in self._written}, set(self._deleted)

    def mark_committed(self, version: int) -> None:
        self.version = version
        self._written.clear()
        self._deleted.clear()
        self._unstored.clear()
