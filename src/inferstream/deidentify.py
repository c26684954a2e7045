"""De-identification of DICOM files before they leave a site (PS3.15 basic profile).

An edge agent beside a scanner may be asked (``inferstream edge --deidentify``) to strip
what identifies a person from every DICOM file before it is buffered and forwarded:
names are replaced, identifiers (patient id, accession number, ...) and UIDs become
pseudonyms, dates and times are shifted, addresses and equipment names replaced,
free-text identifying elements and private elements removed, and
PatientIdentityRemoved and DeidentificationMethod are set. The work is dicognito's (a
library made for this, following PS3.15's basic profile); here it is made
**consistent**: pseudonyms and the date shift come from a secret seed, so the same
patient (study, accession) gets the same pseudonym in every file and across restarts,
and a file sent twice is the same file twice (the centre's ids stay stable). Elements
an installation must keep (the station name, PS3.15's Retain Device Identity option,
say) are named with ``keep``. Pixels are never touched: burnt-in text is out of scope
(PS3.15's Clean Pixel Data option).

The application's checks run on the de-identified file, exactly as the centre will.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence

from inferstream.errors import ConfigError, InvalidInput

#: What the de-identified files say of their method (DeidentificationMethod).
METHOD = "PS3.15 basic profile (dicognito), seeded pseudonyms"


class Deidentifier:
    """De-identifies DICOM Part 10 bytes; one instance per seed, safe across threads."""

    def __init__(self, seed: str, keep: Sequence[str] = ()) -> None:
        from dicognito.anonymizer import Anonymizer
        from dicognito.value_keeper import ValueKeeper
        from pydicom.datadict import tag_for_keyword

        if len(seed) < 16:
            raise ConfigError(
                "the de-identification seed must be a secret of at least 16 characters (it "
                "decides every pseudonym: keep it, and keep it secret)"
            )
        unknown = [keyword for keyword in keep if tag_for_keyword(keyword) is None]
        if unknown:
            raise ConfigError(f"--deid-keep {', '.join(unknown)}: not DICOM keywords")
        self.seed, self.keep = seed, tuple(keep)
        self._anonymizer = Anonymizer(seed=seed)
        for keyword in keep:
            self._anonymizer.add_element_handler(ValueKeeper(keyword))
        self._lock = threading.Lock()  # one anonymizer, sources on several threads

    def __call__(self, data: bytes) -> bytes:
        """The file de-identified, in its own transfer syntax; :class:`InvalidInput` if
        it cannot be read (it was checked before, so this means damage found late)."""
        import pydicom

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(io.BytesIO(data))
                dataset.remove_private_tags()  # the basic profile removes them (X)
                with self._lock:
                    self._anonymizer.anonymize(dataset)
                dataset.PatientIdentityRemoved = "YES"
                dataset.DeidentificationMethod = METHOD
                out = io.BytesIO()
                dataset.save_as(out, enforce_file_format=True)
        except Exception as exc:  # pydicom and dicognito raise many types on odd files
            raise InvalidInput(f"DICOM could not be de-identified: {exc!s:.300}") from exc
        return out.getvalue()


__all__ = ["METHOD", "Deidentifier"]
