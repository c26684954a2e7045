"""``inferstream example cameras`` itself, small, on the embedded defaults: the three
flows as supervised processes, a progress line, and a summary in which no state is
lost or doubled and every state with all cameras heard matches the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_example_runs_the_three_flows_and_sums_them_up(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "inferstream", "example", "cameras", "--seconds", "10",
            "--speed", "4", "--no-serve", "--no-linger", "--workdir", str(tmp_path / "work"),
            "--tenant", f"t-{uuid.uuid4().hex[:8]}", "--summary-json", str(summary),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "frames sent" in done.stdout, "no progress line was printed"
    result = json.loads(summary.read_text())
    assert result["frames_sent"] > 0 and result["windows"] >= 10
    assert result["states_stored"] == result["dev_states_stored"] == result["windows"]
    assert result["lost"] == result["doubled"] == result["dev_lost"] == result["dev_doubled"] == 0
    assert result["state_accuracy_complete"] >= 0.9
    assert result["degraded_windows"] > 0  # the camera that stops is marked
    assert result["type_sightings"] > 0 and result["type_accuracy"] >= 0.8
