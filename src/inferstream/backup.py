"""Backup and restore of a deployment's results store and blobs, in a portable format.

A backup is a folder that any database the store runs on can be restored from (SQLite
to PostgreSQL and back)::

    manifest.json          format and version, when, the store's dialect and schema
                           revision; per table its rows and the SHA-256 of its file; the
                           blobs' count, bytes and the SHA-256 of their list
    tables/<table>.jsonl   every row of the table, one JSON object a line, in key order
                           (binary columns as base64)
    blobs.jsonl            every blob: its key under the store's root, size, SHA-256
    blobs/<key>            its bytes as stored (sealed, when encryption at rest is on:
                           the wrapped data keys are rows of the store, the KEK is not
                           in the backup)

Blobs are read and written through the blob store (:class:`~inferstream.blobs.BlobStore`'s
``stored_keys``, ``read_stored`` and ``write_stored``), so a backup of a deployment with
blobs in a folder restores into one with blobs on S3 and the other way round; a store
that answers over the network is read and written ``parallel_reads`` blobs at a time.

Every table is read in one snapshot (one read transaction; REPEATABLE READ on
PostgreSQL), so the rows are consistent with each other; blobs are copied after it,
so a blob a record of the snapshot names is there unless it was purged meanwhile (a
blob gone between the listing and its read is left out and counted). The
manifest is written last: a folder without one is an unfinished backup.

A restore checks every file against the manifest before it writes anything (the
tables' files, the blob list, each blob's key and bytes); it refuses a store or blob
store that holds anything unless told otherwise, writes the blobs (checked again as
they are read) and lists the blob store to check that every one landed, then writes
every table in one transaction, last: a failed restore leaves the store as it was. The
audit log's rows are restored as they were, so its hash chains and their signed heads
still verify.
What is not in a backup: the bus (topics and consumer offsets) and the runtime's own
side tables (stateful stages' task state, replay requests), which belong to a running
pipeline and are rebuilt by it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, LargeBinary, Table, func, select, text

from inferstream.blobs import BlobStore, LocalBlobStore, stored_key, write_whole
from inferstream.envelope import now_us
from inferstream.errors import BlobError, BlobStoreUnavailable, InferstreamError
from inferstream.store import ResultsStore, schema

FORMAT = "inferstream-backup"
VERSION = 1
MANIFEST = "manifest.json"
#: Rows written per INSERT on restore, and read per fetch on backup.
BATCH = 1000
#: A progress line every so many rows of one table, or blobs...
PROGRESS_EVERY = 10_000
#: ...and, while copying blobs, at least every so many seconds (a bucket far away).
PROGRESS_SECONDS = 10.0
#: Blobs handed to the copying threads at once.
COPY_CHUNK = 64

Progress = Callable[[str], None]
#: Where the blobs are: a store, a folder (a ``file://`` store's), or None (no blobs).
Blobs = BlobStore | Path | None
_T = TypeVar("_T")
_R = TypeVar("_R")


class BackupError(InferstreamError):
    """A backup or restore that cannot be done as asked; the message says why and what to do."""


def _quiet(_: str) -> None:
    return None


# -- backup --------------------------------------------------------------------


def backup(
    store: ResultsStore, blobs: Blobs, dest: Path, progress: Progress = _quiet
) -> dict[str, Any]:
    """Write every table of ``store`` and every blob of ``blobs`` (a blob store whatever
    its URL, or a folder; None: no blobs) to the new or empty folder ``dest``; the
    manifest it wrote."""
    with _files_named(f"back up into {dest}"):
        return _backup(store, _opened(blobs), dest, progress)


def _opened(blobs: Blobs) -> BlobStore | None:
    return LocalBlobStore(blobs) if isinstance(blobs, Path) else blobs


@contextmanager
def _files_named(action: str) -> Iterator[None]:
    """A file that cannot be read or written as :class:`BackupError`, naming it."""
    try:
        yield
    except OSError as exc:
        raise BackupError(f"could not {action}: {exc}") from exc


@contextmanager
def _answering(blobs: BlobStore | None, action: str) -> Iterator[None]:
    """A blob store that does not answer (a worker would wait) as :class:`BackupError`:
    a backup or restore stops, saying what to check, and is run again."""
    try:
        yield
    except BlobStoreUnavailable as exc:
        where = blobs.url if blobs is not None else ""
        raise BackupError(
            f"the {action} stopped: {exc.__cause__ or exc}; the blob store {where} did not "
            "answer: check that it runs and AWS_ENDPOINT_URL (for s3://), then run the "
            f"{action} again"
        ) from exc


def _backup(
    store: ResultsStore, blobs: BlobStore | None, dest: Path, progress: Progress
) -> dict[str, Any]:
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty; back up into a new folder")
    (dest / "tables").mkdir(parents=True, exist_ok=True)
    revision = store.migrate().after
    tables = {}
    with _snapshot(store) as conn:
        for table in schema.metadata.sorted_tables:
            tables[table.name] = _dump(conn, table, dest / "tables" / f"{table.name}.jsonl",
                                       progress)  # fmt: skip
    manifest = {
        "format": FORMAT, "version": VERSION, "created_at_us": now_us(),
        "store": {"url": store.url, "dialect": store.engine.dialect.name, "revision": revision},
        "tables": tables,
        "blobs": None if blobs is None else _copy_blobs_out(blobs, dest, progress),
    }  # fmt: skip
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    progress(f"backup: done, {sum(t['rows'] for t in tables.values())} rows in {dest}")
    return manifest


@contextmanager
def _snapshot(store: ResultsStore) -> Iterator[Connection]:
    """One read transaction over every table, as a role that sees every tenant's rows."""
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")  # in place
        with conn.begin():
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")  # the first read fixes the snapshot
            else:
                _check_sees_every_tenant(conn)
            yield conn


