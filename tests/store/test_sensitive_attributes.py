"""Sensitive record attributes on SQLite and PostgreSQL: sealed at rest under the
tenant's data keys, opened on every read, never a filter; readable across a KEK
rotation and a new data key; null and flagged once the tenant is shredded; a sealed
value copied to another record does not open; in clear without a KEK."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_testing import POSTGRES_URL, private_schema
from sqlalchemy import text

from inferstream.application import AppSpec, Attribute
from inferstream.apps.filedrop import APP
from inferstream.errors import ConfigError, TenantShredded
from inferstream.key_provider import KEK_ENV, PROVIDER_ENV, LocalKeyProvider
from inferstream.store import InvalidQuery, ResultFilter, ResultRow, ResultsStore
from inferstream.store.data_keys import data_keys
from inferstream.store.sealed_attributes import NO_KEY, SHREDDED, UNAUTHENTIC
from inferstream.store.sharing import Condition, GrantError, Sharing

#: A plaintext no ciphertext or other column holds by chance.
SECRET = "smith_jane_0412.png"


@pytest.fixture(autouse=True)
def no_kek_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test names its keys: none come from the machine's environment."""
    monkeypatch.delenv(KEK_ENV, raising=False)
    monkeypatch.delenv(PROVIDER_ENV, raising=False)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database per backend for the module (migrated once); each test has tenants
    of its own, so none sees another's records."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sensitive') / 'results.db'}"
        return
    with private_schema(POSTGRES_URL, "sensitive") as url:
        yield url


@pytest.fixture
def old_kek() -> bytes:
    return os.urandom(32)


@pytest.fixture
def kek(old_kek: bytes) -> LocalKeyProvider:
    return LocalKeyProvider([old_kek])


@pytest.fixture
def sealing(store_url: str, kek: LocalKeyProvider) -> Iterator[ResultsStore]:
    with ResultsStore(store_url, key_provider=kek) as store:
        store.register_app(APP)
        yield store


def record(tenant: str, ident: str, file: str = SECRET) -> ResultRow:
    return ResultRow(
        id=ident, tenant=tenant, app=APP.name, head="shape", label="circle", confidence=0.9,
        scores={"circle": 0.9}, model_name="shapes", model_version="1", created_at_us=1_000,
        ingested_at_us=2_000, stored_at_us=3_000 + len(ident), latency_ms=1.0,
        subject=ident, source="inbox",
        attributes={"name": ident, "file": file, "folder": "inbox", "width": 64},
    )  # fmt: skip


def raw(store: ResultsStore, tenant: str, ident: str) -> dict[str, Any]:
    """The record's row as the database holds it, every column."""
    query = text("SELECT * FROM records WHERE tenant = :tenant AND id = :id")
    with store.tenant_transaction(tenant, "read a raw row of") as conn:
        row = conn.execute(query, {"tenant": tenant, "id": ident}).mappings().one()
    attributes = row["attributes"]
    return {
        **row,
        "attributes": json.loads(attributes) if isinstance(attributes, str) else attributes,
    }


