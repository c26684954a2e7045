"""The model registry on SQLite and PostgreSQL: register, aliases, rollback, audit,
owners, and loads checked against the registered digest."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from inferstream.application import find_model
from inferstream.blobs import LocalBlobStore
from inferstream.errors import ModelError
from inferstream.registry import ADOPTER, ModelRegistry, RegistryError, parse_ref
from inferstream.store import ResultsStore

SHIPPED = find_model("egg_sexing")


def shipped() -> tuple[bytes, dict[str, Any]]:
    assert SHIPPED is not None
    graph = (SHIPPED / "egg_sexing.onnx").read_bytes()
    info = json.loads((SHIPPED / "egg_sexing.json").read_text())
    return graph, info


def relabelled(version: str) -> tuple[bytes, dict[str, Any]]:
    """The shipped graph under another version whose labels are rotated: every label
    it gives differs from the shipped version's, so a test can tell who scored."""
    graph, info = shipped()
    labels = info["labels"]
    return graph, {**info, "version": version, "labels": labels[1:] + labels[:1]}


@pytest.fixture
def registry(store_url: str, tmp_path: Path) -> Any:
    store = ResultsStore(store_url)
    yield ModelRegistry(store, LocalBlobStore(tmp_path / "blobs"))
    store.close()


def test_register_alias_move_and_roll_back_with_an_audit_entry_each(registry: Any) -> None:
    first = registry.register(*shipped(), actor="ops", note="trained on seed 1")
    second = registry.register(*relabelled("2.0.0"), actor="ops")
    assert [v.version for v in registry.versions("egg_sexing")] == ["1.0.0", "2.0.0"]
    assert first.sha256 == second.sha256 and first.artifact_uri != second.artifact_uri
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="first")
    assert registry.resolve("egg_sexing", "champion").version == "1.0.0"
    registry.set_alias("egg_sexing", "champion", "2.0.0", actor="alice", reason="better")
    assert registry.resolve("egg_sexing", "champion").version == "2.0.0"
    back = registry.rollback("egg_sexing", "champion", actor="bob", reason="worse on trays")
    assert back.version == "1.0.0" and registry.resolve("egg_sexing", "champion").version == "1.0.0"
    trail = [(e.action, e.actor, e.alias, e.from_version, e.to_version, e.reason)
             for e in reversed(registry.history("egg_sexing"))]  # fmt: skip
    assert trail == [
        ("register", "ops", "", "", "1.0.0", "trained on seed 1"),
        ("register", "ops", "", "", "2.0.0", ""),
        ("alias", "ops", "champion", "", "1.0.0", "first"),
        ("alias", "alice", "champion", "1.0.0", "2.0.0", "better"),
        ("rollback", "bob", "champion", "2.0.0", "1.0.0", "worse on trays"),
    ]
    # A rollback of the rollback goes forward again: it undoes the last move.
    assert registry.rollback("egg_sexing", "champion", actor="bob", reason="r").version == "2.0.0"


def test_versions_never_change_and_bad_requests_say_what_to_do(registry: Any) -> None:
    graph, info = shipped()
    registry.register(graph, info, actor="ops")
    assert registry.register(graph, info, actor="ops").version == "1.0.0"  # same bytes: same
    with pytest.raises(RegistryError, match="registered with other bytes") as conflict:
        registry.register(graph + b"\0", info, actor="ops")
    assert conflict.value.status == 409
    with pytest.raises(ModelError, match="ONNX Runtime cannot load it"):
        registry.register(b"not a graph", {**info, "version": "9.0.0"}, actor="ops")
    with pytest.raises(RegistryError, match="lacks"):
        registry.register(graph, {"name": "egg_sexing"}, actor="ops")
    with pytest.raises(RegistryError, match=r"no version '3\.0\.0'") as unknown:
        registry.set_alias("egg_sexing", "champion", "3.0.0", actor="ops", reason="x")
    assert unknown.value.status == 404
    with pytest.raises(RegistryError, match="say why"):
        registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="")
    with pytest.raises(RegistryError, match="no model egg_sexing@shadow"):
        registry.resolve("egg_sexing", "shadow")
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.set_alias("egg_sexing", "shadow", "1.0.0", actor="ops", reason="x")
        registry.rollback("egg_sexing", "shadow", actor="ops", reason="x")
    with pytest.raises(RegistryError, match="alias 'Champion!' is not allowed"):
        parse_ref("egg_sexing@Champion!")
    assert parse_ref("egg_sexing") == ("egg_sexing", "champion")


