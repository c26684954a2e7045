"""Keeping an upload as a blob in a local folder: CPU a ``put``, this tree against another.

Every scan that comes in over HTTP (and through the DICOM receiver and a watched folder)
is kept in the blob store before it is produced; on one machine that is
``LocalBlobStore.put``: its SHA-256, then a temporary file written and renamed into
``<tenant>/<dd>/<digest>``. For each tree the same ``--blobs`` new blobs of ``--size``
random bytes are put into a fresh folder (CPU of this process, user + system, a
``put`` of a new blob), then put again (a blob already there: only its time is
refreshed), then each is read back (``get``, which checks its digest, as a worker
reads a claim check). Trees run in child processes, alternating over ``--rounds``:
compare rows of one run only (creating files costs this VM's kernel 50-300 µs of CPU
a file, depending on its state). Usage::

    .venv/bin/python bench/blob_put_bench.py --against HEAD~1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bus_handoff import add_against, trees_against


def child(blobs: int, size: int, folder: str) -> dict[str, float]:
    """Time the calls in this process (whose ``inferstream`` is the tree under test): CPU
    (user + system) and user time alone (the Python side), µs a call."""
    from inferstream.blobs import LocalBlobStore

    store = LocalBlobStore(Path(folder))
    base = os.urandom(size)
    datas = [base[:-8] + i.to_bytes(8, "little") for i in range(blobs)]
    figures: dict[str, float] = {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        before = os.times()
        result = work()
        after = os.times()
        user, system = after.user - before.user, after.system - before.system
        figures[name] = (user + system) / blobs * 1e6
        figures[f"{name} user"] = user / blobs * 1e6
        return result

    timed("new", lambda: [store.put(data, "bench-tenant") for data in datas])
    refs = timed("again", lambda: [store.put(data, "bench-tenant") for data in datas])
    timed("get", lambda: [store.get(ref, "bench-tenant") for ref in refs])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_against(parser)
    parser.add_argument("--blobs", type=int, default=5000, help="blobs a round (5000)")
    parser.add_argument(
        "--size", type=int, default=34_000, help="bytes a blob (34,000: a flagship scan)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each tree")
    args = parser.parse_args()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="blob-put-") as tmp:
        trees = trees_against(args.against, Path(tmp))
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for round_ in range(1, args.rounds + 1):
            for name, src in trees.items():
                folder = tempfile.mkdtemp(prefix="blobs-", dir=tmp)
                env = dict(os.environ, PYTHONPATH=str(src))
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(args.blobs), str(args.size), folder],
                    env=env, check=True, capture_output=True, text=True,
                ).stdout  # fmt: skip
                figure = json.loads(out)
                figures[name].append(figure)
                print(f"round {round_}  {name:>10}  {_row(figure)}", flush=True)
        print(f"\nmedians over {args.rounds} rounds, {args.blobs} blobs of {args.size} bytes")
        for name, rows in figures.items():
            medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
            print(f"{name:>10}  {_row(medians)}")


def _row(figure: dict[str, float]) -> str:
    return (
        "  ".join(
            f"{name} {figure[key]:6.1f} ({figure[key + ' user']:5.1f} user)"
            for name, key in (("put new", "new"), ("put again", "again"), ("get", "get"))
        )
        + "  µs of CPU a call"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        count, size, where = sys.argv[2:]
        print(json.dumps(child(int(count), int(size), where)))
    else:
        main()
