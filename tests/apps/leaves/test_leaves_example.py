"""``inferstream example leaves`` itself, small, on the embedded defaults: a field trial
through the whole pipeline, a progress line, and a summary with no leaf lost or
doubled."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_example_grades_every_leaf_once(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "inferstream", "example", "leaves", "--positions", "2",
            "--days", "2", "--workdir", str(tmp_path / "work"),
            "--tenant", f"t-{uuid.uuid4().hex[:8]}", "--summary-json", str(summary),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trend (grade change per day)" in done.stdout
    result = json.loads(summary.read_text())
    assert result["ok"] is True and result["photos"] == 4
    assert result["crops"] == result["leaf_records"] == result["leaves_truth"] > 0
    assert result["grade_records"] == 5 * result["leaf_records"]
    zero = ("lost_grades", "doubled_grades", "lost_leaves", "doubled_leaves", "unexpected")
    assert all(result[key] == 0 for key in zero), result
    assert result["detector_precision"] >= 0.9 and result["detector_recall"] >= 0.9
    assert {cell["disease"] for cell in result["analysis"]["cells"]} == {
        "rust", "mildew", "spot", "blight", "scab",
    }  # fmt: skip
