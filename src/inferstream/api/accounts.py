"""Tenants, users, API keys and accepted scans in the results store's database.

The tables come from store migration v0002 (:mod:`inferstream.store.schema`).
Per-tenant reads and writes run in a transaction that names the tenant first, so
on PostgreSQL row-level security backs up every WHERE clause.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from inferstream.api.errors import BadRequest, Conflict
from inferstream.envelope import now_us
from inferstream.errors import StoreError
from inferstream.store import ResultsStore
from inferstream.store.schema import (
    api_keys,
    auth_failures,
    dead_letters,
    scans,
    tenants,
    users,
)

#: Tenant names: plain, and never containing "." or "/" (they delimit keys and logins).
TENANT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


@dataclass(frozen=True, slots=True)
class StoredKey:
    tenant: str
    key_id: str
    name: str
    secret_sha256: str
    role: str
    revoked: bool


@dataclass(frozen=True, slots=True)
class KeyListing:
    """An API key as an admin sees it: never its secret or the secret's hash."""

    key_id: str
    name: str
    role: str
    created_at_us: int
    revoked_at_us: int | None


@dataclass(frozen=True, slots=True)
class StoredUser:
    tenant: str
    username: str
    password_hash: str
    role: str


@dataclass(frozen=True, slots=True)
class ScanRecord:
    """What the API recorded when it accepted a scan."""

    tenant: str
    id: str
    content_type: str
    size: int
    blob_sha256: str
    subject: str | None
    group: str | None
    #: The device the application's source attribute names (a scanner).
    device: str | None
    #: Who sent it (the envelope's source: an edge agent, or the caller).
    source: str
    trace_id: str
    received_at_us: int


def check_tenant_name(name: str) -> str:
    if not TENANT_RE.fullmatch(name):
        raise BadRequest(
            f"tenant name {name[:64]!r} is not allowed; use 1-63 lowercase letters, "
            "digits and '-', starting with a letter or digit"
        )
    return name


def check_username(name: str) -> str:
    if not USERNAME_RE.fullmatch(name):
        raise BadRequest(
            f"username {name[:64]!r} is not allowed; use letters, digits and ._@+- "
            "(at most 128), starting with a letter or digit"
        )
    return name


