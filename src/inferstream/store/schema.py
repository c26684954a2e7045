"""The results store's tables, as SQLAlchemy Core metadata.

This is the schema the *code* queries. The database gets its schema from the
Alembic migrations in ``migrations/versions/``, which are frozen history; a test
checks that the migrated database and this module agree. Change both together.

Every table carries ``tenant`` and every composite index starts with it, so each
query a tenant makes stays inside its own slice of the index. Timestamps are
integers, microseconds since the Unix epoch (UTC), like the envelope's.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

#: Tables that hold per-tenant rows; row-level security covers each on PostgreSQL.
TENANT_TABLES = ("records", "predictions", "dead_letters", "feedback")

#: One row per output record: a fan-out of N stores N rows, each under its own
#: deterministic id, with the root (the ingested item) and the parent it came from.
#: The application's subject, group and source attributes have columns of their own
#: (indexed); every attribute is kept typed in ``attributes``. The champion prediction
#: of the application's first head (the one acted on) is kept on the row too, so the
#: listings, filters and summaries people read most stay one indexed table; every
#: prediction, of every head, model and role, is a row of ``predictions``.
records = Table(
    "records",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("id", String(), nullable=False),
    Column("app", String(), nullable=False),
    Column("root_id", String(), nullable=False),
    Column("parent_id", String()),
    Column("subject", String()),
    Column("group_key", String()),
    Column("source", String()),
    Column("attributes", JSON, nullable=False),
    Column("head", String(), nullable=False),
    Column("label", String(), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("scores", JSON, nullable=False),
    Column("model_name", String(), nullable=False),
    Column("model_version", String(), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("ingested_at_us", BigInteger, nullable=False),
    Column("stored_at_us", BigInteger, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("lineage", JSON, nullable=False),
    Column("trace_id", String(), nullable=False),
    Column("status", String(), nullable=False),
    PrimaryKeyConstraint("tenant", "id"),
    # Keyset pagination walks this index.
    Index(None, "tenant", "stored_at_us", "id"),
    Index(None, "tenant", "root_id"),
    Index(None, "tenant", "subject"),
    # With the id, a filtered listing pages through its filter's index in order.
    Index(None, "tenant", "group_key", "stored_at_us", "id"),
    Index(None, "tenant", "source", "stored_at_us", "id"),
    Index(None, "tenant", "label", "stored_at_us", "id"),
    Index(None, "tenant", "model_version", "stored_at_us", "id"),
    Index(None, "tenant", "created_at_us"),
)

#: Every prediction of every record: each head, each model, champion and shadow.
predictions = Table(
    "predictions",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("record_id", String(), nullable=False),
    Column("head", String(), nullable=False),
    Column("role", String(), nullable=False),
    Column("model_name", String(), nullable=False),
    Column("model_version", String(), nullable=False),
    Column("label", String(), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("scores", JSON, nullable=False),
    Column("predicted_at_us", BigInteger, nullable=False),
    Column("stored_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "record_id", "head", "role", "model_name", "model_version"),
    Index(None, "tenant", "model_version", "stored_at_us"),
)

#: Messages a stage gave up on, read from a ``.dlq`` topic.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", String(), nullable=False),
    Column("tenant", String(), nullable=False),
    Column("root_id", String(), nullable=False),
    Column("stage", String(), nullable=False),
    Column("error_type", String(), nullable=False),
    Column("message", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("topic", String(), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("trace_id", String(), nullable=False),
    PrimaryKeyConstraint("tenant", "id"),
    Index(None, "tenant", "at_us", "id"),
    Index(None, "tenant", "stage", "at_us"),
)

#: Ground truth that arrives later (e.g. hatch results): one label per subject and head.
feedback = Table(
    "feedback",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("app", String(), nullable=False),
    Column("subject", String(), nullable=False),
    Column("head", String(), nullable=False),
    Column("label", String(), nullable=False),
    Column("source", String(), nullable=False),
    Column("at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "app", "subject", "head"),
)

# -- the service API's tables (migration v0002) ------------------------------

#: Tenants (customers). Spans tenants, so no row-level security.
tenants = Table(
    "tenants",
    metadata,
    Column("name", String(), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("name"),
)

#: People who log in with a password (Argon2 hash) and get short-lived tokens.
users = Table(
    "users",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("username", String(), nullable=False),
    Column("password_hash", String(), nullable=False),
    Column("role", String(), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "username"),
)

#: Machine credentials: only the SHA-256 of the random secret is kept.
api_keys = Table(
    "api_keys",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("key_id", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("secret_sha256", String(), nullable=False),
    Column("role", String(), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("revoked_at_us", BigInteger),
    PrimaryKeyConstraint("tenant", "key_id"),
)

#: Every scan accepted by the API: tells "queued" from "unknown" and where its bytes are.
scans = Table(
    "scans",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("id", String(), nullable=False),
    Column("content_type", String(), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("blob_sha256", String(), nullable=False),
    Column("subject", String()),
    Column("group_key", String()),
    Column("device", String()),
    Column("source", String(), nullable=False),
    Column("trace_id", String(), nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant", "id"),
    Index(None, "tenant", "received_at_us"),
)

#: Failed sign-ins per scope (a source address, a user, an API key id) and the
#: back-off they earned; shared by every API process (migration v0003).
auth_failures = Table(
    "auth_failures",
    metadata,
    Column("scope", String(), nullable=False),
    Column("failures", Integer, nullable=False),
    Column("last_failure_at_us", BigInteger, nullable=False),
    Column("blocked_until_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("scope"),
    Index(None, "last_failure_at_us"),
)

#: The API's per-tenant tables, under row-level security on PostgreSQL.
API_TENANT_TABLES = ("users", "api_keys", "scans")

# -- the model registry (migration v0006) ------------------------------------

#: Who owns a model row: "" for the deployment's models, else the tenant's own.
GLOBAL_OWNER = ""

#: Registered model versions: the ONNX file's digest and where it is kept in the blob
#: store, and its metadata (labels, tensors, input shape), as registered.
model_versions = Table(
    "model_versions",
    metadata,
    Column("owner", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("version", String(), nullable=False),
    Column("sha256", String(), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("artifact_uri", String(), nullable=False),
    Column("info", JSON, nullable=False),
    Column("registered_at_us", BigInteger, nullable=False),
    Column("registered_by", String(), nullable=False),
    Column("note", Text(), nullable=False),
    PrimaryKeyConstraint("owner", "name", "version"),
)

#: Named pointers to versions (champion, challenger, shadow, or any name).
model_aliases = Table(
    "model_aliases",
    metadata,
    Column("owner", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("alias", String(), nullable=False),
    Column("version", String(), nullable=False),
    Column("set_at_us", BigInteger, nullable=False),
    Column("set_by", String(), nullable=False),
    PrimaryKeyConstraint("owner", "name", "alias"),
)

#: Every change to the registry: who, when, why, and what it was before.
model_audit = Table(
    "model_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(), nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("actor", String(), nullable=False),
    Column("action", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("alias", String(), nullable=False),
    Column("from_version", String(), nullable=False),
    Column("to_version", String(), nullable=False),
    Column("reason", Text(), nullable=False),
    Index(None, "owner", "name", "id"),
)

#: When a stage's worker started serving another version of an alias: per partition,
#: at the offset of the first message the new version scored.
model_switches = Table(
    "model_switches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at_us", BigInteger, nullable=False),
    Column("pipeline", String(), nullable=False),
    Column("stage", String(), nullable=False),
    Column("worker", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("alias", String(), nullable=False),
    Column("from_version", String(), nullable=False),
    Column("to_version", String(), nullable=False),
    Column("positions", JSON, nullable=False),
    Index(None, "name", "at_us"),
)

#: Registry tables whose rows a tenant may own, under row-level security on PostgreSQL
#: (a tenant sees the deployment's rows and its own).
REGISTRY_TABLES = ("model_versions", "model_aliases", "model_audit")

# -- the audit log (migration v0007; inferstream.store.audit) ----------------

#: One row per audited action, per tenant a hash chain (``seq`` 1, 2, ...). Append-only:
#: triggers refuse UPDATE and DELETE.
audit_log = Table(
    "audit_log",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("actor", String(), nullable=False),
    Column("actor_kind", String(), nullable=False),
    Column("role", String(), nullable=False),
    Column("action", String(), nullable=False),
    Column("target", Text(), nullable=False),
    Column("source", String(), nullable=False),
    Column("status", Integer, nullable=False),
    Column("request_id", String(), nullable=False),
    Column("trace_id", String(), nullable=False),
    Column("prev_hash", String(), nullable=False),
    Column("hash", String(), nullable=False),
    PrimaryKeyConstraint("tenant", "seq"),
    Index(None, "tenant", "at_us"),
)

#: Each tenant's chain head: the last seq and hash, and their HMAC when a key is set.
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(), nullable=False),
    Column("mac", String(), nullable=False),
    PrimaryKeyConstraint("tenant"),
)

#: The audit tables, under row-level security on PostgreSQL.
AUDIT_TABLES = ("audit_log", "audit_heads")

# -- encryption at rest of blobs (migration v0008; inferstream.store.blob_keys) ------

#: Every data key of every tenant, wrapped by a key-encryption key the database never
#: sees. No row-level security: KEK rotation rewraps every tenant's rows in one pass.
blob_data_keys = Table(
    "blob_data_keys",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("kek_id", String(), nullable=False),
    Column("wrapped", LargeBinary(), nullable=False),
    PrimaryKeyConstraint("tenant", "version"),
)

#: Tenants whose data keys were deleted (crypto-shredded): when, and by whom.
blob_key_shreds = Table(
    "blob_key_shreds",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("actor", String(), nullable=False),
    PrimaryKeyConstraint("tenant"),
)

# -- sharing grants (migration v0009; inferstream.store.sharing) --------------------

#: One row per grant: ``owner`` lets ``grantee`` read its records of ``app`` whose event
#: time is in [since_us, until_us) and whose attributes meet the grant's conditions,
#: until ``expires_at_us`` or revocation. Under row-level security on PostgreSQL: both
#: parties read a grant, its owner alone writes it.
share_grants = Table(
    "share_grants",
    metadata,
    Column("id", String(), nullable=False),
    Column("owner", String(), nullable=False),
    Column("grantee", String(), nullable=False),
    Column("app", String(), nullable=False),
    Column("since_us", BigInteger),
    Column("until_us", BigInteger),
    Column("images", Boolean, nullable=False),
    Column("masked", JSON, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("created_by", String(), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("revoked_at_us", BigInteger),
    Column("revoked_by", String()),
    PrimaryKeyConstraint("id"),
    Index(None, "grantee", "owner", "app"),
    Index(None, "owner"),
)

#: A grant's conditions on declared attributes, one per attribute: ``kind`` "number"
#: (an inclusive range of low_number..high_number) or "text" (low_text..high_text,
#: compared by code point); an open end is NULL, equality a range of one value.
share_conditions = Table(
    "share_conditions",
    metadata,
    Column("grant_id", String(), nullable=False),
    Column("attribute", String(), nullable=False),
    Column("owner", String(), nullable=False),
    Column("grantee", String(), nullable=False),
    Column("kind", String(), nullable=False),
    Column("low_number", Float),
    Column("high_number", Float),
    Column("low_text", String()),
    Column("high_text", String()),
    PrimaryKeyConstraint("grant_id", "attribute"),
)

#: The sharing tables, under row-level security on PostgreSQL.
SHARING_TABLES = ("share_grants", "share_conditions")

# -- retention policies (migration v0010; inferstream.store.retention) --------------

#: Most days kept: a policy of 100 years is already "keep everything".
MAX_KEEP_DAYS = 36500

#: At most one row per tenant: the days its results are kept, who set that and when.
#: Housekeeping expires each tenant's results by it. Under row-level security on
#: PostgreSQL.
retention_policies = Table(
    "retention_policies",
    metadata,
    Column("tenant", String(), nullable=False),
    Column("keep_days", Integer, nullable=False),
    Column("set_by", String(), nullable=False),
    Column("set_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("tenant"),
    CheckConstraint(
        f"keep_days >= 1 AND keep_days <= {MAX_KEEP_DAYS}", name="ck_retention_policies_keep_days"
    ),
)
