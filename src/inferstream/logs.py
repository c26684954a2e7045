"""How verbose inferstream's processes log, decided one way for every command.

Both the pipeline commands (:mod:`inferstream.cli`) and the API server
(:mod:`inferstream.api.cli`) read it here, so neither imports the other for it.
"""

from __future__ import annotations

import logging
import os


def log_level(verbose: bool) -> int:
    """DEBUG with ``-v``; else ``INFERSTREAM_LOG_LEVEL`` (e.g. WARNING), default INFO."""
    if verbose:
        return logging.DEBUG
    name = os.environ.get("INFERSTREAM_LOG_LEVEL", "INFO").upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO
