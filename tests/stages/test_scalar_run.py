"""A kind 'scalar' run: prepare → scalar → evaluate, the scalar reward model alone."""

from __future__ import annotations

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
