"""An imageops job's ``actions``: parsed and checked into a :class:`Plan`, then applied.

The document, as clients send it in the ``actions`` form field (JSON)::

    {"operations": [["resize", "200x300"], ["split", true], ["blur", "gaussian"]],
     "output": "jpg"}

Operations apply in the order given, any number of times, each to every image the
previous ones left (the *tiles*; one at the start):

- ``["resize", "WxH"]`` scales each tile to W pixels wide and H high (area
  interpolation). Either side may shrink or stay; neither may grow past the tile's.
- ``["split", true]`` cuts each tile into 2 x 2; ``["split", "RxC"]`` into R rows and
  C columns (1-16 each); ``["split", false]`` does nothing. Tiles come in row-major
  order (left to right, then top to bottom), tile by tile: splitting 2 tiles 2 x 2
  gives 8, the first tile's 4 first. Cuts fall at ``floor(i * side / parts)``, so
  tiles of one cut differ by at most a pixel (333 wide in 2: 166 and 167).
- ``["blur", KIND]`` or ``["blur", KIND, S]`` with strength S from 1 to 5 (default 1):

  ===============  ==============================================================
  gaussian         Gaussian, sigma 1.5 S px, kernel 2 ceil(3 sigma) + 1 square
  median           median of a (2 S + 3)-pixel square aperture
  bilateral        bilateral, diameter 4 S + 5 px, sigma colour = space = 25 S + 50
  updownsampling   area-downsample by 2^S per side, then bilinear back to the size
  ===============  ==============================================================

``output`` is ``jpg`` (quality 95), ``png`` (compression 3) or ``webp`` (quality 95);
``jpeg`` means ``jpg``; absent, ``png``. Outputs are 8-bit (16-bit input is scaled);
JPEG keeps no alpha channel. At most 32 operations, 256 tiles per image.

Every error names the field and the operation's position (counted from 0):
``actions.operations[2]: unknown operation 'sharpen'; use resize, split, blur``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, cast

import cv2
import numpy as np

from inferstream.errors import InvalidInput

Format = Literal["jpg", "png", "webp"]
BlurKind = Literal["gaussian", "updownsampling", "bilateral", "median"]
FORMATS: tuple[Format, ...] = ("jpg", "png", "webp")
BLURS: tuple[BlurKind, ...] = ("gaussian", "updownsampling", "bilateral", "median")
OPERATIONS = ("resize", "split", "blur")
CONTENT_TYPES: dict[Format, str] = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
DEFAULT_FORMAT: Format = "png"
MAX_DOCUMENT_BYTES = 16 * 1024
MAX_OPERATIONS = 32
MAX_GRID = 16
MAX_TILES = 256
MAX_STRENGTH = 5
_SIZE = re.compile(r"(\d{1,5})[xX](\d{1,5})")
_ENCODING: dict[Format, list[int]] = {
    "jpg": [cv2.IMWRITE_JPEG_QUALITY, 95],
    "png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
    "webp": [cv2.IMWRITE_WEBP_QUALITY, 95],
}

Image = np.ndarray
Size = tuple[int, int]


class ActionsError(InvalidInput):
    """The ``actions`` document is wrong; the message starts with the field at fault."""


@dataclass(frozen=True)
class Resize:
    width: int
    height: int

    def spelled(self) -> list[Any]:
        return ["resize", f"{self.width}x{self.height}"]


@dataclass(frozen=True)
class Split:
    rows: int
    cols: int

    def spelled(self) -> list[Any]:
        return ["split", f"{self.rows}x{self.cols}"]


@dataclass(frozen=True)
class Blur:
    kind: BlurKind
    strength: int = 1

    def spelled(self) -> list[Any]:
        return ["blur", self.kind, self.strength]


Operation = Resize | Split | Blur


@dataclass(frozen=True)
class Plan:
    """What to do to each image of a job, checked: the operations, then the format."""

    operations: tuple[Operation, ...]
    output: Format = DEFAULT_FORMAT

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.output]

    def document(self) -> dict[str, Any]:
        """The plan in the richer form of the document (parses back to the same plan)."""
        return {"operations": [op.spelled() for op in self.operations], "output": self.output}

    def to_json(self) -> str:
        return json.dumps(self.document(), separators=(",", ":"))

    def output_sizes(self, width: int, height: int) -> list[Size]:
        """The (width, height) of each output of a ``width`` x ``height`` image, in order;
        :class:`ActionsError` naming the operation that cannot apply to it."""
        sizes: list[Size] = [(width, height)]
        for position, op in enumerate(self.operations):
            where = f"actions.operations[{position}]"
            if isinstance(op, Resize):
                sizes = [_resized(where, op, size, len(sizes)) for size in sizes]
            elif isinstance(op, Split):
                sizes = [tile for size in sizes for tile in _split_sizes(where, op, size)]
                if len(sizes) > MAX_TILES:
                    raise ActionsError(
                        f"{where}: split makes {len(sizes)} tiles of each image; at most "
                        f"{MAX_TILES} are allowed"
                    )
        return sizes


def _resized(where: str, op: Resize, size: Size, tiles: int) -> Size:
    width, height = size
    if op.width > width or op.height > height:
        what = "the image" if tiles == 1 else "a tile"
        raise ActionsError(
            f"{where}: resize to {op.width}x{op.height} is larger than {what} there "
            f"({width}x{height}); a resize may go to any size up to that, not above"
        )
    return op.width, op.height


def _edges(side: int, parts: int) -> list[int]:
    return [side * i // parts for i in range(parts + 1)]


def _split_sizes(where: str, op: Split, size: Size) -> list[Size]:
    width, height = size
    if op.rows > height or op.cols > width:
        raise ActionsError(
            f"{where}: split into {op.rows}x{op.cols} (rows x columns) needs an image of at "
            f"least {op.cols}x{op.rows} pixels; it is {width}x{height} there"
        )
    xs, ys = _edges(width, op.cols), _edges(height, op.rows)
    return [(xs[c + 1] - xs[c], ys[r + 1] - ys[r]) for r in range(op.rows) for c in range(op.cols)]


# -- parsing ----------------------------------------------------------------------------


def parse_actions(text: str | bytes) -> Plan:
    """The plan of an ``actions`` field (JSON text); :class:`ActionsError` if wrong."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise ActionsError(
            f"actions: {len(text)} bytes is over the limit of {MAX_DOCUMENT_BYTES}; send fewer "
            "operations"
        )
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ActionsError(f"actions: not valid JSON ({exc})") from None
    return parse_document(document)