def test_a_load_checks_the_bytes_against_the_registered_digest(
    registry: Any, tmp_path: Path
) -> None:
    # A model no application ships under its name: nothing to restore it from.
    folder = find_model("loco_type")
    assert folder is not None
    info = {**json.loads((folder / "loco_type.json").read_text()), "name": "loco_copy"}
    registry.register((folder / "loco_type.onnx").read_bytes(), info, actor="ops")
    registry.set_alias("loco_copy", "challenger", info["version"], actor="ops", reason="try")
    version = registry.resolve("loco_copy", "challenger")
    assert registry.load(version).info.name == "loco_copy"
    stored = tmp_path / "blobs" / "models_registry" / "models" / "loco_copy" / info["version"]
    stored /= "model.onnx"
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelError, match="does not match its checksum"):
        registry.load(version)


def test_a_lost_artifact_of_a_shipped_model_is_restored_from_its_files(
    registry: Any, tmp_path: Path
) -> None:
    registry.register(*relabelled("2.0.0"), actor="ops")
    (version,) = registry.versions("egg_sexing")
    stored = tmp_path / "blobs" / "models_registry" / "models" / "egg_sexing" / "2.0.0"
    (stored / "model.onnx").unlink()
    model = registry.load(version)  # the shipped graph has the registered digest
    assert model.info.version == "2.0.0" and model.info.labels[0] == "male"
    assert (stored / "model.onnx").read_bytes() == shipped()[0]


def test_replicas_starting_together_all_adopt_the_shipped_model(registry: Any) -> None:
    """Found by the soak: two workers on a fresh store both adopt the shipped model; the
    second saw the first's version before its alias, gave up, and stayed down. It now
    waits for the alias the adopter is about to point."""
    assert SHIPPED is not None
    first = registry.register_files(SHIPPED / "egg_sexing.onnx", actor=ADOPTER, reason="first")
    point = {"actor": ADOPTER, "reason": "first"}
    pointer = threading.Timer(
        0.5, registry.set_alias, args=("egg_sexing", "champion", first.version), kwargs=point
    )
    pointer.start()
    adopted = registry.adopt_shipped("egg_sexing", "champion")
    pointer.join()
    assert adopted is not None and adopted.version == first.version
    # A version a person registered, with no alias: nothing to wait for.
    registry.register(*relabelled("9.0.0"), actor="ops")
    assert registry.adopt_shipped("egg_sexing", "canary") is None


def test_a_tenants_private_model_is_its_own(registry: Any) -> None:
    registry.register(*shipped(), actor="ops")
    registry.register(*relabelled("2.0.0-acme"), actor="acme/alice", tenant="acme")
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="deployment")
    registry.set_alias(
        "egg_sexing", "champion", "2.0.0-acme", actor="acme/alice", reason="ours",
        tenant="acme",
    )  # fmt: skip
    assert registry.resolve("egg_sexing", "champion", tenant="acme").version == "2.0.0-acme"
    assert registry.resolve("egg_sexing", "champion", tenant="globex").version == "1.0.0"
    assert registry.resolve("egg_sexing", "champion").version == "1.0.0"
    seen = {v.version for v in registry.versions("egg_sexing", tenant="globex")}
    assert seen == {"1.0.0"}
    assert {v.version for v in registry.versions(tenant="acme")} == {"1.0.0", "2.0.0-acme"}
    # A tenant may point its own alias at the deployment's version, never the reverse.
    registry.set_alias("egg_sexing", "shadow", "1.0.0", actor="a", reason="r", tenant="acme")
    with pytest.raises(RegistryError, match=r"no version '2\.0\.0-acme'"):
        registry.set_alias("egg_sexing", "shadow", "2.0.0-acme", actor="ops", reason="r")
    assert [e.actor for e in registry.history("egg_sexing", tenant="globex")] == ["ops"] * 2
