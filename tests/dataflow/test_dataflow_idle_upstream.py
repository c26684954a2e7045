"""A window does not close by idleness while a stage before it still has messages.

photos -> pass -> leaves -> per-key (tumbling window). The window stage's own input is
quiet and caught up, but a photo of the same window still waits at ``pass``: treating
``leaves`` as idle would close the window without it and send the photo to
``leaves.late``. Embedded bus (on tansu a partition's high watermark can read low, so
lag is not exact there; see inferstream.bus.kafka).
"""

from __future__ import annotations

from pathlib import Path

from flow_testing import drain_topic, produce_envelopes, running, wait_for

from inferstream.bus import open_bus
from inferstream.envelope import new_envelope, now_us, parse
from inferstream.pipeline import load_pipeline
from inferstream.runner import ensure_topics, make_worker

FLOW = """
name: idle
bus: sqlite:///{tmp}/bus.db
store: sqlite:///{tmp}/results.db
topics:
  photos: 1
stages:
  - name: pass
    input: photos
    steps: [passthrough]
    output: leaves
  - name: per-key
    input: leaves
    window: {{kind: tumbling, size_ms: 1000, lateness_ms: 100, keep: count, idle_ms: 100}}
    output: counts
  - name: keep-late
    input: [leaves.late, leaves.dlq, photos.dlq]
    steps: [passthrough]
    output: kept
"""


def test_upstream_lag_keeps_the_window_open_until_its_last_member_arrives(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW.format(tmp=tmp_path))
    spec = load_pipeline(path)
    assert spec.upstream("per-key") == (("photos", "idle.pass"),)
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    start = (now_us() // 1_000_000 - 10) * 1_000_000  # a window long past: idle closes it
    early = new_envelope(b"a", "image/png", key="k", created_at_us=start + 100_000)
    waiting = new_envelope(b"b", "image/png", key="k", created_at_us=start + 600_000)
    produce_envelopes(bus, "leaves", [early])
    produce_envelopes(bus, "photos", [waiting])
    window = make_worker(spec, "per-key", bus)
    try:
        with running(window):
            # The window's input is caught up and quiet for many idle periods; `pass`
            # has not read its photo yet, so the window stays open.
            assert not wait_for(lambda: bool(drain_topic(bus, "counts", 1, 0.3)), 2.0)
            with running(make_worker(spec, "pass", bus)):
                counts = drain_topic(bus, "counts", 1, timeout_s=20)
        (closed,) = (parse(m.value) for m in counts)
        assert closed.attributes["window.start_us"] == str(start)
        assert closed.attributes["window.count"] == "2"
        assert drain_topic(bus, "leaves.late", 0, timeout_s=0.5) == []
    finally:
        bus.close()
