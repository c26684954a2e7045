"""``inferstream erase``, ``backup`` and ``restore``: the data lifecycle commands
(``docs/data-lifecycle.md``).

Each takes the pipeline file whose store and blobs it acts on (``--store`` and ``--blobs``
override them), as the other operating commands do.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from inferstream.cli_support import (
    STORE_HELP,
    add_command,
    cli_operator,
    opened_audit_log,
    pipeline_of,
    print_json,
    require_confirmation,
)
from inferstream.errors import ConfigError
from inferstream.pipeline import PipelineSpec

if TYPE_CHECKING:
    from inferstream.blobs import BlobStore

DATA_HELP = "pipeline YAML file whose store and blobs hold the data"


def cmd_erase(args: argparse.Namespace) -> int:
    from inferstream.blobs import open_blob_store
    from inferstream.store.erasure import erase_subject

    require_confirmation(
        args.confirm, args.subject,
        f"erasing deletes every record, prediction, feedback, accepted scan and dead "
        f"letter of subject {args.subject!r} of tenant {args.tenant!r}, and its blobs, "
        "for good",
    )  # fmt: skip
    spec = pipeline_of(args)
    with opened_audit_log(spec) as audit:
        blobs = open_blob_store(spec.blobs)
        done = erase_subject(audit, blobs, args.tenant, args.subject, cli_operator())
    print_json(done.to_dict())
    return 0


def cmd_expire(args: argparse.Namespace) -> int:
    from inferstream.blobs import open_blob_store
    from inferstream.envelope import now_us
    from inferstream.store.retention import expire

    if not args.older_than_days > 0:
        raise ConfigError(f"--older-than-days must be > 0, got {args.older_than_days}")
    spec = pipeline_of(args)
    before_us = now_us() - int(args.older_than_days * 86_400 * 1_000_000)
    with opened_audit_log(spec) as audit:
        blobs = open_blob_store(spec.blobs)
        done = expire(audit, blobs, args.tenant, before_us, cli_operator())
    print_json(done.to_dict())
    return 0


@contextmanager
def _blob_store(args: argparse.Namespace, spec: PipelineSpec) -> Iterator[BlobStore | None]:
    """The pipeline's blob store, whatever its URL (a folder, ``s3://``), read and written
    as stored (sealed blobs stay sealed); None with ``--skip-blobs``."""
    from inferstream.blobs import open_blob_store

    if args.skip_blobs:
        yield None
        return
    blobs = open_blob_store(spec.blobs)
    try:
        yield blobs
    finally:
        close = getattr(blobs, "close", None)  # a store with connections (S3) has one
        if close is not None:
            close()


def cmd_backup(args: argparse.Namespace) -> int:
    from inferstream.backup import backup
    from inferstream.store import ResultsStore

    spec = pipeline_of(args)
    with ResultsStore(spec.store) as store, _blob_store(args, spec) as blobs:
        backup(store, blobs, Path(args.dest), _say)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from inferstream.backup import restore
    from inferstream.store import ResultsStore

    spec = pipeline_of(args)
    with ResultsStore(spec.store) as store, _blob_store(args, spec) as blobs:
        restore(Path(args.source), store, blobs,
                into_non_empty=args.into_non_empty, progress=_say)  # fmt: skip
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def add_lifecycle_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``erase``, ``expire``, ``backup`` and ``restore`` on the CLI's sub-parsers."""
    text = (
        "Erase one subject of a tenant (what the application's subject attribute names, "
        "e.g. a specimen's id): its records and their predictions, its feedback, the scans the "
        "API accepted for it, the dead letters of its items, and the blobs nothing else of "
        "the tenant names, in one transaction with an audit entry; prints what it erased, "
        "as JSON. Exit 2 when the tenant holds nothing of it. docs/data-lifecycle.md"
    )
    erase = add_command(sub, "erase", cmd_erase, text, DATA_HELP)
    erase.add_argument("tenant", help="the tenant whose subject to erase")
    erase.add_argument(
        "subject", help="the subject to erase: a value of the application's subject attribute"
    )
    erase.add_argument(
        "--confirm", required=True, metavar="SUBJECT",
        help="the subject again: erasure cannot be undone",
    )  # fmt: skip
    _add_urls(erase)
    text = (
        "Retention of one tenant's results: delete its records stored more than N days ago "
        "and their predictions, the feedback, accepted scans and dead letters recorded "
        "before then, and the blobs nothing left names, in one transaction with an audit "
        "entry; prints what it deleted, as JSON. Once, by hand; to keep a tenant's results "
        "N days for good, store a policy (`inferstream retention set`), which housekeeping "
        "runs. docs/data-lifecycle.md"
    )
    expire = add_command(sub, "expire", cmd_expire, text, DATA_HELP)
    expire.add_argument("tenant", help="the tenant whose results to expire")
    expire.add_argument(
        "--older-than-days", type=float, required=True, metavar="N",
        help="delete what was stored more than N days ago (fractions allowed)",
    )  # fmt: skip
    _add_urls(expire)
    _add_backup_commands(sub)


def _add_urls(command: argparse.ArgumentParser) -> None:
    command.add_argument("--store", help=STORE_HELP)
    command.add_argument("--blobs", help="blob store URL, overrides the file")


def _add_backup_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "Back up the results store (every table, as JSON lines) and the blob store, a folder "
        "or an S3 bucket (each blob as stored), into a new folder, with a manifest of counts "
        "and SHA-256s; restore it on SQLite or PostgreSQL, with blobs in a folder or on S3. "
        "Prints a line per table and progress of the blobs. docs/data-lifecycle.md"
    )
    back = add_command(
        sub, "backup", cmd_backup, text, "pipeline YAML file whose store and blobs to back up"
    )
    back.add_argument("dest", help="a new (or empty) folder to write the backup into")
    text = (
        "Restore a backup into this pipeline's store and blob store (a folder or s3://), "
        "which must be empty (a new deployment) unless --into-non-empty; every file is "
        "checked against the manifest first, every table written in one transaction, every "
        "blob checked against its SHA-256. docs/data-lifecycle.md"
    )
    restore = add_command(
        sub, "restore", cmd_restore, text, "pipeline YAML file whose store and blobs to fill"
    )
    restore.add_argument("source", help="the folder 'inferstream backup' wrote")
    restore.add_argument(
        "--into-non-empty", action="store_true",
        help="restore into a store or blob store that holds data: rows and blobs it holds "
        "under the same keys are kept as they are, the rest added",
    )  # fmt: skip
    for command in (back, restore):
        command.add_argument("--store", help=STORE_HELP)
        command.add_argument(
            "--blobs", help="blob store URL (file:///folder or s3://bucket/prefix), overrides "
            "the file",
        )  # fmt: skip
        command.add_argument(
            "--skip-blobs", action="store_true",
            help="the store only (blobs copied with the object store's own tools)",
        )  # fmt: skip
