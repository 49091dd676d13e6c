"""A kind 'scalar' run: prepare → scalar → evaluate, the scalar reward model alone."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from egt.engines.scalar import CONFIG_FILE
from egt.report import write_report
from egt.runner import run_local
from egt.storage.manifest import read_manifest
from egt.storage.records import read_records
from tests.engines.test_best_of_n import designed_prompts
from tests.stages.conftest import make_run

pytestmark = pytest.mark.slow


def test_a_scalar_run_trains_and_evaluates_the_scalar_model_only(small_run_doc, tmp_path: Path) -> None:
    small_run_doc["spec"]["kind"] = "scalar"
    del small_run_doc["spec"]["evaluate"]["models"]  # a scalar run evaluates [scalar] by default
    run = make_run(small_run_doc, str(tmp_path / "store"))
    assert run.spec.stages == ("prepare", "scalar", "evaluate")

    store, outcomes = run_local(run, tmp_path / "work", progress=False, echo=lambda *_: None)

    assert [(o.stage, o.state) for o in outcomes] == [
        ("prepare", "succeeded"),
        ("scalar", "succeeded"),
        ("evaluate", "succeeded"),
    ]
    scalar = read_manifest(store, "small", "scalar")
    assert scalar.counts["pairs"] == 16 and scalar.counts["steps"] == 2  # 16 pairs, 8 per step
    assert (store.local_path("small/scalar/model") / CONFIG_FILE).exists()
    assert set(read_manifest(store, "small", "evaluate").inputs) == {"prepare", "scalar"}
    results = store.read_json("small/evaluate/results.json")
    assert set(results) == {"scalar"} and results["scalar"]["eval"]["pairs"] == 6
    assert not any(store.exists(f"small/{stage}/manifest.json") for stage in ("annotate", "sft", "rl"))

    with pytest.raises(ValueError, match=r"stage sft is not part of this run \(kind scalar"):
        run_local(run, tmp_path / "work", start="sft", progress=False, echo=lambda *_: None)


def test_score_and_filter_apply_the_runs_model_as_stages(
    small_run_doc, s3_server, tmp_path: Path, capsys
) -> None:
    """What `egt score` and `egt filter` do by hand, as stages the operator runs as Jobs: here their
    pods' entrypoints on an S3 store, the candidates file in S3 with images relative to it; their
    outputs in the store and their sections in the report."""
    import json
    import uuid

    import yaml

    from egt.cli import main
    from egt.storage.store import open_store
    from jobs.entrypoint import stage_main

    folder = tmp_path / "candidates"
    designed_prompts(folder, folder / "prompts.jsonl", n=4, candidates=3)
    lines = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]
    for line in lines:  # references relative to the file, as a dataset published to S3 has them
        line["images"] = [str(Path(ref).relative_to(folder)) for ref in line["images"]]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    root = f"{s3_server.uri}/{uuid.uuid4().hex}"
    open_store(f"{root}/candidates").upload_dir(folder, "")
    spec = small_run_doc["spec"]
    spec["kind"] = "scalar"
    del spec["evaluate"]["models"]
    spec["score"] = {"candidates": f"{root}/candidates/prompts.jsonl", "batch_size": 4}
    spec["filter"] = {"enabled": True, "fraction": 0.25}
    run = make_run(small_run_doc, f"{root}/store")
    assert run.spec.stages == ("prepare", "scalar", "evaluate", "score", "filter")
    run_local(run, tmp_path / "work", stop="evaluate", progress=False, echo=lambda *_: None)
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(run.model_dump(mode="json")))
    args = ["--spec", str(spec_file), "--workdir", str(tmp_path / "pods"), "--no-progress"]

    assert stage_main("score", args) == 0
    store = open_store(run.spec.store.uri)
    assert not store.exists("small/report/report.md")
    assert stage_main("filter", args) == 0
    # The run's last stage renders the report into the store: on a cluster no one else would.
    assert store.exists("small/report/report.md")
    assert f"report: {run.spec.store.uri}/small/report/report.md" in capsys.readouterr().out

    score, flt = read_manifest(store, "small", "score"), read_manifest(store, "small", "filter")
    assert set(score.inputs) == {"scalar"} and set(flt.inputs) == {"prepare", "scalar"}
    rows = read_records(store, "small/score/scores.jsonl")
    assert [r["id"] for r in rows] == [line["id"] for line in lines]
    assert all(len(r["scores"]) == 3 for r in rows) and score.counts["prompts"] == len(lines)
    assert score.metrics["model_calls"] == 3 * len(rows) and score.metrics["kind"] == "scalar"
    kept = read_records(store, "small/filter/kept.jsonl")
    flagged = read_records(store, "small/filter/flagged.jsonl")
    assert (len(kept), len(flagged)) == (12, 4)  # a quarter of the 16-pair SFT pool
    assert max(r["filter_margin"] for r in flagged) <= min(r["filter_margin"] for r in kept)
    assert sum(row["flagged"] for row in flt.metrics["filter"]["by_truth_kind"].values()) == 4

    report = write_report(store, run, tmp_path / "report").read_text()
    assert f"The scalar model scored {len(rows)} prompts, {3 * len(rows)} candidate" in report
    assert "flagged 4 of the 16 pairs of the sft pool (lowest 0.25 of margins)" in report
    assert "| truth kind | pairs | flagged | flagged share | random flagger | difference |" in report

    # A new candidates file is new input: score runs again, nothing else does.
    open_store(f"{root}/candidates").write_bytes("prompts.jsonl", json.dumps(lines[0]).encode() + b"\n")
    assert main(["run", str(spec_file), "--local", "-q", "--workdir", str(tmp_path / "work")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^score +succeeded", printed, re.M) and re.search(r"^filter +skipped", printed, re.M)
    assert len(read_records(store, "small/score/scores.jsonl")) == 1
    assert "report: " in printed  # written when the run's last stage is done, here filter


def test_a_second_phase_adds_the_extra_pairs_at_its_own_rate_and_resumes_inside_it(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    """Skywork-VL's two phases on your own data: phase 2 trains on the SFT pool plus text-only pairs.
    An interruption inside phase 2 resumes there: phase 1 is not trained again."""
    import json

    from egt.data.synthetic import generate_split
    from egt.stages import scalar as scalar_stage

    data = tmp_path / "data"
    for name, n, seed in (("sft", 8, 1), ("eval", 4, 2)):
        records = generate_split(data, name, n, seed)
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text_only = [
        {"id": f"t{k}", "images": [], "query": "2 + 2?", "response_1": "4", "response_2": "5", "label": 1}
        for k in range(4)
    ]
    (data / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text_only))
    spec = small_run_doc["spec"]
    spec["kind"] = "scalar"
    del spec["evaluate"]["models"], spec["annotate"]
    spec["data"] = {
        "sft": {"uri": str(data / "sft.jsonl")},
        "scalar_extra": {"uri": str(data / "extra.jsonl")},
        "eval": {"held": {"uri": str(data / "eval.jsonl")}},
    }
    spec["scalar"] |= {"global_batch_size": 4, "micro_batch_size": 4, "checkpoint_every_steps": 1}
    spec["scalar"]["second_phase"] = {"epochs": 1, "learning_rate": 1e-4}
    run = make_run(small_run_doc, str(tmp_path / "store"))

    real, trained = scalar_stage.train_pairs, []

    def interrupted(model, engine, pairs, spec, state, on_step, current):
        trained.append((spec.learning_rate, len(pairs)))

        def step(state):
            on_step(state)
            if spec.learning_rate == 1e-4 and state.step == 2 and len(trained) == 2:
                raise RuntimeError("node lost")

        return real(model, engine, pairs, spec, state, step, current)

    monkeypatch.setattr(scalar_stage, "train_pairs", interrupted)
    with pytest.raises(RuntimeError, match="node lost"):
        run_local(run, tmp_path / "work", progress=False, echo=lambda *_: None)
    assert trained == [(1e-3, 8), (1e-4, 12)]  # phase 1: the 8 pool pairs; phase 2: + 4 text-only

    store, _ = run_local(run, tmp_path / "work", progress=False, echo=lambda *_: None)
    assert trained[2:] == [(1e-4, 12)]  # resumed inside phase 2; phase 1 not trained again
    history = store.read_json("small/scalar/history.json")
    assert [(h["phase"], h["step"]) for h in history] == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
    assert history[2]["lr"] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(0)))  # phase 2 peaks at its own rate
    manifest = read_manifest(store, "small", "scalar")
    assert manifest.counts["extra_pairs"] == 4 and manifest.counts["steps"] == 5
    assert set(store.read_json("small/evaluate/results.json")["scalar"]) == {"held"}
