"""The file-drop source on the embedded bus: settled files become checked events and
move to done/, bad ones to rejected/ with their reason, a file being written is left
alone, and a crash between producing and moving sends the same id again."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flow_testing import drain_topic

from inferstream.admit import Admitter
from inferstream.apps.filedrop import APP
from inferstream.apps.filedrop.shapes import png, shapes
from inferstream.blobs import LocalBlobStore, payload_bytes
from inferstream.bus import Bus, open_bus
from inferstream.envelope import parse
from inferstream.folder_source import FolderSource


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[FolderSource, Path, Bus, LocalBlobStore]]:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_topic("drop", 1)
    blobs = LocalBlobStore(tmp_path / "blobs")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    admitter = Admitter(bus, blobs, topic="drop", tenant="farm", app=APP, claim_check_bytes=1024)
    source = FolderSource(inbox, admitter, settle_s=0.0)
    yield source, inbox, bus, blobs
    bus.close()


def _look_until(source: FolderSource, settled: int) -> tuple[list[str], dict[str, str]]:
    """Looks until ``settled`` files were sent or rejected (a file is taken on the look
    after the one that saw it hold still)."""
    sent: list[str] = []
    rejected: dict[str, str] = {}
    for _ in range(5):
        looked = source.look()
        sent += looked.sent
        rejected.update(looked.rejected)
        if len(sent) + len(rejected) >= settled:
            break
    return sent, rejected


def test_files_become_checked_events_and_bad_ones_are_set_aside_with_the_reason(world: Any) -> None:
    source, inbox, bus, blobs = world
    made = list(shapes(5, seed=2))
    for shape in made:
        (inbox / f"{shape.name}.png").write_bytes(png(shape.image))
    (inbox / "notes.txt").write_text("not an image")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 4), np.float32))
    (inbox / "array.npy").write_bytes(buffer.getvalue())  # a known kind, not this app's
    (inbox / ".copying.png.part").write_bytes(b"half")  # hidden: never taken
    sent, rejected = _look_until(source, 7)
    assert sorted(sent) == sorted(f"{s.name}.png" for s in made)
    assert set(rejected) == {"notes.txt", "array.npy"}
    assert "none of the known kinds" in rejected["notes.txt"]
    assert "image/png" in rejected["array.npy"], rejected["array.npy"]  # what it takes
    assert (inbox / "rejected" / "notes.txt.reason.txt").read_text().strip() == rejected[
        "notes.txt"
    ]
    assert sorted(p.name for p in (inbox / "done").iterdir()) == sorted(sent)
    assert (inbox / ".copying.png.part").exists()
    envs = [parse(m.value) for m in drain_topic(bus, "drop", 5)]
    assert len(envs) == 5 and len({e.id for e in envs}) == 5
    by_name = {e.attributes["name"]: e for e in envs}
    for shape in made:
        env = by_name[shape.name]
        assert env.tenant == "farm" and env.attributes["file"] == f"{shape.name}.png"
        assert env.payload.content_type == "image/png" and env.attributes["width"] == "32"
        data = payload_bytes(env, blobs)  # claim checked (over 1 KiB) or inline: the bytes
        assert data == png(shape.image)
        assert blobs.get(env.payload.blob, "farm") == data if env.payload.HasField("blob") else True


def test_a_file_still_being_written_waits_until_it_holds_still(world: Any) -> None:
    source, inbox, _bus, _blobs = world
    source.settle_s = 0.3
    path = inbox / "slow.png"
    data = png(next(shapes(1, seed=3)).image)
    path.write_bytes(data[:20])
    assert source.look().sent == []  # first seen
    path.write_bytes(data)  # grew: seen afresh
    assert source.look().sent == []
    time.sleep(0.35)
    assert source.look().sent == ["slow.png"]


def test_a_crash_before_the_move_sends_the_same_id_again(world: Any) -> None:
    source, inbox, bus, _blobs = world
    shape = next(shapes(1, seed=4))
    (inbox / "a.png").write_bytes(png(shape.image))
    _look_until(source, 1)
    # As if the process died after producing: the file is back where it was.
    os.replace(inbox / "done" / "a.png", inbox / "a.png")
    again = FolderSource(inbox, source.admitter, settle_s=0.0)
    _look_until(again, 1)
    first, second = (parse(m.value) for m in drain_topic(bus, "drop", 2))
    assert first.id == second.id  # the pipeline's deterministic ids make it a rewrite


def test_the_watch_command_says_how_to_use_it() -> None:
    done = subprocess.run([sys.executable, "-m", "inferstream", "watch", "--help"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "rejected/" in done.stdout and "--settle" in done.stdout
