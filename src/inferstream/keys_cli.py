"""``inferstream keys ...``: the keys of encrypted blobs and sensitive record attributes
(``docs/encryption.md``).

Each command takes the pipeline file whose results store holds the wrapped data keys
(``--store`` overrides it) and the key-encryption keys from the environment
(``INFERSTREAM_KEK``, or ``INFERSTREAM_KEY_PROVIDER``), as the workers and the API do.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from inferstream.cli_support import cli_actor, command_group, pipeline_of, require_confirmation
from inferstream.errors import ConfigError

if TYPE_CHECKING:
    from inferstream.store import ResultsStore
    from inferstream.store.data_keys import DataKeys


def _keys(args: argparse.Namespace) -> DataKeys:
    return _store_keys(args)[1]


def _store_keys(args: argparse.Namespace) -> tuple[ResultsStore, DataKeys]:
    from inferstream.key_provider import KEK_ENV, key_provider_from_env
    from inferstream.store import ResultsStore
    from inferstream.store.data_keys import data_keys

    provider = key_provider_from_env()
    if provider is None:
        raise ConfigError(
            f"no key-encryption key is configured; set {KEK_ENV} to base64 32-byte keys, "
            "newest first (docs/encryption.md)"
        )
    store = ResultsStore(pipeline_of(args).store, key_provider=provider)
    return store, data_keys(store, provider)


def cmd_status(args: argparse.Namespace) -> int:
    keys = _keys(args)
    try:
        current = keys.provider.current_kek_id
        print(f"current key-encryption key: {current}")
        for each in keys.status():
            stale = [k for k in each.kek_ids if k != current]
            when = datetime.fromtimestamp(each.newest_created_us / 1e6, UTC)
            print(
                f"{each.tenant}: data keys {', '.join(map(str, each.versions))} (newest "
                f"{when:%Y-%m-%d %H:%M} UTC)"
                + (f"; wrapped by older KEK {', '.join(stale)}: run rotate-kek" if stale else "")
            )
        for shred in keys.table.shreds():
            when = datetime.fromtimestamp(shred.at_us / 1e6, UTC)
            print(f"{shred.tenant}: shredded {when:%Y-%m-%d %H:%M} UTC by {shred.actor}")
    finally:
        keys.table.store.close()
    return 0


def cmd_rotate_kek(args: argparse.Namespace) -> int:
    from inferstream.api.audit_cli import record_cli

    store, keys = _store_keys(args)
    try:
        done = keys.rewrap_all()
        record_cli(store, None, "keys rotate-kek", kek=keys.provider.current_kek_id,
                   rewrapped=str(done))  # fmt: skip
    finally:
        keys.table.store.close()
    print(f"rewrapped {done} data keys under {keys.provider.current_kek_id}")
    return 0


def cmd_new_data_key(args: argparse.Namespace) -> int:
    from inferstream.api.audit_cli import record_cli

    store, keys = _store_keys(args)
    try:
        version = keys.new_data_key(args.tenant)
        record_cli(store, args.tenant, "keys new-data-key", tenant=args.tenant,
                   version=str(version))  # fmt: skip
    finally:
        keys.table.store.close()
    print(f"tenant {args.tenant}: new blobs are sealed with data key {version}")
    return 0


def cmd_shred(args: argparse.Namespace) -> int:
    from inferstream.api.audit_cli import record_cli

    require_confirmation(
        args.confirm, args.tenant,
        f"shredding makes every encrypted blob of {args.tenant!r} unreadable for good",
    )  # fmt: skip
    store, keys = _store_keys(args)
    try:
        deleted = keys.shred(args.tenant, actor=cli_actor())
        record_cli(store, args.tenant, "keys shred", tenant=args.tenant,
                   reason=args.reason or "", deleted=str(deleted))  # fmt: skip
    finally:
        keys.table.store.close()
    print(
        f"tenant {args.tenant}: {deleted} data keys deleted; its encrypted blobs and "
        "sensitive record attributes are gone"
    )
    return 0


def add_keys_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "The keys of encrypted blobs and sensitive record attributes: status, KEK rotation, "
        "new data keys, crypto-shredding "
        "(INFERSTREAM_KEK holds the key-encryption keys; docs/encryption.md)."
    )
    add = command_group(sub, "keys", text, "pipeline YAML file whose store holds the keys")
    add("status", cmd_status, "List each tenant's data keys and the KEKs that wrap them.")
    add(
        "rotate-kek", cmd_rotate_kek,
        "Rewrap every data key under the newest KEK (the first in INFERSTREAM_KEK). Put "
        "the new KEK first and keep the old one after it everywhere before running this; "
        "drop the old one once it is done. Blobs are not rewritten.",
    )  # fmt: skip
    new = add(
        "new-data-key", cmd_new_data_key,
        "Give a tenant a new data key: new blobs and sensitive attributes are sealed with "
        "it, old ones keep theirs.",
    )  # fmt: skip
    new.add_argument("tenant", help="the tenant")
    shred = add(
        "shred", cmd_shred,
        "Crypto-shred a tenant: delete its data keys, so its encrypted blobs (reads answer "
        "410 Gone) and sensitive record attributes (read as null) can never be read again "
        "and none are written; writes an audit entry.",
    )  # fmt: skip
    shred.add_argument("tenant", help="the tenant to shred")
    shred.add_argument(
        "--confirm", metavar="TENANT", required=True,
        help="the tenant's name again: there is no undo",
    )  # fmt: skip
    shred.add_argument("--reason", help="why, for the audit log (e.g. a ticket number)")
