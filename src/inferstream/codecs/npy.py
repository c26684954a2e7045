"""NumPy ``.npy`` arrays as images: numeric 2-D (or 2-D x channels), never pickles."""

from __future__ import annotations

import io
import struct

import numpy as np

from inferstream.codecs.limits import Checked, ImageLimits, check_dimensions
from inferstream.errors import InvalidInput

CONTENT_TYPE = "application/x-npy"
_MAGIC = b"\x93NUMPY"


def sniff(data: bytes) -> bool:
    return data.startswith(_MAGIC)


def check(data: bytes, limits: ImageLimits) -> Checked:
    """The header's shape and dtype first (size limits), then the whole array."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        reader = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = reader(stream)
    except (ValueError, SyntaxError, struct.error) as exc:
        raise InvalidInput(f".npy header is corrupt: {exc}") from exc
    if dtype.hasobject or dtype.kind not in "uif" or len(shape) not in (2, 3):
        raise InvalidInput(
            f".npy holds {dtype} with shape {shape}; send a 2-D (or 2-D x channels) "
            "numeric image, never objects"
        )
    check_dimensions(int(shape[1]), int(shape[0]), limits)
    array = decode(data)
    attributes = {"width": str(array.shape[1]), "height": str(array.shape[0])}
    return Checked(data, CONTENT_TYPE, {**attributes, "dtype": str(dtype)})


def decode(data: bytes) -> np.ndarray:
    try:
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f".npy is truncated or corrupt: {exc}") from exc
