"""Settings of the Kafka bus: the parsed ``kafka://`` URL and the librdkafka configs.

Query options of the URL go to librdkafka unchanged, except the few that make delivery
safe (idempotent producer, ``acks=all``, manual offset commits), which cannot be
switched off from a URL. Kept apart so benchmarks and tests can build the exact
configs the bus uses without opening a bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from inferstream.errors import ConfigError

#: How long a produced record may wait for the cluster's acknowledgement (override
#: with ``?message.timeout.ms=`` in the bus URL).
PRODUCE_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """The parsed ``kafka://`` URL and the librdkafka configs derived from it."""

    bootstrap: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str) -> KafkaSettings:
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc:
            raise ConfigError(f"bad Kafka URL {url!r}; write kafka://host:port[,host:port]")
        return cls(parts.netloc, dict(parse_qsl(parts.query, keep_blank_values=True)))

    def _base(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap, **self.options}

    def producer_config(self) -> dict[str, str]:
        # Idempotence and acks=all are what make "produce returned" mean "durable,
        # once, in order"; the URL cannot switch them off.
        # A record not acknowledged within message.timeout.ms fails its produce() as a
        # transient error: the API answers 503 and a worker retries its batch, rather
        # than both waiting librdkafka's default five minutes for a cluster that is down.
        defaults = {"linger.ms": "5", "message.timeout.ms": str(PRODUCE_TIMEOUT_MS)}
        return {**defaults, **self._base(), "enable.idempotence": "true", "acks": "all"}

    def consumer_config(
        self,
        group: str,
        start: Literal["earliest", "latest"] = "earliest",
        *,
        copartition: bool = False,
    ) -> dict[str, str]:
        """Settings of a group member; ``copartition`` gives partition p of every topic
        to one member (range assignment), which a stage joining several topics needs."""
        defaults = {
            "partition.assignment.strategy": "range" if copartition else "cooperative-sticky",
            # Short timeouts: a stalled member loses its partitions quickly, and tansu
            # holds every group join for max.poll.interval.ms.
            "max.poll.interval.ms": "10000",
            "session.timeout.ms": "6000",
            "heartbeat.interval.ms": "1000",
        }
        return {
            **defaults,
            **self._base(),
            "group.id": group,
            "auto.offset.reset": start,
            # Only an explicit commit() after the output is durable moves a group on.
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
        }

    def admin_config(self) -> dict[str, str]:
        return self._base()
