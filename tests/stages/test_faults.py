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


def test_a_teacher_outage_fails_annotate_keeping_the_answers_and_a_rerun_asks_only_the_rest(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    """Row 2: the teacher goes down after the first shard. Its failed requests are not "done": the
    stage fails naming the endpoint and the error, no manifest is written, the 8 answered pairs are
    kept, and the rerun (teacher back) asks for exactly the other 8."""
    from egt.stages import annotate as annotate_stage
    from egt.teachers.server import serve

    monkeypatch.setenv("EGT_TEST_TEACHER_KEY", "local")
    server, _ = serve()
    port = server.server_address[1]
    small_run_doc["spec"]["annotate"]["teacher"] = {
        "kind": "openai", "base_url": server.base_url, "model": "scripted",
        "api_key_env": "EGT_TEST_TEACHER_KEY", "max_retries": 0, "timeout_seconds": 5,
    }  # fmt: skip
    run = make_run(small_run_doc, str(tmp_path / "store"))
    real, asked = annotate_stage.annotate, []

    def outage_after_first_shard(records, *args):
        asked.append([r["id"] for r in records])
        out = real(records, *args)
        if len(asked) == 1:
            server.close()  # the endpoint goes away
        return out

    monkeypatch.setattr(annotate_stage, "annotate", outage_after_first_shard)
    with pytest.raises(annotate_stage.TeacherUnavailableError) as failed:
        quiet(run, tmp_path / "work", stop="annotate")
    message = str(failed.value)
    assert f"the teacher at {server.base_url} (scripted) failed for good on 8 of 16 pairs" in message
    assert "the 8 answered pairs are kept" in message and "record 'sft-000008'" in message
    store = open_store(str(tmp_path / "store"))
    assert read_manifest(store, "small", "annotate") is None  # not recorded as finished

    back, _ = serve(port=port)
    try:
        asked.clear()
        _, outcomes = quiet(run, tmp_path / "work", stop="annotate")
    finally:
        back.close()
    assert [o.state for o in outcomes] == ["skipped", "succeeded"]
    assert asked == [[f"sft-{k:06d}" for k in range(8, 16)]]  # only the pairs that failed
    manifest = read_manifest(store, "small", "annotate")
    assert manifest.counts["teacher_errors"] == 0 and manifest.unfinished == 0
    assert manifest.counts["pairs"] == 16


def test_within_the_error_budget_annotate_finishes_and_the_next_run_retries_the_failed_pairs(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    """Row 2, with annotate.teacher_error_budget: the stage finishes without the failed pairs; a
    rerun with the teacher still down changes nothing (SFT, named by annotate's manifest, does not
    run again); a rerun with it back asks for exactly them."""
    from egt.stages import annotate as annotate_stage
    from egt.teachers.server import serve

    monkeypatch.setenv("EGT_TEST_TEACHER_KEY", "local")
    server, _ = serve()
    port = server.server_address[1]
    small_run_doc["spec"]["annotate"]["teacher_error_budget"] = 0.5
    small_run_doc["spec"]["annotate"]["teacher"] = {
        "kind": "openai", "base_url": server.base_url, "model": "scripted",
        "api_key_env": "EGT_TEST_TEACHER_KEY", "max_retries": 0, "timeout_seconds": 5,
    }  # fmt: skip
    run = make_run(small_run_doc, str(tmp_path / "store"))
    real, asked = annotate_stage.annotate, []

    def outage_after_first_shard(records, *args):
        asked.append([r["id"] for r in records])
        out = real(records, *args)
        if len(asked) == 1:
            server.close()
        return out

    monkeypatch.setattr(annotate_stage, "annotate", outage_after_first_shard)
    quiet(run, tmp_path / "work", stop="annotate")
    store = open_store(str(tmp_path / "store"))
    first = store.read_bytes("small/annotate/manifest.json")
    manifest = read_manifest(store, "small", "annotate")
    assert manifest.unfinished == 8 and manifest.counts["teacher_errors"] == 8

    asked.clear()
    _, still_down = quiet(run, tmp_path / "work", stop="annotate")
    assert asked == [[f"sft-{k:06d}" for k in range(8, 16)]] and still_down[-1].state == "succeeded"
    assert store.read_bytes("small/annotate/manifest.json") == first  # nothing changed: kept as it was

    back, _ = serve(port=port)
    try:
        asked.clear()
        quiet(run, tmp_path / "work", stop="annotate")
    finally:
        back.close()
    assert asked == [[f"sft-{k:06d}" for k in range(8, 16)]]
    assert read_manifest(store, "small", "annotate").unfinished == 0
    _, done = quiet(run, tmp_path / "work", stop="annotate")
    assert [o.state for o in done] == ["skipped", "skipped"]
