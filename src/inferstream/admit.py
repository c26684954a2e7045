"""Admitting items from a source that is not the API (a watched folder, a DICOM
receiver): each is checked exactly as an upload to ``POST /v1/scans`` would be,
kept in the tenant's blob store, wrapped in an ingest envelope and produced.

The envelope id is derived from what names the item at its source (a file's name and
digest, a DICOM instance's UID) and the tenant, so an item sent again after a crash
or a retry has the same id, and the pipeline's deterministic output ids make it a
rewrite, never a second record.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence

from inferstream import codecs
from inferstream.application import AppSpec
from inferstream.blobs import BlobStore, check_in
from inferstream.bus import Bus, Record
from inferstream.codecs import Checked, ImageLimits
from inferstream.envelope import Envelope, new_envelope


def source_id(tenant: str, *names: str) -> str:
    """A stable envelope id for an item named ``names`` at its source."""
    return hashlib.blake2b("\0".join((tenant, *names)).encode(), digest_size=16).hexdigest()


class Admitter:
    """Checks, keeps, wraps and produces items for one tenant onto one topic."""

    def __init__(
        self,
        bus: Bus,
        blobs: BlobStore | None,
        *,
        topic: str,
        tenant: str,
        app: AppSpec | None = None,
        claim_check_bytes: int = 64 * 1024,
        limits: ImageLimits | None = None,
        deidentify: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.bus, self.blobs = bus, blobs
        self.deidentify = deidentify
        self.topic, self.tenant, self.app = topic, tenant, app
        self.claim_check_bytes = claim_check_bytes
        self.limits = limits or ImageLimits()
        self._produce = threading.Lock()  # sources may call from several threads

    def check(self, data: bytes) -> Checked:
        """The upload's checks: :class:`~inferstream.errors.InvalidInput` saying why. With
        ``deidentify``, a DICOM file that passes is de-identified and checked again, as
        the centre will check what it receives."""
        checked = self._check(data)
        if self.deidentify is None or checked.content_type != codecs.dicom.CONTENT_TYPE:
            return checked
        return self._check(self.deidentify(checked.data))

    def _check(self, data: bytes) -> Checked:
        if self.app is None:
            return codecs.check(data, self.limits)
        return self.app.check_upload(data, self.limits)

    def wrap(
        self,
        checked: Checked,
        *,
        ident: str,
        source: str,
        subject: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Keep the checked bytes in the tenant's blobs and wrap them in an envelope;
        ``subject`` is used where the content names none of its own. Without a blob
        store (an edge agent's buffer) the bytes stay inline in the envelope."""
        return wrap_checked(
            checked, tenant=self.tenant, app=self.app, blobs=self.blobs,
            claim_check_bytes=self.claim_check_bytes, ident=ident, source=source,
            subject=subject, attributes=attributes,
        )  # fmt: skip

    def produce(self, envelopes: Sequence[Envelope]) -> None:
        """Durable on return (the bus's promise)."""
        records = [Record(e.partition_key.encode(), e.SerializeToString()) for e in envelopes]
        with self._produce:
            self.bus.produce(self.topic, records)


def wrap_checked(
    checked: Checked,
    *,
    tenant: str,
    app: AppSpec | None,
    blobs: BlobStore | None,
    claim_check_bytes: int,
    ident: str,
    source: str,
    subject: str = "",
    attributes: Mapping[str, str] | None = None,
) -> Envelope:
    """An admitted item's envelope (see :meth:`Admitter.wrap`): what the content says of
    itself wins over ``attributes``, its digest is kept, and a big one is claim-checked."""
    if blobs is None:
        digest = hashlib.sha256(checked.data).hexdigest()
    else:
        digest = blobs.put(checked.data, tenant).sha256
    found = {**(attributes or {}), **checked.attributes, "blob_sha256": digest}
    if app is not None and subject and not found.get(app.subject):
        found[app.subject] = subject
    env = new_envelope(
        checked.data,
        checked.content_type,
        tenant=tenant,
        key=checked.key or subject,
        source=source,
        attributes=found,
        envelope_id=ident,
    )
    return env if blobs is None else check_in(env, blobs, claim_check_bytes)


__all__ = ["Admitter", "source_id", "wrap_checked"]
