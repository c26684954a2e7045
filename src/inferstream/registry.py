"""The model registry: versions, aliases, rollback and an audit entry for every change.

A model **version** is an ONNX file and its metadata (the ``.json`` a model ships
with: labels, tensor names, input shape), registered once and never changed: its
bytes go to the blob store (``models/<name>/<version>/model.onnx``), their SHA-256
and the metadata to the results store's database (tables ``model_versions``,
``model_aliases``, ``model_audit``, ``model_switches``; migration 0006). An **alias**
(``champion``, ``challenger``, ``shadow``, or any name) points at one version of a
model; a pipeline step names ``name@alias``, and its workers follow the alias while
they run (:mod:`inferstream.serving`). Moving an alias, and rolling it back to the
version it pointed at before, each write an audit entry: who, when, why, from which
version to which.

Models are the deployment's (owner ``""``, registered with the CLI) unless a tenant
registers a private one over the API (owner = the tenant). A tenant sees the
deployment's models and its own; on PostgreSQL row-level security holds it to that.
A version's bytes are checked against the digest on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, or_, select

from inferstream.blobs import BlobStore
from inferstream.classify import Model, ModelInfo, model_from_bytes
from inferstream.envelope import BlobRef, now_us
from inferstream.errors import InferstreamError, ModelError, TransientError
from inferstream.shipped import served_by_default, shipped_versions
from inferstream.store import RejectedWrite, ResultsStore
from inferstream.store import schema as tables
from inferstream.store.audit import AuditEntry as AuditLogEntry
from inferstream.store.audit import AuditLog, audit_key_from_env, target_of
from inferstream.store.queries import upsert
from inferstream.store.schema import GLOBAL_OWNER

log = logging.getLogger(__name__)

#: Blob-store folder of the deployment's models (an API tenant name has no "_", so none clashes).
GLOBAL_FOLDER = "models_registry"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
#: The alias a bare model name (no ``@``) means in a pipeline file.
DEFAULT_ALIAS = "champion"
#: Who the audit log names for what the platform does by itself.
ADOPTER = "inferstream"
#: How long a replica waits for another, adopting the same shipped model, to point its
#: alias (one transaction after registering it).
ADOPTION_WAIT_S = 10.0


class RegistryError(InferstreamError):
    """A registry request names something that is not there, or conflicts with it."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        #: The HTTP status the API answers with (404 unknown, 409 conflict, 400 bad).
        self.status = status


@dataclass(frozen=True)
class ModelVersion:
    owner: str
    name: str
    version: str
    sha256: str
    size: int
    artifact_uri: str
    info: dict[str, Any]
    registered_at_us: int
    registered_by: str
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "owner": self.owner or None,
            "sha256": self.sha256,
            "size": self.size,
            "labels": list(self.info.get("labels", ())),
            "input_shape": list(self.info.get("input_shape", ())),
            "registered_at_us": self.registered_at_us,
            "registered_by": self.registered_by,
            "note": self.note,
        }


@dataclass(frozen=True)
class Alias:
    owner: str
    name: str
    alias: str
    version: str
    set_at_us: int
    set_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "version": self.version,
            "set_at_us": self.set_at_us,
            "set_by": self.set_by,
        }


@dataclass(frozen=True)
class AuditEntry:
    id: int
    owner: str
    at_us: int
    actor: str
    action: str
    name: str
    alias: str
    from_version: str
    to_version: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at_us": self.at_us,
            "actor": self.actor,
            "action": self.action,
            "name": self.name,
            "alias": self.alias or None,
            "from_version": self.from_version or None,
            "to_version": self.to_version or None,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Switch:
    """A worker started serving ``to_version`` of ``name@alias``: where, per partition."""

    at_us: int
    pipeline: str
    stage: str
    worker: str
    name: str
    alias: str
    from_version: str
    to_version: str
    #: topic -> partition -> the offset of the first message the new version scored.
    positions: dict[str, dict[str, int]]


