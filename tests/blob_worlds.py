"""Blob stores for tests, each with a way behind its back: the keys and bytes under its
root, read, written and removed directly (a folder's files, a bucket's objects). The
``blob_world`` fixture runs a test on each (``file`` and ``s3``); at the top of
``tests/`` so that every folder's tests can use them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import pytest
from broker_testing import S3Server

from inferstream.blobs import BlobStore, LocalBlobStore, open_blob_store


class BlobWorld(Protocol):
    store: BlobStore

    def raw(self, key: str) -> bytes | None:
        """The bytes at ``<root>/<key>``, or None."""

    def write_raw(self, key: str, data: bytes) -> None: ...

    def remove_raw(self, key: str) -> None: ...

    def stored_keys(self) -> set[str]:
        """Every key under the root (a file's path or an object's key below it)."""

    def tick(self) -> None:
        """Let enough time pass for the store to tell a later write from an earlier one."""

    def close(self) -> None: ...


class LocalWorld:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = LocalBlobStore(root)

    def raw(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def write_raw(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(data)

    def remove_raw(self, key: str) -> None:
        (self.root / key).unlink()

    def stored_keys(self) -> set[str]:
        return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()}

    def tick(self) -> None:
        time.sleep(0.05)  # file times come from the kernel's coarse clock (a few ms)

    def close(self) -> None:
        pass


class S3World:
    """A bucket of the test server under ``prefix``; the store finds the server through
    the standard AWS settings in the environment, this world's own client directly."""

    def __init__(self, server: S3Server, bucket: str, prefix: str) -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix
        self.store = open_blob_store(f"s3://{bucket}/{prefix}")
        self.client: Any = boto3.client(
            "s3", endpoint_url=server.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip

    def raw(self, key: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")
        except self.client.exceptions.NoSuchKey:
            return None
        with answer["Body"] as body:
            data: bytes = body.read()
        return data

    def write_raw(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def remove_raw(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")

    def stored_keys(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/"
        )
        root = len(self.prefix) + 1
        return {o["Key"][root:] for page in pages for o in page.get("Contents", ())}

    def tick(self) -> None:
        # S3 times have whole seconds, and the store counts a blob as used until the
        # end of the second it was written in.
        time.sleep(1.1)

    def close(self) -> None:
        self.store.close()  # type: ignore[attr-defined]
        self.client.close()


def use_s3(monkeypatch: pytest.MonkeyPatch, server: S3Server) -> None:
    """The standard AWS settings pointing at ``server``, for this test only."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask for a role
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)


def s3_world(monkeypatch: pytest.MonkeyPatch, server: S3Server, prefix: str) -> S3World:
    """A fresh bucket of ``server`` under ``prefix``, the environment set to reach it."""
    use_s3(monkeypatch, server)
    return S3World(server, server.new_bucket(), prefix)
