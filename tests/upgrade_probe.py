"""Writes and reads through whichever release of inferstream is on ``sys.path``.

The rolling-upgrade tests run it as a script under the previous release
(``PYTHONPATH=<extracted>/src``) and under this checkout, so each side writes and
reads with its own code: its envelope classes, bus and results store. It uses only
what both releases have; the tests import its helpers too. Each command prints a JSON
line, and several run in one process when separated by ``then``:

- ``describe``: the envelope's descriptor, ``SCHEMA_VERSION`` and the store's head;
- ``filled``: envelopes with every field of this release's schema set;
- ``produce-filled BUS TOPIC``: those envelopes produced to ``TOPIC``;
- ``parse``: envelopes (base64 JSON on stdin) as this release reads them;
- ``produce-scans BUS TOPIC N SEED TENANT``: egg scans produced as a scanner sends
  them; their ids;
- ``migrate STORE``: open the store with migrations; the revision before and after;
- ``write-store STORE TENANT PREFIX N``: records with predictions, dead letters and
  feedback written with this release's store;
- ``read-store STORE TENANT``: everything of ``TENANT`` as this release's store reads it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

# Feedback is keyed by application and head; the probe's are the flagship's.
APP, HEAD = "eggs", "sex"


def filled_envelopes() -> list[Any]:
    """Envelopes with every field of this release's schema set, nested messages and
    maps included; one per alternative of the widest ``oneof``, so each is covered."""
    from inferstream.envelope import SCHEMA_VERSION, Envelope

    variants = max([len(o.fields) for o in _oneofs(Envelope.DESCRIPTOR, set())] + [1])
    envelopes = []
    for variant in range(variants):
        envelope = Envelope()
        fill(envelope, variant)
        # Readers refuse a schema_version above their own: it is not a free field.
        envelope.schema_version = SCHEMA_VERSION
        envelopes.append(envelope)
    return envelopes


def _oneofs(descriptor: Descriptor, seen: set[str]) -> list[Any]:
    if descriptor.full_name in seen:
        return []
    seen.add(descriptor.full_name)
    found = list(descriptor.oneofs)
    for field in descriptor.fields:
        if field.message_type is not None:
            found += _oneofs(field.message_type, seen)
    return found


def fill(message: Message, variant: int, depth: int = 0) -> None:
    """Set every field of ``message`` (the ``variant``-th alternative of each oneof)."""
    message.SetInParent()
    if depth > 6:  # a recursive schema would never end; ours is not one
        return
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[variant % len(oneof.fields)] is not field:
            continue
        _fill_field(message, field, variant, depth)


def _fill_field(message: Message, field: FieldDescriptor, variant: int, depth: int) -> None:
    name = field.name
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key = _scalar(entry.fields_by_name["key"], variant)
        value_field = entry.fields_by_name["value"]
        if value_field.message_type is not None:
            fill(getattr(message, name)[key], variant, depth + 1)
        else:
            getattr(message, name)[key] = _scalar(value_field, variant)
    elif field.is_repeated:
        for _ in range(2):
            if entry is not None:
                fill(getattr(message, name).add(), variant, depth + 1)
            else:
                getattr(message, name).append(_scalar(field, variant))
    elif entry is not None:
        fill(getattr(message, name), variant, depth + 1)
    else:
        setattr(message, name, _scalar(field, variant))


def _scalar(field: FieldDescriptor, variant: int) -> Any:
    """A value of the field's type that is never its default, and tells fields apart."""
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        text = f"{field.containing_type.name}.{field.name}#{variant}"
        return text.encode() if field.type == FieldDescriptor.TYPE_BYTES else text
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return True
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return 0.25 + field.number + variant  # exact in a float
    return 1 + field.number * 10 + variant


def as_dict(message: Message) -> dict[str, Any]:
    """A message as plain JSON values, under its fields' proto names."""
    result: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return result


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def describe() -> dict[str, Any]:
    from inferstream.envelope import SCHEMA_VERSION, Envelope
    from inferstream.store.migrate import head_revision

    return {
        "file": _b64(Envelope.DESCRIPTOR.file.serialized_pb),
        "schema_version": SCHEMA_VERSION,
        "head": head_revision(),
    }


def produce(bus_url: str, topic: str, envelopes: list[Any]) -> None:
    from inferstream.bus import Record, open_bus

    bus = open_bus(bus_url)
    try:
        records = [Record(e.partition_key.encode() or None, e.SerializeToString())
                   for e in envelopes]  # fmt: skip
        bus.produce(topic, records)
    finally:
        bus.close()


def parse_all(encoded: list[str]) -> list[dict[str, Any]]:
    from inferstream.envelope import parse

    return [as_dict(parse(base64.b64decode(item))) for item in encoded]


def egg_scans(count: int, seed: int, tenant: str) -> list[Any]:
    """``count`` egg scans as DICOM envelopes, keyed by egg id, as a scanner sends them."""
    from inferstream.apps.eggs.dicomgen import to_dicom_bytes
    from inferstream.apps.eggs.phantom import make_specs, render_batch
    from inferstream.envelope import new_envelope

    specs = make_specs(count, seed=seed)
    return [
        new_envelope(to_dicom_bytes(image, egg), "application/dicom", tenant=tenant,
                     key=egg.egg_id, source=f"scanner/{seed}")
        for egg, image in zip(specs, render_batch(specs), strict=True)
    ]  # fmt: skip


