"""The log level every command shares: ``-v``, then ``INFERSTREAM_LOG_LEVEL``, then INFO."""

from __future__ import annotations

import logging

import pytest

from inferstream.logs import log_level


def test_verbose_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSTREAM_LOG_LEVEL", "ERROR")
    assert log_level(verbose=True) == logging.DEBUG


def test_the_environment_names_the_level_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSTREAM_LOG_LEVEL", "warning")
    assert log_level(verbose=False) == logging.WARNING


@pytest.mark.parametrize("value", [None, "LOUD"])
def test_no_or_an_unknown_level_means_info(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("INFERSTREAM_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("INFERSTREAM_LOG_LEVEL", value)
    assert log_level(verbose=False) == logging.INFO
