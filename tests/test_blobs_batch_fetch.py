"""A batch's claim checks fetched together (``batch_payloads``), on a folder and on the
S3 test server: each envelope gets its own bytes, an error stays with the envelope it
belongs to, and reads over the network are in flight at the same time."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from blob_worlds import BlobWorld

from inferstream.blobs import batch_payloads, check_in, content_key
from inferstream.envelope import BlobRef, Envelope, new_envelope
from inferstream.errors import BlobError

TENANT = "farm"


def _batch(world: BlobWorld, n: int) -> list[Envelope]:
    """``n`` envelopes, every third inline, the others claim-checked into the store."""
    batch = []
    for i in range(n):
        env = new_envelope(f"scan {i} ".encode() * 40, "application/octet-stream", tenant=TENANT)
        batch.append(env if i % 3 == 0 else check_in(env, world.store, threshold=0))
    return batch


class Watched:
    """The world's store, its reads recorded by thread; with ``meet`` set, the first two
    reads wait for each other (a read that is not in flight with another one breaks the
    barrier, and the test with it)."""

    def __init__(self, store: Any, meet: bool) -> None:
        self.store = store
        self.url = store.url
        self.parallel_reads = store.parallel_reads
        self.threads: list[str] = []
        self.barrier = threading.Barrier(2, timeout=10) if meet else None

    def get(self, ref: BlobRef, tenant: str) -> bytes:
        self.threads.append(threading.current_thread().name)
        if self.barrier is not None and len(self.threads) <= 2:
            self.barrier.wait()
        data: bytes = self.store.get(ref, tenant)
        return data


def test_each_envelope_gets_its_own_bytes_and_a_lost_blob_its_own_error(
    blob_world: BlobWorld,
) -> None:
    batch = _batch(blob_world, 12)
    expected = {env.id: f"scan {i} ".encode() * 40 for i, env in enumerate(batch)}
    lost = batch[4]
    blob_world.remove_raw(content_key(lost.payload.blob.sha256, TENANT))
    payload = batch_payloads(batch, blob_world.store)
    for env in batch:
        if env is lost:
            with pytest.raises(BlobError, match=r"missing|does not exist|not found"):
                payload(env)
        else:
            assert payload(env) == expected[env.id]


@pytest.mark.parametrize("blob_world", ["s3"], indirect=True)
def test_reads_over_the_network_are_in_flight_together(blob_world: BlobWorld) -> None:
    batch = _batch(blob_world, 12)
    watched = Watched(blob_world.store, meet=True)
    payload = batch_payloads(batch, watched)  # type: ignore[arg-type]
    claim_checked = [env for env in batch if env.payload.WhichOneof("body") == "blob"]
    assert len(watched.threads) == len(claim_checked) == 8  # fetched before they are asked for
    assert all(name.startswith("blob-fetch") for name in watched.threads)
    assert [payload(env) for env in batch] == [
        f"scan {i} ".encode() * 40 for i in range(len(batch))
    ]
    assert len(watched.threads) == 8  # nothing fetched twice


@pytest.mark.parametrize("blob_world", ["file"], indirect=True)
def test_a_folder_is_read_in_the_step_itself(blob_world: BlobWorld) -> None:
    batch = _batch(blob_world, 6)
    watched = Watched(blob_world.store, meet=False)
    payload = batch_payloads(batch, watched)  # type: ignore[arg-type]
    assert watched.threads == []  # read when asked, no threads to start
    assert [payload(env) for env in batch] == [f"scan {i} ".encode() * 40 for i in range(6)]
    assert set(watched.threads) == {threading.current_thread().name}
