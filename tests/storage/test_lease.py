"""A stage attempt's lease (egt.storage.lease): one live runner at a time, a dead one taken over."""

from __future__ import annotations

import json
import threading
import time

import pytest

from egt.storage.lease import LeaseHeldError, hold
from egt.storage.store import ArtifactStore

KEY = "run/sft/lease.json"


def test_a_live_holder_stops_the_second_runner_naming_it(artifact_store: ArtifactStore) -> None:
    held, release = threading.Event(), threading.Event()

    def first() -> None:
        with hold(artifact_store, KEY, "stage sft of run run", seconds=1.5):
            held.set()
            release.wait(20)

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(10)
    began = time.monotonic()
    try:
        with (
            pytest.raises(LeaseHeldError, match=r"stage sft of run run is being run by .* pid \d+"),
            hold(artifact_store, KEY, "stage sft of run run", seconds=1.5),
        ):
            pytest.fail("entered a held lease")
    finally:
        release.set()
        thread.join()
    assert time.monotonic() - began < 3  # one renewal seen, well before any expiry
    assert not artifact_store.exists(KEY)  # the first runner released it


def test_a_dead_holders_lease_is_taken_over_after_it_expires(artifact_store: ArtifactStore) -> None:
    dead = {"owner": "gone pid 1", "token": "t", "since": "2026-12-06T00:00:00+00:00"}
    artifact_store.write_bytes(KEY, json.dumps({**dead, "expires": time.time() + 1.0}).encode())
    began, ran = time.monotonic(), []
    with hold(artifact_store, KEY, "stage sft of run run", seconds=1.5):
        ran.append(json.loads(artifact_store.read_bytes(KEY))["owner"])
    assert ran and ran[0] != "gone pid 1"
    assert 0.9 < time.monotonic() - began < 5  # waited for the expiry, no longer
    assert not artifact_store.exists(KEY)


def test_the_lease_is_renewed_while_held_and_released_after_a_failure(artifact_store: ArtifactStore) -> None:
    with (
        pytest.raises(RuntimeError, match="stage failed"),
        hold(artifact_store, KEY, "stage sft of run run", seconds=0.6),
    ):
        first = json.loads(artifact_store.read_bytes(KEY))["expires"]
        time.sleep(0.5)
        assert json.loads(artifact_store.read_bytes(KEY))["expires"] > first
        raise RuntimeError("stage failed")
    assert not artifact_store.exists(KEY)