def parse_ref(ref: str) -> tuple[str, str]:
    """``name@alias`` (or a bare ``name``: its champion) -> (name, alias), checked."""
    name, _, alias = ref.partition("@")
    alias = alias or DEFAULT_ALIAS
    check_name(name)
    check_alias(alias)
    return name, alias


def check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise RegistryError(
            f"model name {name[:80]!r} is not allowed; use letters, digits, '_', '.', '-'"
        )


def check_alias(alias: str) -> None:
    if not ALIAS_RE.fullmatch(alias):
        raise RegistryError(
            f"alias {alias[:80]!r} is not allowed; use a lowercase letter, then lowercase "
            "letters, digits, '_' or '-' (e.g. champion, challenger, shadow)"
        )


class ModelRegistry:
    """The registry in one results store's database and one blob store.

    Each method acts for ``tenant`` (``None``: the deployment, as the CLI does): it
    sees the deployment's models and the tenant's own, and writes the tenant's own.
    """

    def __init__(
        self, store: ResultsStore, blobs: BlobStore, audit: AuditLog | None = None
    ) -> None:
        self.store = store
        self.blobs = blobs
        #: Every change is also an entry of the audit log (its owner's chain).
        self.audit = audit or AuditLog(store, audit_key_from_env())

    # -- versions ---------------------------------------------------------------

    def register(
        self,
        graph: bytes,
        info: dict[str, Any],
        *,
        actor: str,
        tenant: str | None = None,
        note: str = "",
        reason: str = "",
    ) -> ModelVersion:
        """Register ``graph`` (ONNX bytes) with its metadata as a new version.

        The graph must load and agree with the metadata. Registering the same bytes
        again under the same version returns the version; other bytes under a
        version that exists are refused (versions never change).
        """
        checked = _checked_info(info)
        name, version = checked.name, checked.version
        check_name(name)
        if not NAME_RE.fullmatch(version):
            raise RegistryError(f"version {version[:80]!r} is not allowed")
        owner = tenant or GLOBAL_OWNER
        existing = self._version(owner, name, version, own_only=True)
        ref = hashlib.sha256(graph).hexdigest()
        if existing is not None:
            if existing.sha256 == ref:
                return existing
            raise RegistryError(
                f"model {name} version {version} is registered with other bytes "
                f"(sha256 {existing.sha256[:12]}...); register a new version",
                status=409,
            )
        model_from_bytes(graph, checked, f"{name} {version}")  # it loads, the names agree
        stored = self.blobs.put_at(_key(name, version), graph, owner or GLOBAL_FOLDER)
        row = ModelVersion(
            owner, name, version, stored.sha256, stored.size, stored.uri,
            dict(info), now_us(), actor, note,
        )  # fmt: skip
        with self._transaction(tenant, "register a model in") as conn:
            conn.execute(tables.model_versions.insert().values(**row.__dict__))
            self._audit(
                conn, owner, actor, "register", name=name, to_version=version,
                reason=reason or note,
            )  # fmt: skip
        return row

    def register_files(
        self, onnx_path: Path, *, actor: str, tenant: str | None = None, reason: str = ""
    ) -> ModelVersion:
        """Register ``<name>.onnx`` with the ``<name>.json`` beside it."""
        json_path = onnx_path.with_suffix(".json")
        try:
            graph = onnx_path.read_bytes()
            info = json.loads(json_path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(
                f"cannot read {onnx_path} and {json_path}: {exc}; a model is the two files"
            ) from exc
        return self.register(graph, info, actor=actor, tenant=tenant, reason=reason)

    def versions(self, name: str | None = None, tenant: str | None = None) -> list[ModelVersion]:
        v = tables.model_versions.c
        stmt = select(tables.model_versions).where(_visible(v.owner, tenant))
        if name is not None:
            stmt = stmt.where(v.name == name)
        stmt = stmt.order_by(v.name, v.registered_at_us, v.version)
        with self._transaction(tenant, "list models in") as conn:
            return [_version_row(row) for row in conn.execute(stmt).mappings()]

    def aliases(self, name: str | None = None, tenant: str | None = None) -> list[Alias]:
        a = tables.model_aliases.c
        stmt = select(tables.model_aliases).where(_visible(a.owner, tenant))
        if name is not None:
            stmt = stmt.where(a.name == name)
        with self._transaction(tenant, "list model aliases in") as conn:
            rows = conn.execute(stmt.order_by(a.name, a.alias)).mappings()
            return [Alias(**row) for row in rows]

    def history(self, name: str, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The audit trail of ``name``, newest first."""
        t = tables.model_audit.c
        stmt = (
            select(tables.model_audit)
            .where(t.name == name, _visible(t.owner, tenant))
            .order_by(t.id.desc())
            .limit(limit)
        )
        with self._transaction(tenant, "read the model audit in") as conn:
            return [AuditEntry(**row) for row in conn.execute(stmt).mappings()]

    # -- aliases ----------------------------------------------------------------

    def set_alias(
        self,
        name: str,
        alias: str,
        version: str,
        *,
        actor: str,
        reason: str,
        tenant: str | None = None,
        action: str = "alias",
    ) -> Alias:
        """Point ``name@alias`` at ``version`` (a version the caller can see)."""
        check_alias(alias)
        owner = tenant or GLOBAL_OWNER
        if not reason:
            raise RegistryError("say why the alias moves (a reason is kept in the audit log)")
        with self._transaction(tenant, "move a model alias in") as conn:
            if self._version_in(conn, owner, name, version, own_only=False) is None:
                known = ", ".join(v.version for v in self.versions(name, tenant)) or "none"
                raise RegistryError(
                    f"model {name} has no version {version!r} (registered: {known})", status=404
                )
            before = self._alias_in(conn, owner, name, alias)
            row = Alias(owner, name, alias, version, now_us(), actor)
            stmt = upsert(tables.model_aliases, conn.dialect.name, "update")
            conn.execute(stmt, [row.__dict__])
            self._audit(
                conn, owner, actor, action, name=name, alias=alias,
                from_version=before.version if before else "", to_version=version,
                reason=reason,
            )  # fmt: skip
        return row

    def record_decision(
        self,
        name: str,
        alias: str,
        version: str,
        *,
        action: str,
        actor: str,
        reason: str,
        tenant: str | None = None,
    ) -> None:
        """An audit entry for a decision that moved nothing (a promotion policy's
        ``keep`` or ``wait``), with its reason and figures."""
        owner = tenant or GLOBAL_OWNER
        with self._transaction(tenant, "write the model audit in") as conn:
            self._audit(
                conn, owner, actor, action, name=name, alias=alias, from_version=version,
                to_version=version, reason=reason,
            )  # fmt: skip

    def rollback(
        self, name: str, alias: str, *, actor: str, reason: str, tenant: str | None = None
    ) -> Alias:
        """Point ``name@alias`` back at the version it pointed at before its last move."""
        owner = tenant or GLOBAL_OWNER
        with self._transaction(tenant, "read a model alias in") as conn:
            if self._alias_in(conn, owner, name, alias) is None:
                raise RegistryError(
                    f"no alias {name}@{alias} to roll back; point it at a version first "
                    f"(inferstream models alias ... {name} {alias} VERSION --reason ...)",
                    status=404,
                )
        t = tables.model_audit.c
        stmt = (
            select(t.from_version)
            .where(t.owner == owner, t.name == name, t.alias == alias)
            .where(t.action.in_(("alias", "rollback", "promote")))
            .order_by(t.id.desc())
            .limit(1)
        )
        with self._transaction(tenant, "read the model audit in") as conn:
            previous = conn.execute(stmt).scalar()
        if not previous:
            raise RegistryError(
                f"{name}@{alias} has no earlier version to roll back to", status=409
            )
        return self.set_alias(
            name, alias, previous, actor=actor, reason=reason, tenant=tenant, action="rollback"
        )

    def resolve(self, name: str, alias: str, tenant: str | None = None) -> ModelVersion:
        """The version ``name@alias`` points at now (the tenant's own alias first)."""
        with self._transaction(tenant, "resolve a model alias in") as conn:
            for owner in dict.fromkeys((tenant or GLOBAL_OWNER, GLOBAL_OWNER)):
                pointer = self._alias_in(conn, owner, name, alias)
                if pointer is not None:
                    found = self._version_in(conn, owner, name, pointer.version, own_only=False)
                    if found is not None:
                        return found
        raise RegistryError(
            f"no model {name}@{alias} in the registry; register a version and point the "
            f"alias at it: inferstream models register FILE.onnx, then inferstream models "
            f"alias {name} {alias} VERSION --reason ...",
            status=404,
        )

    def adopt_shipped(self, name: str, alias: str) -> ModelVersion | None:
        """First use of ``name@alias`` where the registry has no version of ``name``: if
        an installed application ships the model, register every version of it that it
        ships and point the alias at the one it serves by default (:mod:`inferstream.shipped`;
        an audit entry says so). None when nothing ships it."""
        shipped = shipped_versions(name)
        if not shipped:
            return None
        known = self.versions(name)
        if known:  # adopted by another replica a moment ago, or registered by a person
            return self._adopted_by_another(name, alias, known)
        reason = f"shipped with the application; first use of {name}@{alias}"
        try:
            for each in shipped:
                self.register_files(each.path, actor=ADOPTER, reason=reason)
        except RejectedWrite:  # another replica registered it at the same moment
            return self._adopted_by_another(name, alias, self.versions(name))
        served = served_by_default(shipped)
        others = [v.version for v in shipped if v is not served]
        if others:
            reason += f"; the version it serves by default (also registered: {', '.join(others)})"
        self.set_alias(name, alias, served.version, actor=ADOPTER, reason=reason)
        return self.resolve(name, alias)

    def _adopted_by_another(
        self, name: str, alias: str, known: list[ModelVersion]
    ) -> ModelVersion | None:
        """Replicas starting together race to adopt: the one that registered the files
        points the alias a moment later. Wait for that (up to ``ADOPTION_WAIT_S``) when
        every version there is the adopter's; None otherwise, or if it never comes."""
        if not known or any(v.registered_by != ADOPTER for v in known):
            return None
        deadline = time.monotonic() + ADOPTION_WAIT_S
        while time.monotonic() < deadline:
            try:
                return self.resolve(name, alias)
            except RegistryError:
                time.sleep(0.1)
        return None

    def load(self, version: ModelVersion) -> Model:
        """The version's model, its bytes checked against the registered digest."""
        folder, key = version.owner or GLOBAL_FOLDER, _key(version.name, version.version)
        # Found by its key in this blob store (which may have moved since it was
        # registered), then checked against the registered digest.
        uri = f"{self.blobs.url}/{folder}/{key}"
        ref = BlobRef(uri=uri, sha256=version.sha256, size=version.size)
        try:
            graph = self.blobs.get(ref, folder)
        except TransientError:
            raise  # the blob store is down, not the artifact lost: wait, heal nothing
        except InferstreamError as exc:
            shipped = self._shipped_copy(version)
            if shipped is None:
                raise ModelError(f"model {version.name} {version.version}: {exc}") from exc
            log.warning("model %s %s: %s; restored from the file an application ships "
                        "(same SHA-256)", version.name, version.version, exc)  # fmt: skip
            self.blobs.put_at(key, shipped, folder)
            graph = shipped
        info = ModelInfo.from_json(version.info, Path(f"registry:{version.name}"))
        return model_from_bytes(graph, info, f"{version.name} {version.version}")

    @staticmethod
    def _shipped_copy(version: ModelVersion) -> bytes | None:
        """The bytes of the version, if an installed application ships exactly them (a
        registry whose blob store was lost or moved heals from them)."""
        for shipped in shipped_versions(version.name):
            graph = shipped.path.read_bytes()
            if hashlib.sha256(graph).hexdigest() == version.sha256:
                return graph
        return None

    # -- switches ---------------------------------------------------------------

    def record_switch(self, switch: Switch) -> None:
        with self._transaction(None, "record a model switch in") as conn:
            conn.execute(tables.model_switches.insert().values(**switch.__dict__))

    def switches(self, name: str, limit: int = 1000, since_us: int = 0) -> list[Switch]:
        """Workers' switches of ``name`` from ``since_us`` on, oldest first."""
        s = tables.model_switches.c
        stmt = (
            select(tables.model_switches)
            .where(s.name == name, s.at_us >= since_us)
            .order_by(s.id)
            .limit(limit)
        )
        with self._transaction(None, "read model switches in") as conn:
            rows = conn.execute(stmt).mappings()
            return [Switch(**{k: v for k, v in row.items() if k != "id"}) for row in rows]

    # -- plumbing ---------------------------------------------------------------

    def _transaction(self, tenant: str | None, action: str) -> Any:
        return self.store.tenant_transaction(tenant or GLOBAL_OWNER, action)

    def _version(
        self, owner: str, name: str, version: str, *, own_only: bool
    ) -> ModelVersion | None:
        with self._transaction(owner or None, "read a model version in") as conn:
            return self._version_in(conn, owner, name, version, own_only=own_only)

    @staticmethod
    def _version_in(
        conn: Connection, owner: str, name: str, version: str, *, own_only: bool
    ) -> ModelVersion | None:
        v = tables.model_versions.c
        owners = [owner] if own_only else list(dict.fromkeys((owner, GLOBAL_OWNER)))
        stmt = (
            select(tables.model_versions)
            .where(v.name == name, v.version == version, v.owner.in_(owners))
            .order_by(v.owner.desc())  # the tenant's own before the deployment's
        )
        row = conn.execute(stmt).mappings().first()
        return None if row is None else _version_row(row)

    @staticmethod
    def _alias_in(conn: Connection, owner: str, name: str, alias: str) -> Alias | None:
        a = tables.model_aliases.c
        stmt = select(tables.model_aliases).where(
            a.owner == owner, a.name == name, a.alias == alias
        )
        row = conn.execute(stmt).mappings().first()
        return None if row is None else Alias(**row)

    def _audit(self, conn: Connection, owner: str, actor: str, action: str, **what: str) -> None:
        """One entry of the registry's log and of the audit log, in the change's
        transaction: ``what`` holds name, alias, from_version, to_version, reason."""
        entry = {"alias": "", "from_version": "", "to_version": "", "reason": "", **what}
        at_us = now_us()
        conn.execute(
            tables.model_audit.insert().values(
                owner=owner, at_us=at_us, actor=actor, action=action, **entry
            )
        )
        change = AuditLogEntry(
            tenant=owner, at_us=at_us, actor=actor, actor_kind="registry", role="",
            action=f"model {action}", target=target_of(entry), source="", status=200,
        )  # fmt: skip
        self.audit.append_in(conn, owner, [change])


def _key(name: str, version: str) -> str:
    return f"models/{name}/{version}/model.onnx"


def _version_row(row: Any) -> ModelVersion:
    return ModelVersion(**row)


def _checked_info(info: dict[str, Any]) -> ModelInfo:
    try:
        return ModelInfo.from_json(info, Path("the metadata"))
    except (ModelError, TypeError, ValueError) as exc:
        raise RegistryError(f"model metadata is not usable: {exc}") from exc


def _visible(owner_column: Any, tenant: str | None) -> Any:
    """The deployment's rows, and the tenant's own."""
    if tenant:
        return or_(owner_column == GLOBAL_OWNER, owner_column == tenant)
    return owner_column == GLOBAL_OWNER


__all__ = [
    "DEFAULT_ALIAS",
    "Alias",
    "AuditEntry",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "Switch",
    "parse_ref",
]
