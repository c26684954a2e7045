"""``inferstream serve`` (the API under uvicorn) and ``inferstream admin`` (tenants, users, keys).

Registered on the main parser by :func:`add_api_commands`. Secrets never go through
the command line: a new user's password is read from the terminal (or one line of
stdin), and a new API key's secret is printed once, to stdout only.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
from typing import Any

from inferstream.api.audit_cli import add_audit_commands, record_cli
from inferstream.api.permissions import ROLES
from inferstream.errors import ConfigError
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.tracing_config import add_otlp_option, export_to


def _pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML file")
    parser.add_argument("--bus", help="bus URL, overrides the file")
    parser.add_argument("--store", help="results store URL, overrides the file")
    parser.add_argument("--blobs", help="blob store URL, overrides the file")


def _spec(args: argparse.Namespace) -> PipelineSpec:
    return load_pipeline(args.pipeline).with_urls(bus=args.bus, store=args.store, blobs=args.blobs)


#: Environment variable carrying ``serve``'s options to each ``--workers`` process.
SERVE_OPTIONS_ENV = "INFERSTREAM_SERVE_OPTIONS"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from inferstream.api.ops import UVICORN_OPTIONS

    if bool(args.certfile) != bool(args.keyfile):
        raise ConfigError("TLS needs both --certfile and --keyfile (or neither)")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: run at least one worker process")
    export_to(args.otlp_endpoint)  # the env, so --workers processes trace too
    options = {
        "pipeline": args.pipeline, "bus": args.bus, "store": args.store, "blobs": args.blobs,
        "ingest_topic": args.ingest_topic, "rate": args.rate, "burst": args.burst,
        "tenant_rate": args.tenant_rate, "tenant_burst": args.tenant_burst,
        "max_body_mb": args.max_body_mb, "verbose": args.verbose, "show": args.show,
        "trace_url": args.trace_url,
    }  # fmt: skip
    target: Any = _app_for(options)  # fails here, once, on a bad pipeline or secret
    if args.workers > 1:
        _share_jwt_secret()
        os.environ[SERVE_OPTIONS_ENV] = json.dumps(options)
        target = "inferstream.api.cli:app_from_environment"
    uvicorn.run(
        target,
        factory=args.workers > 1,
        workers=args.workers,
        host=args.host,
        port=args.port,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
        **UVICORN_OPTIONS,
    )
    return 0


def _share_jwt_secret() -> None:
    """Workers must accept each other's tokens: one secret for all, made here if unset."""
    from inferstream.api.settings import JWT_SECRET_ENV

    os.environ.setdefault(JWT_SECRET_ENV, secrets.token_hex(32))


def app_from_environment() -> Any:
    """The app of one ``serve --workers N`` process, from the options its parent set."""
    return _app_for(json.loads(os.environ[SERVE_OPTIONS_ENV]))


def _app_for(options: dict[str, Any]) -> Any:
    import dataclasses

    from inferstream.api.app import create_app
    from inferstream.api.ops import use_json_logs
    from inferstream.api.settings import ApiSettings
    from inferstream.application import app_named
    from inferstream.logs import log_level
    from inferstream.tracing_config import open_tracing

    spec = load_pipeline(options["pipeline"]).with_urls(
        bus=options["bus"], store=options["store"], blobs=options["blobs"]
    )
    defaults = ApiSettings.for_pipeline(spec, options["ingest_topic"])
    settings = dataclasses.replace(
        defaults,
        rate_per_s=options["rate"],
        burst=options["burst"],
        tenant_scans_per_s=options.get("tenant_rate"),
        tenant_burst=options.get("tenant_burst"),
        max_body_bytes=int(options["max_body_mb"] * 1024 * 1024),
        also_apps=tuple(app_named(name) for name in options.get("show") or ()),
        trace_url=options.get("trace_url") or defaults.trace_url,
    )
    use_json_logs(log_level(options["verbose"]))
    # Exported at exit (the provider flushes then); one provider per server process.
    tracing = open_tracing("inferstream-api", {"inferstream.pipeline": spec.name})
    return create_app(settings, tracing)


def _accounts(args: argparse.Namespace) -> Any:
    from inferstream.api.accounts import Accounts
    from inferstream.store import ResultsStore

    return Accounts(ResultsStore(_spec(args).store))


def cmd_create_tenant(args: argparse.Namespace) -> int:
    accounts = _accounts(args)
    try:
        accounts.create_tenant(args.name)
        record_cli(accounts.store, None, "create-tenant", tenant=args.name)
    finally:
        accounts.store.close()
    print(f"tenant {args.name!r} created")
    return 0


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password (12+ characters): ")
        if getpass.getpass("again: ") != first:
            raise ConfigError("the two passwords differ; nothing was created")
        return first
    return sys.stdin.readline().rstrip("\n")


