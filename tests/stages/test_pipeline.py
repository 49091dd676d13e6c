"""The whole pipeline on the tiny model: artifacts, skip rules, resume, S3, container entrypoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from egt.report import write_report
from egt.runner import run_local
from egt.stages import probe as probe_stage
from egt.storage.manifest import read_manifest
from egt.storage.records import read_records
from tests.stages.conftest import make_run

pytestmark = pytest.mark.slow


def states(outcomes) -> dict[str, str]:
    return {o.stage: o.state for o in outcomes}


def test_whole_pipeline_on_s3_then_skips_then_reruns_what_a_change_touches(
    s3_server, small_run_doc, tmp_path: Path
) -> None:
    run = make_run(small_run_doc, f"{s3_server.uri}/pipeline", s3_server.endpoint_url)
    store, outcomes = run_local(run, tmp_path / "work", progress=False, echo=lambda *_: None)
    assert states(outcomes) == dict.fromkeys(run.spec.stages, "succeeded")

    probed = read_records(store, "small/probe/probed.jsonl")
    assert len(probed) == 12 and all("answer_entropy" in r for r in probed)
    curated = read_records(store, "small/curate/curated.jsonl")
    entropies = [r["answer_entropy"] for r in curated]
    assert len(curated) == 6 and entropies == sorted(entropies)
    history = json.loads(store.read_text("small/rl/history.json"))
    assert [h["step"] for h in history] == [1, 2]
    results = store.read_json("small/evaluate/results.json")
    assert set(results) == {"sft", "rl", "scalar"} and results["rl"]["eval"]["pairs"] == 6
    scalar = results["scalar"]["eval"]  # scores each response alone: the order cannot matter
    assert scalar["accuracy_original"] == scalar["accuracy_swapped"] and scalar["order_consistency"] == 1.0
    assert read_manifest(store, "small", "evaluate").outputs["results"] == "results.json"

    report = write_report(store, run, tmp_path / "report")
    assert "Curation" in report.read_text()

    _, again = run_local(run, tmp_path / "work", progress=False, echo=lambda *_: None)
    assert states(again) == dict.fromkeys(run.spec.stages, "skipped")

    small_run_doc["spec"]["curate"]["keep"] = 5
    changed = make_run(small_run_doc, f"{s3_server.uri}/pipeline", s3_server.endpoint_url)
    _, rerun = run_local(changed, tmp_path / "work", progress=False, echo=lambda *_: None)
    assert states(rerun) == {
        "prepare": "skipped",
        "annotate": "skipped",
        "sft": "skipped",
        "probe": "skipped",
        "curate": "succeeded",
        "rl": "succeeded",
        "scalar": "skipped",
        "evaluate": "succeeded",
    }
    assert len(read_records(store, "small/curate/curated.jsonl")) == 5


def test_interrupted_probe_resumes_without_redoing_finished_shards(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    run = make_run(small_run_doc, str(tmp_path / "store"))
    run_local(run, tmp_path / "work", stop="sft", progress=False, echo=lambda *_: None)

    real = probe_stage.probe_records
    calls: list[list[str]] = []
    failures = ["node lost"]

    def flaky(judge, records, *args, **kwargs):
        calls.append([r["id"] for r in records])
        if len(calls) == 2 and failures:
            raise RuntimeError(failures.pop())
        return real(judge, records, *args, **kwargs)

    monkeypatch.setattr(probe_stage, "probe_records", flaky)
    with pytest.raises(RuntimeError, match="node lost"):
        run_local(run, tmp_path / "work", start="probe", stop="probe", progress=False, echo=lambda *_: None)
    assert len(calls) == 2 and read_manifest(run_store(run), "small", "probe") is None

    calls.clear()
    _, outcomes = run_local(
        run, tmp_path / "work", start="probe", stop="probe", progress=False, echo=lambda *_: None
    )
    assert states(outcomes) == {"probe": "succeeded"}
    # 12 samples in shards of 4: the first shard was finished before the failure and is not redone.
    assert [ids[0] for ids in calls] == ["rl-000004", "rl-000008"]
    assert len(read_records(run_store(run), "small/probe/probed.jsonl")) == 12


def test_a_changed_config_discards_the_interrupted_attempt(small_run_doc, tmp_path: Path) -> None:
    run = make_run(small_run_doc, str(tmp_path / "store"))
    run_local(run, tmp_path / "work", stop="annotate", progress=False, echo=lambda *_: None)
    store = run_store(run)
    store.write_text("small/annotate/shards/stale.jsonl", "{}\n")
    small_run_doc["spec"]["annotate"]["teacher"]["error_rate"] = 0.3
    changed = make_run(small_run_doc, str(tmp_path / "store"))
    _, outcomes = run_local(
        changed, tmp_path / "work", start="annotate", stop="annotate", progress=False, echo=lambda *_: None
    )
    assert states(outcomes) == {"annotate": "succeeded"}
    assert not store.exists("small/annotate/shards/stale.jsonl")


def test_stage_jobs_run_as_container_commands(small_run_doc, tmp_path: Path) -> None:
    run = make_run(small_run_doc, str(tmp_path / "store"))
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(run.model_dump(mode="json")))
    env_cmd = [sys.executable, "-m"]
    done = subprocess.run(
        [
            *env_cmd,
            "jobs.prepare",
            "--spec",
            str(spec_file),
            "--workdir",
            str(tmp_path / "w"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "prepare: succeeded" in done.stdout
    early = subprocess.run(
        [*env_cmd, "jobs.curate", "--spec", str(spec_file), "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert early.returncode == 1
    assert "needs the output of stage probe" in early.stderr.splitlines()[-1]
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec_file.read_text().replace("strategy: entropy", "strategy: lowest"))
    invalid = subprocess.run(
        [*env_cmd, "jobs.curate", "--spec", str(bad)], capture_output=True, text=True, timeout=300
    )
    assert invalid.returncode == 2 and "spec.curate.strategy" in invalid.stderr


def run_store(run):
    from egt.storage.store import open_store

    return open_store(run.spec.store.uri, run.spec.store.endpoint_url)


def test_probe_fans_out_as_parts_and_the_next_job_merges_them(
    small_run_doc, tmp_path: Path, monkeypatch, caplog, capsys
) -> None:
    from jobs.entrypoint import stage_main

    # 2 pods × 2 replicas, each replica a process on 2 of the pod's 4 GPUs (CPU here: hf on cpu).
    small_run_doc["spec"]["probe"].update({"num_shards": 4, "replicas_per_node": 2})
    small_run_doc["spec"].setdefault("cluster", {})["resources"] = {"probe": {"gpus_per_node": 4}}
    run = make_run(small_run_doc, str(tmp_path / "store"))
    run_local(run, tmp_path / "work", stop="sft", progress=False, echo=lambda *_: None)
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(run.model_dump(mode="json")))
    args = ["--spec", str(spec_file), "--workdir", str(tmp_path / "pods"), "--no-progress"]

    assert stage_main("curate", args) == 1  # no part has run: nothing to merge yet
    assert stage_main("probe", args) == 1  # a fanned-out stage needs its part index
    assert stage_main("probe", [*args, "--part", "0"]) == 0  # one part by hand
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")  # how an Indexed Job names the pod
    with caplog.at_level("INFO", logger="jobs.probe"):
        assert stage_main("probe", args) == 0  # pod 1: parts 2 and 3, at once
    assert "part 2 on GPUs 0,1" in caplog.text and "part 3 on GPUs 2,3" in caplog.text
    assert stage_main("curate", args) == 1  # part 1 is still missing
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    assert stage_main("probe", args) == 0  # pod 0: part 0 is up to date, part 1 runs
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    assert stage_main("curate", args) == 0

    store = run_store(run)
    parts = [read_records(store, f"small/probe/part-0000{i}-of-00004/probed.jsonl") for i in range(4)]
    assert [len(p) for p in parts] == [3, 3, 3, 3]
    merged = read_records(store, "small/probe/probed.jsonl")
    pool = read_records(store, "small/prepare/data/rl.jsonl")
    assert [r["id"] for r in merged] == [r["id"] for r in pool]
    assert read_manifest(store, "small", "probe").counts["samples"] == 12
    assert read_manifest(store, "small", "curate") is not None

    # vLLM replicas must be told how many GPUs each engine spans.
    vllm = yaml.safe_load(spec_file.read_text())
    vllm["spec"]["probe"]["engine"] = "vllm"
    spec_file.write_text(yaml.safe_dump(vllm))
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    assert stage_main("probe", args) == 1
    assert "tensor_parallel_size is 1: set it to 2" in capsys.readouterr().err
