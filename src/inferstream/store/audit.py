"""The audit log: append-only entries per tenant, chained by hash, the head signed.

Each tenant has a chain: entry ``seq`` n (1, 2, ...) stores the SHA-256 of its
canonical content and of entry n-1's hash (``GENESIS`` before the first), so changing,
removing or inserting an entry breaks every hash after it. ``audit_heads`` keeps each
chain's last seq and hash and, when a key is configured (``INFERSTREAM_AUDIT_KEY``), an
HMAC of them: a database admin who rewrites entries *and* recomputes the whole chain
is caught by the HMAC, which needs the key. Without a key that rewrite is not caught
(only edits that leave the chain broken are).

Appends to one chain are serialised (the head row is locked: ``SELECT ... FOR UPDATE``
on PostgreSQL, the write lock taken up front on SQLite), so API processes appending at
once never fork it. The tables refuse UPDATE and DELETE by trigger (migration 0007), and
on PostgreSQL row-level security shows a tenant only its own chain. The deployment's own
entries (model changes made from the CLI, requests naming no tenant) are the chain of
tenant ``""`` (:data:`DEPLOYMENT`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import Connection, Select, select
from sqlalchemy.dialects import postgresql, sqlite

from inferstream.store.queries import InvalidQuery
from inferstream.store.schema import audit_heads, audit_log
from inferstream.store.store import ResultsStore
from inferstream.store.tenancy import name_tenant

#: Environment variable holding the key of the chain heads' HMAC.
AUDIT_KEY_ENV = "INFERSTREAM_AUDIT_KEY"
#: The tenant of the deployment's own entries.
DEPLOYMENT = ""
#: The "previous hash" of a chain's first entry.
GENESIS = "0" * 64
#: Entries read per query when walking a chain (verify, export).
CHUNK = 1000
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What happened: who (actor, its kind and role), on whose data (tenant), what
    (action and target), when (µs), from where (source) and with what result (status)."""

    tenant: str
    at_us: int
    actor: str
    actor_kind: str
    role: str
    action: str
    #: The resource ids the action names (path parameters, a model's name and version),
    #: as canonical JSON.
    target: str
    source: str
    status: int
    request_id: str = ""
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as stored: its place in its tenant's chain and the chain's hashes."""

    seq: int
    entry: AuditEntry
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, **asdict(self.entry), "prev_hash": self.prev_hash,
                "hash": self.hash}  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which entries to read: a time range (µs, inclusive) and exact actor and action,
    a target that contains ``target``."""

    since_us: int | None = None
    until_us: int | None = None
    actor: str | None = None
    action: str | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """A chain's state: ``ok``, or the first entry that is wrong and why."""

    tenant: str
    entries: int
    ok: bool
    first_broken: int | None = None
    reason: str = ""
    #: Whether the head's HMAC was checked (a key is configured).
    signed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_of(values: dict[str, Any]) -> str:
    """The canonical JSON of a target's ids (sorted keys, no spaces)."""
    return json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(seq: int, entry: AuditEntry, prev_hash: str) -> str:
    """SHA-256 over the entry's canonical content, its seq and the previous hash."""
    content = [seq, *(getattr(entry, field.name) for field in fields(entry)), prev_hash]
    canonical = json.dumps(content, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def head_mac(key: bytes, tenant: str, seq: int, hash_: str) -> str:
    return hmac.new(key, f"{tenant}\n{seq}\n{hash_}".encode(), hashlib.sha256).hexdigest()


def audit_key_from_env() -> bytes | None:
    """The HMAC key from ``INFERSTREAM_AUDIT_KEY``; None when unset."""
    value = os.environ.get(AUDIT_KEY_ENV, "")
    return value.encode() if value else None


class AuditLog:
    """The audit log of one results store; ``key`` signs the chain heads (None: unsigned)."""

    def __init__(self, store: ResultsStore, key: bytes | None = None) -> None:
        self.store = store
        self.key = key

    def append(self, entries: Sequence[AuditEntry]) -> None:
        """Append ``entries`` (any tenants), in order, all or none (one transaction)."""
        by_tenant: dict[str, list[AuditEntry]] = {}
        for entry in entries:
            by_tenant.setdefault(entry.tenant, []).append(entry)
        tenants = sorted(by_tenant)  # heads locked in one order by every process: no deadlock
        if not tenants:
            return
        with self.store.tenant_transaction(tenants[0], "append to the audit log of") as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            for tenant in tenants:
                name_tenant(conn, tenant)
                self.append_in(conn, tenant, by_tenant[tenant])

    def append_in(self, conn: Connection, tenant: str, entries: Sequence[AuditEntry]) -> None:
        """Append ``entries`` of ``tenant`` inside ``conn``'s transaction (bound to
        ``tenant``), locking the chain's head until it commits."""
        seq, last = self._lock_head(conn, tenant)
        rows = []
        for entry in entries:
            seq += 1
            digest = entry_hash(seq, entry, last)
            content = {name: getattr(entry, name) for name in _ENTRY_FIELDS}  # asdict: 11 µs
            rows.append({"seq": seq, **content, "prev_hash": last, "hash": digest})
            last = digest
        conn.execute(audit_log.insert(), rows)
        mac = head_mac(self.key, tenant, seq, last) if self.key else ""
        conn.execute(
            audit_heads.update()
            .where(audit_heads.c.tenant == tenant)
            .values(seq=seq, hash=last, mac=mac)
        )

    @staticmethod
    def _lock_head(conn: Connection, tenant: str) -> tuple[int, str]:
        # The insert comes first: on SQLite it takes the write lock before any read.
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        new = {"tenant": tenant, "seq": 0, "hash": GENESIS, "mac": ""}
        conn.execute(dialect.insert(audit_heads).values(new).on_conflict_do_nothing())
        query = select(audit_heads.c.seq, audit_heads.c.hash).where(audit_heads.c.tenant == tenant)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        seq, last = conn.execute(query).one()
        return int(seq), str(last)

    # -- reading ---------------------------------------------------------------

    def page(
        self, tenant: str, filters: AuditFilter, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[StoredEntry], str | None]:
        """Newest first, ``limit`` entries after ``cursor``; the next page's cursor."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidQuery(f"limit {limit} is out of range; ask for 1 to {MAX_PAGE} entries")
        query = _filtered(tenant, filters).order_by(audit_log.c.seq.desc()).limit(limit + 1)
        if cursor is not None:
            if not cursor.isdigit() or len(cursor) > 18:
                raise InvalidQuery("cursor is not one this log issues; pass next_cursor")
            query = query.where(audit_log.c.seq < int(cursor))
        with self.store.tenant_transaction(tenant, "read the audit log of") as conn:
            found = [_stored(row) for row in conn.execute(query).mappings()]
        more = len(found) > limit
        found = found[:limit]
        return found, str(found[-1].seq) if more else None

    def entries(self, tenant: str, filters: AuditFilter | None = None) -> Iterator[StoredEntry]:
        """Every entry of ``tenant``'s chain that ``filters`` admits, oldest first,
        read ``CHUNK`` at a time (each chunk its own short transaction)."""
        after = 0
        while True:
            query = (
                _filtered(tenant, filters or AuditFilter())
                .where(audit_log.c.seq > after)
                .order_by(audit_log.c.seq)
                .limit(CHUNK)
            )
            with self.store.tenant_transaction(tenant, "read the audit log of") as conn:
                chunk = [_stored(row) for row in conn.execute(query).mappings()]
            yield from chunk
            if len(chunk) < CHUNK:
                return
            after = chunk[-1].seq

    def verify(self, tenant: str) -> Verification:
        """Walk ``tenant``'s chain: the first entry whose seq, link or hash is wrong,
        else whether the head matches the last entry (and its HMAC, with a key)."""
        count, last = 0, GENESIS
        for stored in self.entries(tenant):
            problem = _problem(stored, count + 1, last)
            if problem:
                return Verification(tenant, count, False, count + 1, problem, self.key is not None)
            count, last = stored.seq, stored.hash
        with self.store.tenant_transaction(tenant, "read the audit log of") as conn:
            head = conn.execute(
                select(audit_heads).where(audit_heads.c.tenant == tenant)
            ).mappings().first()  # fmt: skip
        return self._check_head(tenant, count, last, head)

    def _check_head(self, tenant: str, count: int, last: str, head: Any) -> Verification:
        signed = self.key is not None
        seq, hash_, mac = (head["seq"], head["hash"], head["mac"]) if head else (0, GENESIS, "")
        if (seq, hash_) != (count, last):
            reason = f"the chain's head says {seq} entries ending {hash_[:12]}, the log has {count}"
            return Verification(tenant, count, False, min(seq, count) + 1, reason, signed)
        if (
            self.key is not None
            and count
            and not hmac.compare_digest(mac, head_mac(self.key, tenant, seq, hash_))
        ):
            reason = "the head's HMAC does not match: the chain was rewritten without the key"
            return Verification(tenant, count, False, 1, reason, signed)
        return Verification(tenant, count, True, signed=signed)


def _problem(stored: StoredEntry, expected_seq: int, prev: str) -> str:
    if stored.seq != expected_seq:
        return f"entry {expected_seq} is missing (the next one is {stored.seq})"
    if stored.prev_hash != prev:
        return f"entry {stored.seq} does not link to the entry before it"
    if entry_hash(stored.seq, stored.entry, prev) != stored.hash:
        return f"entry {stored.seq}'s content does not match its hash"
    return ""


def _filtered(tenant: str, filters: AuditFilter) -> Select[Any]:
    c = audit_log.c
    query = select(audit_log).where(c.tenant == tenant)
    if filters.since_us is not None:
        query = query.where(c.at_us >= filters.since_us)
    if filters.until_us is not None:
        query = query.where(c.at_us <= filters.until_us)
    if filters.actor is not None:
        query = query.where(c.actor == filters.actor)
    if filters.action is not None:
        query = query.where(c.action == filters.action)
    if filters.target is not None:
        query = query.where(c.target.contains(filters.target, autoescape=True))
    return query


_ENTRY_FIELDS = tuple(field.name for field in fields(AuditEntry))


def _stored(row: Any) -> StoredEntry:
    entry = AuditEntry(**{name: row[name] for name in _ENTRY_FIELDS})
    return StoredEntry(int(row["seq"]), entry, row["prev_hash"], row["hash"])
