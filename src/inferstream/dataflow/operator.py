"""What a stateful operator is to the worker that runs it, and the helpers operators share.

An operator (a window, a join) is a pure function of a task's state and the messages
it sees: it keeps everything it remembers in the :class:`TaskState` (JSON values, so
the state store can persist them after each batch) and answers each call with a list
of :class:`Emit`\\ s, which the worker publishes. Because the answer depends only on
the state and the input, a task moved to another worker, or restarted from its last
committed state, produces the same outputs with the same ids.
"""

from __future__ import annotations

import base64
import re
from typing import Literal, NamedTuple, Protocol
from urllib.parse import quote

from inferstream.dataflow.task import TaskState
from inferstream.envelope import Envelope

#: Characters :func:`urllib.parse.quote` never escapes.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


class Emit(NamedTuple):
    """One message an operator asks the worker to send."""

    #: ``out``: to the stage's outputs; ``late``: to ``<input topic>.late``;
    #: ``dead``: to the stage's dead letters.
    kind: Literal["out", "late", "dead"]
    envelope: Envelope
    #: Why (late and dead); the worker turns it into the DeadLetter message.
    reason: str = ""
    #: For ``late``: the input topic the late message came from.
    topic: str = ""


class Operator(Protocol):
    """A stateful stage's work, called by the worker for each message and idle input."""

    def on_message(self, task: TaskState, topic: str, env: Envelope) -> list[Emit]:
        """Take one input message read from ``topic``."""
        ...

    def on_idle(self, task: TaskState, topic: str, now_us: int) -> list[Emit]:
        """``topic``'s partition has no lag and sent nothing for a while."""
        ...

    def open_count(self, task: TaskState) -> int:
        """Open windows or waiting joins, for a metric."""
        ...


def pack(env: Envelope) -> str:
    """An envelope as a JSON-safe string (base64 of its deterministic serialisation).

    Deterministic so that the same input always leaves the same bytes in the state.
    """
    return base64.b64encode(env.SerializeToString(deterministic=True)).decode("ascii")


def unpack(text: str) -> Envelope:
    env = Envelope()
    env.ParseFromString(base64.b64decode(text))
    return env


def state_key(prefix: str, key: str) -> str:
    """The task-state key of ``key`` under ``prefix``.

    The key is percent-encoded, so no key can be a prefix of another's entry and any
    character (a ``/``, a control character) is safe in the store.
    """
    if _UNRESERVED.fullmatch(key):
        return prefix + key  # what quote() returns for these, at a tenth of the cost
    return prefix + quote(key, safe="")
