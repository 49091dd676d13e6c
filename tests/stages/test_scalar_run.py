"""A kind 'scalar' run: prepare → scalar → evaluate, the scalar reward model alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from egt.engines.scalar import CONFIG_FILE
from egt.runner import run_local
from egt.storage.manifest import read_manifest
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
