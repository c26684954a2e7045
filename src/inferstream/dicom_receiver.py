"""A DICOM receiver: scanners send instances with C-STORE, they enter the pipeline
exactly as uploads do.

``inferstream dicom-receive FILE`` runs a storage SCP (pynetdicom) under an AE title:

- **C-ECHO** answers, so a scanner's "test connection" works;
- **associations** are accepted only when called by our AE title and, where
  ``calling`` names some, from those scanners' AE titles; at most
  ``max_associations`` at once (more are rejected, the scanner retries); optionally
  over TLS (a certificate and key; with a CA, the scanner must present one it signed);
- **C-STORE** of the storage SOP classes configured (``--sop-class``; all by
  default) in a transfer syntax the DICOM codec decodes:
  the instance, re-encoded as a Part 10 file, is checked by the pipeline
  application's check (the same as ``POST /v1/scans``), kept in the tenant's blob
  store and produced to the input topic *before* the success status goes back. A
  refused instance gets failure status ``0xC000`` with the reason in the response's
  Error Comment (and in full in the log); a bus or blob store that is down gets
  ``0xA700`` (out of resources), which tells the scanner to send it again later.

The envelope id is derived from the tenant and the SOP Instance UID, so an instance
the scanner sends twice (its retry after a lost response) is one record.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt, sop_class
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

from inferstream.admit import Admitter, source_id
from inferstream.errors import ConfigError, InferstreamError, InvalidInput

log = logging.getLogger(__name__)

#: Transfer syntaxes accepted: those the DICOM codec (pydicom and its pylibjpeg
#: plugins) decodes. Deflate is left out: a decompression bomb nothing can bound.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
)
#: DIMSE statuses sent back.
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
#: The Error Comment is an LO: at most 64 characters.
_COMMENT_CHARS = 64


@dataclass(frozen=True)
class ReceiverSettings:
    ae_title: str = "INFERSTREAM"
    host: str = "127.0.0.1"
    port: int = 11112
    #: Scanners' AE titles allowed to associate; empty: any.
    calling: tuple[str, ...] = ()
    max_associations: int = 10
    #: Storage SOP classes accepted (UIDs or keywords such as MRImageStorage); empty:
    #: every storage SOP class (the application's check still decides what it takes).
    sop_classes: tuple[str, ...] = ()
    #: TLS: certificate and key files; with ``tls_ca``, scanners must present a
    #: certificate that CA signed.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None


@dataclass
class Received:
    """What the receiver did, counted (for its log line and for tests)."""

    stored: int = 0
    refused: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)


class DicomReceiver:
    """A storage SCP admitting what it receives through an :class:`Admitter`."""

    def __init__(self, admitter: Admitter, settings: ReceiverSettings) -> None:
        self.admitter, self.settings = admitter, settings
        self.counts = Received()
        self._lock = threading.Lock()
        ae = AE(ae_title=settings.ae_title)
        ae.require_called_aet = True
        if settings.calling:
            ae.require_calling_aet = list(settings.calling)
        ae.maximum_associations = settings.max_associations
        for uid in storage_classes(settings.sop_classes):
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification)
        self.ae = ae
        self._server: Any = None

    def start(self) -> None:
        s = self.settings
        self._server = self.ae.start_server(
            (s.host, s.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)],
            ssl_context=self._tls(),
        )
        log.info("DICOM receiver %s listening on %s:%d", s.ae_title, s.host, self.port)

    @property
    def port(self) -> int:
        """The port listened on (the one given, or the one the system chose for 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=s.tls_ca)
        context.load_cert_chain(s.tls_cert, s.tls_key)
        context.verify_mode = ssl.CERT_REQUIRED if s.tls_ca else ssl.CERT_NONE
        return context

    @staticmethod
    def _on_echo(_event: Any) -> int:
        return SUCCESS

    def _on_store(self, event: Any) -> int | Dataset:
        calling = str(event.assoc.requestor.ae_title).strip()
        uid = str(event.request.AffectedSOPInstanceUID)
        try:
            data = bytes(event.encoded_dataset(include_meta=True))
            checked = self.admitter.check(data)
            env = self.admitter.wrap(
                checked,
                ident=source_id(self.admitter.tenant, "dicom", uid),
                source=f"dicom:{calling}",
                subject=uid,
                attributes={"calling_ae": calling},
            )
            self.admitter.produce([env])
        except InvalidInput as exc:
            log.warning("refused instance %s from %s: %s", uid, calling, exc)
            self._count("refused", str(exc))
            return _status(CANNOT_UNDERSTAND, str(exc))
        except InferstreamError as exc:  # the bus or blob store: the scanner retries
            log.warning("could not admit instance %s from %s now: %s", uid, calling, exc)
            self._count("failed", str(exc))
            return _status(OUT_OF_RESOURCES, f"try again later: {exc}")
        self._count("stored", "")
        return SUCCESS

    def _count(self, what: str, reason: str) -> None:
        with self._lock:
            setattr(self.counts, what, getattr(self.counts, what) + 1)
            if reason:
                self.counts.reasons.append(reason)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:_COMMENT_CHARS]
    return status


def storage_classes(names: Sequence[str]) -> list[str]:
    """The storage SOP class UIDs named (by UID or keyword), or all of them."""
    known = {str(c.abstract_syntax) for c in StoragePresentationContexts if c.abstract_syntax}
    if not names:
        return sorted(known)
    uids = []
    for name in names:
        uid = str(getattr(sop_class, name, name))
        if uid not in known:
            raise ConfigError(
                f"{name[:80]!r} is not a storage SOP class; name one by UID or keyword, "
                "e.g. MRImageStorage or 1.2.840.10008.5.1.4.1.1.4"
            )
        uids.append(uid)
    return uids


def parse_calling(values: Sequence[str]) -> tuple[str, ...]:
    """AE titles from the command line (each 1-16 characters, no backslash)."""
    titles = tuple(v.strip() for v in values)
    for title in titles:
        if not 0 < len(title) <= 16 or "\\" in title:
            raise ConfigError(f"AE title {title[:40]!r} must be 1-16 characters, no backslash")
    return titles


__all__ = [
    "TRANSFER_SYNTAXES",
    "DicomReceiver",
    "Received",
    "ReceiverSettings",
    "parse_calling",
    "storage_classes",
]
