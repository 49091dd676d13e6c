"""StageMetrics against a real Prometheus Pushgateway (tests/fixtures/prometheus.py)."""

from __future__ import annotations

import logging
import math
import re
import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from egt.metrics import ENTROPY_BUCKETS, StageMetrics

BUCKETS = (0.5, 1.0, 4.0)


def _samples(text: str, **labels: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample whose labels include ``labels``, keyed by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _values(text: str, name: str, **labels: str) -> list[float]:
    return [value for (sample, _), value in _samples(text, **labels).items() if sample == name]


def _delete_group(address: str, run: str, stage: str, shard: str = "all") -> None:
    request = urllib.request.Request(
        f"http://{address}/metrics/job/egt/run/{run}/stage/{stage}/shard/{shard}", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status in (200, 202)


def test_push_gauge_and_histogram(pushgateway, pushgateway_metrics):
    metrics = StageMetrics(run="r1", stage="probe", pushgateway=pushgateway)
    metrics.set("probe_accuracy_ratio", 0.5, "Share of probe answers that match the label.")
    metrics.observe("probe_answer_entropy_nats", [0.1, 2.0, float("inf")], BUCKETS, "Answer-token entropy.")
    metrics.push(wait=True)
    text = pushgateway_metrics()

    # The exposition line itself, labels in any order, as a scraper sees it.
    gauge_line = re.compile(
        r'^egt_probe_accuracy_ratio\{(?=[^}]*run="r1")(?=[^}]*stage="probe")[^}]*\} 0\.5$', re.M
    )
    assert gauge_line.search(text), text
    group = {"job": "egt", "run": "r1", "stage": "probe", "shard": "all"}
    assert _values(text, "egt_probe_accuracy_ratio", **group) == [0.5]

    hist = "egt_probe_answer_entropy_nats"
    assert _values(text, f"{hist}_count", **group) == [3.0]
    assert _values(text, f"{hist}_sum", **group) == [math.inf]
    # The gateway re-renders bounds ("1.0" comes back as "1"): compare them as numbers.
    buckets = {
        float(dict(labels)["le"]): value
        for (name, labels), value in _samples(text, **group).items()
        if name == f"{hist}_bucket"
    }
    assert buckets == {0.5: 1.0, 1.0: 1.0, 4.0: 2.0, math.inf: 3.0}
    assert re.search(rf'^{hist}_bucket\{{[^}}]*le="\+Inf"[^}}]*\}} 3$', text, re.M), text
    # The gateway records when the group was last pushed successfully.
    assert _values(text, "push_time_seconds", **group)
    assert _values(text, "push_failure_time_seconds", **group) in ([], [0.0])
    _delete_group(pushgateway, "r1", "probe")


def test_second_push_replaces_the_group(pushgateway, pushgateway_metrics):
    group = {"job": "egt", "run": "r-replace", "stage": "rl", "shard": "all"}
    first = StageMetrics(run="r-replace", stage="rl", pushgateway=pushgateway)
    first.set("rl_reward_mean", 0.25)
    first.set("rl_only_in_first_push", 1.0)
    first.observe("rl_advantage", [0.0, 1.0], BUCKETS)
    first.push(wait=True)
    text = pushgateway_metrics()
    assert _values(text, "egt_rl_only_in_first_push", **group) == [1.0]
    assert _values(text, "egt_rl_advantage_count", **group) == [2.0]

    # A retried stage starts from a fresh registry: what it does not push must disappear.
    second = StageMetrics(run="r-replace", stage="rl", pushgateway=pushgateway)
    second.set("rl_reward_mean", 0.75)
    second.push(wait=True)
    text = pushgateway_metrics()
    assert _values(text, "egt_rl_reward_mean", **group) == [0.75]
    assert "egt_rl_only_in_first_push" not in text
    assert not _values(text, "egt_rl_advantage_count", **group)
    _delete_group(pushgateway, "r-replace", "rl")


def test_groups_are_separate_per_shard_and_stage(pushgateway, pushgateway_metrics):
    shard0 = StageMetrics(run="r-shards", stage="probe", pushgateway=pushgateway, shard="0")
    shard1 = StageMetrics(run="r-shards", stage="probe", pushgateway=pushgateway, shard="1")
    curate = StageMetrics(run="r-shards", stage="curate", pushgateway=pushgateway)
    shard0.set("probe_samples", 10)
    shard1.set("probe_samples", 20)
    curate.set("curate_kept", 5)
    for metrics in (shard0, shard1, curate):
        metrics.push(wait=True)
    # Re-pushing shard 1 must not touch shard 0 or the curate group.
    shard1_again = StageMetrics(run="r-shards", stage="probe", pushgateway=pushgateway, shard="1")
    shard1_again.set("probe_samples", 21)
    shard1_again.push(wait=True)

    text = pushgateway_metrics()
    assert _values(text, "egt_probe_samples", run="r-shards", shard="0") == [10.0]
    assert _values(text, "egt_probe_samples", run="r-shards", shard="1") == [21.0]
    assert _values(text, "egt_curate_kept", run="r-shards", stage="curate", shard="all") == [5.0]
    _delete_group(pushgateway, "r-shards", "probe", "0")
    _delete_group(pushgateway, "r-shards", "probe", "1")
    _delete_group(pushgateway, "r-shards", "curate", "all")


def test_entropy_buckets_are_sorted_and_cover_the_vocabulary():
    assert list(ENTROPY_BUCKETS) == sorted(ENTROPY_BUCKETS)
    assert ENTROPY_BUCKETS[-1] >= math.log(151_665)  # uniform over Qwen2.5's vocabulary: ~11.93 nats


def _dead_address() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_push_to_a_dead_gateway_warns_and_does_not_raise(caplog):
    address = _dead_address()
    metrics = StageMetrics(run="r1", stage="probe", pushgateway=address)
    metrics.set("probe_accuracy_ratio", 0.5)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="egt.metrics"):
        metrics.push(wait=True)
    assert time.monotonic() - began < 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "egt.metrics"]
    assert len(warnings) == 1, caplog.text
    assert address in warnings[0].getMessage()


def test_a_gateway_that_never_answers_does_not_stall_the_caller(caplog):
    """A training step pushes every step: against a gateway that accepts and then hangs, push()
    returns at once, and a waited push gives up after the push timeout with a warning."""
    from egt.metrics import PUSH_TIMEOUT_S

    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen()  # connections are accepted by the kernel, and never answered
        address = f"127.0.0.1:{hanging.getsockname()[1]}"
        metrics = StageMetrics(run="r1", stage="sft", pushgateway=address)
        metrics.set("sft_loss", 1.0)
        began = time.monotonic()
        for _ in range(20):
            metrics.push()
        assert time.monotonic() - began < 0.5
        with caplog.at_level(logging.WARNING, logger="egt.metrics"):
            metrics.push(wait=True)
        waited = time.monotonic() - began
    assert waited < 3 * PUSH_TIMEOUT_S, waited
    assert "could not push metrics" in caplog.text


def test_no_gateway_is_a_no_op(caplog):
    metrics = StageMetrics(run="r1", stage="probe", pushgateway=None)
    metrics.set("probe_accuracy_ratio", 0.5)
    with caplog.at_level(logging.DEBUG, logger="egt.metrics"):
        metrics.push(wait=True)
    assert not caplog.records
