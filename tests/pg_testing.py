"""PostgreSQL for the tests: where the server is, and a private schema per test.

A test's schema is selected through ``search_path`` in the URL and dropped with
everything in it afterwards, so test runs sharing the database never meet. This
module sits at the top of ``tests/`` so that every folder's tests can import it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Connection, create_engine, text

POSTGRES_URL = os.environ.get(
    "INFERSTREAM_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def schema_url(server_url: str, schema: str, **options: str) -> str:
    """``server_url`` with ``search_path`` set to ``schema``, and any other setting
    given (``role=...``), in the connection's ``options``."""
    settings = {"search_path": schema, **options}
    joined = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return f"{server_url}?options={quote(joined)}"


@contextmanager
def fresh_schema(server_url: str, prefix: str) -> Iterator[str]:
    """The name of a new schema ``<prefix>_<random>``, dropped with everything in it
    afterwards (for tests that grant on it by name)."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield schema
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@contextmanager
def private_schema(server_url: str, prefix: str, **options: str) -> Iterator[str]:
    """The URL of a new schema ``<prefix>_<random>`` (with the settings ``options``
    names), dropped with everything in it afterwards."""
    with fresh_schema(server_url, prefix) as schema:
        yield schema_url(server_url, schema, **options)


def ensure_role(conn: Connection, role: str) -> None:
    """Create the NOLOGIN ``role`` unless it exists (concurrent runs may race to it)."""
    conn.execute(
        text(
            f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
    )


class PrivateCluster:
    """A PostgreSQL cluster of a test's own (initdb, pg_ctl on a free port), for tests
    that stop or break the database: the shared server is never touched. Run as the
    ``postgres`` user when the tests run as root (PostgreSQL refuses root), in a folder
    of its own outside pytest's private temporary tree."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.folder = Path(tempfile.mkdtemp(prefix="inferstream-pg-"))
        self.data = self.folder / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not binaries:
            raise RuntimeError("no initdb under /usr/lib/postgresql: install PostgreSQL")
        self.bin = binaries[-1].parent
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync")

    def _run(self, tool: str, *args: object) -> None:
        command = [*self.as_user, str(self.bin / tool), *map(str, args)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", self.folder / "log", "-w",
                  "start")  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: as a crash would (no checkpoint); ``fast`` for a clean stop."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")


@contextmanager
def private_cluster(port: int) -> Iterator[PrivateCluster]:
    cluster = PrivateCluster(port)
    cluster.start()
    try:
        yield cluster
    finally:
        with suppress(subprocess.CalledProcessError):
            cluster.stop("fast")
        shutil.rmtree(cluster.folder, ignore_errors=True)
