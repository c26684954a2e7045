"""A producer's event time held to this host's clock: the rule, the pipeline's setting,
and the bus path's entry point (``check_ingest``). The API's is in
``tests/api/test_api_ingest_trust.py``; a producer's clock stepped mid-stream, end to end,
in ``tests/test_faults_clock.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from egg_scans import egg_envelopes

from inferstream.apps.eggs import APP
from inferstream.errors import ConfigError
from inferstream.event_time import DEFAULT_MAX_CLOCK_SKEW_S, ClockSkewError, check_event_time
from inferstream.ingest_step import check_ingest_step
from inferstream.pipeline import load_pipeline
from inferstream.steps import StepContext

NOW_US = 1_796_000_000_000_000
SECOND_US = 1_000_000


def test_an_event_time_further_ahead_than_the_skew_is_refused_saying_what_to_do() -> None:
    with pytest.raises(ClockSkewError) as refused:
        check_event_time(NOW_US + 3600 * SECOND_US, 60.0, now=NOW_US)
    said = str(refused.value)
    assert "3600.0 s ahead of this host's clock, more than the 60 s allowed" in said
    assert "2026-11-30T01:53:20+00:00" in said and "max_clock_skew_s" in said and "(NTP)" in said
    with pytest.raises(ClockSkewError, match="before 1970"):
        check_event_time(-1, 60.0, now=NOW_US)
    with pytest.raises(ClockSkewError, match="beyond the year 9999"):
        check_event_time(2**62, 60.0, now=NOW_US)


@pytest.mark.parametrize("offset_s", [-3600 * 24 * 365, -3600, 0, 59.999])
def test_the_past_and_a_small_skew_are_accepted(offset_s: float) -> None:
    """A backlog is old, never wrong; a clock a little ahead is within the skew."""
    check_event_time(NOW_US + int(offset_s * SECOND_US), 60.0, now=NOW_US)
    check_event_time(0, 60.0, now=NOW_US)  # not given: the ingesting host stamps it


def test_the_pipeline_file_sets_the_skew(tmp_path: Path) -> None:
    text = "name: p\n{extra}topics: {{raw: 1}}\nstages: [{{name: s, input: raw, steps: [tag]}}]\n"
    path = tmp_path / "p.yaml"
    path.write_text(text.format(extra=""))
    assert load_pipeline(path).max_clock_skew_s == DEFAULT_MAX_CLOCK_SKEW_S == 60.0
    path.write_text(text.format(extra="max_clock_skew_s: 2.5\n"))
    assert load_pipeline(path).max_clock_skew_s == 2.5
    for wrong in ("0", "-1", "soon", "true"):
        path.write_text(text.format(extra=f"max_clock_skew_s: {wrong}\n"))
        with pytest.raises(ConfigError, match="max_clock_skew_s must be a number of seconds"):
            load_pipeline(path)


def test_check_ingest_refuses_an_item_from_a_clock_ahead_with_the_reason() -> None:
    """The bus path: the refusal is the item's outcome, which the worker dead-letters."""
    context = StepContext(pipeline="p", stage="ingest", app=APP, max_clock_skew_s=5.0)
    step = check_ingest_step(context)
    ahead, behind, now = egg_envelopes(3, seed=9)
    ahead.created_at_us += 3600 * SECOND_US
    behind.created_at_us -= 3600 * SECOND_US
    refused, late, on_time = step.process([ahead, behind, now])
    assert isinstance(refused, ClockSkewError)
    assert "more than the 5 s allowed" in str(refused)
    assert not isinstance(late, BaseException) and not isinstance(on_time, BaseException)
    assert late.created_at_us == behind.created_at_us  # kept: late at a window, not lost
    assert on_time.created_at_us == now.created_at_us
