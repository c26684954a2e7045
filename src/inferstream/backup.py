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

Every table is read in one snapshot (one read transaction; REPEATABLE READ on
PostgreSQL), so the rows are consistent with each other; blobs are copied after it,
so a blob a record of the snapshot names is there unless it was purged meanwhile. The
manifest is written last: a folder without one is an unfinished backup.

A restore checks every file against the manifest before it writes anything, refuses a
store or blob folder that holds anything unless told otherwise, and writes every table
in one transaction (a failed restore leaves the store as it was). The audit log's rows
are restored as they were, so its hash chains and their signed heads still verify.
What is not in a backup: the bus (topics and consumer offsets) and the runtime's own
side tables (stateful stages' task state, replay requests), which belong to a running
pipeline and are rebuilt by it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, LargeBinary, Table, func, select, text

from inferstream.envelope import now_us
from inferstream.errors import InferstreamError
from inferstream.store import ResultsStore, schema

FORMAT = "inferstream-backup"
VERSION = 1
MANIFEST = "manifest.json"
#: Rows written per INSERT on restore, and read per fetch on backup.
BATCH = 1000
#: A progress line every so many rows of one table, or blobs.
PROGRESS_EVERY = 10_000
#: Files of a blob store that are not blobs: a write or a purge in flight.
_TRANSIENT = (".tmp-", ".purge-")

Progress = Callable[[str], None]


class BackupError(InferstreamError):
    """A backup or restore that cannot be done as asked; the message says why and what to do."""


def _quiet(_: str) -> None:
    return None


# -- backup --------------------------------------------------------------------


def backup(
    store: ResultsStore, blob_root: Path | None, dest: Path, progress: Progress = _quiet
) -> dict[str, Any]:
    """Write every table of ``store`` and every blob under ``blob_root`` (None: no blobs)
    to the new or empty folder ``dest``; the manifest it wrote."""
    with _files_named(f"back up into {dest}"):
        return _backup(store, blob_root, dest, progress)


@contextmanager
def _files_named(action: str) -> Iterator[None]:
    """A file that cannot be read or written as :class:`BackupError`, naming it."""
    try:
        yield
    except OSError as exc:
        raise BackupError(f"could not {action}: {exc}") from exc


def _backup(
    store: ResultsStore, blob_root: Path | None, dest: Path, progress: Progress
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
        "blobs": None if blob_root is None else _copy_blobs_out(blob_root, dest, progress),
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


def _copy_blobs_out(root: Path, dest: Path, progress: Progress) -> dict[str, Any]:
    listing, count, size = hashlib.sha256(), 0, 0
    with (dest / "blobs.jsonl").open("wb") as out:
        for key, path in _blob_files(root):
            data = path.read_bytes()
            _write(dest / "blobs" / key, data)
            entry = {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
            out.write(line)
            listing.update(line)
            count, size = count + 1, size + len(data)
            if count % PROGRESS_EVERY == 0:
                progress(f"backup: {count} blobs, {size} bytes")
    progress(f"backup: blobs: {count} ({size} bytes)")
    return {"count": count, "bytes": size, "sha256": listing.hexdigest(), "file": "blobs.jsonl"}


def _blob_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Every blob under ``root``, by its key, in key order."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(_TRANSIENT):
            yield path.relative_to(root).as_posix(), path


def _write(path: Path, data: bytes) -> None:
    """Write then rename, as the blob store does: a file is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    blob_root: Path | None,
    *,
    into_non_empty: bool = False,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Restore the backup in ``source`` into ``store`` and the blob folder ``blob_root``
    (None: leave blobs alone); the manifest. With ``into_non_empty``, rows and blobs whose
    keys the target holds already are kept as they are there."""
    manifest = read_manifest(source)
    revision = store.migrate().after
    if manifest["store"]["revision"] != revision:
        raise BackupError(
            f"the backup is of schema revision {manifest['store']['revision']}, the store at "
            f"{store.url} is at {revision}; restore with the release that made the backup"
        )
    _verify_files(source, manifest, progress)
    blobs = manifest["blobs"] if blob_root is not None else None
    if not into_non_empty:
        _check_empty(store, blob_root if blobs else None)
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            _check_sees_every_tenant(conn)
        for table in schema.metadata.sorted_tables:
            with _files_named(f"read table {table.name} of the backup in {source}"):
                _load(conn, table, source / manifest["tables"][table.name]["file"], progress)
    if blobs and blob_root is not None:
        with _files_named(f"restore the blobs into {blob_root}"):
            _copy_blobs_in(source, blob_root, progress)
    progress(f"restore: done into {store.url}")
    return manifest


def _verify_files(source: Path, manifest: dict[str, Any], progress: Progress) -> None:
    wanted = [(t["file"], t["sha256"]) for t in manifest["tables"].values()]
    if manifest["blobs"]:
        wanted.append((manifest["blobs"]["file"], manifest["blobs"]["sha256"]))
    for name, sha256 in wanted:
        if _file_sha256(source / name) != sha256:
            raise BackupError(f"{source / name} does not match the manifest: the backup is damaged")
    progress(f"restore: {len(wanted)} files match the manifest")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise BackupError(f"cannot read {path} of the backup: {exc}") from exc
    return digest.hexdigest()


def _check_empty(store: ResultsStore, blob_root: Path | None) -> None:
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
    if blob_root is not None and next(_blob_files(blob_root), None) is not None:
        raise BackupError(
            f"the blob folder {blob_root} is not empty; restore into an empty one, or pass "
            "--into-non-empty"
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


def _copy_blobs_in(source: Path, root: Path, progress: Progress) -> None:
    count = 0
    with (source / "blobs.jsonl").open("rb") as lines:
        for line in lines:
            entry = json.loads(line)
            target = root / entry["key"]
            if target.exists():
                continue  # --into-non-empty: the target's blob is kept
            data = (source / "blobs" / entry["key"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise BackupError(f"blob {entry['key']} of the backup is damaged")
            _write(target, data)
            count += 1
            if count % PROGRESS_EVERY == 0:
                progress(f"restore: {count} blobs")
    progress(f"restore: blobs: {count}")
