"""Files dropped into a folder become events: the file-drop source.

``inferstream watch FOLDER PIPELINE`` (or :class:`FolderSource` in a program) looks at
the folder every ``interval_s``. A regular file whose size and modification time have
not changed for ``settle_s`` (so one still being copied in is left for the next look)
is checked through the application's codecs, exactly as an upload to ``POST
/v1/scans`` would be:

- one that passes is kept in the tenant's blob store, wrapped in an ingest envelope
  (its subject the file's name without suffix, its ``file`` and ``blob_sha256``
  attributes set; a payload over the pipeline's claim-check size travels by
  reference) and produced to the pipeline's input topic; then it moves to ``done/``;
- one that does not moves to ``rejected/`` with ``<name>.reason.txt`` beside it saying
  why, so a bad file is seen, never retried forever and never silent.

The envelope id is derived from the tenant, the file name and the bytes' digest, so a
crash between producing and moving sends the same id again at the next look, and the
pipeline's deterministic output ids make that a rewrite, not a second record.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from inferstream.admit import Admitter, source_id
from inferstream.envelope import Envelope
from inferstream.errors import InferstreamError, InvalidInput

log = logging.getLogger(__name__)

DONE, REJECTED = "done", "rejected"
REASON_SUFFIX = ".reason.txt"


@dataclass
class Looked:
    """What one look at the folder did, by file name."""

    sent: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


class FolderSource:
    """A folder watched for files, each produced to ``topic`` as an event."""

    def __init__(
        self,
        folder: Path,
        admitter: Admitter,
        *,
        settle_s: float = 0.5,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.folder, self.admitter, self.settle_s = folder, admitter, settle_s
        self.attributes = dict(attributes or {})
        #: name -> (size, mtime_ns, first seen so): a file is taken once it holds still.
        self._seen: dict[str, tuple[int, int, float]] = {}
        for sub in (DONE, REJECTED):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def look(self) -> Looked:
        """One look: every settled file sent (one produce call) or rejected, then moved."""
        looked, ready = Looked(), []
        for path in self._settled():
            try:
                ready.append((path, self._envelope(path)))
            except InvalidInput as exc:
                self._reject(path, str(exc))
                looked.rejected[path.name] = str(exc)
        if ready:
            self.admitter.produce([env for _, env in ready])
            for path, _ in ready:
                os.replace(path, self.folder / DONE / path.name)
                self._seen.pop(path.name, None)
                looked.sent.append(path.name)
        return looked

    def _settled(self) -> list[Path]:
        now, settled = time.monotonic(), []
        present = set()
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue  # hidden (a copy in progress), or done/ and rejected/
            present.add(path.name)
            stat = path.stat()
            size_time = (stat.st_size, stat.st_mtime_ns)
            seen = self._seen.get(path.name)
            if seen is None or seen[:2] != size_time:
                self._seen[path.name] = (*size_time, now)
            elif now - seen[2] >= self.settle_s:
                settled.append(path)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return settled

    @property
    def topic(self) -> str:
        return self.admitter.topic

    def _envelope(self, path: Path) -> Envelope:
        data = path.read_bytes()
        checked = self.admitter.check(data)
        digest = hashlib.sha256(data).hexdigest()
        return self.admitter.wrap(
            checked,
            ident=source_id(self.admitter.tenant, path.name, digest),
            source=f"folder:{self.folder.name}",
            subject=path.stem,
            attributes={**self.attributes, "file": path.name},
        )

    def _reject(self, path: Path, why: str) -> None:
        log.warning("%s rejected: %s (moved to %s/)", path.name, why, REJECTED)
        target = self.folder / REJECTED / path.name
        os.replace(path, target)
        target.with_name(path.name + REASON_SUFFIX).write_text(why + "\n")
        self._seen.pop(path.name, None)


def watch(
    source: FolderSource,
    *,
    interval_s: float,
    stop: threading.Event,
    say: Callable[[str], None] = print,
) -> None:
    """Look every ``interval_s`` until ``stop`` is set; a bus or blob store that is down
    is said and tried again at the next look (the files stay where they are)."""
    while not stop.is_set():
        try:
            looked = source.look()
        except InferstreamError as exc:
            log.warning("cannot send the folder's files now (%s); trying again", exc)
        else:
            if looked.sent or looked.rejected:
                rejected = "".join(f"\n  rejected {n}: {why}" for n, why in looked.rejected.items())
                say(f"sent {len(looked.sent)} files to {source.topic}{rejected}")
        stop.wait(interval_s)


__all__ = ["DONE", "REJECTED", "FolderSource", "Looked", "watch"]