def _check_sees_every_tenant(conn: Connection) -> None:
    query = text("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
    if not conn.execute(query).scalar():
        raise BackupError(
            "this database role is bound by row-level security, so it would see no "
            "tenant's rows; back up and restore as the role that ran the migrations (a "
            "superuser or one with BYPASSRLS)"
        )


def _dump(conn: Connection, table: Table, path: Path, progress: Progress) -> dict[str, Any]:
    digest, rows = hashlib.sha256(), 0
    binary = [c.name for c in table.columns if isinstance(c.type, LargeBinary)]
    query = select(table).order_by(*table.primary_key.columns)
    result = conn.execute(query, execution_options={"stream_results": True, "yield_per": BATCH})
    with path.open("wb") as out:
        for row in result.mappings():
            values = dict(row)
            for name in binary:
                values[name] = base64.b64encode(values[name]).decode()
            line = (json.dumps(values, separators=(",", ":")) + "\n").encode()
            out.write(line)
            digest.update(line)
            rows += 1
            if rows % PROGRESS_EVERY == 0:
                progress(f"backup: {table.name}: {rows} rows")
    progress(f"backup: table {table.name}: {rows} rows")
    return {"rows": rows, "sha256": digest.hexdigest(), "file": f"tables/{table.name}.jsonl"}


def _copy_blobs_out(blobs: BlobStore, dest: Path, progress: Progress) -> dict[str, Any]:
    listing, tally, gone = hashlib.sha256(), _Tally("backup", progress), 0
    with (dest / "blobs.jsonl").open("wb") as out, _answering(blobs, "backup"):
        for key, data in _in_parallel(blobs.read_stored, blobs.stored_keys(), blobs):
            if data is None:
                gone += 1  # purged since it was listed
                continue
            write_whole(dest / "blobs" / key, data)
            entry = {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
            out.write(line)
            listing.update(line)
            tally.add(len(data))
    purged = f", {gone} purged while the backup ran" if gone else ""
    progress(f"backup: blobs: {tally.count} ({tally.size} bytes) from {blobs.url}{purged}")
    return {"url": blobs.url, "count": tally.count, "bytes": tally.size,
            "sha256": listing.hexdigest(), "file": "blobs.jsonl"}  # fmt: skip


def _in_parallel(
    work: Callable[[_T], _R], items: Iterable[_T], blobs: BlobStore
) -> Iterator[tuple[_T, _R]]:
    """``(item, work(item))`` for each item, in order, ``blobs.parallel_reads`` at a time:
    a bucket answers each request in milliseconds, one after another a copy of a million
    blobs would take hours."""
    width = max(1, blobs.parallel_reads)
    with ThreadPoolExecutor(width, thread_name_prefix="backup-blobs") as pool:
        iterator = iter(items)
        while chunk := list(itertools.islice(iterator, COPY_CHUNK)):
            yield from zip(chunk, pool.map(work, chunk), strict=True)


class _Tally:
    """Blobs copied so far, said every :data:`PROGRESS_EVERY` blobs or
    :data:`PROGRESS_SECONDS`, whichever comes first."""

    def __init__(self, action: str, progress: Progress) -> None:
        self.action, self.progress = action, progress
        self.count = self.size = 0
        self._said = time.monotonic()

    def add(self, size: int) -> None:
        self.count, self.size = self.count + 1, self.size + size
        now = time.monotonic()
        if self.count % PROGRESS_EVERY == 0 or now - self._said >= PROGRESS_SECONDS:
            self.progress(f"{self.action}: {self.count} blobs, {self.size} bytes")
            self._said = now


# -- restore -------------------------------------------------------------------


def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest of the backup in ``source``, checked to be one this release reads."""
    try:
        manifest: dict[str, Any] = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(
            f"{source} holds no readable {MANIFEST} ({exc}); it is not a backup, or an "
            "unfinished one"
        ) from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BackupError(f"{source} is not a {FORMAT} of version {VERSION}")
    return manifest


def restore(
    source: Path,
    store: ResultsStore,
    blobs: Blobs,
    *,
    into_non_empty: bool = False,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Restore the backup in ``source`` into ``store`` and the blob store ``blobs``
    (whatever its URL, or a folder; None: leave blobs alone); the manifest. With
    ``into_non_empty``, rows and blobs whose keys the target holds already are kept as
    they are there."""
    manifest = read_manifest(source)
    revision = store.migrate().after
    if manifest["store"]["revision"] != revision:
        raise BackupError(
            f"the backup is of schema revision {manifest['store']['revision']}, the store at "
            f"{store.url} is at {revision}; restore with the release that made the backup"
        )
    _verify_files(source, manifest, progress)
    sums = _verify_blobs(source, progress) if manifest["blobs"] else {}
    target = _opened(blobs) if manifest["blobs"] else None
    with _answering(target, "restore"):
        if not into_non_empty:
            _check_empty(store, target)
        held = set(target.stored_keys()) if target is not None and into_non_empty else set()
    if target is not None:
        with _files_named(f"restore the blobs into {target.url}"), _answering(target, "restore"):
            _copy_blobs_in(source, target, sums, held, progress)
    # The tables last, in one transaction: records never name blobs that are not there.
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            _check_sees_every_tenant(conn)
        for table in schema.metadata.sorted_tables:
            with _files_named(f"read table {table.name} of the backup in {source}"):
                _load(conn, table, source / _table_file(table.name), progress)
    progress(f"restore: done into {store.url}")
    return manifest


def _table_file(table: str) -> str:
    return f"tables/{table}.jsonl"


def _verify_files(source: Path, manifest: dict[str, Any], progress: Progress) -> None:
    """Each file the manifest lists matches its SHA-256; only the names a backup writes
    are read (a manifest naming another file, ``..`` or an absolute path is refused)."""
    tables = manifest.get("tables")
    if not isinstance(tables, dict) or set(tables) != set(schema.metadata.tables):
        raise BackupError(f"the manifest in {source} does not list this release's tables")
    wanted = [(_table_file(name), entry) for name, entry in tables.items()]
    if manifest["blobs"]:
        wanted.append(("blobs.jsonl", manifest["blobs"]))
    for name, entry in wanted:
        if not isinstance(entry, dict) or entry.get("file") != name:
            raise BackupError(
                f"the manifest in {source} names another file where a backup has {name} "
                "(a backup names only its own files): restore from an unmodified backup"
            )
        if _file_sha256(source / name) != entry.get("sha256"):
            raise BackupError(f"{source / name} does not match the manifest: the backup is damaged")
    progress(f"restore: {len(wanted)} files match the manifest")


def _verify_blobs(source: Path, progress: Progress) -> dict[str, str]:
    """Each blob's key (a plain ``<tenant>/<name>``) and bytes checked against the blob
    list, before anything is written; the SHA-256 of each blob by key."""
    sums: dict[str, str] = {}
    listing = source / "blobs.jsonl"
    with _files_named(f"read the blob list of the backup in {source}"), listing.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            key, sha256 = _blob_entry(source, number, line)
            if _file_sha256(source / "blobs" / key) != sha256:
                raise BackupError(
                    f"blob {key} of the backup ({source / 'blobs' / key}) does not match its "
                    "blob list: the backup is damaged; nothing was restored"
                )
            sums[key] = sha256
    progress(f"restore: {len(sums)} blobs match the backup's blob list")
    return sums


def _blob_entry(source: Path, number: int, line: bytes) -> tuple[str, str]:
    """The key (checked to be a blob's) and SHA-256 of line ``number`` of the blob list."""
    try:
        entry = json.loads(line)
        key, sha256 = stored_key(entry["key"]), entry["sha256"]
    except (ValueError, KeyError, TypeError, AttributeError, BlobError) as exc:
        raise BackupError(
            f"line {number} of {source / 'blobs.jsonl'} is not a blob of this store ({exc}); "
            "nothing was restored: restore from an unmodified backup"
        ) from exc
    if not isinstance(sha256, str):
        raise BackupError(f"line {number} of {source / 'blobs.jsonl'} has no SHA-256")
    return key, sha256


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise BackupError(f"cannot read {path} of the backup: {exc}") from exc
    return digest.hexdigest()


def _check_empty(store: ResultsStore, blobs: BlobStore | None) -> None:
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            _check_sees_every_tenant(conn)
        held = [
            table.name
            for table in schema.metadata.sorted_tables
            if conn.execute(select(func.count()).select_from(table)).scalar()
        ]
    if held:
        raise BackupError(
            f"the store at {store.url} is not empty (rows in {', '.join(held)}); restore into "
            "an empty deployment, or pass --into-non-empty to keep its rows and add the rest"
        )
    if blobs is not None and next(iter(blobs.stored_keys()), None) is not None:
        raise BackupError(
            f"the blob store {blobs.url} is not empty; restore into an empty one (a new "
            "folder, bucket or prefix), or pass --into-non-empty"
        )


def _load(conn: Connection, table: Table, path: Path, progress: Progress) -> None:
    from inferstream.store.queries import upsert

    binary = [c.name for c in table.columns if isinstance(c.type, LargeBinary)]
    statement = upsert(table, conn.dialect.name, "ignore")
    batch: list[dict[str, Any]] = []
    rows = 0
    with path.open("rb") as lines:
        for line in lines:
            values = json.loads(line)
            for name in binary:
                values[name] = base64.b64decode(values[name])
            batch.append(values)
            if len(batch) == BATCH:
                conn.execute(statement, batch)
                rows, batch = rows + len(batch), []
                if rows % PROGRESS_EVERY == 0:
                    progress(f"restore: {table.name}: {rows} rows")
    if batch:
        conn.execute(statement, batch)
        rows += len(batch)
    _advance_sequence(conn, table)
    progress(f"restore: table {table.name}: {rows} rows")


def _advance_sequence(conn: Connection, table: Table) -> None:
    """Move a PostgreSQL serial past the ids restored, so the next insert does not meet one."""
    column = table.autoincrement_column
    if column is None or conn.dialect.name != "postgresql":
        return
    conn.execute(
        text(
            f"SELECT setval(pg_get_serial_sequence(:table, :column), "
            f'COALESCE(MAX("{column.name}"), 0) + 1, false) FROM "{table.name}"'
        ),
        {"table": table.name, "column": column.name},
    )


def _copy_blobs_in(
    source: Path, blobs: BlobStore, sums: dict[str, str], held: set[str], progress: Progress
) -> None:
    """Every blob of the backup (``sums``: their SHA-256, checked) not in ``held`` (the
    target's, with --into-non-empty) written to ``blobs`` as stored, its bytes checked
    again as read; then the target is listed to check each one landed."""
    tally = _Tally("restore", progress)

    def put(key: str) -> int:
        data = (source / "blobs" / stored_key(key)).read_bytes()
        if hashlib.sha256(data).hexdigest() != sums[key]:
            raise BackupError(f"blob {key} of the backup in {source} changed while restored")
        blobs.write_stored(key, data)
        return len(data)

    wanted = set(sums) - held  # --into-non-empty: the target's blobs are kept
    for _, size in _in_parallel(put, sorted(wanted), blobs):
        tally.add(size)
    missing = wanted - set(blobs.stored_keys())
    if missing:
        raise BackupError(
            f"{len(missing)} blobs written to {blobs.url} are not there when listed (e.g. "
            f"{min(missing)}); check the blob store and run the restore again with "
            "--into-non-empty"
        )
    progress(f"restore: blobs: {tally.count} ({tally.size} bytes) into {blobs.url}")
