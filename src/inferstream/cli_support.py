"""What the operating commands on a pipeline's store share (``erase``, ``expire``,
``backup``, ``restore``, ``keys``, ``grants``, ``retention``): the pipeline file with its
``--store``/``--blobs`` overrides, the store's audit log, the operator named as
``cli:<os user>``, a confirmation by retyping, JSON on standard output, and a command
group's sub-commands that each take the pipeline file and ``--store``.

Heavy modules (the store, SQLAlchemy) are imported when a command runs, not when the
``inferstream`` command builds its parser.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from inferstream.errors import ConfigError

if TYPE_CHECKING:
    from inferstream.pipeline import PipelineSpec
    from inferstream.store.audit import AuditLog
    from inferstream.store.erasure import Requester

Handler = Callable[[argparse.Namespace], int]
#: ``add(name, handler, help_text)``: a sub-command of a group (see :func:`command_group`).
AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]

STORE_HELP = "results store URL, overrides the file"


def pipeline_of(args: argparse.Namespace) -> PipelineSpec:
    """The pipeline file ``args.pipeline`` with ``--store`` (and ``--blobs``, for the
    commands that act on blobs and so take it) applied."""
    from inferstream.pipeline import load_pipeline

    spec = load_pipeline(args.pipeline)
    return spec.with_urls(store=args.store, blobs=getattr(args, "blobs", None))


@contextmanager
def opened_audit_log(spec: PipelineSpec) -> Iterator[AuditLog]:
    """The audit log of ``spec``'s store, signed with ``INFERSTREAM_AUDIT_KEY``; the store
    is closed on leaving."""
    from inferstream.store import ResultsStore
    from inferstream.store.audit import AuditLog, audit_key_from_env

    with ResultsStore(spec.store) as store:
        yield AuditLog(store, audit_key_from_env())


def os_user() -> str:
    """The operator's OS user name; ``unknown`` when the uid has none (a container)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cli_actor() -> str:
    """Who a change from the command line is by: ``cli:<os user>``."""
    return f"cli:{os_user()}"


def cli_operator() -> Requester:
    """The operator at this machine's command line, as a requester of audited changes."""
    from inferstream.store.erasure import Requester

    return Requester(cli_actor(), "cli", "operator")


def require_confirmation(given: str, expected: str, consequence: str) -> None:
    """Refuse, saying ``consequence``, unless ``--confirm`` repeated ``expected``."""
    if given != expected:
        raise ConfigError(f"{consequence}; confirm with --confirm {expected}")


def print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document))


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    help_text: str,
    pipeline_help: str,
) -> argparse.ArgumentParser:
    """Register the command ``name`` run by ``handler``; its first argument is the
    pipeline file (``pipeline_help`` says what of it the command uses)."""
    command = sub.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(handler=handler)
    command.add_argument("pipeline", help=pipeline_help)
    return command


def command_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    pipeline_help: str,
) -> AddCommand:
    """Register the command ``name`` with sub-commands; returns the function that adds
    one, which takes the pipeline file (``pipeline_help``) and ``--store``."""
    group = sub.add_parser(name, help=help_text, description=help_text)
    commands = group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    def add(command: str, handler: Handler, text: str) -> argparse.ArgumentParser:
        cmd = add_command(commands, command, handler, text, pipeline_help)
        cmd.add_argument("--store", help=STORE_HELP)
        return cmd

    return add
