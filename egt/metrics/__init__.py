"""Prometheus metrics of the stages.

Stages are batch jobs, so each keeps its own registry and pushes it to a Pushgateway (when one is
configured) under the grouping key {run, stage, shard}. Pushing replaces the group, so a retried
stage never leaves stale series behind. A push runs on a background thread with a short timeout, so
a slow or unreachable gateway never stalls a training step; pushes asked for while one is in flight
are folded into the next (the registry's latest values). Names follow Prometheus conventions: the
``egt_`` prefix, base units, ``_total`` for counters; labels stay bounded (no sample ids).
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Gauge, Histogram, push_to_gateway

log = logging.getLogger(__name__)

# Entropy in nats: from a confident 0 to the uniform distribution over Qwen's vocabulary (~11.9).
ENTROPY_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0)
PUSH_TIMEOUT_S = 5.0  # a Pushgateway that takes longer is down, as far as a training step cares


class StageMetrics:
    """A registry for one stage (and shard) of one run, pushed when the stage ends or on demand."""

    def __init__(self, run: str, stage: str, pushgateway: str | None, shard: str = "all") -> None:
        self.run, self.stage, self.pushgateway = run, stage, pushgateway
        # shard: a part's index when a stage fans out over nodes, "all" for a whole stage or a merge.
        self.grouping_key = {"run": run, "stage": stage, "shard": shard}
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}
        self._pushes = threading.Condition()
        self._asked = self._done = 0  # pushes asked for, and the latest of them pushed (or failed)
        self._pusher: threading.Thread | None = None

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

    def push(self, wait: bool = False) -> None:
        """Push the current values to the Pushgateway in the background; with ``wait``, return once
        they are pushed (or the push failed: at most about PUSH_TIMEOUT_S). A failed push is logged,
        never fatal to the stage's work."""
        if not self.pushgateway:
            return
        with self._pushes:
            self._asked += 1
            asked = self._asked
            if self._pusher is None or not self._pusher.is_alive():
                self._pusher = threading.Thread(target=self._push_loop, name="egt-metrics-push", daemon=True)
                self._pusher.start()
            self._pushes.notify_all()
            if wait:
                self._pushes.wait_for(lambda: self._done >= asked, timeout=2 * PUSH_TIMEOUT_S)

    def _push_loop(self) -> None:
        """Push whenever asked; exit after a while with nothing asked (a later push starts anew)."""
        while True:
            with self._pushes:
                if not self._pushes.wait_for(lambda: self._asked > self._done, timeout=60):
                    self._pusher = None
                    return
                asked = self._asked
            try:
                push_to_gateway(
                    self.pushgateway,
                    job="egt",
                    registry=self.registry,
                    grouping_key=self.grouping_key,
                    timeout=PUSH_TIMEOUT_S,
                )
            except OSError as error:
                log.warning("could not push metrics to %s: %s", self.pushgateway, error)
            with self._pushes:
                self._done = asked
                self._pushes.notify_all()
