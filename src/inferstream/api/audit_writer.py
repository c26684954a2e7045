"""Appending audit entries off the request path: a thread that writes them in batches.

A request hands its entry to :meth:`AuditWriter.submit` (a lock and a deque append, no
I/O) and answers; the thread appends what gathers within ``linger_s`` of the first entry
(or ``BATCH`` entries, whichever comes first) in one transaction, so at hundreds of
requests per second the audit adds about 1/``linger_s`` transactions a second, not one
per request (one per request measured 0.8 ms of CPU each, bench/audit_bench.py). A
reader of the log first calls :meth:`AuditWriter.flush`, which writes at once.

Entries are kept in memory until the store has them: while the store is down the thread
retries with back-off and entries wait, up to ``bound``; past it :attr:`AuditWriter.full`
is true and the API refuses audited requests with 503 (:mod:`inferstream.api.audit`)
rather than serve one it cannot record. On shutdown the thread writes what is left;
entries it cannot write then (store still down) are counted in an error log line, never
dropped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from inferstream.errors import StoreError
from inferstream.store.audit import AuditEntry, AuditLog

log = logging.getLogger(__name__)

#: Entries kept in memory while the store is down, before audited requests get 503.
DEFAULT_BOUND = 100_000
#: Entries appended in one go, at most.
BATCH = 1000
#: How long the thread lets entries gather before it writes them.
LINGER_S = 0.05
#: Back-off between attempts while the store is down (doubling up to the maximum).
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0


class AuditWriter:
    """The background appender of one API process."""

    def __init__(
        self, audit_log: AuditLog, bound: int = DEFAULT_BOUND, linger_s: float = LINGER_S
    ) -> None:
        self.log = audit_log
        self.bound = bound
        self.linger_s = linger_s
        self._hurry = False
        self._pending: deque[AuditEntry] = deque()
        self._changed = threading.Condition()
        self._submitted = 0
        self._written = 0
        self._closing = False
        self._failure: StoreError | None = None
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.bound

    def submit(self, entry: AuditEntry) -> None:
        with self._changed:
            self._pending.append(entry)
            self._submitted += 1
            if len(self._pending) == 1 or len(self._pending) == BATCH:
                self._changed.notify_all()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every entry submitted before this call is in the store;
        :class:`StoreError` when that does not happen within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            target = self._submitted
            self._hurry = True
            self._changed.notify_all()
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._failure or StoreError(
                        f"audit entries were not written within {timeout_s} s; retry"
                    )
                self._changed.wait(left)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is pending (for up to ``timeout_s``), then stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._pending:
            log.error(
                "audit entries not written at shutdown",
                extra={"error": f"{len(self._pending)} entries lost: {self._failure}"},
            )

    def _run(self) -> None:
        backoff = RETRY_FIRST_S
        while True:
            with self._changed:
                self._gather()
                if not self._pending:
                    return
                self._hurry = False
                batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
            if self._write(batch):
                backoff = RETRY_FIRST_S
                continue
            with self._changed:
                if self._closing:
                    return
                self._changed.wait(backoff)
            backoff = min(RETRY_MAX_S, backoff * 2)

    def _gather(self) -> None:
        """Wait (lock held) for a first entry, then up to ``linger_s`` for more."""
        while not self._pending and not self._closing:
            self._changed.wait()
        deadline = time.monotonic() + self.linger_s
        while len(self._pending) < BATCH and not (self._closing or self._hurry):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.wait(left)

    def _write(self, batch: list[AuditEntry]) -> bool:
        try:
            self.log.append(batch)
        except Exception as exc:  # the store down, or worse: entries wait and are retried
            self._failure = exc if isinstance(exc, StoreError) else StoreError(str(exc))
            log.warning("audit entries wait for the store", extra={"error": str(exc)})
            return False
        with self._changed:
            for _ in batch:
                self._pending.popleft()
            self._written += len(batch)
            self._failure = None
            self._changed.notify_all()
        return True