def test_a_sensitive_attribute_is_sealed_at_rest_and_every_read_opens_it(
    sealing: ResultsStore, store_url: str, kek: LocalKeyProvider, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    sealing.upsert_results([record(acme, "r1")])
    stored = raw(sealing, acme, "r1")
    assert SECRET not in json.dumps(stored, default=str)
    assert stored["attributes"]["file"]["key"] == 1 and "sealed" in stored["attributes"]["file"]
    assert stored["attributes"]["folder"] == "inbox"  # the others stay as they were

    for row in (
        sealing.get_result(acme, "r1"),
        *sealing.list_results(acme, ResultFilter(app=APP.name)).items,
        *sealing.results_of_root(acme, "r1"),
        *(seen.row for seen in Sharing(sealing).list_visible(acme).items),
    ):
        assert row is not None and row.attributes["file"] == SECRET and not row.withheld
    shared = Sharing(sealing).get_visible(acme, "r1")
    assert shared is not None and shared.row.attributes["file"] == SECRET

    # A writer that never registered the application seals too (it is installed).
    with ResultsStore(store_url, key_provider=kek) as unregistered:
        unregistered.upsert_results([record(acme, "r2")])
    assert SECRET not in json.dumps(raw(sealing, acme, "r2"), default=str)
    assert sealing.get_result(acme, "r2") == record(acme, "r2")


def test_filtering_or_granting_by_a_sensitive_attribute_is_refused(
    sealing: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    by_file = ResultFilter(app=APP.name, attributes={"file": SECRET})
    for read in (sealing.list_results, sealing.count_results, Sharing(sealing).list_visible):
        with pytest.raises(InvalidQuery, match="file is a sensitive attribute"):
            read(acme, by_file)
    with pytest.raises(GrantError, match="file of 'filedrop' is sensitive"):
        Sharing(sealing).grant(
            acme, globex, APP, expires_at_us=2**62, created_by="admin",
            conditions=(Condition("file", "text", SECRET, SECRET),),
        )  # fmt: skip


@pytest.fixture
def database_of_its_own(store_url: str, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own (a KEK rotation rewraps every tenant's keys)."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    with private_schema(POSTGRES_URL, "sensitive") as url:
        yield url


def test_kek_rotation_and_a_new_data_key_keep_every_record_readable(
    database_of_its_own: str, kek: LocalKeyProvider, old_kek: bytes, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    store_url = database_of_its_own
    with ResultsStore(store_url, key_provider=kek) as sealing:
        sealing.upsert_results([record(acme, "old")])
        new_kek = os.urandom(32)
        both = LocalKeyProvider([new_kek, old_kek])
        assert data_keys(sealing, both).rewrap_all() == 1

    only_new = LocalKeyProvider([new_kek])
    with ResultsStore(store_url, key_provider=only_new) as rotated:
        assert data_keys(rotated, only_new).new_data_key(acme) == 2
        rotated.upsert_results([record(acme, "new", file="doe_john.png")])
        assert raw(rotated, acme, "old")["attributes"]["file"]["key"] == 1
        assert raw(rotated, acme, "new")["attributes"]["file"]["key"] == 2
        files = {r.id: r.attributes["file"] for r in rotated.list_results(acme).items}
        assert files == {"old": SECRET, "new": "doe_john.png"}


def test_a_shredded_tenant_reads_null_and_flagged_and_writes_none(
    sealing: ResultsStore, store_url: str, kek: LocalKeyProvider, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    sealing.upsert_results([record(acme, "a1"), record(globex, "g1")])
    assert data_keys(sealing, kek).shred(acme, actor="cli:ops") == 1
    with ResultsStore(store_url, key_provider=kek) as fresh:  # no key cached
        shredded = fresh.get_result(acme, "a1")
        assert shredded is not None and shredded.attributes["file"] is None
        assert shredded.withheld == {"file": SHREDDED}
        assert shredded.attributes["folder"] == "inbox" and shredded.label == "circle"
        other = fresh.get_result(globex, "g1")
        assert other is not None and other.attributes["file"] == SECRET and not other.withheld
        with pytest.raises(TenantShredded, match="were shredded"):
            fresh.upsert_results([record(acme, "a2")])


def test_a_sealed_value_copied_to_another_record_does_not_open(
    sealing: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    sealing.upsert_results([record(acme, "victim"), record(acme, "mine", file="mine.png")])
    moved = {**raw(sealing, acme, "mine")["attributes"]}
    moved["file"] = raw(sealing, acme, "victim")["attributes"]["file"]
    with sealing.tenant_transaction(acme, "tamper with") as conn:
        conn.execute(
            text("UPDATE records SET attributes = :a WHERE tenant = :t AND id = 'mine'"),
            {"a": json.dumps(moved), "t": acme},
        )
    mine = sealing.get_result(acme, "mine")
    assert mine is not None and mine.attributes["file"] is None
    assert mine.withheld == {"file": UNAUTHENTIC}
    victim = sealing.get_result(acme, "victim")
    assert victim is not None and victim.attributes["file"] == SECRET


def test_without_a_kek_the_value_is_stored_as_before_and_sealed_ones_read_null(
    database_of_its_own: str, kek: LocalKeyProvider, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    with ResultsStore(database_of_its_own) as clear:  # a deployment that never encrypted
        clear.register_app(APP)
        clear.upsert_results([record(acme, "clear")])
        assert raw(clear, acme, "clear")["attributes"]["file"] == SECRET
    with ResultsStore(database_of_its_own, key_provider=kek) as sealing:
        sealing.upsert_results([record(acme, "sealed")])
        with ResultsStore(database_of_its_own) as clear:
            rows = {row.id: row for row in clear.list_results(acme).items}
        assert rows["clear"].attributes["file"] == SECRET and not rows["clear"].withheld
        assert rows["sealed"].attributes["file"] is None
        assert rows["sealed"].withheld == {"file": NO_KEY}
        # The store with the key reads both: a value from before encryption stays readable.
        assert {r.attributes["file"] for r in sealing.list_results(acme).items} == {SECRET}


def test_a_writer_without_a_kek_refuses_sensitive_values_once_the_store_encrypts(
    sealing: ResultsStore, store_url: str, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    sealing.upsert_results([record(acme, "sealed")])  # the store now holds a data key
    with ResultsStore(store_url) as unconfigured:
        unconfigured.register_app(APP)
        for tenant in (acme, globex):  # any tenant: the deployment encrypts
            with pytest.raises(
                ConfigError, match=r"set INFERSTREAM_KEK \(or INFERSTREAM_KEY_PROVIDER\)"
            ):
                unconfigured.upsert_results([record(tenant, "clear")])
            assert unconfigured.get_result(tenant, "clear") is None
        no_file = record(acme, "no-file")
        del no_file.attributes["file"]  # nothing sensitive to leak: written
        unconfigured.upsert_results([no_file])
        assert unconfigured.get_result(acme, "no-file") is not None
    with sealing.tenant_transaction(acme, "read every raw row of") as conn:
        stored = conn.execute(text("SELECT * FROM records")).mappings().all()
    assert stored and SECRET not in json.dumps([dict(r) for r in stored], default=str)


#: Stored values that look sealed but are not what this store writes.
MALFORMED: list[Any] = [
    {"sealed": "", "key": 1, "format": 1},
    {"sealed": "AAAAAAAA", "key": 1, "format": 1},  # decodes to fewer than 12 + 16 bytes
    {"sealed": "not base64!", "key": 1, "format": 1},
    {"sealed": 7, "key": 1, "format": 1},
    {"sealed": "A" * 40, "key": "one", "format": 1},
    {"sealed": "A" * 40, "key": 1.5, "format": 1},
    {"sealed": "A" * 40, "key": 2**40, "format": 1},
    {"sealed": "A" * 40, "key": 0, "format": 1},
    {"sealed": "A" * 40, "key": 1, "format": 2},
    {"sealed": "A" * 40, "key": 1, "format": "1"},
    {"sealed": "A" * 40, "key": 1},
    {"sealed": "A" * 40, "key": 1, "format": 1},  # well formed, its tag fails
]


def test_a_malformed_sealed_value_reads_null_and_unauthentic_and_warns_once(
    sealing: ResultsStore, tenants: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    acme, _ = tenants
    idents = [f"bad{n:02d}" for n in range(len(MALFORMED))]
    sealing.upsert_results([record(acme, ident) for ident in idents])
    with sealing.tenant_transaction(acme, "tamper with") as conn:
        for ident, value in zip(idents, MALFORMED, strict=True):
            attributes = {**raw(sealing, acme, ident)["attributes"], "file": value}
            conn.execute(
                text("UPDATE records SET attributes = :a WHERE tenant = :t AND id = :id"),
                {"a": json.dumps(attributes), "t": acme, "id": ident},
            )
    with caplog.at_level("WARNING", logger="inferstream.store.sealed_attributes"):
        for _ in range(2):  # as a live view reads again and again
            listed = sealing.list_results(acme, ResultFilter(app=APP.name), limit=100).items
            assert {row.id for row in listed} == set(idents)
            for row in listed:
                assert row.attributes["file"] is None, (row.id, row.attributes)
                assert row.withheld == {"file": UNAUTHENTIC}
                assert row.attributes["folder"] == "inbox"
        one = sealing.get_result(acme, idents[0])
        assert one is not None and one.withheld == {"file": UNAUTHENTIC}
        shared = Sharing(sealing).get_visible(acme, idents[0])
        assert shared is not None and shared.row.withheld == {"file": UNAUTHENTIC}
    assert len(caplog.records) == 1  # once per tenant and reason, not once per read


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attributes": (Attribute("note", filterable=True, sensitive=True),)},
         "both sensitive and filterable; .* drop filterable=True"),
        ({"attributes": (Attribute("note", sensitive=True),), "subject": "note"},
         "note is named as subject, group or source, .* cannot be sensitive"),
    ],
)  # fmt: skip
def test_a_sensitive_attribute_cannot_be_a_filter_or_a_column(
    change: dict[str, Any], message: str
) -> None:
    declared: dict[str, Any] = {"name": "notes", "title": "Notes", "package": __name__,
                                "subject": "id", "attributes": (Attribute("id"),)}  # fmt: skip
    declared.update(change)
    if "subject" not in change:
        declared["attributes"] = (Attribute("id"), *change["attributes"])
    with pytest.raises(ConfigError, match=message):
        AppSpec(**declared)
