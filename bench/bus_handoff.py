"""Hand-off latency through the embedded bus under the flagship's write load.

Not a test: it prints a table. Four processes share one bus file, as the flagship's do:
a feeder writes ``--rate`` messages/s of 33 KB (the scans) in small batches every 5 ms,
two relays consume them in a group and each writes a 300-byte record per message (the
predictions) before committing, and a sink consumes those and notes, per message, the
time from the feeder's write call to its arrival. No model runs, so the figures are the
bus's own: lock waits, checkpoints, wake-ups.

The same run measures this tree and the tree of another commit (``--against REF``,
taken with ``git archive``), in alternating rounds on fresh bus files, so the two are
compared under the same machine conditions:

    .venv/bin/python bench/bus_handoff.py --against 1d2c862 --rounds 3 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCAN_BYTES = 33_000
RESULT_BYTES = 300
TICK_S = 0.005


def feeder(url: str, rate: float, seconds: float, out: Path) -> None:
    """Write ``rate`` scans/s for ``seconds``; each value starts with its send time."""
    from inferstream.bus import Record, open_bus

    bus = open_bus(url)
    body = os.urandom(SCAN_BYTES)
    sent, waits = 0, []
    started = time.monotonic()
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate) + 1
        if due > sent:
            stamp = time.time_ns().to_bytes(8, "big")
            records = [Record(str(n).encode(), stamp + body) for n in range(sent, due)]
            before = time.perf_counter()
            bus.produce("raw", records)
            waits.append(time.perf_counter() - before)
            sent = due
        time.sleep(TICK_S)
    bus.close()
    out.write_text(json.dumps({"sent": sent, "produce_s": waits}))


def relay(url: str, stop_after_idle_s: float) -> None:  # (the sink's wait is as long)
    """Consume scans in a group; write one small record per scan, then commit."""
    from inferstream.bus import Record, open_bus

    bus = open_bus(url)
    consumer = bus.consumer("relays", ["raw"])
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < stop_after_idle_s:
        batch = consumer.poll_batch(64, 0.25)
        if not batch:
            continue
        idle_since = time.monotonic()
        bus.produce("out", [Record(m.key, m.value[:8] + bytes(RESULT_BYTES)) for m in batch])
        consumer.commit(batch)
    consumer.close()
    bus.close()


def sink(url: str, stop_after_idle_s: float, out: Path) -> None:
    """Consume the relays' records; note each one's latency since the feeder's write."""
    from inferstream.bus import open_bus

    bus = open_bus(url)
    consumer = bus.consumer("sink", ["out"])
    latencies: list[float] = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < stop_after_idle_s:
        batch = consumer.poll_batch(512, 0.25)
        now = time.time_ns()
        latencies += [(now - int.from_bytes(m.value[:8], "big")) / 1e6 for m in batch]
        if batch:
            consumer.commit(batch)
            idle_since = time.monotonic()
    consumer.close()
    bus.close()
    out.write_text(json.dumps(latencies))


def one_round(src: Path, rate: float, seconds: float, folder: Path) -> dict[str, float]:
    """Run the four processes with the code in ``src``; the round's figures."""
    url = f"sqlite:///{folder / 'bus.db'}"
    env = dict(os.environ, PYTHONPATH=str(src))
    me = [sys.executable, str(Path(__file__).resolve())]
    setup = "from inferstream.bus import open_bus\n" + (
        f"b = open_bus({url!r}); b.create_topic('raw', 4); b.create_topic('out', 4); b.close()"
    )
    subprocess.run([sys.executable, "-c", setup], env=env, check=True)
    procs = [
        subprocess.Popen([*me, "--role", "sink", url, str(folder / "sink.json")], env=env),
        *(subprocess.Popen([*me, "--role", "relay", url], env=env) for _ in range(2)),
    ]  # fmt: skip
    time.sleep(2.0)  # members joined
    subprocess.run(
        [*me, "--role", "feeder", url, str(rate), str(seconds), str(folder / "feeder.json")],
        env=env, check=True,
    )  # fmt: skip
    for proc in procs:
        proc.wait(timeout=120)
    fed = json.loads((folder / "feeder.json").read_text())
    latencies = sorted(json.loads((folder / "sink.json").read_text()))
    produce = sorted(fed["produce_s"])

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "sent": fed["sent"],
        "arrived": len(latencies),
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": latencies[-1],
        "produce_p99_ms": pct(produce, 0.99) * 1000,
        "produce_max_ms": produce[-1] * 1000,
    }


def tree_of(ref: str, folder: Path) -> Path:
    """The ``src`` folder of commit ``ref`` of this repository, unpacked into ``folder``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def add_against(parser: argparse.ArgumentParser) -> None:
    """The ``--against REF`` option of a benchmark comparing this tree with a commit."""
    parser.add_argument(
        "--against",
        metavar="REF",
        required=True,
        help="the commit to compare with (e.g. the one before a change)",
    )


def trees_against(ref: str, folder: Path) -> dict[str, Path]:
    """The ``src`` folders to compare, by name: this tree's, and ``ref``'s unpacked
    into ``folder``."""
    return {"this tree": ROOT / "src", ref: tree_of(ref, folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_against(parser)
    parser.add_argument("--rate", type=float, default=900, help="scans/s fed (default 900)")
    parser.add_argument("--seconds", type=float, default=15, help="feeding time per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each tree")
    args = parser.parse_args()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bus-handoff-") as tmp:
        trees = trees_against(args.against, Path(tmp))
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for round_no in range(args.rounds):
            for name, src in trees.items():
                with tempfile.TemporaryDirectory(prefix="round-", dir=tmp) as folder:
                    result = one_round(src, args.rate, args.seconds, Path(folder))
                figures[name].append(result)
                print(f"round {round_no + 1} {name:>12}: " + "  ".join(
                    f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in result.items()), flush=True)  # fmt: skip
    print(f"\n{args.rate:.0f} scans/s of {SCAN_BYTES} B, {args.seconds:.0f} s a round; "
          f"medians over {args.rounds} rounds")  # fmt: skip
    print(f"{'tree':>12} {'lost':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'produce p99':>12} {'produce max':>12}")  # fmt: skip
    for name, results in figures.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        lost = sum(r["sent"] - r["arrived"] for r in results)
        produce = f"{med['produce_p99_ms']:12.1f} {med['produce_max_ms']:12.1f}"
        print(f"{name:>12} {lost:>5} {med['p50_ms']:7.1f} {med['p99_ms']:7.1f} "
              f"{med['max_ms']:7.1f} {produce}")  # fmt: skip


def _role() -> None:
    role, *rest = sys.argv[2:]
    if role == "feeder":
        feeder(rest[0], float(rest[1]), float(rest[2]), Path(rest[3]))
    elif role == "relay":
        relay(rest[0], 5.0)
    else:
        sink(rest[0], 5.0, Path(rest[1]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--role"]:
        _role()
    else:
        main()
