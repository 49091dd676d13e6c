"""The fault-and-input matrix (docs/reliability.md): each row a fault or a bad input, what the stages
do about it, and what they keep. Rows whose behaviour lives elsewhere are listed in that document
with their tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from egt.runner import run_local
from egt.stages import probe as probe_stage
from egt.storage.manifest import read_manifest
from egt.storage.records import read_records
from egt.storage.store import open_store
from tests.stages.conftest import make_run

pytestmark = pytest.mark.slow


def quiet(run, workdir: Path, **kwargs):
    return run_local(run, workdir, progress=False, echo=lambda *_: None, **kwargs)


def test_a_probe_resumed_with_another_shard_size_probes_every_sample(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    """Row 1: shard_size is speed-only (not in the stage's identity), so an attempt interrupted with
    shards of 4 resumes with shards of 8. The finished shard 0 holds samples 0-3, but shard 0 is now
    0-7: it is probed again, not reused by its index (which kept 8 of the 12 samples)."""
    run = make_run(small_run_doc, str(tmp_path / "store"))
    quiet(run, tmp_path / "work", stop="sft")
    real, calls = probe_stage.probe_records, []

    def interrupted(judge, records, *args, **kwargs):
        calls.append(len(records))
        if len(calls) == 2:
            raise RuntimeError("node lost")
        return real(judge, records, *args, **kwargs)

    monkeypatch.setattr(probe_stage, "probe_records", interrupted)
    with pytest.raises(RuntimeError, match="node lost"):
        quiet(run, tmp_path / "work", start="probe", stop="probe")
    small_run_doc["spec"]["probe"]["shard_size"] = 8
    resumed = make_run(small_run_doc, str(tmp_path / "store"))
    quiet(resumed, tmp_path / "work", start="probe", stop="probe")

    store = open_store(str(tmp_path / "store"))
    probed = read_records(store, "small/probe/probed.jsonl")
    pool = read_records(store, "small/prepare/data/rl.jsonl")
    assert [r["id"] for r in probed] == [r["id"] for r in pool]
    assert read_manifest(store, "small", "probe").counts["samples"] == 12
    assert calls[2:] == [8, 4]  # the old 4-sample shard 0 was not taken for the new 8-sample one
