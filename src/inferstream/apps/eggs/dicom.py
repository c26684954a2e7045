"""Decode and validate the MRI scans of the egg pipeline (DICOM in, uint16 image out).

:func:`decode` is the entry point. It tries the hand-written reader of
:mod:`inferstream.apps.eggs.dicom_fast` (Explicit/Implicit VR Little Endian, native pixels:
the common case, tens of microseconds) and falls back to pydicom for everything else
(compressed pixel data through the pylibjpeg plugins, big endian, undefined lengths).
Both readers fill the same header and :mod:`inferstream.apps.eggs.dicom_checks` alone
decides what is acceptable, so the two paths cannot disagree; sizes are checked before
any pixel buffer is made, so a file claiming a 60000x60000 image costs nothing.
:func:`decode_with_pydicom` is the reference path, public for tests and benchmarks;
:func:`decode_dicom_step` is the pipeline step (``decode_dicom``).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferstream.apps.eggs import dicom_fast
from inferstream.apps.eggs.dicom_checks import (
    DEFAULT_LIMITS,
    NATIVE,
    TRANSFER_SYNTAXES,
    InvalidScan,
    ScanInfo,
    ScanLimits,
    check_size,
    check_transfer_syntax,
    validate,
)
from inferstream.apps.eggs.dicom_fast import Header
from inferstream.apps.eggs.preprocess import check_scan
from inferstream.apps.eggs.tags import NO_MAPPING, EggSettings, TagMapping
from inferstream.blobs import BlobStore, batch_payloads
from inferstream.codecs import Checked, ImageLimits
from inferstream.codecs.dicom_frames import (
    BadCodestream,
    check_frame,
    first_frame,
    read_transfer_syntax,
)
from inferstream.envelope import Envelope, to_tensor
from inferstream.errors import BlobError, ConfigError, InvalidInput
from inferstream.steps import Outcome, Step, StepContext

_PYDICOM_WARNINGS = threading.Lock()
DEFAULT_SETTINGS = EggSettings()

#: content_type of the payload once it is a decoded image.
TENSOR_CONTENT_TYPE = "application/x-inferstream-tensor"


@dataclass(frozen=True, eq=False)
class DecodedScan:
    """One validated scan: the image (read-only uint16, rows x cols) and its metadata."""

    pixels: np.ndarray
    egg_id: str
    tray: str
    scanner: str
    acquired_at: str
    incubation_day: int
    modality: str
    transfer_syntax: str
    rows: int
    cols: int

    def attributes(self) -> dict[str, str]:
        """The envelope attributes the flagship contract names."""
        return {
            "egg_id": self.egg_id,
            "tray": self.tray,
            "scanner": self.scanner,
            "acquired_at": self.acquired_at,
            "incubation_day": str(self.incubation_day),
            "modality": self.modality,
        }


def decode(
    data: bytes, limits: ScanLimits = DEFAULT_LIMITS, tags: TagMapping = NO_MAPPING
) -> DecodedScan:
    """Decode and validate one DICOM scan; raise :class:`InvalidScan` with the reason.
    ``tags`` maps an installation's scanner tags to the contract's (``tags.py``)."""
    check_size(data, limits)
    try:
        found = dicom_fast.read(data, tags.wanted)
    except dicom_fast.NotFast:
        return decode_with_pydicom(data, limits, tags)
    except dicom_fast.Damaged as damage:
        # pydicom is the reference and forgives some damage (a mangled tag, say); the
        # fast reader must never refuse what it accepts. When both refuse, the fast
        # reader's message is the precise one (byte offset and tag).
        try:
            return decode_with_pydicom(data, limits, tags)
        except InvalidScan:
            raise InvalidScan(str(damage)) from None
    pixel_length = found.pixel_length if found.pixel_offset >= 0 else None
    info = validate(found.header, limits, pixel_length, tags)
    pixels = np.frombuffer(
        data, dtype="<u2", count=info.rows * info.cols, offset=found.pixel_offset
    ).reshape(info.rows, info.cols)
    if info.bits_stored < 16:
        # pydicom masks the bits above BitsStored; do the same so both paths agree.
        pixels = pixels & np.uint16((1 << info.bits_stored) - 1)
        pixels.flags.writeable = False
    if info.signed:  # two's complement: a value with the sign bit set is negative
        _refuse_negative(int((pixels >= (1 << (info.bits_stored - 1))).sum()))
    return _scan(info, pixels)


def _refuse_negative(negative: int) -> None:
    if negative:
        raise InvalidScan(
            f"signed pixels (PixelRepresentation 1) with {negative} negative values; the "
            "model takes unsigned 16-bit grey: send unsigned pixels, or signed ones that are "
            "all at least 0"
        )


def decode_with_pydicom(
    data: bytes, limits: ScanLimits = DEFAULT_LIMITS, tags: TagMapping = NO_MAPPING
) -> DecodedScan:
    """The reference path: pydicom for parsing and pixel decoding, the same validation."""
    check_size(data, limits)
    # pydicom raises a zoo of exception types on damaged input and warns on odd values;
    # here all of it means "this scan is unusable", said once at this boundary. The
    # warning filters are process-global, so concurrent threads (the API's thread pool)
    # take turns, or one could restore the filters another had just replaced.
    with _PYDICOM_WARNINGS, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = _read_dataset(data)
            header = _pydicom_header(dataset, tags)
            pixel_length = _pydicom_pixel_length(dataset, header)
            info = validate(header, limits, pixel_length, tags)
            if info.transfer_syntax not in NATIVE:
                _check_compressed(dataset, info)
            pixels = dataset.pixel_array
        except InvalidScan:
            raise
        except Exception as exc:
            raise InvalidScan(f"unreadable DICOM ({type(exc).__name__}): {exc!s:.300}") from exc
    if info.signed and pixels.dtype.kind == "i":
        _refuse_negative(int((pixels < 0).sum()))
        pixels = pixels.astype(np.uint16)
    if pixels.dtype.newbyteorder("=") != np.uint16 or pixels.shape != (info.rows, info.cols):
        raise InvalidScan(
            f"pixel data decoded to {pixels.dtype} {pixels.shape}, but the header says "
            f"uint16 ({info.rows}, {info.cols}); the pixel data is damaged"
        )
    pixels = pixels.astype(np.uint16, copy=False)  # big-endian files decode to >u2
    pixels.flags.writeable = False
    return _scan(info, pixels)


def _check_compressed(dataset: Any, info: ScanInfo) -> None:
    try:
        frame = first_frame(dataset.PixelData)
        check_frame(info.transfer_syntax, frame, info.rows, info.cols)
    except BadCodestream as exc:
        raise InvalidScan(str(exc)) from None


def _read_dataset(data: bytes) -> Any:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    # dcmread inflates a deflated data set whole before anything can be checked: the
    # transfer syntax is read from the file meta group first, and refused there.
    try:
        syntax = read_transfer_syntax(data)
    except InvalidInput:
        syntax = ""  # dcmread says what is wrong with the meta group
    if syntax:
        check_transfer_syntax({"TransferSyntaxUID": syntax})
    try:
        # No defer_size: the bytes are in memory already, and a deferred element loses
        # the declared length that tells a truncated Pixel Data from a whole one.
        return dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise InvalidScan(f"not DICOM: {exc}") from exc


def _pydicom_header(dataset: Any, tags: TagMapping) -> Header:
    header: Header = {}
    sources = ((dataset.file_meta, dicom_fast.META_WANTED), (dataset, tags.wanted))
    for source, wanted in sources:
        for keyword, kind in wanted.values():
            value = source.get(keyword)
            if value is None or value == "":
                continue
            if kind == "US":
                if not isinstance(value, int):
                    raise InvalidScan(f"{keyword} must be one unsigned short, got {value!r:.80}")
                header[keyword] = int(value)
            elif isinstance(value, str | int | float):
                header[keyword] = str(value)
            else:  # a multi-valued element: keep DICOM's backslash form
                header[keyword] = "\\".join(str(item) for item in value)
    return header


def _pydicom_pixel_length(dataset: Any, header: Header) -> int | None:
    if "PixelData" not in dataset:
        return None
    if header.get("TransferSyntaxUID") not in NATIVE:
        return -1  # encapsulated: the decoded shape is checked after decoding
    declared = dataset.get_item(dicom_fast.PIXEL_DATA).length
    actual = len(dataset.PixelData)
    # pydicom silently keeps the bytes left when a value runs past the end of the file.
    if actual < declared:
        raise InvalidScan(
            f"truncated: Pixel Data (7FE0,0010) declares {declared} bytes but only {actual} "
            "remain; the file was cut short, send it again"
        )
    return actual


def _scan(info: ScanInfo, pixels: np.ndarray) -> DecodedScan:
    return DecodedScan(
        pixels=pixels,
        egg_id=info.egg_id,
        tray=info.tray,
        scanner=info.scanner,
        acquired_at=info.acquired_at,
        incubation_day=info.incubation_day,
        modality="MR",
        transfer_syntax=info.transfer_syntax,
        rows=info.rows,
        cols=info.cols,
    )


class DecodeDicomStep(Step):
    """Replaces each envelope's DICOM payload by its uint16 image and the scan's metadata."""

    name = "decode_dicom"

    def __init__(
        self, blobs: BlobStore | None, limits: ScanLimits, partition_by: str, tags: TagMapping
    ) -> None:
        self.blobs = blobs
        self.limits = limits
        self.partition_by = partition_by
        self.tags = tags

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        payload = batch_payloads(batch, self.blobs)  # claim checks fetched together
        return [self._one(env, payload) for env in batch]

    def _one(self, env: Envelope, payload: Callable[[Envelope], bytes]) -> Outcome:
        body = env.payload.WhichOneof("body")
        if body not in ("inline", "blob"):
            return InvalidScan(
                f"payload is {body or 'empty'}, expected DICOM bytes; route raw scans "
                "(application/dicom) to this stage"
            )
        try:
            scan = decode(payload(env), self.limits, self.tags)
        except (InvalidScan, BlobError) as exc:  # BlobError is retried by the worker
            return exc
        out = Envelope()
        out.CopyFrom(env)
        out.payload.content_type = TENSOR_CONTENT_TYPE
        out.payload.tensor.CopyFrom(to_tensor(scan.pixels))
        attributes = scan.attributes()
        out.attributes.update(attributes)
        out.partition_key = attributes[self.partition_by]
        return out


def check_upload(data: bytes, limits: ImageLimits, settings: EggSettings | None = None) -> Checked:
    """The eggs application's ingest check of a DICOM upload: the whole scan contract,
    read through the installation's tag mapping (``settings``).

    Takes the place of the core's generic DICOM check (see ``APP.checks``), so a scan
    the pipeline would dead-letter is refused at ingest with the decoder's reason.
    """
    # The scan contract's own limits (ScanLimits) are tighter than any image limit; the
    # model's own (preprocess.check_scan: its minimum size) are checked here too, so a
    # scan the classify stage would refuse is refused now, not dead-lettered later.
    try:
        scan = decode(data, tags=(settings or DEFAULT_SETTINGS).tags)
        check_scan(scan.pixels)
    except InvalidInput as exc:
        raise InvalidScan(f"DICOM scan rejected: {exc}") from exc
    return Checked(data, "application/dicom", scan.attributes(), key=scan.egg_id)


def decode_dicom_step(
    context: StepContext,
    *,
    min_side: int = DEFAULT_LIMITS.min_side,
    max_side: int = DEFAULT_LIMITS.max_side,
    max_bytes: int = DEFAULT_LIMITS.max_bytes,
    partition_by: str = "egg_id",
) -> DecodeDicomStep:
    """Step factory (``decode_dicom`` in a pipeline file); the tenant is kept as it came.

    ``partition_by`` names the attribute that becomes the partition key: ``egg_id``
    (default: spreads load, keeps one egg's scans in order), ``tray`` or ``scanner``.
    """
    if partition_by not in ("egg_id", "tray", "scanner"):
        raise ConfigError(
            f"decode_dicom in stage {context.stage!r}: partition_by {partition_by!r} "
            "must be egg_id, tray or scanner"
        )
    limits = ScanLimits(min_side=min_side, max_side=max_side, max_bytes=max_bytes)
    settings = context.app.parsed_settings if context.app is not None else None
    tags = settings.tags if isinstance(settings, EggSettings) else NO_MAPPING
    return DecodeDicomStep(context.blobs, limits, partition_by, tags)


__all__ = [
    "DEFAULT_LIMITS",
    "TENSOR_CONTENT_TYPE",
    "TRANSFER_SYNTAXES",
    "DecodeDicomStep",
    "DecodedScan",
    "InvalidScan",
    "ScanLimits",
    "check_upload",
    "decode",
    "decode_dicom_step",
    "decode_with_pydicom",
]
