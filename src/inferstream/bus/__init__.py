"""Message buses, chosen by URL scheme.

- ``sqlite:///path/to/bus.db`` — the embedded durable log (default, no server).
- ``kafka://host:port[,host:port]`` — Kafka or any Kafka-protocol cluster
  (needs ``inferstream[kafka]``).

Backends are imported lazily so that a one-machine install never imports Kafka.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from inferstream.bus.base import (
    Bus,
    Consumer,
    Message,
    PartitionInfo,
    Record,
    RetentionPolicy,
    SeekTarget,
    SeekToTimestamp,
    TopicPartition,
    partition_for,
)
from inferstream.bus.seek import InvalidSeekTarget, seek_target
from inferstream.errors import ConfigError

#: scheme -> "module:factory"; each factory takes the URL and returns a Bus.
BACKENDS = {
    "sqlite": "inferstream.bus.embedded:EmbeddedBus",
    "kafka": "inferstream.bus.kafka:KafkaBus",
}


def open_bus(url: str) -> Bus:
    """Open the bus that ``url`` names, e.g. ``sqlite:///data/bus.db``."""
    scheme = urlsplit(url).scheme
    target = BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
        raise ConfigError(f"unknown bus URL scheme in {url!r}; use one of {known}")
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    bus: Bus = factory(url)
    return bus


__all__ = [
    "BACKENDS",
    "Bus",
    "Consumer",
    "InvalidSeekTarget",
    "Message",
    "PartitionInfo",
    "Record",
    "RetentionPolicy",
    "SeekTarget",
    "SeekToTimestamp",
    "TopicPartition",
    "open_bus",
    "partition_for",
    "seek_target",
]
