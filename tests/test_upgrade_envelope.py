"""Rolling upgrade, the envelope: the previous release and this one read each other's
messages, and a stage of either passes the other's on whole.

The fields this release added are found by comparing the two releases' descriptors,
so a field added later is covered without a change here. Each side fills every field
its own schema has (``upgrade_probe.filled_envelopes``).
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flow_testing import drain_topic
from google.protobuf.descriptor import Descriptor
from previous_release import (
    FieldKey,
    enum_values,
    extract_previous_release,
    fields_set,
    known_only,
    probe,
    probes,
    reserved_numbers,
    schema_fields,
    worker,
)
from upgrade_probe import as_dict, filled_envelopes, produce

from inferstream.bus import open_bus
from inferstream.envelope import SCHEMA_VERSION, Envelope, parse
from inferstream.pipeline import load_pipeline
from inferstream.runner import ensure_topics

# Each release's worker runs a stage that passes messages on: what comes out is what
# went in, plus the stage's id, parent and lineage entry.
PIPELINE = """
name: crossing
bus: sqlite:///{tmp}/bus.db
store: sqlite:///{tmp}/results.db
blobs: file://{tmp}/blobs
topics:
  from-new: {{partitions: 2}}
  from-old: {{partitions: 2}}
stages:
  - name: old-copy
    input: from-new
    output: from-new.copied
    steps: [passthrough]
  - name: new-copy
    input: from-old
    output: from-old.copied
    steps: [passthrough]