def parse_document(document: Any) -> Plan:
    """The plan of an ``actions`` document already parsed from JSON."""
    if not isinstance(document, dict):
        raise ActionsError(
            'actions: must be a JSON object like {"operations": [["resize", "200x300"]], '
            f'"output": "jpg"}}, not {_kind(document)}'
        )
    unknown = sorted(set(document) - {"operations", "output"})
    if unknown:
        raise ActionsError(
            f"actions: unknown key {unknown[0][:64]!r}; an actions object takes operations and "
            "output"
        )
    return Plan(_operations(document.get("operations")), _format(document.get("output")))


def _operations(value: Any) -> tuple[Operation, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_OPERATIONS:
        raise ActionsError(
            f"actions.operations: must be a list of 1 to {MAX_OPERATIONS} operations such as "
            f'["resize", "200x300"], not {_kind(value)}'
        )
    return tuple(_operation(f"actions.operations[{i}]", item) for i, item in enumerate(value))


def _operation(where: str, item: Any) -> Operation:
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise ActionsError(
            f'{where}: an operation is a list like ["blur", "gaussian"], not {_kind(item)}'
        )
    name, args = item[0].lower(), item[1:]
    if name == "resize":
        return _resize(where, args)
    if name == "split":
        return _split(where, args)
    if name == "blur":
        return _blur(where, args)
    raise ActionsError(f"{where}: unknown operation {item[0][:64]!r}; use {', '.join(OPERATIONS)}")


def _resize(where: str, args: list[Any]) -> Resize:
    if len(args) != 1 or not isinstance(args[0], str):
        raise ActionsError(f'{where}: resize takes one size, "WIDTHxHEIGHT" (e.g. "200x300")')
    width, height = _size(where, "resize size", args[0])
    return Resize(width, height)


def _size(where: str, what: str, text: str) -> Size:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ActionsError(
            f'{where}: {what} {text[:64]!r} is malformed; write two whole numbers as "NxM", '
            'e.g. "200x300"'
        )
    first, second = int(match.group(1)), int(match.group(2))
    if first < 1 or second < 1:
        raise ActionsError(f"{where}: {what} {text[:64]!r} must be at least 1x1")
    return first, second


def _split(where: str, args: list[Any]) -> Split:
    if len(args) != 1:
        raise ActionsError(f'{where}: split takes one argument: true (2x2) or "ROWSxCOLUMNS"')
    arg = args[0]
    if isinstance(arg, bool):
        return Split(2, 2) if arg else Split(1, 1)
    if not isinstance(arg, str):
        raise ActionsError(f'{where}: split takes true or "ROWSxCOLUMNS", not {_kind(arg)}')
    rows, cols = _size(where, "split grid", arg)
    if rows > MAX_GRID or cols > MAX_GRID:
        raise ActionsError(
            f"{where}: split grid {arg[:16]!r} is too large; at most {MAX_GRID}x{MAX_GRID}"
        )
    return Split(rows, cols)


def _blur(where: str, args: list[Any]) -> Blur:
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str):
        raise ActionsError(
            f'{where}: blur takes a kind and an optional strength, e.g. ["blur", "gaussian"] or '
            f'["blur", "median", 2]; kinds: {", ".join(BLURS)}'
        )
    kind = args[0].lower()
    if kind not in BLURS:
        raise ActionsError(f"{where}: blur {args[0][:64]!r} is unknown; use {', '.join(BLURS)}")
    strength = args[1] if len(args) == 2 else 1
    if isinstance(strength, bool) or not isinstance(strength, int):
        raise ActionsError(f"{where}: blur strength must be a whole number, not {_kind(strength)}")
    if not 1 <= strength <= MAX_STRENGTH:
        raise ActionsError(f"{where}: blur strength {strength} must be from 1 to {MAX_STRENGTH}")
    return Blur(kind, strength)


