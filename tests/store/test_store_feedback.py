"""Ground truth, accuracy per model version, and dead letters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from inferstream.store import DeadLetterRow, PredictionRow, ResultRow, ResultsStore

RowFactory = Callable[..., ResultRow]


def test_accuracy_per_model_version_from_feedback(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    store.upsert_results(
        [
            make_row(acme, "s1", subject="E1", label="female"),
            make_row(acme, "s2", subject="E2", label="male"),
            make_row(acme, "s3", subject="E3", label="female", model_version="2.0.0"),
            make_row(acme, "s4", subject="E4", label="male"),  # no ground truth yet
        ]
    )
    store.write_batch(
        predictions=[
            shadow(make_row(acme, "s1", subject="E1", label="male", model_version="3.0.0-rc1")),
            shadow(make_row(acme, "s2", subject="E2", label="male", model_version="3.0.0-rc1")),
        ],
    )
    store.upsert_results([make_row(globex, "s1", subject="E1", label="male")])
    for subject, label, source in [("E1", "female", "hatchery"), ("E2", "female", "hatchery"),
                                   ("E3", "male", "hatchery")]:  # fmt: skip
        store.add_feedback(acme, subject, label, app="eggs", head="sex", source=source)
    # A correction wins.
    store.add_feedback(acme, "E3", "female", app="eggs", head="sex", source="recount", at_us=7)

    stored = store.get_feedback(acme, "E3", app="eggs", head="sex")
    assert stored is not None and (stored.label, stored.source, stored.at_us) == (
        "female",
        "recount",
        7,
    )
    figures = {
        (m.model_version, m.role): (m.labelled, m.correct, m.accuracy)
        for m in store.accuracy_by_model_version(acme)
    }
    assert figures == {
        ("1.0.0", "champion"): (2, 1, 0.5),
        ("2.0.0", "champion"): (1, 1, 1.0),
        ("3.0.0-rc1", "shadow"): (2, 0, 0.0),
    }
    # Feedback for acme's eggs says nothing about globex's predictions.
    assert store.accuracy_by_model_version(globex) == []
    assert store.get_feedback(globex, "E1", app="eggs", head="sex") is None
    answers = store.list_predictions(acme, "s1")
    assert [(a.role, a.model_version) for a in answers] == [
        ("champion", "1.0.0"),
        ("shadow", "3.0.0-rc1"),
    ]
    assert [a.role for a in store.list_predictions(globex, "s1")] == ["champion"]


def shadow(row: ResultRow) -> PredictionRow:
    return dataclasses.replace(row.champion(), role="shadow")


def test_feedback_is_per_head_and_application(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    store.upsert_results([make_row(acme, "s1", subject="E1", label="female")])
    store.add_feedback(acme, "E1", "female", app="eggs", head="colour")
    store.add_feedback(acme, "E1", "male", app="other", head="sex")
    assert store.accuracy_by_model_version(acme) == []  # neither is this record's head and app
    store.add_feedback(acme, "E1", "female", app="eggs", head="sex")
    (only,) = store.accuracy_by_model_version(acme)
    assert (only.labelled, only.correct) == (1, 1)


def _letter(tenant: str, ident: str, at_us: int, stage: str = "decode") -> DeadLetterRow:
    return DeadLetterRow(
        id=ident,
        tenant=tenant,
        stage=stage,
        error_type="InvalidInput",
        message="not a DICOM file",
        attempts=1,
        topic="scans.raw",
        partition=2,
        offset=40 + at_us,
        at_us=at_us,
        root_id=f"root-{ident}",
        trace_id="t",
    )


def test_dead_letters_are_recorded_once_listed_and_scoped(
    store: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    letters = [
        _letter(acme, f"d{i}", at_us=i, stage="decode" if i % 2 else "classify") for i in range(5)
    ]
    store.write_batch(dead_letters=letters)
    store.write_batch(dead_letters=letters)  # a redelivered .dlq batch
    store.record_dead_letter(_letter(globex, "d0", at_us=0))

    first = store.list_dead_letters(acme, limit=3)
    assert first.items == letters[:3]
    assert first.next_cursor is not None
    rest = store.list_dead_letters(acme, cursor=first.next_cursor, limit=3)
    assert rest.items == letters[3:] and rest.next_cursor is None
    decode = store.list_dead_letters(acme, stage="decode")
    assert [d.id for d in decode.items] == ["d1", "d3"]
    assert [d.tenant for d in store.list_dead_letters(globex).items] == [globex]
    newest = store.list_dead_letters(acme, order="desc", limit=1)
    assert newest.items == [letters[4]]


@pytest.mark.parametrize("label", ["female", "male"])
def test_feedback_is_an_upsert_per_egg(
    store: ResultsStore, tenants: tuple[str, str], label: str
) -> None:
    acme, _ = tenants
    store.add_feedback(acme, "E9", "not_developing", app="eggs", head="sex")
    entry = store.add_feedback(
        acme, "E9", label, app="eggs", head="sex", source="hatchery", at_us=5
    )
    assert store.get_feedback(acme, "E9", app="eggs", head="sex") == entry


def test_a_batch_of_feedback_is_recorded_per_tenant_and_upserts(
    store: ResultsStore, tenants: tuple[str, str]
) -> None:
    from inferstream.store import Feedback

    acme, globex = tenants
    store.add_feedback(acme, "E1", "male", app="eggs", head="sex")
    batch = [
        Feedback(acme, "eggs", "E1", "sex", "female", "hatchery", 7),  # corrects the first
        Feedback(acme, "eggs", "E2", "sex", "male", "hatchery", 7),
        Feedback(globex, "eggs", "E1", "sex", "not_developing", "hatchery", 8),
    ]
    store.add_feedback_batch(batch)
    assert store.get_feedback(acme, "E1", app="eggs", head="sex") == batch[0]
    assert store.get_feedback(acme, "E2", app="eggs", head="sex") == batch[1]
    assert store.get_feedback(globex, "E1", app="eggs", head="sex") == batch[2]
