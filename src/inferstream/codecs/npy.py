"""NumPy ``.npy`` arrays as images: numeric 2-D (or 2-D x channels), never pickles."""

from __future__ import annotations

import functools
import io
import math
import struct
import tokenize
from typing import Any

import numpy as np

from inferstream.codecs.limits import Checked, ImageLimits, check_dimensions
from inferstream.errors import InvalidInput

CONTENT_TYPE = "application/x-npy"
_MAGIC = b"\x93NUMPY"
_CACHED_HEADER_BYTES = 1024


def sniff(data: bytes) -> bool:
    return data.startswith(_MAGIC)


def check(data: bytes, limits: ImageLimits) -> Checked:
    """The header's shape and dtype first (size limits), then the whole array."""
    shape, _, dtype, _ = _header(data)
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
    """The array (a writable copy). Headers are parsed once per distinct header: a
    device sends thousands of arrays with the same one, and NumPy's own
    reader parses each header as Python source."""
    shape, fortran, dtype, offset = _header(data)
    if dtype.hasobject:
        raise InvalidInput(".npy holds Python objects; only numeric arrays are read")
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise InvalidInput(
            f".npy is truncated or corrupt: {len(data) - offset} bytes of data for "
            f"{dtype} {list(shape)}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def _header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """(shape, Fortran order, dtype, data offset) of an .npy; small headers remembered,
    so a client cannot fill the cache with big ones."""
    header = bytes(data[: _header_end(data)])
    return _layout(header) if len(header) <= _CACHED_HEADER_BYTES else _parse(header)


def _header_end(data: bytes) -> int:
    """Where an .npy header ends (version 1: a 2-byte length, 2 and 3: 4 bytes)."""
    if not data.startswith(_MAGIC) or len(data) < 12:
        raise InvalidInput(".npy is truncated or corrupt: no .npy header")
    if data[6] == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little")


def _parse(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    stream = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(stream)
        reader = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = reader(stream)
    except (
        ValueError,
        SyntaxError,
        TypeError,
        RecursionError,
        tokenize.TokenError,
        struct.error,
        EOFError,
    ) as exc:  # numpy parses the header's dict as Python source: any of these (fuzzed)
        raise InvalidInput(f".npy is truncated or corrupt: {exc}") from exc  # fmt: skip
    return tuple(int(n) for n in shape), bool(fortran), dtype, len(header)


_layout = functools.lru_cache(maxsize=256)(_parse)
