"""The actions document and what each operation does, on synthetic images of the sizes
the service takes (512x512, 1024x1024 and an odd 333x517)."""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
import pytest

from inferstream.apps.imageops.images import SIZES, encoded, synthetic
from inferstream.apps.imageops.operations import (
    MAX_OPERATIONS,
    MAX_TILES,
    ActionsError,
    Blur,
    Plan,
    Resize,
    Split,
    apply_plan,
    blur,
    decode,
    encode,
    parse_actions,
    parse_document,
    run_plan,
    split,
)

USERS_FORM = {
    "operations": [["resize", "200x300"], ["split", True], ["blur", "gaussian"]],
    "output": "jpg",
}


def test_the_form_users_already_send() -> None:
    plan = parse_actions(json.dumps(USERS_FORM))
    assert plan == Plan((Resize(200, 300), Split(2, 2), Blur("gaussian", 1)), "jpg")
    assert plan.content_type == "image/jpeg"


def test_the_richer_form_and_its_round_trip() -> None:
    document = {
        "operations": [["split", "3x2"], ["blur", "median", 4], ["split", False],
                       ["BLUR", "Bilateral"], ["resize", "10X20"]],
        "output": "JPEG",
    }  # fmt: skip
    plan = parse_document(document)
    assert plan.operations == (Split(3, 2), Blur("median", 4), Split(1, 1),
                               Blur("bilateral", 1), Resize(10, 20))  # fmt: skip
    assert plan.output == "jpg"
    assert parse_actions(plan.to_json()) == plan
    assert parse_document({"operations": [["blur", "gaussian"]]}).output == "png"  # default


@pytest.mark.parametrize(
    ("document", "field", "says"),
    [
        ("{not json", "actions:", "not valid JSON"),
        ("[1, 2]", "actions:", "must be a JSON object"),
        ({"operations": [], "output": "jpg"}, "actions.operations:", "1 to 32"),
        ({"ops": []}, "actions:", "unknown key 'ops'"),
        ({"output": "jpg"}, "actions.operations:", "not null"),
        ({"operations": [["blur", "gaussian"]] * (MAX_OPERATIONS + 1)}, "actions.operations:",
         "1 to 32"),
        ({"operations": [["resize", "1x1"], ["resize", "1x1"], ["sharpen", 2]]},
         "actions.operations[2]:", "unknown operation 'sharpen'; use resize, split, blur"),
        ({"operations": ["resize 200x300"]}, "actions.operations[0]:", "an operation is a list"),
        ({"operations": [[]]}, "actions.operations[0]:", "an operation is a list"),
        ({"operations": [["resize", "200x"]]}, "actions.operations[0]:", "'200x' is malformed"),
        ({"operations": [["resize", "200x300x4"]]}, "actions.operations[0]:", "malformed"),
        ({"operations": [["resize", "0x300"]]}, "actions.operations[0]:", "at least 1x1"),
        ({"operations": [["resize", "999999x3"]]}, "actions.operations[0]:", "malformed"),
        ({"operations": [["resize", 200, 300]]}, "actions.operations[0]:", "one size"),
        ({"operations": [["blur", "gaussian"], ["split", "17x1"]]}, "actions.operations[1]:",
         "too large; at most 16x16"),
        ({"operations": [["split", 4]]}, "actions.operations[0]:", "not a number"),
        ({"operations": [["split"]]}, "actions.operations[0]:", "split takes one argument"),
        ({"operations": [["blur", "box"]]}, "actions.operations[0]:",
         "blur 'box' is unknown; use gaussian, updownsampling, bilateral, median"),
        ({"operations": [["blur"]]}, "actions.operations[0]:", "blur takes a kind"),
        ({"operations": [["blur", "median", 6]]}, "actions.operations[0]:", "from 1 to 5"),
        ({"operations": [["blur", "median", True]]}, "actions.operations[0]:", "whole number"),
        ({"operations": [["blur", "median", 2.5]]}, "actions.operations[0]:", "whole number"),
        ({"operations": [["blur", "gaussian"]], "output": "gif"}, "actions.output:",
         "'gif' is not supported; use jpg, png, webp"),
        ({"operations": [["blur", "gaussian"]], "output": 3}, "actions.output:", "not supported"),
    ],
)  # fmt: skip
def test_every_error_names_the_field_and_the_position(document: Any, field: str, says: str) -> None:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(ActionsError) as caught:
        parse_actions(text)
    message = str(caught.value)
    assert message.startswith(field), message
    assert says in message, message


