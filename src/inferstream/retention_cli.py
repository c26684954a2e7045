"""``inferstream retention set|show|clear``: tenants' stored retention policies from the
command line (``docs/data-lifecycle.md``).

Each command takes the pipeline file whose results store holds the policies (``--store``
overrides it). Setting and clearing write an entry in the tenant's audit log, in the
transaction that changes the policy, as the API's ``/v1/admin/retention`` does; the
pipeline's housekeeping applies the policies (``inferstream up`` every minute,
``inferstream housekeep`` once).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from inferstream.cli_support import cli_operator, command_group, opened_audit_log, pipeline_of
from inferstream.errors import ConfigError

if TYPE_CHECKING:
    from inferstream.store import ResultsStore
    from inferstream.store.retention import KeepPolicy


def keep_days(text: str) -> int:
    """``--keep-days``: a whole number of days from 1 to the store's most."""
    from inferstream.store.schema import MAX_KEEP_DAYS

    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= days <= MAX_KEEP_DAYS:
        raise argparse.ArgumentTypeError(f"{days} is not from 1 to {MAX_KEEP_DAYS} days")
    return days


def cmd_set(args: argparse.Namespace) -> int:
    from inferstream.store.retention import set_policy

    with opened_audit_log(pipeline_of(args)) as audit:
        _require_tenant(audit.store, args.tenant, args.pipeline)
        policy = set_policy(audit, args.tenant, args.keep_days, cli_operator())
    print(f"{describe(policy)}; the pipeline's housekeeping expires older results")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from inferstream.store.retention import get_policy, list_policies

    with opened_audit_log(pipeline_of(args)) as audit:
        if args.tenant:
            found = get_policy(audit.store, args.tenant)
            policies = [] if found is None else [found]
        else:
            policies = list_policies(audit.store)
    for policy in policies:
        print(describe(policy))
    if not policies:
        whose = f"tenant {args.tenant} has no" if args.tenant else "no tenant has a"
        print(f"{whose} retention policy: results are kept until erased or expired by hand")
    elif not args.tenant:
        from inferstream.runner import TOPIC_FLOOR_ENV, tenant_topic_cap

        shortest = min(p.keep_days for p in policies)
        cap = tenant_topic_cap(shortest * 86_400.0) or 0.0
        why = "the shortest policy" if cap == shortest * 86_400.0 else TOPIC_FLOOR_ENV
        print(f"topics keep no message over {cap / 86_400:g} days ({why})")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    from inferstream.store.retention import clear_policy

    with opened_audit_log(pipeline_of(args)) as audit:
        removed = clear_policy(audit, args.tenant, cli_operator())
    if removed is None:
        print(f"tenant {args.tenant} has no retention policy; nothing to clear")
    else:
        print(f"tenant {args.tenant}: policy of {removed.keep_days} days cleared; "
              "its results are kept from now on")  # fmt: skip
    return 0


def describe(policy: KeepPolicy) -> str:
    """One line: whose results are kept how long, set by whom and when."""
    when = datetime.fromtimestamp(policy.set_at_us / 1e6, UTC)
    return (f"tenant {policy.tenant}: results kept {policy.keep_days} days "
            f"(set by {policy.set_by} at {when:%Y-%m-%dT%H:%M}Z)")  # fmt: skip


def _require_tenant(store: ResultsStore, tenant: str, pipeline: str) -> None:
    # Housekeeping finds policies through the tenants table (it spans tenants, so it is
    # readable under row-level security); a policy of a tenant not there would never run.
    if tenant not in store.tenant_names():
        raise ConfigError(
            f"no tenant {tenant!r} in the store; create it first with: "
            f"inferstream admin create-tenant {pipeline} {tenant}"
        )


def add_retention_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``retention set|show|clear`` on the CLI's sub-parsers."""
    text = (
        "Stored retention policies: how many days a tenant's results are kept. The "
        "pipeline's housekeeping then deletes, for each tenant with a policy, what "
        "'inferstream expire' would (records stored before then, their predictions, "
        "feedback, accepted scans, dead letters and unused blobs), and no topic keeps a "
        "message longer than the shortest policy, or than the operator's floor "
        "(INFERSTREAM_TOPIC_RETENTION_FLOOR_HOURS, a week) when that is longer. "
        "docs/data-lifecycle.md"
    )
    add = command_group(sub, "retention", text, "pipeline YAML file whose store holds the policies")
    new = add("set", cmd_set, "Keep a tenant's results N days (replaces its policy); audited.")
    new.add_argument("tenant", help="the tenant (one 'inferstream admin create-tenant' made)")
    new.add_argument(
        "--keep-days", type=keep_days, required=True, metavar="N",
        help="days to keep its results, 1 to 36500 (100 years); older ones expire at the "
        "next housekeeping",
    )  # fmt: skip
    show = add("show", cmd_show, "Show one tenant's policy, or every tenant's.")
    show.add_argument("tenant", nargs="?", help="the tenant (default: every tenant)")
    clear = add("clear", cmd_clear, "Remove a tenant's policy: its results are kept; audited.")
    clear.add_argument("tenant", help="the tenant")
