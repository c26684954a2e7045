"""What makes a DICOM scan acceptable to the egg pipeline, checked on a parsed header.

Both DICOM readers (the fast one and pydicom) reduce a file to the same small header,
keyword -> value; :func:`validate` alone decides whether it is a usable MR slice and
says precisely why not. Every check here is on header values, so a file that claims a
huge image or a bogus transfer syntax is refused before a pixel buffer exists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

from inferstream.apps.eggs.dicom_fast import Header
from inferstream.apps.eggs.tags import NO_MAPPING, TagMapping
from inferstream.codecs import dicom_frames
from inferstream.errors import ConfigError, InvalidInput

T = TypeVar("T")

#: Transfer syntaxes accepted, UID -> name: the core's (deflate left out, see
#: :mod:`inferstream.codecs.dicom_frames`) but lossy 8/12-bit JPEG (the model takes 16 bits).
TRANSFER_SYNTAXES: dict[str, str] = {
    uid: name
    for uid, name in dicom_frames.TRANSFER_SYNTAXES.items()
    if uid not in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
}
NATIVE = dicom_frames.NATIVE
_UIDS = (
    "TransferSyntaxUID",
    "MediaStorageSOPInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)
_DT_TAG = "AcquisitionDateTime (0008,002A)"
_DAY_TAG = "ClinicalTrialTimePointID (0012,0050)"
_REQUIRED_IDS = {"PatientID": "egg id", "AccessionNumber": "tray id", "StationName": "scanner id"}
# Identifiers become partition keys, attributes and store columns: keep them plain.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:^+-]{0,63}")
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
_DT_RE = re.compile(r"(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)?(?:\.(\d{1,6}))?([+-]\d{4})?")
_MAX_INCUBATION_DAY = 30


class InvalidScan(InvalidInput):
    """A scan is not a usable MR image for the egg pipeline; the message says why.

    The worker dead-letters it at once: sending the same bytes again cannot help.
    """


@dataclass(frozen=True)
class ScanLimits:
    """Bounds checked before anything is allocated for a scan."""

    min_side: int = 16
    max_side: int = 1024
    max_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.min_side <= self.max_side or self.max_bytes < 1:
            raise ConfigError(
                f"bad scan limits {self}: need 1 <= min_side <= max_side and max_bytes >= 1"
            )


DEFAULT_LIMITS = ScanLimits()


@dataclass(frozen=True)
class ScanInfo:
    """Everything validated about a scan except its pixels."""

    egg_id: str
    tray: str
    scanner: str
    acquired_at: str
    incubation_day: int
    transfer_syntax: str
    rows: int
    cols: int
    bits_stored: int
    #: PixelRepresentation 1: the pixels are signed (accepted when none is negative).
    signed: bool = False


def check_size(data: bytes, limits: ScanLimits) -> None:
    if len(data) > limits.max_bytes:
        raise InvalidScan(
            f"scan is {len(data)} bytes, over the limit of {limits.max_bytes}; "
            "raise max_bytes if such scans are expected"
        )


class _Problems:
    """Every problem of one scan, so the scanner's operator hears of all of them at once."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, check: Callable[..., T], *args: Any) -> T | None:
        try:
            return check(*args)
        except InvalidScan as exc:
            self.found.append(str(exc))
            return None

    def raise_any(self) -> None:
        if len(self.found) == 1:
            raise InvalidScan(self.found[0])
        if self.found:
            listed = "; ".join(f"({i}) {problem}" for i, problem in enumerate(self.found, 1))
            raise InvalidScan(f"{len(self.found)} problems: {listed}")