"""


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_previous_release(tmp_path_factory.mktemp("previous-release"))


@pytest.fixture(scope="module")
def old_schema(previous: Path) -> dict[str, Any]:
    described: dict[str, Any] = probe(previous, "describe")
    described["file"] = base64.b64decode(described["file"])
    return described


def _new_file() -> bytes:
    return bytes(Envelope.DESCRIPTOR.file.serialized_pb)


def _added_fields(old_file: bytes) -> list[FieldKey]:
    old = schema_fields(old_file)
    return sorted(key for key in schema_fields(_new_file()) if key not in old)


def test_the_envelope_schema_only_grows(old_schema: dict[str, Any]) -> None:
    old, new = schema_fields(old_schema["file"]), schema_fields(_new_file())
    reserved = reserved_numbers(_new_file())
    for (message, number), field in old.items():
        if (message, number) not in new:
            # Removed: only with its number reserved, so it is never reused.
            assert number in reserved.get(message, set()), (
                f"{message}.{field.name} (field {number}) was removed without reserving "
                "its number; old writers still send it"
            )
            continue
        now = new[(message, number)]
        assert (now.name, now.type, now.label, now.type_name) == (
            field.name,
            field.type,
            field.label,
            field.type_name,
        ), f"{message} field {number} changed: was {field}, is {now}; never renumber or reuse"
    for message, number in _added_fields(old_schema["file"]):
        assert number not in reserved_numbers(old_schema["file"]).get(message, set()), (
            f"{message} field {number} reuses a number the previous release reserved"
        )
    new_values = enum_values(_new_file())
    for key, name in enum_values(old_schema["file"]).items():
        assert new_values.get(key) == name, f"enum value {key} was {name}, is {new_values.get(key)}"
    # A bump makes the previous release refuse every message this one writes.
    assert old_schema["schema_version"] == SCHEMA_VERSION


@pytest.fixture
def crossing(tmp_path: Path, previous: Path) -> Iterator[str]:
    """The two copy stages running, the old release's and this one's; the bus URL."""
    pipeline = tmp_path / "crossing.yaml"
    pipeline.write_text(PIPELINE.format(tmp=tmp_path))
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    bus = open_bus(bus_url)
    try:
        ensure_topics(bus, load_pipeline(pipeline))
    finally:
        bus.close()
    workers = [worker(previous, pipeline, "old-copy"), worker(None, pipeline, "new-copy")]
    try:
        yield bus_url
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=60)


def _copied(bus_url: str, topic: str, count: int, stage: str) -> dict[str, Envelope]:
    """What a copy stage wrote, by the id of the message it was made from, without
    what the stage itself adds (its id, the parent's and its lineage entry)."""
    bus = open_bus(bus_url)
    try:
        messages = drain_topic(bus, topic, count, timeout_s=120)
    finally:
        bus.close()
    copied = {}
    for message in messages:
        envelope = parse(message.value)
        assert envelope.lineage[-1].stage == stage, envelope.lineage
        del envelope.lineage[-1]
        parent = envelope.parent_id
        envelope.ClearField("id")
        envelope.ClearField("parent_id")
        copied[parent] = envelope
    assert len(copied) == len(messages) == count, "a message was lost or doubled"
    return copied


def _as_sent(envelope: Envelope) -> Envelope:
    sent = Envelope()
    sent.CopyFrom(envelope)
    sent.ClearField("id")
    sent.ClearField("parent_id")
    return sent


def test_new_messages_cross_an_old_stage_whole_and_old_ones_a_new(
    crossing: str, previous: Path, old_schema: dict[str, Any]
) -> None:
    old_known = set(schema_fields(old_schema["file"]))
    # What an envelope can hold (the file also has EnvelopeBatch, the edge's request).
    inside = _messages_in(Envelope.DESCRIPTOR)
    new_known = {key for key in schema_fields(_new_file()) if key[0] in inside}
    added = _added_fields(old_schema["file"])
    # This release writes every field it has, those the old release lacks included.
    new_written = filled_envelopes()
    assert fields_set(new_written) == new_known
    produce(crossing, "from-new", new_written)
    # The previous release writes every field it has, and reads what we wrote.
    encoded = json.dumps([base64.b64encode(e.SerializeToString()).decode() for e in new_written])
    old_wrote, old_view = probes(
        previous, ["produce-filled", crossing, "from-old"], ["parse"], stdin=encoded
    )
    old_written = [parse(base64.b64decode(item)) for item in old_wrote]
    assert fields_set(old_written) == old_known & new_known

    # Old reader, new writer: the old release reads every field it knows as we do...
    assert old_view == [as_dict(known_only(e, old_known)) for e in new_written]
    # ...and its stage passes the fields it does not know on untouched.
    through_old = _copied(crossing, "from-new.copied", len(new_written), "old-copy")
    assert through_old == {e.id: _as_sent(e) for e in new_written}, (
        f"fields this release added ({added or 'none yet'}) or older ones were lost or "
        "changed by the previous release's stage"
    )
    # New reader, old writer: ours passes its messages on as they were.
    through_new = _copied(crossing, "from-old.copied", len(old_written), "new-copy")
    assert through_new == {e.id: _as_sent(e) for e in old_written}


def _messages_in(descriptor: Descriptor) -> set[str]:
    """The names of ``descriptor``'s message and of every message its fields hold."""
    names, pending = set(), [descriptor]
    while pending:
        message = pending.pop()
        if message.full_name not in names:
            names.add(message.full_name)
            pending += [f.message_type for f in message.fields if f.message_type is not None]
    return names


def test_the_previous_release_refuses_nothing_this_one_writes(previous: Path) -> None:
    # The envelopes every producer of this release makes at ingest, as they are.
    from upgrade_probe import egg_scans

    scans = egg_scans(3, seed=11, tenant="farm")
    encoded = json.dumps([base64.b64encode(e.SerializeToString()).decode() for e in scans])
    old_view = probe(previous, "parse", stdin=encoded)
    assert [view["id"] for view in old_view] == [scan.id for scan in scans]


def test_a_missing_previous_release_fails_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import previous_release

    monkeypatch.setattr(previous_release, "PREVIOUS_RELEASE", "0" * 40)
    with pytest.raises(pytest.fail.Exception, match="fetch the full history"):
        extract_previous_release(tmp_path)
    assert not any(tmp_path.iterdir())