class Accounts:
    """The API's own rows, beside the results in one :class:`ResultsStore` database."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store

    # -- tenants, users, keys -------------------------------------------------

    def create_tenant(self, name: str) -> None:
        check_tenant_name(name)
        with self._begin("create a tenant in") as conn:
            try:
                conn.execute(insert(tenants).values(name=name, created_at_us=now_us()))
            except IntegrityError as exc:
                raise Conflict(f"tenant {name!r} already exists") from exc

    def tenant_exists(self, name: str) -> bool:
        with self._begin("read tenants from") as conn:
            found = conn.execute(select(tenants.c.name).where(tenants.c.name == name)).first()
        return found is not None

    def create_user(self, tenant: str, username: str, password_hash: str, role: str) -> None:
        check_username(username)
        row = {"tenant": tenant, "username": username, "password_hash": password_hash}
        self._insert_unique(
            tenant, users, {**row, "role": role}, f"user {username!r} already exists"
        )

    def find_user(self, tenant: str, username: str) -> StoredUser | None:
        stmt = select(users).where(users.c.tenant == tenant, users.c.username == username)
        with self._tenant(tenant, "read users from") as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            return None
        return StoredUser(row["tenant"], row["username"], row["password_hash"], row["role"])

    def list_users(self, tenant: str) -> list[tuple[str, str]]:
        """(username, role) of every user of ``tenant``, by name."""
        stmt = (
            select(users.c.username, users.c.role)
            .where(users.c.tenant == tenant)
            .order_by(users.c.username)
        )
        with self._tenant(tenant, "read users from") as conn:
            return [(row.username, row.role) for row in conn.execute(stmt)]

    def delete_user(self, tenant: str, username: str) -> bool:
        """Remove a user; False when there was none. Tokens already issued live on
        until they expire (minutes), since tokens are checked without a lookup."""
        stmt = delete(users).where(users.c.tenant == tenant, users.c.username == username)
        with self._tenant(tenant, "delete users from") as conn:
            return conn.execute(stmt).rowcount > 0

    def create_key(self, key: StoredKey, max_active: int) -> None:
        """Store a new key; :class:`Conflict` when its tenant has ``max_active`` working ones."""
        values = {
            "tenant": key.tenant,
            "key_id": key.key_id,
            "name": key.name,
            "secret_sha256": key.secret_sha256,
            "role": key.role,
            "created_at_us": now_us(),
        }
        active = (
            select(func.count())
            .select_from(api_keys)
            .where(api_keys.c.tenant == key.tenant, api_keys.c.revoked_at_us.is_(None))
        )
        with self._tenant(key.tenant, "write API keys to") as conn:
            if conn.execute(active).scalar_one() >= max_active:
                raise Conflict(
                    f"tenant {key.tenant!r} has {max_active} working API keys, the most it "
                    "may have; revoke unused ones (DELETE /v1/admin/keys/{key_id})"
                )
            try:
                conn.execute(insert(api_keys).values(**values))
            except IntegrityError as exc:
                raise Conflict(f"key id {key.key_id!r} is taken in {key.tenant!r}") from exc

    def find_key(self, tenant: str, key_id: str) -> StoredKey | None:
        stmt = select(api_keys).where(api_keys.c.tenant == tenant, api_keys.c.key_id == key_id)
        with self._tenant(tenant, "read API keys from") as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            return None
        return StoredKey(
            row["tenant"],
            row["key_id"],
            row["name"],
            row["secret_sha256"],
            row["role"],
            row["revoked_at_us"] is not None,
        )

    def list_keys(self, tenant: str) -> list[KeyListing]:
        """Every key of ``tenant``, revoked ones included, oldest first."""
        columns = (api_keys.c[name] for name in KeyListing.__slots__)
        stmt = (
            select(*columns)
            .where(api_keys.c.tenant == tenant)
            .order_by(api_keys.c.created_at_us, api_keys.c.key_id)
        )
        with self._tenant(tenant, "read API keys from") as conn:
            return [KeyListing(*row) for row in conn.execute(stmt)]

    def revoke_key(self, tenant: str, key_id: str) -> bool:
        """Revoke a key from its next request on; False when ``tenant`` has no such key.

        Revoking twice keeps the first revocation time.
        """
        where = (api_keys.c.tenant == tenant, api_keys.c.key_id == key_id)
        with self._tenant(tenant, "revoke API keys in") as conn:
            if conn.execute(select(api_keys.c.key_id).where(*where)).first() is None:
                return False
            stmt = update(api_keys).where(*where, api_keys.c.revoked_at_us.is_(None))
            conn.execute(stmt.values(revoked_at_us=now_us()))
        return True

    # -- scans ----------------------------------------------------------------

    def record_scans(self, records: Sequence[ScanRecord]) -> list[str]:
        """Remember accepted scans of one tenant; the ids that were new.

        A re-sent id keeps its first record (and is not among the ids returned).
        """
        if not records:
            return []
        from inferstream.store.queries import upsert

        stmt = upsert(scans, self.store.engine.dialect.name, "ignore")
        tenant = records[0].tenant
        ids = [record.id for record in records]
        known = select(scans.c.id).where(scans.c.tenant == tenant, scans.c.id.in_(ids))
        with self._tenant(tenant, "record scans in") as conn:
            seen = set(conn.execute(known).scalars())
            conn.execute(stmt, [_fields(record) for record in records])
        return [ident for ident in dict.fromkeys(ids) if ident not in seen]

    def forget_scans(self, tenant: str, scan_ids: Sequence[str]) -> None:
        """Drop the records of scans the bus refused after they were recorded."""
        if not scan_ids:
            return
        stmt = delete(scans).where(scans.c.tenant == tenant, scans.c.id.in_(scan_ids))
        with self._tenant(tenant, "forget scans in") as conn:
            conn.execute(stmt)

    def find_scan(self, tenant: str, scan_id: str) -> ScanRecord | None:
        found = self.find_scans(tenant, [scan_id])
        return found[0] if found else None

    def find_scans(self, tenant: str, scan_ids: Sequence[str]) -> list[ScanRecord]:
        """The scans of ``tenant`` among ``scan_ids`` (one primary-key lookup each), by id."""
        if not scan_ids:
            return []
        stmt = (
            select(scans)
            .where(scans.c.tenant == tenant, scans.c.id.in_(scan_ids))
            .order_by(scans.c.id)
        )
        with self._tenant(tenant, "read scans from") as conn:
            rows = conn.execute(stmt).mappings().all()
        return [_scan_record(row) for row in rows]

    def dead_letter_of(self, tenant: str, scan_id: str) -> Mapping[str, Any] | None:
        """The newest dead letter whose root is ``scan_id``, if any stage gave up on it."""
        stmt = (
            select(dead_letters)
            .where(dead_letters.c.tenant == tenant, dead_letters.c.root_id == scan_id)
            .order_by(dead_letters.c.at_us.desc())
            .limit(1)
        )
        with self._tenant(tenant, "read dead letters from") as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else dict(row)

    # -- failed sign-ins (see inferstream.api.throttle) -----------------------

    def blocked_until(self, scopes: Sequence[str]) -> dict[str, int]:
        """For each of ``scopes`` with failures on record, until when it is in back-off."""
        stmt = select(auth_failures.c.scope, auth_failures.c.blocked_until_us).where(
            auth_failures.c.scope.in_(scopes)
        )
        with self._begin("read sign-in failures from") as conn:
            return {row.scope: row.blocked_until_us for row in conn.execute(stmt)}

    def add_failure(
        self, scope: str, at_us: int, forget_before_us: int, backoff_us: Callable[[int], int]
    ) -> int:
        """Count one failure of ``scope``; until when it is now in back-off.

        ``backoff_us(n)`` is the back-off earned by ``n`` failures in a row. A scope
        whose last failure is older than ``forget_before_us`` starts again from one.
        The count is bumped in SQL, so API processes counting at once never lose one.
        """
        from inferstream.store.queries import upsert

        table = auth_failures.c
        fresh = {"scope": scope, "failures": 0, "last_failure_at_us": at_us}
        insert_once = upsert(auth_failures, self.store.engine.dialect.name, "ignore")
        restart = table.last_failure_at_us < forget_before_us
        bump = (
            update(auth_failures)
            .where(table.scope == scope)
            .values(
                failures=case((restart, 1), else_=table.failures + 1),
                last_failure_at_us=at_us,
            )
            .returning(table.failures)
        )
        with self._begin("count sign-in failures in") as conn:
            conn.execute(insert_once.values(**fresh, blocked_until_us=0))
            failures = int(conn.execute(bump).scalar_one())
            until_us = at_us + backoff_us(failures)
            set_until = update(auth_failures).where(table.scope == scope)
            conn.execute(set_until.values(blocked_until_us=until_us))
        return until_us

    def clear_failures(self, scope: str) -> None:
        with self._begin("clear sign-in failures in") as conn:
            conn.execute(delete(auth_failures).where(auth_failures.c.scope == scope))

    def purge_failures(self, before_us: int) -> int:
        """Forget scopes whose last failure is older than ``before_us``; how many."""
        stmt = delete(auth_failures).where(auth_failures.c.last_failure_at_us < before_us)
        with self._begin("purge sign-in failures in") as conn:
            return int(conn.execute(stmt).rowcount)

    def ping(self) -> None:
        with self._begin("reach") as conn:
            conn.execute(text("SELECT 1"))

    # -- plumbing -------------------------------------------------------------

    def _insert_unique(
        self, tenant: str, table: Any, values: Mapping[str, Any], taken: str
    ) -> None:
        with self._tenant(tenant, f"write {table.name} to") as conn:
            try:
                conn.execute(insert(table).values(**values, created_at_us=now_us()))
            except IntegrityError as exc:
                raise Conflict(f"{taken} in tenant {tenant!r}") from exc

    @contextmanager
    def _tenant(self, tenant: str, action: str) -> Iterator[Connection]:
        """A transaction bound to ``tenant``, through the store (which names it)."""
        with self.store.tenant_transaction(tenant, action) as conn:
            yield conn

    @contextmanager
    def _begin(self, action: str) -> Iterator[Connection]:
        try:
            with self.store.engine.begin() as conn:
                yield conn
        except (Conflict, BadRequest):
            raise
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not {action} the database at {self.store.url}: {type(exc).__name__}; "
                "check that it is reachable and migrated"
            ) from exc


def _scan_record(row: Mapping[Any, Any]) -> ScanRecord:
    values = dict(row)
    values["group"] = values.pop("group_key")
    return ScanRecord(**values)


def _fields(record: ScanRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in ScanRecord.__slots__}
    values["group_key"] = values.pop("group")
    return values