def _format(value: Any) -> Format:
    if value is None:
        return DEFAULT_FORMAT
    spelled = value.lower() if isinstance(value, str) else value
    spelled = "jpg" if spelled == "jpeg" else spelled
    if spelled not in FORMATS:
        shown = repr(value[:16]) if isinstance(value, str) else _kind(value)
        raise ActionsError(f"actions.output: {shown} is not supported; use {', '.join(FORMATS)}")
    return cast(Format, spelled)


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:32]!r}"
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


# -- applying ---------------------------------------------------------------------------


def decode(data: bytes) -> Image:
    """An uploaded image as 8-bit pixels (grey, BGR or BGRA); :class:`InvalidInput`."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InvalidInput("the image could not be decoded by OpenCV")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InvalidInput(f"images of {image.dtype} pixels are not supported; send 8 or 16 bit")
    return np.asarray(image)


def apply_plan(image: Image, plan: Plan) -> list[Image]:
    """Every output of ``image`` under ``plan``, in order (sizes: :meth:`Plan.output_sizes`)."""
    tiles = [image]
    for op in plan.operations:
        tiles = [out for tile in tiles for out in apply_operation(tile, op)]
    return tiles


def apply_operation(tile: Image, op: Operation) -> list[Image]:
    if isinstance(op, Resize):
        if tile.shape[1] == op.width and tile.shape[0] == op.height:
            return [tile]
        return [cv2.resize(tile, (op.width, op.height), interpolation=cv2.INTER_AREA)]
    if isinstance(op, Split):
        return split(tile, op.rows, op.cols)
    return [blur(tile, op.kind, op.strength)]


def split(tile: Image, rows: int, cols: int) -> list[Image]:
    """``tile`` cut into ``rows`` x ``cols`` tiles, row-major (views, no copy)."""
    height, width = tile.shape[:2]
    ys, xs = _edges(height, rows), _edges(width, cols)
    return [tile[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] for r in range(rows) for c in range(cols)]


def blur(tile: Image, kind: BlurKind, strength: int = 1) -> Image:
    """``tile`` blurred as the module's table says."""
    if kind == "gaussian":
        sigma = 1.5 * strength
        size = 2 * math.ceil(3 * sigma) + 1
        return np.asarray(cv2.GaussianBlur(tile, (size, size), sigma))
    if kind == "median":
        return np.asarray(cv2.medianBlur(np.ascontiguousarray(tile), 2 * strength + 3))
    if kind == "bilateral":
        return _bilateral(tile, 4 * strength + 5, 25.0 * strength + 50.0)
    return _down_up(tile, 2**strength)


def _bilateral(tile: Image, diameter: int, sigma: float) -> Image:
    if tile.ndim == 3 and tile.shape[2] == 4:  # OpenCV filters 1 or 3 channels: keep alpha
        colour = cv2.bilateralFilter(np.ascontiguousarray(tile[..., :3]), diameter, sigma, sigma)
        return np.dstack([colour, tile[..., 3]])
    return np.asarray(cv2.bilateralFilter(np.ascontiguousarray(tile), diameter, sigma, sigma))


def _down_up(tile: Image, factor: int) -> Image:
    height, width = tile.shape[:2]
    small = cv2.resize(
        tile, (max(1, width // factor), max(1, height // factor)), interpolation=cv2.INTER_AREA
    )
    return np.asarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR))


def encode(tile: Image, output: Format) -> bytes:
    """``tile`` in the ``output`` format (JPEG drops an alpha channel)."""
    if output == "jpg" and tile.ndim == 3 and tile.shape[2] == 4:
        tile = tile[..., :3]
    ok, encoded = cv2.imencode(f".{output}", np.ascontiguousarray(tile), _ENCODING[output])
    if not ok:
        raise InvalidInput(f"a {tile.shape} tile could not be encoded as {output}")
    return bytes(encoded)


def run_plan(data: bytes, plan: Plan) -> list[bytes]:
    """Decode, apply and encode: every output of one uploaded image, in order."""
    return [encode(tile, plan.output) for tile in apply_plan(decode(data), plan)]


__all__ = [
    "ActionsError", "Blur", "Plan", "Resize", "Split", "apply_plan", "decode", "encode",
    "parse_actions", "parse_document", "run_plan",
]  # fmt: skip
