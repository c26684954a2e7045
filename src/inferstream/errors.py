"""The one exception tree of inferstream.

Every error raised on purpose by the package is an :class:`InferstreamError`.
Library errors (SQLite, Kafka, pydicom, ONNX Runtime) are translated at the
boundary with ``raise ... from exc`` so callers catch our types, not theirs.
Each message says what happened and what to do about it.
"""

from __future__ import annotations


class InferstreamError(Exception):
    """Root of every error inferstream raises on purpose."""


class ConfigError(InferstreamError):
    """A pipeline file, URL or setting is wrong; the message names the place."""


class MissingExtraError(InferstreamError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed; install it with: pip install 'inferstream[{extra}]'"
        )


class TransientError(InferstreamError):
    """A dependency (bus, store) is unavailable for now.

    A worker that meets one retries the whole batch with backoff, without limit and
    without committing, so nothing is lost while the dependency is down.
    """


class BusError(TransientError):
    """The message bus failed to produce, consume, commit or seek."""


class BusFullError(BusError):
    """The bus has no room for more messages: its disk is full.

    Still a :class:`BusError`, so a worker retries until space is freed and loses
    nothing; a producer with nobody to wait for it (the demo's scanners) stops instead.
    """


class UnknownTopicError(BusError):
    """A topic was used before it was created."""


class FencedError(BusError):
    """A consumer lost its partitions to another member; its commit was refused."""


class BlobError(InferstreamError):
    """A claim-check payload could not be stored, found or verified."""


class BlobStoreFullError(BlobError):
    """The blob store's disk is full: a blob could not be written. Space freed there
    lets the same put succeed; a producer with nobody to wait for it stops instead."""


class TenantShredded(BlobError):
    """The tenant's blob data keys were deleted (crypto-shredded): its encrypted blobs
    can never be read again, and no new ones are written. The API answers 410 Gone."""


class BlobStoreUnavailable(TransientError):
    """The blob store could not be reached, or answered with a server error or a request
    to slow down (an S3 server's 5xx, ``SlowDown``).

    Not a :class:`BlobError` on purpose: steps that turn a missing or corrupt blob into
    that message's failure let this one through, so the worker waits the outage out.
    """


class RemoteModelUnavailable(TransientError):
    """A remote model server could not be reached, timed out, or answered that it is
    overloaded or restarting; the worker retries the batch until it answers.

    A server that answers and refuses raises :class:`ModelError` instead: retried with
    backoff, then dead-lettered with the server's reason, so a refusing model never
    holds a partition up for good.
    """


class InvalidInput(InferstreamError):
    """A message is unusable (bad image, bad DICOM, wrong schema).

    Raised by steps; the worker sends such a message to the dead-letter topic at once,
    without retries, since retrying cannot fix the input.
    """


class StoreError(TransientError):
    """The results store could not be reached or written."""


class ModelError(InferstreamError):
    """A model's files are missing, unreadable or disagree with its metadata."""
