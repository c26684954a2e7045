"""``inferstream example filedrop`` itself, small, on the embedded defaults: images
dropped into a folder, labels after each wave, the weak shipped model replaced by a
retrained one without a restart; every file counted against the records stored."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_a_weak_model_is_retrained_promoted_and_swapped_while_files_arrive(
    tmp_path: Path,
) -> None:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "inferstream", "example", "filedrop", "--waves", "3",
            "--per-wave", "160", "--no-serve", "--no-linger", "--workdir", str(tmp_path / "w"),
            "--tenant", f"t-{uuid.uuid4().hex[:8]}", "--summary-json", str(summary),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "wave 2: 160 images; champion 1, challenger in shadow r1" in done.stdout
    result = json.loads(summary.read_text())
    assert result["files_dropped"] == 481 and result["records_stored"] == 480
    assert result["lost"] == result["doubled"] == 0
    assert result["rejected"] == 1  # the broken file, with its reason beside it
    reason = tmp_path / "w" / "inbox" / "rejected" / "broken.png.reason.txt"
    assert "PNG" in reason.read_text()
    # Waves 1 and 2 acted on by the shipped model, wave 3 by the promoted r1: the
    # swap happened while the pipeline ran (one 'up' process from start to end).
    assert result["acting_by_wave"][:2] == ["1 (160)", "1 (160)"]
    assert result["acting_by_wave"][2] == "r1 (160)"
    assert result["promotions"][0].startswith("1 -> r1: promote")
    accuracy = result["accuracy_by_version"]
    assert accuracy["r1 (shadow)"] > accuracy["1 (champion)"] + 0.1
    assert accuracy["r1 (champion)"] > accuracy["1 (champion)"] + 0.1
    assert result["challenger_at_end"] == "r3" and result["switches"] >= 4
