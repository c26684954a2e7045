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

``--records N`` measures the sensitive attributes of records instead: N file-drop
records a round (its ``file`` attribute is sensitive), written in micro-batches of 100
as the sink writes them and then read back page by page, into two SQLite results
stores, one without a KEK (the attribute in clear) and one with (sealed under the
tenant's data key); the stores take turns every batch. ``seal+open`` times the cipher
on the attribute alone. Run it without ``INFERSTREAM_KEK`` set.

    .venv/bin/python bench/encryption_bench.py [--blobs 2000] [--rounds 7]
    .venv/bin/python bench/encryption_bench.py --records 5000 [--rounds 7]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import time
from pathlib import Path

from inferstream.apps.eggs.simulator import ScanPool
from inferstream.apps.filedrop import APP as FILEDROP
from inferstream.blob_crypto import BlobCipher, data_keys
from inferstream.blobs import PLAIN, LocalBlobStore, Sealer
from inferstream.key_provider import LocalKeyProvider
from inferstream.store import ResultFilter, ResultRow, ResultsStore
from inferstream.store.sealed_attributes import bound, seal_value

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
    parser.add_argument("--records", type=int, default=0, help="records a round instead")
    args = parser.parse_args()
    if args.records:
        _measure_records(args)
        return
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


def _records(count: int, round_: int) -> list[ResultRow]:
    """``count`` file-drop records, the ``file`` of each naming a customer."""
    return [_record(f"r{round_}-{n}", round_ * count + n) for n in range(count)]


def _record(ident: str, n: int) -> ResultRow:
    return ResultRow(
        id=ident, tenant=TENANT, app=FILEDROP.name, head="shape", label="circle",
        confidence=0.9, scores={"circle": 0.9, "square": 0.06, "triangle": 0.04},
        model_name="shapes", model_version="1", created_at_us=n, ingested_at_us=n,
        stored_at_us=n, latency_ms=1.0, subject=ident, source="inbox",
        attributes={"name": ident, "file": f"customer_{n:06d}_scan.png", "folder": "inbox",
                    "width": 64, "height": 64},
    )  # fmt: skip


def _write_read(store: ResultsStore, batch: list[ResultRow]) -> tuple[float, float]:
    """CPU to write ``batch`` (one transaction) and to read it back as one page."""
    started = time.process_time()
    store.upsert_results(batch)
    written = time.process_time()
    page = store.list_results(TENANT, ResultFilter(app=FILEDROP.name), limit=len(batch),
                              order="desc")  # fmt: skip
    read = time.process_time()
    assert [row.attributes["file"] for row in page.items[::-1]] == [
        row.attributes["file"] for row in batch
    ]
    return written - started, read - written


def _measure_records(args: argparse.Namespace) -> None:
    provider = LocalKeyProvider([os.urandom(32)])
    with tempfile.TemporaryDirectory() as folder:
        stores = {
            "off": ResultsStore(f"sqlite:///{folder}/off.db"),
            "on": ResultsStore(f"sqlite:///{folder}/on.db", key_provider=provider),
        }
        assert stores["off"].sensitive.keys is None, "unset INFERSTREAM_KEK to measure"
        for store in stores.values():
            store.register_app(FILEDROP)
        stores["on"].upsert_results([_record("warm", -1)])  # the tenant's data key, made once
        writes: dict[str, list[float]] = {mode: [] for mode in MODES}
        reads: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_ in range(args.rounds):
            spent = {mode: [0.0, 0.0] for mode in MODES}
            rows = _records(args.records, round_)
            for turn, start in enumerate(range(0, len(rows), 100)):
                for mode in MODES if turn % 2 == 0 else MODES[::-1]:
                    write, read = _write_read(stores[mode], rows[start : start + 100])
                    spent[mode][0] += write
                    spent[mode][1] += read
            for mode in MODES:
                writes[mode].append(spent[mode][0] / len(rows) * 1e6)
                reads[mode].append(spent[mode][1] / len(rows) * 1e6)
        cipher_us = _attribute_cipher(stores["on"], rows)
        for store in stores.values():
            store.close()
    print(f"{args.records} records a round, {args.rounds} rounds, load {os.getloadavg()}")
    print("\nCPU µs per record, one sensitive attribute\n")
    print("| encryption | write median | write best | read median | read best |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode in MODES:
        w, r = writes[mode], reads[mode]
        print(f"| {mode} | {statistics.median(w):,.1f} | {min(w):,.1f} | "
              f"{statistics.median(r):,.1f} | {min(r):,.1f} |")  # fmt: skip
    print(f"| seal+open alone | {cipher_us:,.1f} | | | |")
    extra = statistics.median(writes["on"]) - statistics.median(writes["off"])
    print(f"\non - off, write medians: {extra:,.1f} µs per record")


def _attribute_cipher(store: ResultsStore, rows: list[ResultRow]) -> float:
    keys = store.sensitive.keys
    assert keys is not None
    version, cipher = keys.sealing_key(TENANT)
    columns = [row.as_params() for row in rows]
    started = time.process_time()
    for row in columns:
        sealed = seal_value(cipher, version, row, "file", row["attributes"]["file"])
        data = base64.b64decode(sealed["sealed"])
        cipher.decrypt(data[:12], data[12:], bound(version, row, "file"))
    return (time.process_time() - started) / len(rows) * 1e6


if __name__ == "__main__":
    main()
