"""Prometheus metrics of the stages.

Stages are batch jobs, so each keeps its own registry and pushes it to a Pushgateway (when one is
configured) under the grouping key {run, stage, shard}. Pushing replaces the group, so a retried
stage never leaves stale series behind. Names follow Prometheus conventions: the ``egt_`` prefix,
base units, ``_total`` for counters; labels stay bounded (no sample ids).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge, Histogram, push_to_gateway

log = logging.getLogger(__name__)

# Entropy in nats: from a confident 0 to the uniform distribution over Qwen's vocabulary (~11.9).
ENTROPY_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0)


class StageMetrics:
    """A registry for one stage (and shard) of one run, pushed when the stage ends or on demand."""

    def __init__(self, run: str, stage: str, pushgateway: str | None, shard: str = "all") -> None:
        self.run, self.stage, self.pushgateway = run, stage, pushgateway
        # shard: a part's index when a stage fans out over nodes, "all" for a whole stage or a merge.
        self.grouping_key = {"run": run, "stage": stage, "shard": shard}
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}

    def set(self, name: str, value: float, help_text: str = "", **labels: str) -> None:
        """Set gauge ``egt_<name>`` (labels: run, stage, plus ``labels``)."""
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = Gauge(
                f"egt_{name}", help_text or name, ["run", "stage", *sorted(labels)], registry=self.registry
            )
            self._gauges[name] = gauge
        gauge.labels(run=self.run, stage=self.stage, **labels).set(value)

    def observe(
        self, name: str, values: list[float], buckets: tuple[float, ...], help_text: str = ""
    ) -> None:
        """Add ``values`` to histogram ``egt_<name>``; infinite values land in the +Inf bucket."""
        histogram = self._histograms.get(name)
        if histogram is None:
            histogram = Histogram(
                f"egt_{name}", help_text or name, ["run", "stage"], buckets=buckets, registry=self.registry
            )
            self._histograms[name] = histogram
        child = histogram.labels(run=self.run, stage=self.stage)
        for value in values:
            child.observe(value)

    def push(self) -> None:
        """Push to the Pushgateway; a failed push is logged, never fatal to the stage's work."""
        if not self.pushgateway:
            return
        try:
            push_to_gateway(
                self.pushgateway, job="egt", registry=self.registry, grouping_key=self.grouping_key
            )
        except OSError as error:
            log.warning("could not push metrics to %s: %s", self.pushgateway, error)
