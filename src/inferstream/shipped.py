"""The versions of a model an installed application ships, and the one it serves.

An application ships model ``NAME`` as ``models/NAME.onnx`` with its ``NAME.json``. It
may ship other versions of the same model beside it, under other file names whose
metadata names ``NAME`` with a version of their own (a quantised copy:
``NAME_int8.onnx``, ``"name": "NAME"``, ``"version": "1.0.0-int8"``). The registry
registers them all on first use (:meth:`inferstream.registry.ModelRegistry.adopt_shipped`,
``inferstream models shipped``) and points the alias at the one whose metadata says
``"serve_by_default": true``, else at ``NAME.onnx``: the others stay one alias move away.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from inferstream.application import find_model

#: The metadata key that makes a shipped version the one the registry serves first.
SERVE_BY_DEFAULT = "serve_by_default"


@dataclass(frozen=True)
class ShippedVersion:
    """One version of a model as an application ships it: its ONNX file and metadata."""

    path: Path  # the .onnx file; its metadata is the .json beside it
    name: str
    version: str
    serve_by_default: bool


def versions_in(folder: Path) -> dict[str, list[ShippedVersion]]:
    """The model versions in an application's models folder, by model name: for each,
    ``NAME.onnx`` first, then the others by file name. A file whose metadata cannot be
    read stands under its file name, with no version (registering it says why)."""
    found: dict[str, list[ShippedVersion]] = {}
    for path in sorted(folder.glob("*.onnx")):
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            shipped = ShippedVersion(
                path, str(meta["name"]), str(meta["version"]), meta.get(SERVE_BY_DEFAULT) is True
            )
        except (OSError, ValueError, KeyError, TypeError):
            shipped = ShippedVersion(path, path.stem, "", False)
        found.setdefault(shipped.name, []).append(shipped)
    for name, versions in found.items():
        versions.sort(key=lambda v: (v.path.stem != name, v.path.name))
    return found


def shipped_versions(name: str) -> list[ShippedVersion]:
    """Every version of model ``name`` the installed application that ships
    ``name.onnx`` has; empty when none ships it."""
    folder = find_model(name)
    return [] if folder is None else versions_in(folder).get(name, [])


def served_by_default(versions: list[ShippedVersion]) -> ShippedVersion:
    """The version an alias points at first: the one marked to serve, else the first
    (``NAME.onnx``)."""
    return next((v for v in versions if v.serve_by_default), versions[0])


__all__ = [
    "SERVE_BY_DEFAULT",
    "ShippedVersion",
    "served_by_default",
    "shipped_versions",
    "versions_in",
]
