"""A field trial through the pipeline: send the drone's photos, read the records back,
and check them against the simulator's truth.

:func:`send_photos` writes each photo to the blob store at its path
(``<tenant>/<position_id>/<date>/image.png``) and produces one event naming it, under
an id derived from tenant, position and date (a resend is the same event).
:func:`read_records` reads the stored records of a tenant; :func:`check` counts, by
id, every (leaf, disease) record and every joined leaf against the truth (lost and
doubled) and measures the detector's boxes (precision and recall).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from inferstream.apps.leaves.simulator import DISEASES, Photo, encode_png
from inferstream.apps.leaves.vision import Box, BoxScore, boxes_from_heatmap, photo_tensor
from inferstream.blobs import BlobStore
from inferstream.bus import Bus
from inferstream.bus.base import Record
from inferstream.classify import Model
from inferstream.envelope import new_envelope
from inferstream.store import ResultFilter, ResultsStore
from inferstream.store.rows import ResultRow

TOPIC = "photos"


def photo_id(photo: Photo) -> str:
    text = f"{photo.tenant}\x1f{photo.position_id}\x1f{photo.date}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def send_photos(bus: Bus, blobs: BlobStore, photos: Iterable[Photo], topic: str = TOPIC) -> int:
    """Store each photo at its path and produce the event naming it; returns the count."""
    sent = 0
    for photo in photos:
        key = photo.blob_path.removeprefix(f"{photo.tenant}/")
        ref = blobs.put_at(key, encode_png(photo.image), photo.tenant)
        env = new_envelope(
            b"", "image/png", tenant=photo.tenant, key=photo.position_id,
            source="drone", envelope_id=photo_id(photo),
            attributes={"position_id": photo.position_id, "area": photo.area,
                        "date": photo.date, "image_path": photo.blob_path},
        )  # fmt: skip
        env.payload.blob.CopyFrom(ref)
        bus.produce(topic, [Record(env.partition_key.encode(), env.SerializeToString())])
        sent += 1
    return sent


def read_records(store: ResultsStore, tenant: str, kind: str | None = None) -> list[ResultRow]:
    """Every record of the leaves application in ``tenant`` (of ``kind``: grade | leaf)."""
    attributes = {"record_kind": kind} if kind else {}
    filters = ResultFilter(app="leaves", attributes=attributes)
    rows: list[ResultRow] = []
    cursor = None
    while True:
        page = store.list_results(tenant, filters, cursor=cursor, limit=1000)
        rows += page.items
        cursor = page.next_cursor
        if cursor is None:
            return rows


@dataclass
class Check:
    """The pipeline's records against the truth."""

    photos: int = 0
    leaves_truth: int = 0
    crops: int = 0
    grade_records: int = 0
    leaf_records: int = 0
    lost_grades: int = 0
    doubled_grades: int = 0
    lost_leaves: int = 0
    doubled_leaves: int = 0
    partial_leaves: int = 0
    detector_precision: float = 0.0
    detector_recall: float = 0.0
    grade_accuracy: dict[str, float] = field(default_factory=dict)
    unexpected: int = 0

    @property
    def ok(self) -> bool:
        lost = self.lost_grades + self.lost_leaves
        doubled = self.doubled_grades + self.doubled_leaves
        return lost == 0 and doubled == 0 and self.unexpected == 0


def _box(row: ResultRow) -> Box:
    x0, y0, x1, y1 = (int(v) for v in str(row.attributes.get("box", "0,0,0,0")).split(","))
    return x0, y0, x1, y1


def expected_crops(photos: Sequence[Photo], detector: Model) -> dict[str, int]:
    """What the pipeline must store, by leaf id: the detector run offline on each photo
    (it is deterministic), crop id -> number of crops of its photo."""
    expected: dict[str, int] = {}
    for photo in photos:
        heatmap = detector.logits(photo_tensor(photo.image)[None])[0, 0]
        boxes = boxes_from_heatmap(heatmap)
        for k in range(len(boxes)):
            expected[f"{photo.position_id}/{photo.date}/{k}"] = len(boxes)
    return expected


def check(
    photos: Sequence[Photo],
    expected: Mapping[str, int],
    grades: Sequence[ResultRow],
    leaves: Sequence[ResultRow],
) -> Check:
    """Count by id: every expected crop must have exactly one record per disease and
    one joined record; the crops' boxes are matched to the truth for the detector's
    precision and recall, and the graders' grades to the truth's."""
    result = Check(photos=len(photos), crops=len(expected), grade_records=len(grades),
                   leaf_records=len(leaves),
                   leaves_truth=sum(len(p.leaves) for p in photos))  # fmt: skip
    leaf_count = Counter(str(r.subject) for r in leaves)
    grade_count = Counter((str(r.subject), str(r.attributes.get("disease_type"))) for r in grades)
    for crop in expected:
        result.lost_leaves += crop not in leaf_count
        for disease in DISEASES:
            result.lost_grades += (crop, disease) not in grade_count
    result.doubled_leaves = sum(n - 1 for n in leaf_count.values())
    result.doubled_grades = sum(n - 1 for n in grade_count.values())
    result.unexpected = len(set(leaf_count) - set(expected))
    result.partial_leaves = sum(
        1 for r in leaves if any(r.attributes.get(f"grade_{d}") is None for d in DISEASES)
    )
    _score(result, photos, grades, leaves)
    return result


def _score(
    result: Check, photos: Sequence[Photo], grades: Sequence[ResultRow], leaves: Sequence[ResultRow]
) -> None:
    """Detector precision and recall of boxes, graders' accuracy on matched leaves."""
    crops_of: dict[tuple[str, str], list[ResultRow]] = {}
    for row in leaves:
        key = (str(row.attributes["position_id"]), str(row.attributes["date"]))
        crops_of.setdefault(key, []).append(row)
    grade_of = {(str(r.subject), str(r.attributes["disease_type"])): r.label for r in grades}
    score, right, total = BoxScore(), Counter[str](), Counter[str]()
    for photo in photos:
        crops = crops_of.get((photo.position_id, photo.date), [])
        pairs = score.add([_box(r) for r in crops], [leaf.box for leaf in photo.leaves])
        for i, j in pairs.items():
            for disease in DISEASES:
                label = grade_of.get((str(crops[i].subject), disease))
                total[disease] += 1
                right[disease] += label == str(photo.leaves[j].grades[disease])
    result.detector_precision, result.detector_recall = score.precision, score.recall
    result.grade_accuracy = {d: right[d] / total[d] if total[d] else 0.0 for d in DISEASES}
