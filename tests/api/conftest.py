"""Fixtures for the API tests: a real embedded bus and SQLite store in a temp folder.

``world`` is a started app (lifespan run: topics created, store migrated) with two
tenants and an API key for every role in each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from api_testing import IMAGES, JWT_SECRET, World, start_world

from inferstream.api import ApiSettings
from inferstream.apps.eggs import APP
from inferstream.pipeline import PipelineSpec, load_pipeline


@pytest.fixture
def spec(tmp_path: Path) -> PipelineSpec:
    return load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}",
        store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )


@pytest.fixture
def settings(spec: PipelineSpec) -> ApiSettings:
    return ApiSettings(
        pipeline=spec, ingest_topic="scans.raw", jwt_secret=JWT_SECRET, rate_per_s=1e6, burst=10**6
    )


@pytest.fixture
def world(settings: ApiSettings) -> Iterator[World]:
    yield from start_world(settings)


@pytest.fixture
def images_world(settings: ApiSettings) -> Iterator[World]:
    """The API serving the test application IMAGES: any image, the core's checks."""
    yield from start_world(replace(settings, app=IMAGES))