def migrate(url: str) -> dict[str, Any]:
    from inferstream.store import ResultsStore
    from inferstream.store.migrate import current_revision

    with ResultsStore(url, migrate=False) as store:
        with store.engine.connect() as conn:
            before = current_revision(conn)
        store.migrate()
        with store.engine.connect() as conn:
            return {"before": before, "after": current_revision(conn)}


def store_rows(tenant: str, prefix: str, count: int) -> dict[str, list[Any]]:
    """Records (a champion and a shadow prediction each), dead letters and feedback."""
    from inferstream.store import DeadLetterRow, Feedback, ResultRow

    results, shadows, letters, feedback = [], [], [], []
    for n in range(count):
        record = ResultRow(
            id=f"{prefix}-{n}", tenant=tenant, label=("female", "male")[n % 2],
            confidence=0.5 + n / 1000, scores={"female": 0.75, "male": 0.25},
            model_name="egg_sexing", model_version="1.0.0", created_at_us=1_000 + n,
            ingested_at_us=2_000 + n, stored_at_us=3_000 + n, latency_ms=1.5,
            subject=f"EGG-{prefix}-{n}", group=f"TRAY-{n % 3}", source="scanner/1",
            lineage=({"stage": "classify", "at_us": 2_500 + n, "worker": prefix},),
            trace_id=f"trace-{prefix}-{n}", app=APP, root_id=f"{prefix}-root-{n}",
            parent_id=f"{prefix}-root-{n}", attributes={"egg_id": f"EGG-{prefix}-{n}"},
            head=HEAD,
        )  # fmt: skip
        results.append(record)
        shadows.append(dataclasses.replace(
            record.champion(), role="shadow", model_version="2.0.0", label="male"
        ))  # fmt: skip
        letters.append(DeadLetterRow(
            id=f"{prefix}-dead-{n}", tenant=tenant, stage="classify", error_type="InvalidScan",
            message=f"bad scan {n}", attempts=1, topic="scans.raw", partition=n % 4,
            offset=n, at_us=4_000 + n, root_id=f"{prefix}-dead-{n}", trace_id=f"t-{n}",
        ))  # fmt: skip
        feedback.append(Feedback(tenant, APP, record.subject or "", HEAD, "female", "hatch", n))
    return {"results": results, "shadows": shadows, "letters": letters, "feedback": feedback}


def write_store(url: str, tenant: str, prefix: str, count: int) -> None:
    """Write :func:`store_rows` with the store of this release (which must find the
    schema migrated: it does not migrate)."""
    from inferstream.store import ResultsStore

    rows = store_rows(tenant, prefix, count)
    with ResultsStore(url, migrate=False) as store:
        store.upsert_results(rows["results"])
        store.write_batch(predictions=rows["shadows"], dead_letters=rows["letters"])
        store.add_feedback_batch(rows["feedback"])


def read_store(url: str, tenant: str) -> dict[str, Any]:
    """Every record (with its predictions and feedback) and dead letter of ``tenant``."""
    from inferstream.store import ResultsStore

    with ResultsStore(url, migrate=False) as store:
        records = _every_page(lambda cursor: store.list_results(tenant, cursor=cursor))
        letters = _every_page(lambda cursor: store.list_dead_letters(tenant, cursor=cursor))
        return {
            "records": {row.id: _record(store, row) for row in records},
            "count": store.count_results(tenant),
            "dead_letters": {d.id: _plain(d) for d in letters},
        }


def _every_page(fetch: Any) -> list[Any]:
    items, cursor = [], None
    while True:
        page = fetch(cursor)
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items


def _record(store: Any, row: Any) -> dict[str, Any]:
    got = store.get_result(row.tenant, row.id)
    assert got == row, f"get_result({row.id}) disagrees with the listing"
    feedback = store.get_feedback(row.tenant, row.subject or "", app=APP, head=HEAD)
    return {
        "row": _plain(row),
        "predictions": [_plain(p) for p in store.list_predictions(row.tenant, row.id)],
        "feedback": None if feedback is None else _plain(feedback),
    }


def _plain(row: Any) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(row), default=list))
    return plain


def _produce_filled(bus_url: str, topic: str) -> list[str]:
    envelopes = filled_envelopes()
    produce(bus_url, topic, envelopes)
    return [_b64(e.SerializeToString()) for e in envelopes]


def _produce_scans(bus_url: str, topic: str, count: str, seed: str, tenant: str) -> list[str]:
    scans = egg_scans(int(count), int(seed), tenant)
    produce(bus_url, topic, scans)
    return [e.id for e in scans]


def _write_store(url: str, tenant: str, prefix: str, count: str) -> str:
    write_store(url, tenant, prefix, int(count))
    return "written"


COMMANDS: dict[str, Any] = {
    "describe": describe,
    "filled": lambda: [_b64(e.SerializeToString()) for e in filled_envelopes()],
    "produce-filled": _produce_filled,
    "parse": lambda: parse_all(json.loads(sys.stdin.read())),
    "produce-scans": _produce_scans,
    "migrate": migrate,
    "write-store": _write_store,
    "read-store": read_store,
}


def main(argv: list[str]) -> None:
    """Run each command of ``argv`` (several separated by ``then``, in one process, as
    starting one costs a second); print one JSON line per command."""
    commands: list[list[str]] = [[]]
    for arg in argv:
        if arg == "then":
            commands.append([])
        else:
            commands[-1].append(arg)
    if not all(command and command[0] in COMMANDS for command in commands):
        raise SystemExit(f"usage: upgrade_probe.py {{{','.join(COMMANDS)}}} ARGS [then ...]")
    for name, *args in commands:
        print(json.dumps(COMMANDS[name](*args), sort_keys=True), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
