"""``inferstream example NAME``: each installed application's end-to-end example.

An application offers one through the ``example`` hook of its
:class:`~inferstream.application.AppSpec`, a function that adds its sub-command.
"""

from __future__ import annotations

from typing import Any

from inferstream.application import installed_apps, load_ref


def add_example_commands(sub: Any) -> None:
    """Register ``inferstream example ...`` on the CLI's sub-parsers."""
    example = sub.add_parser(
        "example",
        help="Run an application's example pipeline end to end.",
        description="Run an installed application's example pipeline end to end here.",
    )
    kinds = example.add_subparsers(dest="example", required=True, metavar="EXAMPLE")
    for app in installed_apps().values():
        if app.example:
            load_ref(app.example, f"application {app.name!r} example")(kinds)
