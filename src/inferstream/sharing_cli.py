"""``inferstream grants add|list|revoke``: sharing grants from the command line
(``docs/sharing.md``).

Each command takes the pipeline file whose results store holds the records
(``--store`` overrides it); the grant is for the file's application unless ``--app``
names another installed one. Adding and revoking write an entry in the owner's audit
log, as the API's routes do.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from inferstream.cli_support import cli_actor, command_group, pipeline_of
from inferstream.errors import ConfigError

if TYPE_CHECKING:
    from inferstream.application import AppSpec
    from inferstream.store import ResultsStore
    from inferstream.store.sharing import Condition, Grant

_WHERE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)")
_DAYS = re.compile(r"(?P<days>[0-9]{1,5})d")

WHERE_HELP = (
    "a condition on a declared attribute: NAME=VALUE (equal), NAME=LOW..HIGH (inclusive "
    "range), NAME=LOW.. or NAME=..HIGH (one end open); numbers for int/float attributes. "
    "Repeat for several (all must hold)."
)


def _open(args: argparse.Namespace) -> tuple[ResultsStore, AppSpec]:
    from inferstream.application import app_named
    from inferstream.store import ResultsStore

    spec = pipeline_of(args)
    app = app_named(args.app) if getattr(args, "app", None) else spec.application()
    if app is None:
        raise ConfigError(f"{args.pipeline} names no application; pass --app NAME")
    return ResultsStore(spec.store), app


def cmd_add(args: argparse.Namespace) -> int:
    from inferstream.api.audit_cli import record_cli
    from inferstream.store.sharing import Sharing

    store, app = _open(args)
    try:
        if args.grantee not in store.tenant_names():
            raise ConfigError(f"no tenant {args.grantee!r}; name an existing tenant")
        grant = Sharing(store).grant(
            args.owner, args.grantee, app, expires_at_us=_when(args.expires, "--expires"),
            created_by=cli_actor(), conditions=[_condition(app, w) for w in args.where],
            since_us=_moment(args.since, "--since"), until_us=_moment(args.until, "--until"),
            images=not args.no_images, masked=args.mask,
        )  # fmt: skip
        record_cli(store, args.owner, "grants add", grant=grant.id, grantee=grant.grantee,
                   app=grant.app)  # fmt: skip
    finally:
        store.close()
    print(f"grant {grant.id}: {describe(grant)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from inferstream.envelope import now_us
    from inferstream.store.sharing import Sharing

    store, _ = _open(args)
    try:
        grants = Sharing(store).grants(args.tenant)
    finally:
        store.close()
    at = now_us()
    for grant in grants:
        state = "live" if grant.live(at) else "revoked" if grant.revoked_at_us else "expired"
        print(f"{grant.id} [{state}] {describe(grant)}")
    if not grants:
        print(f"tenant {args.tenant} has made and received no grants")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from inferstream.api.audit_cli import record_cli
    from inferstream.store.sharing import Sharing

    store, _ = _open(args)
    try:
        grant = Sharing(store).revoke(args.owner, args.grant, actor=cli_actor())
        record_cli(store, args.owner, "grants revoke", grant=grant.id, grantee=grant.grantee,
                   reason=args.reason or "")  # fmt: skip
    finally:
        store.close()
    print(f"grant {grant.id} revoked: {grant.grantee} no longer reads {grant.owner}'s records")
    return 0


def describe(grant: Grant) -> str:
    """One line saying what a grant shares, with whom, until when."""
    parts = [f"{grant.owner} -> {grant.grantee}", f"app {grant.app}"]
    for c in grant.conditions:
        parts.append(f"{c.attribute}={_bound(c.low)}..{_bound(c.high)}")
    if grant.since_us is not None or grant.until_us is not None:
        parts.append(f"time {_iso(grant.since_us)}..{_iso(grant.until_us)}")
    parts.append("images" if grant.images else "no images")
    if grant.masked:
        parts.append(f"masked {','.join(grant.masked)}")
    parts.append(f"expires {_iso(grant.expires_at_us)}")
    return "; ".join(parts)


def _condition(app: AppSpec, text: str) -> Condition:
    from inferstream.store.sharing import Condition

    match = _WHERE.fullmatch(text)
    if match is None:
        raise ConfigError(f"--where {text!r} is not NAME=VALUE or NAME=LOW..HIGH")
    name, value = match["name"], match["value"]
    kinds = {a.name: a.kind for a in app.attributes}
    if name not in kinds:
        raise ConfigError(
            f"{name!r} is no attribute of {app.name!r}; use one of {', '.join(kinds)}"
        )
    low, sep, high = value.partition("..")
    bounds = (low, high) if sep else (value, value)
    number = kinds[name] in ("int", "float")
    typed = [_typed(bound, number, name) for bound in bounds]
    return Condition(name, "number" if number else "text", typed[0], typed[1])


def _typed(bound: str, number: bool, name: str) -> float | str | None:
    if not bound:
        return None
    if not number:
        return bound
    try:
        return float(bound)
    except ValueError:
        raise ConfigError(f"--where {name}: {bound!r} is not a number") from None


def _when(text: str, flag: str) -> int:
    """An ISO 8601 time with a zone, or ``Nd`` (N days from now)."""
    days = _DAYS.fullmatch(text)
    if days:
        return int((datetime.now(UTC) + timedelta(days=int(days["days"]))).timestamp() * 1e6)
    moment = _moment(text, flag)
    assert moment is not None
    return moment


def _moment(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ConfigError(f"{flag} {text!r} has no time zone; add e.g. +00:00")
    return int(moment.timestamp() * 1_000_000)


def _bound(value: float | str | None) -> str:
    return "" if value is None else str(value)


def _iso(at_us: int | None) -> str:
    return "" if at_us is None else f"{datetime.fromtimestamp(at_us / 1e6, UTC):%Y-%m-%dT%H:%M}Z"


def add_grants_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "Sharing grants: let another tenant read a slice of a tenant's records (an "
        "application, conditions on its attributes, a time window, with or without images, "
        "some attributes masked) until an expiry; docs/sharing.md."
    )
    add = command_group(sub, "grants", text, "pipeline YAML file whose store holds the records")
    new = add("add", cmd_add, "Grant a tenant read access to a slice of another's records.")
    new.add_argument("--owner", required=True, help="the tenant whose records are shared")
    new.add_argument("--grantee", required=True, help="the tenant that may read them")
    new.add_argument("--app", help="the application (default: the pipeline file's)")
    new.add_argument("--where", action="append", default=[], metavar="COND", help=WHERE_HELP)
    new.add_argument("--since", metavar="TIME", help="records from this time on (ISO 8601)")
    new.add_argument("--until", metavar="TIME", help="records before this time (ISO 8601)")
    new.add_argument("--no-images", action="store_true", help="the grantee may not read images")
    new.add_argument("--mask", action="append", default=[], metavar="ATTRIBUTE",
                     help="an attribute the grantee never sees (repeat for several)")  # fmt: skip
    new.add_argument("--expires", required=True, metavar="WHEN",
                     help="an ISO 8601 time with a zone, or Nd: N days from now")  # fmt: skip
    listed = add("list", cmd_list, "List the grants a tenant made and received.")
    listed.add_argument("--tenant", required=True, help="the tenant")
    revoke = add("revoke", cmd_revoke, "Revoke a grant; in force for the grantee's next read.")
    revoke.add_argument("grant", help="the grant's id (g-...), from list")
    revoke.add_argument("--owner", required=True, help="the tenant that made the grant")
    revoke.add_argument("--reason", help="why, for the audit log")