def validate(
    header: Header, limits: ScanLimits, pixel_length: int | None, tags: TagMapping = NO_MAPPING
) -> ScanInfo:
    """Check the header, in the order a scanner operator would want to hear about it;
    every problem found is in the one :class:`InvalidScan` raised. ``tags`` is the
    installation's mapping of its scanners' tags (:mod:`inferstream.apps.eggs.tags`)."""
    header = tags.apply(header)
    problems = _Problems()
    syntax = problems.check(check_transfer_syntax, header)
    problems.check(_modality, header)
    ids = {keyword: problems.check(_identifier, header, keyword, tags) for keyword in _REQUIRED_IDS}
    for keyword in _UIDS:
        if keyword in header:
            problems.check(_check_uid, keyword, str(header[keyword]))
    signed = problems.check(_signed, header)
    image = problems.check(_check_image, header, limits)
    if pixel_length is None:
        problems.found.append("missing pixel data: the file has no Pixel Data (7FE0,0010)")
    elif image is not None and pixel_length >= 0 and pixel_length != image[0] * image[1] * 2:
        problems.found.append(
            f"pixel data is {pixel_length} bytes but Rows x Columns x 2 = "
            f"{image[0] * image[1] * 2}; the scan is truncated or its header is wrong"
        )
    acquired_at = problems.check(_acquired_at, header, tags)
    incubation_day = problems.check(_incubation_day, header, tags)
    problems.raise_any()
    assert syntax is not None and image is not None and acquired_at is not None
    assert incubation_day is not None and signed is not None and all(ids.values())
    rows, cols, bits_stored = image
    return ScanInfo(
        egg_id=str(ids["PatientID"]),
        tray=str(ids["AccessionNumber"]),
        scanner=str(ids["StationName"]),
        acquired_at=acquired_at,
        incubation_day=incubation_day,
        transfer_syntax=syntax,
        rows=rows,
        cols=cols,
        bits_stored=bits_stored,
        signed=signed,
    )


def _modality(header: Header) -> None:
    modality = header.get("Modality")
    if modality is None:
        raise InvalidScan("missing required tag Modality (0008,0060); expected MR")
    if modality != "MR":
        raise InvalidScan(f"wrong modality: expected MR, got {modality!s:.40}")


def check_transfer_syntax(header: Header) -> str:
    syntax = str(header.get("TransferSyntaxUID", ""))
    if not syntax:
        raise InvalidScan("missing TransferSyntaxUID (0002,0010) in the file meta group")
    if syntax not in TRANSFER_SYNTAXES:
        known = ", ".join(TRANSFER_SYNTAXES.values())
        raise InvalidScan(
            f"unsupported transfer syntax {syntax!r:.80}; send one of: {known} "
            "(deflated data sets are refused as a decompression-bomb risk)"
        )
    return syntax


def _identifier(header: Header, keyword: str, tags: TagMapping) -> str:
    value = header.get(keyword)
    if value is None or not str(value).strip():
        empty = "" if value is None else " (present but empty)"
        raise InvalidScan(
            f"missing required tag {tags.named(keyword)} (the {_REQUIRED_IDS[keyword]}){empty}; "
            "the scanner must fill it in, or the installation map another tag to it "
            "(settings: tags:, docs/dicom.md)"
        )
    text = str(value)
    if not _ID_RE.fullmatch(text):
        raise InvalidScan(
            f"{tags.named(keyword)} {text!r:.80} is not a valid {_REQUIRED_IDS[keyword]}: use "
            "1-64 letters, digits and . _ : ^ + -, starting with a letter or digit"
        )
    return text


def _check_uid(keyword: str, uid: str) -> None:
    if len(uid) > 64 or not _UID_RE.fullmatch(uid):
        raise InvalidScan(
            f"{keyword} {uid!r:.80} is not a valid UID: it must be at most 64 characters of "
            "digits in dot-separated components without leading zeros (PS3.5 9.1)"
        )


def _signed(header: Header) -> bool:
    """Whether the pixels are signed. Signed ones pass here; a negative one is refused
    when the pixels are read (the model takes unsigned 16-bit grey)."""
    representation = header.get("PixelRepresentation")
    if representation not in (0, 1):
        raise InvalidScan(
            f"PixelRepresentation must be 0 (unsigned) or 1 (signed), got {representation!s:.20}"
        )
    return representation == 1


