"""The DICOM receiver driven by DCMTK's own tools (``echoscu``, ``storescu``): C-ECHO,
AE titles, every instance admitted once as an upload would be, refused ones answered
with the reason, and end to end through the flagship pipeline, one record per scan."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_builder import make_dataset, to_bytes
from flow_testing import drain_topic

from inferstream.admit import Admitter, source_id
from inferstream.apps.eggs import APP
from inferstream.blobs import LocalBlobStore
from inferstream.bus import open_bus
from inferstream.dicom_receiver import DicomReceiver, ReceiverSettings
from inferstream.envelope import parse
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultFilter, ResultsStore
from inferstream.testing import pipeline_threads


def _receiver(bus: Any, blobs: Any, topic: str, **settings: Any) -> DicomReceiver:
    admitter = Admitter(bus, blobs, topic=topic, tenant="farm", app=APP)
    receiver = DicomReceiver(admitter, ReceiverSettings(port=0, **settings))
    receiver.start()
    return receiver


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[DicomReceiver, Any]]:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_topic("scans", 1)
    receiver = _receiver(bus, LocalBlobStore(tmp_path / "blobs"), "scans", calling=("SCANNER1",))
    yield receiver, bus
    receiver.stop()
    bus.close()


def _scans(folder: Path, seeds: range, **overrides: Any) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"scan-{seed}.dcm"
        path.write_bytes(to_bytes(make_dataset(seed=seed, **overrides)))
        paths.append(path)
    return paths


def _tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_echo_answers_and_only_our_ae_title_from_known_scanners_is_accepted(world: Any) -> None:
    receiver, _bus = world
    port = str(receiver.port)
    ok = _tool("echoscu", "-aet", "SCANNER1", "-aec", "INFERSTREAM", "127.0.0.1", port)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for calling, called in (("SCANNER1", "SOMEONE"), ("STRANGER", "INFERSTREAM")):
        refused = _tool("echoscu", "-aet", calling, "-aec", called, "127.0.0.1", port)
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stdout + refused.stderr


def test_each_instance_is_admitted_once_and_a_bad_one_refused_with_its_reason(
    world: Any, tmp_path: Path
) -> None:
    receiver, bus = world
    good = _scans(tmp_path / "good", range(5))
    bad = _scans(tmp_path / "bad", range(100, 101), PatientID=None)  # no egg id
    argv = ["storescu", "-aet", "SCANNER1", "-aec", "INFERSTREAM", "127.0.0.1",
            str(receiver.port)]  # fmt: skip
    sent = _tool(*argv, *map(str, good))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    refused = _tool(*argv, "-v", *map(str, bad))
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Error: CannotUnderstand" in said, said
    assert receiver.counts.refused == 1 and "PatientID" in receiver.counts.reasons[0]
    again = _tool(*argv, *map(str, good))  # the scanner sends them again (a retry)
    assert again.returncode == 0
    envs = [parse(m.value) for m in drain_topic(bus, "scans", 10)]
    assert len(envs) == 10 and receiver.counts.stored == 10
    ids = {e.id for e in envs}
    assert len(ids) == 5  # the same instance, the same id: one record downstream
    uids = {make_dataset(seed=seed).SOPInstanceUID for seed in range(5)}
    assert ids == {source_id("farm", "dicom", str(uid)) for uid in uids}
    first = envs[0]
    assert first.tenant == "farm" and first.source == "dicom:SCANNER1"
    assert first.attributes["calling_ae"] == "SCANNER1" and first.attributes["egg_id"]
    assert first.payload.content_type == "application/dicom"


def test_only_the_sop_classes_configured_are_taken(tmp_path: Path) -> None:
    from pydicom.uid import CTImageStorage

    from inferstream.dicom_receiver import storage_classes
    from inferstream.errors import ConfigError

    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_topic("scans", 1)
    receiver = _receiver(bus, LocalBlobStore(tmp_path / "blobs"), "scans",
                         sop_classes=("MRImageStorage",))  # fmt: skip
    try:
        argv = ["storescu", "-aec", "INFERSTREAM", "127.0.0.1", str(receiver.port)]
        ct = make_dataset(seed=7, SOPClassUID=CTImageStorage, Modality="CT")
        ct.file_meta.MediaStorageSOPClassUID = CTImageStorage
        (tmp_path / "ct.dcm").write_bytes(to_bytes(ct))
        refused = _tool(*argv, "-v", str(tmp_path / "ct.dcm"))
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0 and "no presentation context" in said.lower(), said
        assert _tool(*argv, *map(str, _scans(tmp_path / "mr", range(2)))).returncode == 0
        assert len(drain_topic(bus, "scans", 2)) == 2  # the MR ones only
    finally:
        receiver.stop()
        bus.close()
    assert storage_classes(["1.2.840.10008.5.1.4.1.1.4"]) == ["1.2.840.10008.5.1.4.1.1.4"]
    with pytest.raises(ConfigError, match="not a storage SOP class"):
        storage_classes(["Verification"])


@pytest.mark.slow
def test_storescu_scans_become_one_record_each_through_the_flagship_pipeline(
    tmp_path: Path,
) -> None:
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}",
        store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )
    scans = _scans(tmp_path / "scans", range(40))
    store = ResultsStore(spec.store)
    bus = open_bus(spec.bus)
    with pipeline_threads(spec, replicas=1):
        receiver = _receiver(bus, LocalBlobStore(tmp_path / "blobs"), "scans.raw")
        try:
            argv = ["storescu", "-aec", "INFERSTREAM", "127.0.0.1", str(receiver.port)]
            for _ in range(2):  # everything twice, as a scanner retrying would
                assert _tool(*argv, *map(str, scans)).returncode == 0
            deadline = time.monotonic() + 120
            while store.count_results("farm", ResultFilter()) < 40 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # a double would have arrived by now
        finally:
            receiver.stop()
    rows = store.list_results("farm", ResultFilter(), limit=1000).items
    store.close()
    bus.close()
    egg_ids = sorted(r.subject or "" for r in rows)
    assert egg_ids == sorted(f"EGG-{seed:06d}" for seed in range(40))  # each once
    assert {r.source for r in rows} == {"SCANNER-03"}  # the application's: the StationName


def _pki(folder: Path) -> dict[str, str]:
    """A CA, and a server and a scanner certificate it signed (openssl)."""

    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], cwd=folder, capture_output=True, check=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=test-ca")  # fmt: skip
    (folder / "san.txt").write_text("subjectAltName=IP:127.0.0.1\n")
    for who in ("server", "scanner", "stranger"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out",
            f"{who}.csr", "-subj", f"/CN={who}")  # fmt: skip
    for who in ("server", "scanner"):
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{who}.crt", "-days", "1",
            "-extfile", "san.txt")  # fmt: skip
    # The stranger's is self-signed: no CA of ours.
    run("x509", "-req", "-in", "stranger.csr", "-signkey", "stranger.key", "-out",
        "stranger.crt", "-days", "1")  # fmt: skip
    return {name: str(folder / name) for name in (
        "ca.crt", "server.crt", "server.key", "scanner.crt", "scanner.key", "stranger.crt",
        "stranger.key")}  # fmt: skip


def test_over_tls_only_scanners_with_a_certificate_of_our_ca_are_heard(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_topic("scans", 1)
    receiver = _receiver(bus, LocalBlobStore(tmp_path / "blobs"), "scans",
                         tls_cert=pki["server.crt"], tls_key=pki["server.key"],
                         tls_ca=pki["ca.crt"])  # fmt: skip
    try:
        port = str(receiver.port)
        base = ["echoscu", "-aec", "INFERSTREAM", "127.0.0.1", port]

        def tls(who: str) -> list[str]:
            return ["+tls", pki[f"{who}.key"], pki[f"{who}.crt"], "+cf", pki["ca.crt"]]

        heard = _tool(*base, *tls("scanner"))
        assert heard.returncode == 0, heard.stdout + heard.stderr
        assert _tool(*base).returncode != 0  # plain TCP to a TLS port
        assert _tool(*base, *tls("stranger")).returncode != 0  # not our CA's
        scans = _scans(tmp_path / "scans", range(3))
        stored = _tool("storescu", "-aec", "INFERSTREAM", *tls("scanner"), "127.0.0.1", port,
                       *map(str, scans))  # fmt: skip
        assert stored.returncode == 0, stored.stdout + stored.stderr
        assert len(drain_topic(bus, "scans", 3)) == 3
    finally:
        receiver.stop()
        bus.close()
