"""An installation's mapping of its scanners' DICOM tags to the scan contract's fields.

The contract (``docs/dicom.md``) reads the egg id from PatientID, the tray from
AccessionNumber, the scanner from StationName, the time from AcquisitionDateTime and
the incubation day from ClinicalTrialTimePointID. Scanners that write these elsewhere
are mapped in the pipeline file, once per installation::

    app: eggs
    settings:
      tags:
        egg_id: [PatientID, StudyID]          # the first one present wins
        tray: SeriesDescription
        acquired_at: [AcquisitionDateTime, AcquisitionDate+AcquisitionTime, ContentDate+ContentTime]
        incubation_day: [ClinicalTrialTimePointID, "=12"]   # "=VALUE": a fixed value

A source is a DICOM keyword, ``DateKeyword+TimeKeyword`` (a DA and a TM read as one
time; only for ``acquired_at``) or ``=VALUE``. A field not mapped keeps its contract tag.
Both DICOM readers fill the header with the mapped tags too, and :meth:`TagMapping.apply`
writes each field's value under its contract keyword before the contract is checked,
so the checks, and their messages (which name the mapped tags), are the same for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from inferstream.apps.eggs.dicom_fast import DATA_WANTED, Header
from inferstream.errors import ConfigError

#: Field -> the contract's keyword for it.
FIELDS: dict[str, str] = {
    "egg_id": "PatientID",
    "tray": "AccessionNumber",
    "scanner": "StationName",
    "acquired_at": "AcquisitionDateTime",
    "incubation_day": "ClinicalTrialTimePointID",
}


@dataclass(frozen=True)
class Source:
    """Where one field is read from: keywords (two for a date and a time) or a value."""

    keywords: tuple[str, ...] = ()
    value: str | None = None

    def read(self, header: Header) -> str | None:
        if self.value is not None:
            return self.value
        found = [str(header.get(keyword, "")).strip() for keyword in self.keywords]
        if not all(found):
            return None
        if len(found) == 1:
            return found[0]
        date, time = found
        time = time.replace(":", "")  # the old ACR-NEMA form HH:MM:SS
        return date + time.ljust(4, "0") if time[:1].isdigit() else None

    def __str__(self) -> str:
        return f"={self.value}" if self.value is not None else "+".join(self.keywords)


@dataclass(frozen=True)
class TagMapping:
    """Contract keyword -> its sources, in order; a keyword not here reads itself."""

    sources: Mapping[str, tuple[Source, ...]] = field(default_factory=dict)

    @property
    def keywords(self) -> frozenset[str]:
        """Every DICOM keyword the mapping reads (the readers must keep them)."""
        return frozenset(k for found in self.sources.values() for s in found for k in s.keywords)

    def apply(self, header: Header) -> Header:
        """``header`` with each mapped field's value under its contract keyword (removed
        when no source has one, so the contract says it is missing)."""
        if not self.sources:
            return header
        mapped = dict(header)
        for keyword, sources in self.sources.items():
            value = next((v for v in (s.read(header) for s in sources) if v is not None), None)
            if value is None:
                mapped.pop(keyword, None)
            else:
                mapped[keyword] = value
        return mapped

    @cached_property
    def wanted(self) -> dict[int, tuple[str, str]]:
        """Every tag the DICOM readers keep, tag -> (keyword, kind): the contract's and the
        mapping's (text), made once per mapping, not per scan."""
        from pydicom.datadict import tag_for_keyword

        found = dict(DATA_WANTED)
        for keyword in sorted(self.keywords):
            tag = tag_for_keyword(keyword)
            assert tag is not None  # checked when the settings were read
            found.setdefault(int(tag), (keyword, "text"))
        return found

    def named(self, keyword: str) -> str:
        """How a message names where ``keyword`` is read from."""
        sources = self.sources.get(keyword)
        if not sources:
            return keyword
        return " or ".join(str(s) for s in sources) + f" (mapped to {keyword})"


NO_MAPPING = TagMapping()


@dataclass(frozen=True)
class EggSettings:
    """The eggs application's settings (the pipeline file's ``settings:``)."""

    tags: TagMapping = NO_MAPPING


def parse_settings(raw: Mapping[str, Any]) -> EggSettings:
    """Read ``settings:``; :class:`ConfigError` naming every mistake's place."""
    unknown = sorted(set(raw) - {"tags"})
    if unknown:
        raise ConfigError(f"eggs settings: unknown {', '.join(unknown)}; the settings are: tags")
    tags = raw.get("tags") or {}
    if not isinstance(tags, dict):
        raise ConfigError("eggs settings: tags maps fields to DICOM keywords, e.g. egg_id: StudyID")
    wrong = sorted(set(tags) - set(FIELDS))
    if wrong:
        raise ConfigError(
            f"eggs settings: tags has no field {', '.join(map(str, wrong))}; the fields are "
            f"{', '.join(FIELDS)}"
        )
    return EggSettings(
        TagMapping({FIELDS[name]: _sources(name, given) for name, given in tags.items()})
    )


def _sources(name: str, given: Any) -> tuple[Source, ...]:
    listed = given if isinstance(given, list) else [given]
    if not listed or not all(isinstance(item, str | int) for item in listed):
        raise ConfigError(
            f"eggs settings: tags.{name} is a DICOM keyword, a list of them, or '=VALUE'"
        )
    return tuple(_source(name, str(item)) for item in listed)


def _source(name: str, text: str) -> Source:
    from pydicom.datadict import tag_for_keyword

    if text.startswith("="):
        if not text[1:].strip():
            raise ConfigError(f"eggs settings: tags.{name} has an empty fixed value '='")
        return Source(value=text[1:].strip())
    keywords = tuple(part.strip() for part in text.split("+"))
    if len(keywords) > 2 or (len(keywords) == 2 and name != "acquired_at"):
        raise ConfigError(
            f"eggs settings: tags.{name} {text!r}: only acquired_at reads two tags "
            "(DateKeyword+TimeKeyword)"
        )
    for keyword in keywords:
        if tag_for_keyword(keyword) is None:
            raise ConfigError(
                f"eggs settings: tags.{name}: {keyword!r} is not a DICOM keyword (pydicom's "
                "dictionary, e.g. StudyID, ContentDate, SeriesDescription)"
            )
    return Source(keywords=keywords)
