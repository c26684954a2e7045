"""The imageops API for tests: a real app (TestClient) on a real bus, store and blob
folder, with two tenants and an API key per role in each; the pipeline runs in threads
when a test needs outputs."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from inferstream.api import ApiSettings, create_app
from inferstream.api.auth import issue_key
from inferstream.api.permissions import ROLES
from inferstream.apps.imageops import APP
from inferstream.pipeline import PipelineSpec, load_pipeline

JWT_SECRET = "imageops-test-secret-" + "0123456789abcdef" * 3
JOBS = "/v1/apps/imageops/jobs"
USERS_FORM = {
    "operations": [["resize", "200x300"], ["split", True], ["blur", "gaussian"]],
    "output": "jpg",
}


@dataclass
class World:
    """A running imageops API with tenants ``own`` and ``other``, a key per role in each."""

    client: TestClient
    spec: PipelineSpec
    tenants: tuple[str, str]
    keys: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def own(self) -> str:
        return self.tenants[0]

    @property
    def other(self) -> str:
        return self.tenants[1]

    def headers(self, role: str = "device", tenant: str | None = None) -> dict[str, str]:
        return {"X-API-Key": self.keys[(tenant or self.own, role)]}

    @property
    def services(self) -> Any:
        return self.client.app.state.services  # type: ignore[attr-defined]

    def submit(self, files: list[tuple[str, bytes]], actions: Any = None, **kwargs: Any) -> Any:
        """POST a job; ``actions`` a document (JSON-encoded here) or raw text."""
        document = USERS_FORM if actions is None else actions
        text = document if isinstance(document, str) else json.dumps(document)
        return self.client.post(
            JOBS,
            files=[("files", (name, data)) for name, data in files],
            data={"actions": text},
            headers=kwargs.pop("headers", None) or self.headers(),
            **kwargs,
        )


def imageops_spec(
    folder: Path,
    bus_url: str | None = None,
    retention_hours: float | None = None,
    suffix: str | None = None,
    blobs: str | None = None,
) -> PipelineSpec:
    """The application's own pipeline file on ``folder``'s store and blobs (or the blob
    store ``blobs``), its name and topics made unique by ``suffix`` (tests share one
    Kafka broker); ``retention_hours`` replaces the file's."""
    suffix = suffix or uuid.uuid4().hex[:8]
    text = APP.pipeline_path().read_text()
    text = text.replace("name: imageops\n", f"name: imageops-{suffix}\n")
    text = text.replace("images.", f"images-{suffix}.")
    if retention_hours is not None:
        text = text.replace("${IMAGEOPS_RETENTION_HOURS:-24}", repr(retention_hours))
    path = folder / f"imageops-{suffix}-{uuid.uuid4().hex[:4]}.yaml"
    path.write_text(text)
    return load_pipeline(path).with_urls(
        bus=bus_url or f"sqlite:///{folder / 'bus.db'}",
        store=f"sqlite:///{folder / 'results.db'}",
        blobs=blobs or f"file://{folder / 'blobs'}",
    )


@contextmanager
def running_api(spec: PipelineSpec, **settings: Any) -> Iterator[World]:
    """The imageops API of ``spec`` (its ingest topic is the file's first)."""
    topic = next(iter(spec.topics))
    api = ApiSettings(spec, topic, JWT_SECRET, rate_per_s=1e6, burst=10**6, **settings)
    with TestClient(create_app(api)) as client:
        suffix = uuid.uuid4().hex[:6]
        world = World(client, spec, (f"studio-{suffix}", f"rival-{suffix}"))
        accounts = world.services.accounts
        for tenant in world.tenants:
            accounts.create_tenant(tenant)
            for role in ROLES:
                world.keys[(tenant, role)] = issue_key(accounts, tenant, role, role).secret
        yield world


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """A generous bound for the pipeline, not a speed check."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def wait_done(world: World, job: str, tenant: str | None = None) -> Any:
    """The job's status once it is done or failed."""
    answers: list[Any] = []

    def finished() -> bool:
        answer = world.client.get(f"{JOBS}/{job}", headers=world.headers("viewer", tenant))
        answers.append(answer.json())
        return answer.json()["status"] in ("done", "failed")

    wait_for(finished, f"job {job}")
    return answers[-1]