def cmd_create_user(args: argparse.Namespace) -> int:
    from inferstream.api.auth import check_role, hash_password

    accounts = _accounts(args)
    try:
        _require_tenant(accounts, args.tenant)
        role = check_role(args.role)
        accounts.create_user(args.tenant, args.username, hash_password(_read_password()), role)
        record_cli(accounts.store, args.tenant, "create-user", username=args.username, role=role)
    finally:
        accounts.store.close()
    print(f"user {args.tenant}/{args.username} ({args.role}) created; log in as "
          f"username={args.tenant}/{args.username} at POST /auth/token")  # fmt: skip
    return 0


def cmd_create_key(args: argparse.Namespace) -> int:
    from inferstream.api.auth import issue_key

    accounts = _accounts(args)
    try:
        _require_tenant(accounts, args.tenant)
        issued = issue_key(accounts, args.tenant, args.name, args.role)
        record_cli(accounts.store, args.tenant, "create-key", key_id=issued.key_id, role=args.role)
    finally:
        accounts.store.close()
    print(f"key {issued.key_id} ({issued.role}) for tenant {issued.tenant}; shown once:",
          file=sys.stderr)  # fmt: skip
    print(issued.secret)
    return 0


def cmd_revoke_key(args: argparse.Namespace) -> int:
    accounts = _accounts(args)
    try:
        _require_tenant(accounts, args.tenant)
        if not accounts.revoke_key(args.tenant, args.key_id):
            raise ConfigError(
                f"tenant {args.tenant!r} has no key {args.key_id!r}; the key id is the "
                "third part of isk.<tenant>.<key id>.<secret>"
            )
        record_cli(accounts.store, args.tenant, "revoke-key", key_id=args.key_id)
    finally:
        accounts.store.close()
    print(f"key {args.key_id} of tenant {args.tenant} revoked; its next request answers 401")
    return 0


def _require_tenant(accounts: Any, tenant: str) -> None:
    if not accounts.tenant_exists(tenant):
        raise ConfigError(
            f"tenant {tenant!r} does not exist; create it with: inferstream admin create-tenant"
        )


def add_api_commands(sub: Any) -> None:
    """Register ``serve`` and ``admin ...`` on the CLI's sub-parsers."""
    serve = sub.add_parser("serve", help="Run the service API for a pipeline.")
    serve.set_defaults(handler=cmd_serve)
    _pipeline_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--certfile", help="TLS certificate (PEM); with --keyfile enables HTTPS")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument("--ingest-topic", help="topic scans go to (default: first in the file)")
    serve.add_argument("--rate", type=float, default=200.0, help="requests/s per credential")
    serve.add_argument("--burst", type=int, default=400, help="burst per credential")
    serve.add_argument(
        "--tenant-rate", type=float, metavar="SCANS_PER_S",
        help="scans/s one tenant may send, all its credentials together (its share of the "
        "pipeline; default: unbounded); beyond it the tenant hears 429 with Retry-After, "
        "so one tenant's flood cannot queue ahead of the others' scans",
    )  # fmt: skip
    serve.add_argument(
        "--tenant-burst", type=int, metavar="SCANS",
        help="scans a tenant may send at once (default: 2 s of --tenant-rate, at least one "
        "batch)",
    )  # fmt: skip
    serve.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body")
    serve.add_argument(
        "--show", action="append", metavar="APP", default=[],
        help="also show this installed application's records (its pipeline runs elsewhere, "
        "on the same store); repeatable; the dashboard lets people pick one",
    )  # fmt: skip
    serve.add_argument(
        "--trace-url", metavar="TEMPLATE",
        help="link GET of a record to its trace in your trace viewer, e.g. "
        "'http://jaeger:16686/trace/{trace_id}' (default: $INFERSTREAM_TRACE_URL)",
    )  # fmt: skip
    add_otlp_option(serve)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (default 1); each keeps its own rate limits and live "
        "dashboard feed, so a credential may get up to N x --rate",
    )

    admin = sub.add_parser("admin", help="Create tenants, users and API keys; revoke keys.")
    commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    tenant = commands.add_parser(
        "create-tenant",
        help="Create a tenant (one customer: its users, keys and records are its own).",
    )
    tenant.set_defaults(handler=cmd_create_tenant)
    _pipeline_args(tenant)
    tenant.add_argument("name", help="tenant name: lowercase letters, digits, '-'")
    user = commands.add_parser("create-user", help="Create a user; the password is prompted.")
    user.set_defaults(handler=cmd_create_user)
    _pipeline_args(user)
    user.add_argument("--tenant", required=True)
    user.add_argument("--username", required=True)
    user.add_argument("--role", required=True, choices=list(ROLES))
    key = commands.add_parser("create-key", help="Create an API key; its secret is shown once.")
    key.set_defaults(handler=cmd_create_key)
    _pipeline_args(key)
    key.add_argument("--tenant", required=True)
    key.add_argument("--name", required=True, help="what the key is for, e.g. scanner-03")
    key.add_argument("--role", required=True, choices=list(ROLES))
    revoke = commands.add_parser("revoke-key", help="Revoke an API key (works with the API down).")
    revoke.set_defaults(handler=cmd_revoke_key)
    _pipeline_args(revoke)
    revoke.add_argument("--tenant", required=True)
    revoke.add_argument("key_id", help="the key id: third part of isk.<tenant>.<key id>.<secret>")
    add_audit_commands(sub)
