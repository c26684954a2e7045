"""A process killed in the middle of a migration leaves the store as it was, so the
next open migrates it (found by the kill -9 fault test: one killed worker made every
later worker fail with "table results already exists")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from inferstream.store import ResultsStore

# Runs the real migrations in a child that kills itself with SIGKILL right after the
# third table is created: the kill -9 of a worker, at the worst moment.
_CHILD = """
import os, signal, sys
from alembic import op
from inferstream.store import ResultsStore

real = op.create_table
made = []

def create_then_die(*args, **kwargs):
    table = real(*args, **kwargs)
    made.append(args[0])
    if len(made) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return table

op.create_table = create_then_die
ResultsStore(sys.argv[1])
"""


def test_a_migration_killed_half_way_is_redone_on_the_next_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    child = subprocess.run([sys.executable, "-c", _CHILD, url], check=False)
    assert child.returncode == -9  # it really died mid-migration
    with ResultsStore(url) as store:
        assert store.count_results("acme") == 0
