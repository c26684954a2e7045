"""Stateful dataflow operators: fan-in joins, event-time windows, keyed state.

Reading guide:

- :mod:`~inferstream.dataflow.task` — :class:`TaskState`, the state of one *task*
  (a stage's consumer group on one partition number of all its inputs): keyed
  values, the next input offset each topic applied, and the event-time clock.
- :mod:`~inferstream.dataflow.operator` — what an operator is to its worker (``Emit``).
- :mod:`~inferstream.dataflow.clock` — watermarks per input topic, idleness, and the
  schedule of what falls due when.
- :mod:`~inferstream.dataflow.state_store` — where task state lives (the results
  store's database), committed with a version check that fences a stale owner.
- :mod:`~inferstream.dataflow.window` and :mod:`~inferstream.dataflow.join` — the
  operators, pure functions of a task's state and the messages it sees.
- :mod:`~inferstream.dataflow.keyed` — keyed state for a user's step.
- :mod:`~inferstream.dataflow.stateful_worker` — the micro-batch loop that runs an
  operator and keeps state consistent with committed offsets.

docs/dataflow.md explains the operators with worked examples.
"""
