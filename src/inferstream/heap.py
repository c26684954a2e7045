"""Keeping the cycle collector's pauses off the hot path of a long-running process.

A worker imports ONNX Runtime, NumPy, SQLAlchemy and protobuf and loads its models
before it takes its first message: several hundred thousand objects that live as long
as the process. Python's cycle collector still walked all of them in every full
collection, 50-70 ms at a time in a classify worker (up to 210 ms later in the run),
and each walk stalled the batch in hand (measured with ``gc.callbacks`` at 900
scans/s). :func:`settle` collects once and moves what survived into the permanent
generation (:func:`gc.freeze`), so later collections walk only what the process made
since: the batches in flight.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect, then exempt every object alive now from later collections.

    Call once start-up is done, right before the process starts its work.
    """
    gc.collect()
    gc.freeze()
