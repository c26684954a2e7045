"""Helpers shared by the API tests: DICOM scans, an API world with tenants and keys."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from broker_testing import free_port
from dicom_builder import make_dataset, to_bytes
from fastapi.testclient import TestClient

from inferstream.api import ApiSettings, create_app
from inferstream.api.ops import UVICORN_OPTIONS
from inferstream.api.permissions import ROLES
from inferstream.application import AppSpec, Attribute, Head, Label
from inferstream.tracing import NO_TRACING, Tracing

#: An application defined here through the public API that takes any image the core
#: has a codec for, with the core's own checks: the generic ingest tests run on it.
IMAGES = AppSpec(
    name="images",
    title="Any image",
    package=__name__,
    subject="camera",
    attributes=(
        Attribute("camera", filterable=True, client=True),
        Attribute("scanner", client=True),
        Attribute("tray", client=True),
        Attribute("width", "int"),
        Attribute("height", "int"),
    ),
    heads=(Head("kind", (Label("a", "#000000"), Label("b", "#ffffff"))),),
    content_types=("application/dicom", "image/png", "image/jpeg", "application/x-npy"),
)

JWT_SECRET = "test-secret-" + "0123456789abcdef" * 3


def dicom_bytes(seed: int = 0, preamble: bytes = b"", **overrides: Any) -> bytes:
    """An MR slice as the flagship contract describes it (64x64 keeps tests light)."""
    fixed = {"AccessionNumber": "TRAY-0042", "ClinicalTrialTimePointID": "12"}
    return to_bytes(make_dataset(64, 64, seed, **{**fixed, **overrides}), preamble=preamble)


@dataclass
class World:
    """A running API with two tenants and one API key per role in each."""

    client: TestClient
    tenants: tuple[str, str]
    keys: dict[tuple[str, str], str] = field(default_factory=dict)

    def headers(self, tenant: str, role: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[(tenant, role)]}

    @property
    def own(self) -> str:
        return self.tenants[0]

    @property
    def other(self) -> str:
        return self.tenants[1]


def add_keys(world: World, accounts: Any) -> None:
    from inferstream.api.auth import issue_key

    for tenant in world.tenants:
        accounts.create_tenant(tenant)
        for role in ROLES:
            world.keys[(tenant, role)] = issue_key(accounts, tenant, f"{role} key", role).secret


def start_world(settings: ApiSettings, tracing: Tracing = NO_TRACING) -> Iterator[World]:
    suffix = uuid.uuid4().hex[:6]
    with TestClient(create_app(settings, tracing)) as client:
        world = World(client, (f"acme-{suffix}", f"globex-{suffix}"))
        add_keys(world, client.app.state.services.accounts)  # type: ignore[attr-defined]
        yield world


@contextmanager
def serve_app(settings: ApiSettings, port: int = 0) -> Iterator[int]:
    """The app under uvicorn as ``inferstream serve`` runs it, on ``port`` (default: a
    free loopback port)."""
    if not port:
        port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, **UVICORN_OPTIONS)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
