"""The versions of a model an application ships, and the one an alias points at first."""

from __future__ import annotations

import json
from pathlib import Path

from inferstream.shipped import served_by_default, shipped_versions, versions_in


def _ship(folder: Path, stem: str, meta: dict[str, object] | None) -> None:
    (folder / f"{stem}.onnx").write_bytes(b"graph")
    if meta is not None:
        (folder / f"{stem}.json").write_text(json.dumps(meta))


def test_versions_of_one_model_are_grouped_its_own_file_first(tmp_path: Path) -> None:
    _ship(tmp_path, "a_fast", {"name": "m", "version": "1-fast"})
    _ship(tmp_path, "m", {"name": "m", "version": "1"})
    _ship(tmp_path, "m_small", {"name": "m", "version": "1-small", "serve_by_default": True})
    _ship(tmp_path, "other", {"name": "other", "version": "3"})
    _ship(tmp_path, "broken", None)
    found = versions_in(tmp_path)
    assert [v.version for v in found["m"]] == ["1", "1-fast", "1-small"]
    assert served_by_default(found["m"]).path == tmp_path / "m_small.onnx"
    assert [v.version for v in found["other"]] == ["3"]
    # Unreadable metadata: kept under its file name, so registering it says why.
    assert [(v.name, v.version) for v in found["broken"]] == [("broken", "")]


def test_without_a_version_marked_to_serve_the_models_own_file_serves(tmp_path: Path) -> None:
    _ship(tmp_path, "m", {"name": "m", "version": "1"})
    _ship(tmp_path, "m_int8", {"name": "m", "version": "1-int8", "serve_by_default": False})
    assert served_by_default(versions_in(tmp_path)["m"]).version == "1"


def test_the_flagship_ships_fp32_and_int8_and_serves_what_its_metadata_says() -> None:
    found = shipped_versions("egg_sexing")
    assert [(v.path.name, v.version) for v in found] == [
        ("egg_sexing.onnx", "1.0.0"),
        ("egg_sexing_int8.onnx", "1.0.0-int8"),
    ]
    int8 = json.loads(found[1].path.with_suffix(".json").read_text())
    assert served_by_default(found).version == (
        "1.0.0-int8" if int8["serve_by_default"] else "1.0.0"
    )
    assert shipped_versions("no_such_model") == []
