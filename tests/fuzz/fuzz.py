"""Coverage-guided fuzzing (atheris, libFuzzer) of what reads bytes from outside.

    python tests/fuzz/fuzz.py TARGET [libFuzzer options] [CORPUS_DIR ...]

Targets, and what each may do with any input (anything else is a crash):

- ``dicom``: the flagship's scan reader (fast path and pydicom) and its upload check:
  decode, or refuse with ``InvalidInput`` (``InvalidScan``);
- ``image``: the core codecs (sniff, then PNG, JPEG, WebP, ``.npy`` or DICOM checks):
  accept, or refuse with ``InvalidInput``;
- ``envelopes``: the protobuf ingest an edge agent uses: an ``EnvelopeBatch`` parsed,
  each envelope held to what a client may send, each scan checked like an upload:
  accepted, or refused with an API error (a 4xx) or ``InvalidInput``;
- ``pipeline``: a pipeline file loaded and validated: a spec, or ``ConfigError``.

``tests/fuzz/test_fuzzing.py`` runs each briefly from seed inputs in the test command;
``make fuzz`` runs each for longer. A crash found becomes a test.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace

import atheris

with atheris.instrument_imports(include=["inferstream"]):
    from inferstream import codecs
    from inferstream.api.errors import ApiError
    from inferstream.api.ingest import _from_protobuf, check_items
    from inferstream.api.settings import ApiSettings
    from inferstream.apps.eggs import APP as EGGS
    from inferstream.apps.eggs.dicom import check_upload, decode
    from inferstream.codecs import ImageLimits
    from inferstream.errors import ConfigError, InvalidInput
    from inferstream.pipeline import load_pipeline

LIMITS = ImageLimits(max_side=1024, max_pixels=1_000_000)


def fuzz_dicom(data: bytes) -> None:
    with suppress(InvalidInput):
        decode(data)
    with suppress(InvalidInput):
        check_upload(data, LIMITS)


def fuzz_image(data: bytes) -> None:
    with suppress(InvalidInput):
        codecs.check(data, LIMITS)


#: What the ingest path reads of the API's state: its limits and its application.
_STATE = SimpleNamespace(
    settings=SimpleNamespace(max_batch=16, max_image_side=1024, max_image_pixels=1_000_000),
    app=EGGS,
)
_ = ApiSettings  # the fields above are ApiSettings'


def fuzz_envelopes(data: bytes) -> None:
    try:
        items = _from_protobuf(data, _STATE)  # type: ignore[arg-type]
        check_items(items, _STATE)  # type: ignore[arg-type]
    except (ApiError, InvalidInput):
        pass


_FOLDER = Path(tempfile.mkdtemp(prefix="fuzz-pipeline-"))


def fuzz_pipeline(data: bytes) -> None:
    path = _FOLDER / "pipeline.yaml"
    path.write_bytes(data)
    with suppress(ConfigError):
        load_pipeline(path)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "dicom": fuzz_dicom,
    "image": fuzz_image,
    "envelopes": fuzz_envelopes,
    "pipeline": fuzz_pipeline,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: fuzz.py {{{','.join(TARGETS)}}} [libFuzzer options] [CORPUS ...]")
    target = TARGETS[sys.argv[1]]
    os.environ.setdefault("INFERSTREAM_LOG_LEVEL", "CRITICAL")
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
