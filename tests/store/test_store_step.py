"""The store_results sink step, end to end from envelopes to rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferstream.apps.eggs import APP
from inferstream.envelope import (
    DeadLetter,
    Envelope,
    ModelRole,
    Prediction,
    derive,
    new_envelope,
)
from inferstream.errors import ConfigError, InvalidInput, StoreError, TransientError
from inferstream.steps import StepContext, build_step
from inferstream.store import RejectedWrite, ResultsStore, StoreStep

SCORES = {"female": 0.125, "male": 0.75, "not_developing": 0.125}


def classified(tenant: str, egg: str, *, shadow: bool = False) -> Envelope:
    scan = new_envelope(
        b"DICM",
        "application/dicom",
        tenant=tenant,
        attributes={"egg_id": egg, "tray": "TRAY-0042", "scanner": "SCANNER-03"},
        created_at_us=1_700_000_000_000_000,
    )
    env = derive(scan, "classify")
    env.predictions.append(
        Prediction(
            model_name="egg_sexing",
            model_version="1.0.0",
            role=ModelRole.MODEL_ROLE_CHAMPION,
            label="male",
            scores=SCORES,
        )
    )
    if shadow:
        env.predictions.append(
            Prediction(
                model_name="egg_sexing",
                model_version="1.1.0",
                role=ModelRole.MODEL_ROLE_SHADOW,
                label="female",
                scores={"female": 0.5, "male": 0.25, "not_developing": 0.25},
            )
        )
    return env


def context(url: str) -> StepContext:
    return StepContext(pipeline="eggs", stage="store", store_url=url, app=APP)


def test_envelopes_become_results_once(store_url: str, tenants: tuple[str, str]) -> None:
    acme, globex = tenants
    batch = [
        classified(acme, "EGG-1", shadow=True),
        classified(acme, "EGG-2"),
        classified(globex, "EGG-1"),
    ]
    step = build_step("store_results", context(store_url), {})
    try:
        assert step.process(batch) == batch
        assert step.process(batch) == batch  # a redelivered batch
    finally:
        step.close()

    with ResultsStore(store_url) as store:
        assert store.count_results(acme) == 2 and store.count_results(globex) == 1
        (row,) = store.results_of_root(acme, batch[0].root_id)
        assert row.id == batch[0].id and row.parent_id == batch[0].parent_id
        assert (row.subject, row.group, row.source) == ("EGG-1", "TRAY-0042", "SCANNER-03")
        assert (row.app, row.head) == ("eggs", "sex")
        assert (row.label, row.confidence, dict(row.scores)) == ("male", 0.75, SCORES)
        assert (row.model_name, row.model_version, row.status) == (
            "egg_sexing",
            "1.0.0",
            "processed",
        )
        assert row.created_at_us == batch[0].created_at_us
        assert row.ingested_at_us == batch[0].ingested_at_us
        assert row.latency_ms == (row.stored_at_us - row.created_at_us) / 1000
        assert [step["stage"] for step in row.lineage] == ["classify"]
        assert row.trace_id == batch[0].trace_id
        answers = store.list_predictions(acme, row.id)
        assert [(a.role, a.model_version, a.label) for a in answers] == [
            ("champion", "1.0.0", "male"),
            ("shadow", "1.1.0", "female"),
        ]
        assert [a.role for a in store.list_predictions(acme, batch[1].id)] == ["champion"]


def test_dead_letters_and_unusable_envelopes(store_url: str, tenants: tuple[str, str]) -> None:
    acme, _ = tenants
    letter = new_envelope(b"junk", "application/dicom", tenant=acme)
    letter.error.CopyFrom(
        DeadLetter(
            stage="decode",
            error_type="InvalidInput",
            message="not a DICOM file",
            attempts=1,
            topic="scans.raw",
            partition=3,
            offset=17,
        )
    )
    unclassified = new_envelope(
        b"DICM", "application/dicom", tenant=acme, attributes={"egg_id": "EGG-7"}
    )
    no_tenant = classified("", "EGG-9")
    good = classified(acme, "EGG-1")
    step = build_step("store_results", context(store_url), {"on_conflict": "update"})
    try:
        outcomes = step.process([letter, unclassified, good, no_tenant])
    finally:
        step.close()
    assert outcomes[0] is letter and outcomes[2] is good
    assert isinstance(outcomes[1], InvalidInput) and "champion" in str(outcomes[1])
    assert isinstance(outcomes[3], InvalidInput) and "tenant" in str(outcomes[3])
    with ResultsStore(store_url) as store:
        assert store.count_results(acme) == 1
        (stored,) = store.list_dead_letters(acme).items
        assert (stored.id, stored.root_id, stored.stage, stored.error_type) == (
            letter.id,
            letter.root_id,
            "decode",
            "InvalidInput",
        )
        assert (stored.topic, stored.partition, stored.offset, stored.attempts) == (
            "scans.raw",
            3,
            17,
            1,
        )


def test_database_outage_raises_from_process(tmp_path: Path, tenants: tuple[str, str]) -> None:
    acme, _ = tenants
    urls = [
        f"sqlite:///{tmp_path / 'missing-dir' / 'results.db'}",
        "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2",
    ]
    for url in urls:
        step = StoreStep(ResultsStore(url, migrate=False))
        with pytest.raises(StoreError, match="retries the batch"):
            step.process([classified(acme, "EGG-1")])
        step.close()


def test_factory_rejects_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="store URL"):
        build_step("store_results", StepContext(pipeline="eggs", stage="store"), {})
    with pytest.raises(ConfigError, match="on_conflict"):
        build_step("store_results", context(f"sqlite:///{tmp_path / 'r.db'}"), {"on_conflict": "x"})
    with pytest.raises(ConfigError, match="bad parameters"):
        build_step("store_results", context(f"sqlite:///{tmp_path / 'r.db'}"), {"batch": 3})


def test_data_the_database_refuses_is_not_a_transient_error(
    store_url: str, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    poisoned = classified(acme, "EGG-\x00")  # PostgreSQL text cannot hold NUL
    step = build_step("store_results", context(store_url), {})
    try:
        if store_url.startswith("postgresql"):
            with pytest.raises(RejectedWrite, match="refused") as caught:
                step.process([poisoned])
            assert not isinstance(caught.value, TransientError)
        else:
            assert step.process([poisoned]) == [poisoned]
    finally:
        step.close()


def test_records_are_held_to_their_applications_declaration(
    store_url: str, tenants: tuple[str, str]
) -> None:
    from inferstream.apps.eggs import APP

    acme, _ = tenants
    good = classified(acme, "EGG-1")
    no_subject = classified(acme, "")
    bad_day = classified(acme, "EGG-3")
    bad_day.attributes["incubation_day"] = "twelve"
    stranger = classified(acme, "EGG-4")
    stranger.predictions[0].label = "rooster"
    wrong_head = classified(acme, "EGG-5")
    wrong_head.predictions[0].head = "colour"
    ctx = StepContext(pipeline="eggs", stage="store", store_url=store_url, app=APP)
    step = build_step("store_results", ctx, {})
    try:
        outcomes = step.process([good, no_subject, bad_day, stranger, wrong_head])
    finally:
        step.close()
    assert outcomes[0] is good
    reasons = [str(outcome) for outcome in outcomes[1:]]
    assert all(isinstance(outcome, InvalidInput) for outcome in outcomes[1:])
    assert "no 'egg_id'" in reasons[0]
    assert "'incubation_day' is 'twelve', not int" in reasons[1]
    assert "'rooster'" in reasons[2] and "head 'sex'" in reasons[2]
    assert "head 'colour'" in reasons[3]
    with ResultsStore(store_url) as store:
        assert store.count_results(acme) == 1  # only the good one; the rest dead-letter


def test_a_dead_letter_never_repeats_a_sensitive_attributes_value() -> None:
    from inferstream.application import AppSpec, Attribute
    from inferstream.store.step import check_record

    app = AppSpec(name="notes", title="Notes", package=__name__, subject="sid",
                  attributes=(Attribute("sid"), Attribute("pin", kind="int", sensitive=True),
                              Attribute("count", kind="int")))  # fmt: skip
    env = new_envelope(b"x", "text/plain", tenant="acme",
                       attributes={"sid": "S1", "pin": "Jane Doe 0412"})  # fmt: skip
    with pytest.raises(InvalidInput) as refused:
        check_record(env, app)
    assert "Jane Doe" not in str(refused.value)
    assert "'pin' is a str (sensitive: its value is not shown), not int" in str(refused.value)
    env.attributes.update(pin="12", count="many")  # a plain attribute is still quoted
    with pytest.raises(InvalidInput, match="'count' is 'many', not int"):
        check_record(env, app)


def test_a_model_whose_labels_the_head_lacks_is_refused_at_start() -> None:
    from inferstream.application import AppSpec, Attribute, Head, Label

    app = AppSpec(
        name="two-labels", title="T", package=__name__, subject="item",
        attributes=(Attribute("item"),),
        heads=(Head("sex", (Label("female", "#000"), Label("male", "#fff"))),),
    )  # fmt: skip
    ctx = StepContext(pipeline="p", stage="classify", app=app)
    with pytest.raises(ConfigError, match="not_developing"):
        build_step("classify", ctx, {"model": "egg_sexing"})
