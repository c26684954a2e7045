"""Consumer lag of every stage, per partition, on ``/metrics``: what an autoscaler (KEDA's
Prometheus scaler, a Prometheus adapter for the HPA) and the alert rules read.

Read from the bus at scrape time, the same way on both buses
(:meth:`~inferstream.bus.Bus.partitions`), so it is right even when no worker runs:

- ``inferstream_consumer_lag{pipeline, stage, group, topic, partition}``: messages the
  stage's group has not committed yet. A group that never committed on a partition
  counts everything retained there (it will read it all: a stage starts from the
  earliest message); a committed offset that retention has passed counts from the
  first retained message, never the deleted ones. Never negative.
- ``inferstream_consumer_committed{...}`` and ``inferstream_partition_end{topic,
  partition}``: the offsets behind it, for rates (``rate(..._committed[1m])`` is the
  stage's throughput).
- ``inferstream_bus_up``: 1 when the bus answered this scrape, else 0 and no lag series
  (an absent series, not a made-up 0, so an alert on lag cannot be silenced by an
  outage).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from inferstream.bus import Bus, PartitionInfo
from inferstream.pipeline import PipelineSpec

log = logging.getLogger(__name__)

_GROUP_LABELS = ["pipeline", "stage", "group", "topic", "partition"]


class LagCollector(Collector):
    """A Prometheus collector of the pipeline's consumer lag, read from ``bus``."""

    def __init__(self, spec: PipelineSpec, bus: Bus) -> None:
        self.spec, self.bus = spec, bus

    def _readings(self) -> list[tuple[str, str, PartitionInfo]]:
        """(stage, group, partition) for every input partition of every stage."""
        out = []
        for stage in self.spec.stages:
            group = stage.group(self.spec.name)
            for topic in stage.inputs:
                out += [(stage.name, group, part) for part in self.bus.partitions(topic, group)]
        return out

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("inferstream_bus_up", "1 when the bus answered this scrape")
        try:
            readings = self._readings()
        except Exception as exc:  # any failure of the bus means it cannot say
            log.warning("no consumer lag this scrape: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        lag = GaugeMetricFamily("inferstream_consumer_lag",
                                "Messages a stage's group has not committed yet, per partition",
                                labels=_GROUP_LABELS)  # fmt: skip
        committed = GaugeMetricFamily("inferstream_consumer_committed",
                                      "Next offset the stage's group will read (absent until "
                                      "it commits)", labels=_GROUP_LABELS)  # fmt: skip
        end = GaugeMetricFamily("inferstream_partition_end",
                                "Offset the next message written to the partition will get",
                                labels=["topic", "partition"])  # fmt: skip
        ends: dict[tuple[str, str], int] = {}
        for stage, group, part in readings:
            labels = [self.spec.name, stage, group, part.topic, str(part.partition)]
            lag.add_metric(labels, part.lag)
            if part.committed is not None:
                committed.add_metric(labels, part.committed)
            ends[(part.topic, str(part.partition))] = part.high
        for (topic, partition), high in sorted(ends.items()):
            end.add_metric([topic, partition], high)
        yield from (lag, committed, end)


def lag_exposition(spec: PipelineSpec, bus: Bus) -> bytes:
    """The lag metrics in Prometheus' text format, read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LagCollector(spec, bus))
    return generate_latest(registry)
