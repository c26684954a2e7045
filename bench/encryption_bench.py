"""Encryption at rest: CPU per scan-sized blob, put then get, encryption off and on.

Not a test: it prints a table. Blobs are the flagship's generated DICOM scans (the eggs
phantom scanner's, 33.8 KB) and, for the size the issue names, their first 9 KB. Each
round puts ``--blobs`` new blobs (distinct bytes, so each put writes) into a local blob
store in a fresh folder and reads each back (digest checked), with encryption off
(:data:`~inferstream.blobs.PLAIN`) and on (AES-256-GCM with the tenant's data key, kept
wrapped in a SQLite results store; the unwrapped key is cached, as in a worker), each
mode in its own folder; the modes take turns every 50 blobs, in the same process, so
both see the same load on the machine. CPU is the process's user
and system time (``time.process_time``) per blob. ``seal+open`` times the encryption
alone, without the store, on the same blobs.

    .venv/bin/python bench/encryption_bench.py [--blobs 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from inferstream.apps.eggs.simulator import ScanPool
from inferstream.blob_crypto import BlobCipher, data_keys
from inferstream.blobs import PLAIN, LocalBlobStore, Sealer
from inferstream.key_provider import LocalKeyProvider
from inferstream.store import ResultsStore

TENANT = "bench"
MODES = ("off", "on")
#: Blobs a mode handles before the other takes its turn.
CHUNK = 50


def _payloads(scans: list[bytes], count: int, size: int | None, round_: int) -> list[bytes]:
    """``count`` distinct blobs: scans (cut to ``size``) with a unique tail."""
    out = []
    for n in range(count):
        scan = scans[n % len(scans)]
        body = scan[: size - 8] if size else scan[:-8]
        out.append(body + (round_ * count + n).to_bytes(8, "big"))
    return out


def _store_round(sealers: dict[str, Sealer], blobs: list[bytes]) -> dict[str, float]:
    """CPU µs per blob to put then get every blob, per mode, each mode in a fresh folder;
    the modes take turns every :data:`CHUNK` blobs, so both see the same machine."""
    spent = dict.fromkeys(sealers, 0.0)
    with tempfile.TemporaryDirectory() as folder:
        stores = {mode: LocalBlobStore(Path(folder) / mode, s) for mode, s in sealers.items()}
        for turn, start in enumerate(range(0, len(blobs), CHUNK)):
            chunk = blobs[start : start + CHUNK]
            for mode in MODES if turn % 2 == 0 else MODES[::-1]:
                spent[mode] += _put_get(stores[mode], chunk)
    return {mode: total / len(blobs) * 1e6 for mode, total in spent.items()}


def _put_get(store: LocalBlobStore, chunk: list[bytes]) -> float:
    started = time.process_time()
    refs = [store.put(data, TENANT) for data in chunk]
    for ref in refs:
        store.get(ref, TENANT)
    return time.process_time() - started


def _crypto_round(cipher: Sealer, blobs: list[bytes]) -> float:
    started = time.process_time()
    for n, data in enumerate(blobs):
        key = f"{TENANT}/00/{n}"
        cipher.open(cipher.seal(data, TENANT, key), TENANT, key)
    return (time.process_time() - started) / len(blobs) * 1e6


def _row(name: str, values: list[float]) -> str:
    return f"| {name} | {statistics.median(values):,.1f} | {min(values):,.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=2000, help="blobs per round (2000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per mode (7)")
    args = parser.parse_args()
    scans = [scan.dicom for scan in ScanPool.build(64).scans]
    with tempfile.TemporaryDirectory() as keys_folder:
        results = ResultsStore(f"sqlite:///{keys_folder}/results.db")
        cipher = BlobCipher(data_keys(results, LocalKeyProvider([os.urandom(32)])))
        cipher.seal(b"warm", TENANT, f"{TENANT}/warm")  # the tenant's data key, made once
        sealers: dict[str, Sealer] = {"off": PLAIN, "on": cipher}
        print(f"{args.blobs} blobs a round, {args.rounds} rounds a mode, load {os.getloadavg()}")
        for label, size in (("DICOM scan, 33.8 KB", None), ("9 KB", 9 * 1024)):
            _measure(label, size, scans, sealers, args)
        results.close()


def _measure(
    label: str,
    size: int | None,
    scans: list[bytes],
    sealers: dict[str, Sealer],
    args: argparse.Namespace,
) -> None:
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    crypto: list[float] = []
    for round_ in range(args.rounds):
        spent = _store_round(sealers, _payloads(scans, args.blobs, size, round_))
        for mode in MODES:
            cpu[mode].append(spent[mode])
        crypto.append(_crypto_round(sealers["on"], _payloads(scans, args.blobs, size, round_)))
    print(f"\n{label}: CPU µs per blob (put + get)\n")
    print("| encryption | median | best |\n| --- | ---: | ---: |")
    for mode in MODES:
        print(_row(mode, cpu[mode]))
    print(_row("seal+open alone", crypto))
    extra = statistics.median(cpu["on"]) - statistics.median(cpu["off"])
    print(f"\non - off, medians: {extra:,.1f} µs per blob")


if __name__ == "__main__":
    main()
