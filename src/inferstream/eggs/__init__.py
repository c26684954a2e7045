"""In-ovo sexing of chicken embryos from MRI scans: the flagship application.

``phantom`` generates synthetic day-12 egg MRI slices, ``dicomgen`` writes them as
DICOM, ``preprocess`` turns scans into model input, and ``train`` fits the shipped
``egg_sexing`` model. Labels, in model output order, are :data:`LABELS`.
"""

from __future__ import annotations

#: Class labels in model output order (the flagship contract).
LABELS: tuple[str, ...] = ("female", "male", "not_developing")

__all__ = ["LABELS"]