def test_a_document_over_the_size_limit_is_refused() -> None:
    with pytest.raises(ActionsError, match="over the limit"):
        parse_actions(" " * 20_000)


@pytest.mark.parametrize(("width", "height"), [*SIZES, (1, 1), (17, 3)])
def test_sizes_follow_the_plan_exactly(width: int, height: int) -> None:
    plan = parse_document({"operations": [["split", True], ["blur", "median"], ["split", "1x2"]]})
    if width < 4 or height < 2:
        with pytest.raises(ActionsError, match=r"actions.operations\[(0|2)\]: split"):
            plan.output_sizes(width, height)
        return
    tiles = apply_plan(synthetic(width, height), plan)
    assert [(t.shape[1], t.shape[0]) for t in tiles] == plan.output_sizes(width, height)
    assert len(tiles) == 8


def test_split_is_row_major_and_cuts_at_floor_fractions() -> None:
    image = synthetic(333, 517, seed=4)
    tiles = split(image, 2, 3)  # 2 rows, 3 columns
    xs, ys = [0, 111, 222, 333], [0, 258, 517]
    for index, tile in enumerate(tiles):
        row, col = divmod(index, 3)
        expected = image[ys[row] : ys[row + 1], xs[col] : xs[col + 1]]
        assert np.array_equal(tile, expected)
    assert sum(t.shape[0] * t.shape[1] for t in tiles) == 333 * 517  # every pixel once
    assert [t.shape[1] for t in split(image, 1, 2)] == [166, 167]


def test_split_then_resize_resizes_every_tile() -> None:
    plan = parse_document({"operations": [["split", True], ["resize", "100x50"]]})
    tiles = apply_plan(synthetic(512, 512), plan)
    assert [t.shape[:2] for t in tiles] == [(50, 100)] * 4
    # Tile 1 is the top right quarter, resized on its own.
    quarter = synthetic(512, 512)[:256, 256:]
    assert np.array_equal(tiles[1], cv2.resize(quarter, (100, 50), interpolation=cv2.INTER_AREA))


def test_splits_nest_tile_by_tile() -> None:
    image = synthetic(64, 64)
    tiles = apply_plan(image, Plan((Split(2, 2), Split(2, 2))))
    assert len(tiles) == 16
    assert np.array_equal(tiles[0], image[:16, :16])  # the first tile's first quarter
    assert np.array_equal(tiles[3], image[16:32, 16:32])  # then its last quarter
    assert np.array_equal(tiles[4], image[:16, 32:48])  # then the second tile's first


def test_a_resize_may_not_grow_the_image_or_a_tile() -> None:
    grow = parse_document({"operations": [["resize", "513x100"]]})
    with pytest.raises(ActionsError, match=r"actions.operations\[0\]: resize to 513x100 is "
                       r"larger than the image there \(512x512\)"):  # fmt: skip
        grow.output_sizes(512, 512)
    after_split = parse_document({"operations": [["split", True], ["resize", "300x300"]]})
    with pytest.raises(ActionsError, match=r"operations\[1\]: .* larger than a tile there"):
        after_split.output_sizes(512, 512)
    assert after_split.output_sizes(1024, 1024) == [(300, 300)] * 4
    assert parse_document({"operations": [["resize", "512x1"]]}).output_sizes(512, 512)


def test_too_many_tiles_is_refused_where_they_are_made() -> None:
    plan = parse_document({"operations": [["split", "16x16"], ["blur", "median"], ["split", True]]})
    with pytest.raises(ActionsError, match=rf"operations\[2\]: split makes 1024 .* {MAX_TILES}"):
        plan.output_sizes(1024, 1024)


