"""Model-card arithmetic: calibration error on hand-made predictions."""

from __future__ import annotations

import numpy as np
import pytest

from inferstream.apps.eggs.model_card import expected_calibration_error


def test_confident_and_right_is_perfectly_calibrated() -> None:
    truth = np.array([0, 1, 2, 1])
    probs = np.eye(3, dtype=np.float32)[truth]
    assert expected_calibration_error(truth, probs) == pytest.approx(0.0)


def test_overconfidence_is_measured() -> None:
    truth = np.array([0, 0, 1, 1])  # predicted class 0 at 0.9 each time: half right
    probs = np.tile(np.array([[0.9, 0.05, 0.05]], dtype=np.float32), (4, 1))
    assert expected_calibration_error(truth, probs) == pytest.approx(0.4, abs=1e-6)