def _check_image(header: Header, limits: ScanLimits) -> tuple[int, int, int]:
    """Rows, Columns and BitsStored after the Image Pixel checks; no allocation here."""
    expected: dict[str, int | str] = {
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
    }
    for keyword, want in expected.items():
        got = header.get(keyword)
        if got is None:
            raise InvalidScan(f"missing required tag {keyword}; expected {want}")
        if got != want:
            raise InvalidScan(f"wrong {keyword}: expected {want} (16-bit grey MR), got {got!s:.40}")
    frames = str(header.get("NumberOfFrames", "1"))
    if _number(frames) != 1:
        raise InvalidScan(
            f"multi-frame scan (NumberOfFrames {frames:.20}); send one slice per scan"
        )
    bits_stored = header.get("BitsStored")
    if not isinstance(bits_stored, int) or not 1 <= bits_stored <= 16:
        raise InvalidScan(f"BitsStored must be 1..16, got {bits_stored}")
    if header.get("HighBit") != bits_stored - 1:
        raise InvalidScan(f"HighBit must be BitsStored - 1 = {bits_stored - 1}")
    rows, cols = header.get("Rows"), header.get("Columns")
    for name, side in (("Rows", rows), ("Columns", cols)):
        if not isinstance(side, int):
            raise InvalidScan(f"missing required tag {name}")
        if not limits.min_side <= side <= limits.max_side:
            raise InvalidScan(
                f"absurd dimensions: {name} is {side}, outside {limits.min_side}.."
                f"{limits.max_side}; check the scanner's export settings"
            )
    assert isinstance(rows, int) and isinstance(cols, int)
    return rows, cols, bits_stored


def _number(text: str) -> float:
    """An IS/DS value as pydicom reads it (it accepts "1", " 1 ", "1.0"), NaN if none."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _acquired_at(header: Header, tags: TagMapping) -> str:
    """AcquisitionDateTime as ISO 8601 in UTC, so times from every scanner compare."""
    text = str(header.get("AcquisitionDateTime", ""))
    match = _DT_RE.fullmatch(text)
    if not match:
        where = tags.named("AcquisitionDateTime").replace("AcquisitionDateTime", _DT_TAG, 1)
        raise InvalidScan(
            f"{where} {text!r:.40} is missing or not YYYYMMDDHHMM[SS[.FFFFFF]][+HHMM]"
        )
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
            int((fraction or "0").ljust(6, "0")), tzinfo=_zone(offset, header),
        )  # fmt: skip
    except ValueError as exc:
        raise InvalidScan(f"AcquisitionDateTime {text!r} is not a real time: {exc}") from None
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _zone(offset: str | None, header: Header) -> timezone:
    """The DT's own offset, else TimezoneOffsetFromUTC (0008,0201), else UTC (PS3.5 6.2)."""
    if offset is None and "TimezoneOffsetFromUTC" in header:
        offset = str(header["TimezoneOffsetFromUTC"])
        if not re.fullmatch(r"[+-]\d{4}", offset):
            raise InvalidScan(f"TimezoneOffsetFromUTC {offset!r:.20} is not +HHMM or -HHMM")
    if offset is None:
        return UTC
    sign = -1 if offset[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))


def _incubation_day(header: Header, tags: TagMapping) -> int:
    text = str(header.get("ClinicalTrialTimePointID", ""))
    if not re.fullmatch(r"[0-9]{1,3}", text) or int(text) > _MAX_INCUBATION_DAY:
        where = tags.named("ClinicalTrialTimePointID").replace(
            "ClinicalTrialTimePointID", _DAY_TAG, 1
        )
        raise InvalidScan(
            f"{where} {text!r:.40} is missing or not an incubation day 0..{_MAX_INCUBATION_DAY}"
        )
    return int(text)
