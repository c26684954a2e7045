"""``inferstream audit verify|export PIPELINE --tenant T``, and the entries the ``admin``
commands leave in the audit log (they change tenants, users and keys without the API).

Both read the HMAC key from ``INFERSTREAM_AUDIT_KEY``; the store from the pipeline file
(or ``--store``). Without ``--tenant`` they act on the deployment's own chain.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from inferstream.cli_support import os_user
from inferstream.pipeline import load_pipeline

if TYPE_CHECKING:
    from inferstream.store import ResultsStore
    from inferstream.store.audit import AuditLog


def _log(args: argparse.Namespace) -> AuditLog:
    from inferstream.store import ResultsStore
    from inferstream.store.audit import AuditLog, audit_key_from_env

    spec = load_pipeline(args.pipeline).with_urls(store=args.store)
    return AuditLog(ResultsStore(spec.store), audit_key_from_env())


def record_cli(store: ResultsStore, whose: str | None, action: str, **target: str) -> None:
    """An entry for an ``admin`` command in ``whose`` chain (None: the deployment's own):
    the operator's OS user, from this machine."""
    from inferstream.envelope import now_us
    from inferstream.store.audit import (
        DEPLOYMENT,
        AuditEntry,
        AuditLog,
        audit_key_from_env,
        target_of,
    )

    entry = AuditEntry(
        tenant=DEPLOYMENT if whose is None else whose, at_us=now_us(), actor=os_user(),
        actor_kind="cli", role="operator", action=f"cli {action}", target=target_of(target),
        source="localhost", status=200,
    )  # fmt: skip
    AuditLog(store, audit_key_from_env()).append([entry])


def cmd_verify(args: argparse.Namespace) -> int:
    audit = _log(args)
    try:
        result = audit.verify(args.tenant)
    finally:
        audit.store.close()
    print(json.dumps(result.to_dict()))
    if not result.signed:
        print("no INFERSTREAM_AUDIT_KEY: a rewrite of the whole chain would pass",
              file=sys.stderr)  # fmt: skip
    return 0 if result.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    from inferstream.api.audit import csv_lines, json_lines

    audit = _log(args)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        entries = audit.entries(args.tenant)
        lines = csv_lines(entries) if args.format == "csv" else json_lines(entries)
        out.writelines(lines)
    finally:
        audit.store.close()
        if out is not sys.stdout:
            out.close()
    return 0


def add_audit_commands(sub: Any) -> None:
    """Register ``audit verify`` and ``audit export`` on the CLI's sub-parsers."""
    audit = sub.add_parser("audit", help="Verify or export a tenant's audit log.")
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = commands.add_parser(
        "verify", help="Walk the hash chain; exit 1 and name the first bad entry if broken."
    )
    verify.set_defaults(handler=cmd_verify)
    export = commands.add_parser("export", help="Write the whole log, oldest first.")
    export.set_defaults(handler=cmd_export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", help="file to write (default: standard output)")
    for command in (verify, export):
        command.add_argument("pipeline", help="pipeline YAML file")
        command.add_argument("--store", help="results store URL, overrides the file")
        command.add_argument("--tenant", default="",
                             help="whose log (default: the deployment's own)")  # fmt: skip