@pytest.mark.parametrize("kind", ["gaussian", "updownsampling", "bilateral", "median"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_every_blur_changes_the_image_and_keeps_its_size(
    kind: Any, width: int, height: int
) -> None:
    image = synthetic(width, height, seed=width)
    blurred = blur(image, kind)
    assert blurred.shape == image.shape and blurred.dtype == np.uint8
    change = np.abs(blurred.astype(int) - image.astype(int)).mean()
    assert change > 1.0, f"{kind} changed the image by {change:.2f} on average"
    # Blurring smooths: neighbouring pixels differ less than before.
    assert _roughness(blurred) < _roughness(image)


def _roughness(image: np.ndarray) -> float:
    return float(np.abs(np.diff(image.astype(int), axis=1)).mean())


@pytest.mark.parametrize("kind", ["gaussian", "updownsampling", "bilateral", "median"])
def test_a_stronger_blur_smooths_more(kind: Any) -> None:
    image = synthetic(333, 517, seed=9)
    assert _roughness(blur(image, kind, 3)) < _roughness(blur(image, kind, 1))


def test_the_blur_parameters_are_the_documented_ones() -> None:
    image = synthetic(128, 96, seed=2)
    assert np.array_equal(blur(image, "gaussian", 2), cv2.GaussianBlur(image, (19, 19), 3.0))
    assert np.array_equal(blur(image, "median", 2), cv2.medianBlur(image, 7))
    assert np.array_equal(blur(image, "bilateral", 1), cv2.bilateralFilter(image, 9, 75, 75))
    down = cv2.resize(image, (32, 24), interpolation=cv2.INTER_AREA)
    assert np.array_equal(blur(image, "updownsampling", 2),
                          cv2.resize(down, (128, 96), interpolation=cv2.INTER_LINEAR))  # fmt: skip


def test_blurs_work_on_grey_alpha_and_one_pixel_tiles() -> None:
    grey = synthetic(40, 30)[..., 0]
    alpha = np.dstack([synthetic(40, 30), np.full((30, 40), 200, np.uint8)])
    for kind in ("gaussian", "updownsampling", "bilateral", "median"):
        assert blur(grey, kind).shape == grey.shape  # type: ignore[arg-type]
        kept = blur(alpha, kind)  # type: ignore[arg-type]
        assert kept.shape == alpha.shape
        tiny = blur(synthetic(1, 1), kind)  # type: ignore[arg-type]
        assert tiny.shape == (1, 1, 3)
    assert np.array_equal(blur(alpha, "bilateral")[..., 3], alpha[..., 3])


@pytest.mark.parametrize("output", ["jpg", "png", "webp"])
def test_outputs_are_encoded_as_asked(output: Any) -> None:
    plan = parse_document({"operations": [["resize", "100x80"]], "output": output})
    [data] = run_plan(encoded(333, 517, kind="png"), plan)
    magic = {"jpg": b"\xff\xd8\xff", "png": b"\x89PNG", "webp": b"RIFF"}[output]
    assert data.startswith(magic)
    assert decode(data).shape[:2] == (80, 100)


def test_sixteen_bit_input_becomes_eight_bit_and_jpeg_drops_alpha() -> None:
    deep = synthetic(20, 10).astype(np.uint16) * 257
    ok, data = cv2.imencode(".png", deep)
    assert ok
    pixels = decode(bytes(data))
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, synthetic(20, 10))
    with_alpha = np.dstack([synthetic(20, 10), np.zeros((10, 20), np.uint8)])
    assert decode(encode(with_alpha, "jpg")).shape == (10, 20, 3)
    assert decode(encode(with_alpha, "png")).shape == (10, 20, 4)


def test_a_plan_is_deterministic() -> None:
    plan = parse_document(USERS_FORM)
    data = encoded(1024, 1024, seed=3, kind="jpg")
    assert run_plan(data, plan) == run_plan(data, plan)
