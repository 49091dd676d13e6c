"""The probe stage's correctness scores (probe.correctness_samples) and curate ranking by them.

One SFT run; each probe runs in its own copy of that store. The SFT model writes no parseable answer
in 12 tokens, so outputs are read as answers from their tokens (tests/engines/test_probe_correctness.py)
to give the scores something to vary over.
"""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from egt.engines.vllm_engine import vllm_available
from egt.runner import run_local
from egt.spec import dump_run
from egt.storage.manifest import read_manifest
from egt.storage.records import read_records
from egt.storage.store import open_store
from tests.engines.test_probe_correctness import read_answers
from tests.stages.conftest import SMALL_RUN, make_run

pytestmark = pytest.mark.slow

K = 3
CORRECTNESS = {"correctness_samples": K, "correctness_temperature": 1.5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A store holding the small run up to sft."""
    store = tmp_path_factory.mktemp("trained") / "store"
    run = make_run(SMALL_RUN, str(store))
    # In a process of its own, as on a cluster: DeepSpeed (sft) cannot start in a process where an
    # earlier test's in-process vLLM engine has torn down the default process group (make test-vllm).
    spec_file = store.parent / "run.yaml"
    spec_file.write_text(dump_run(run))
    egt = str(Path(sys.executable).parent / "egt")
    command = [egt, "run", str(spec_file), "--local", "--until", "sft", "-q", "--no-report"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=store.parent)
    assert done.returncode == 0, done.stderr
    assert read_manifest(open_store(str(store)), "small", "sft") is not None
    return store


def run_stage(store: Path, stage: str, probe: dict, curate: dict | None = None):
    doc = copy.deepcopy(SMALL_RUN)
    doc["spec"]["probe"].update(probe)
    doc["spec"]["curate"].update(curate or {})
    run = make_run(doc, str(store))
    with pytest.MonkeyPatch.context() as patch:
        read_answers(patch)
        artifacts, outcomes = run_local(
            run, store.parent / "work", start=stage, stop=stage, progress=False, echo=lambda *_: None
        )
    assert [o.state for o in outcomes] == ["succeeded"]
    return artifacts


def probed(trained: Path, into: Path, **probe) -> tuple[list[dict], dict]:
    """Probe a fresh copy of the trained store; its records and manifest metrics."""
    store = into / "store"
    shutil.copytree(trained, store)
    artifacts = run_stage(store, "probe", probe)
    return read_records(artifacts, "small/probe/probed.jsonl"), read_manifest(
        artifacts, "small", "probe"
    ).metrics


def scores(records: list[dict]) -> dict[str, tuple]:
    return {r["id"]: (r["probe_correct"], r["correctness_score"], r["correctness_samples"]) for r in records}


def test_scores_reproduce_across_runs_shard_sizes_and_parts(trained, tmp_path: Path) -> None:
    out, metrics = probed(trained, tmp_path / "a", **CORRECTNESS)
    assert len(out) == 12
    assert all(r["correctness_samples"] == K for r in out)
    assert all(r["correctness_score"] in {k / K for k in range(K + 1)} for r in out)
    assert len({r["correctness_score"] for r in out}) >= 3  # not vacuous
    assert metrics["correctness_samples"] == K
    assert metrics["correctness_score_mean"] == pytest.approx(sum(r["correctness_score"] for r in out) / 12)

    again, _ = probed(trained, tmp_path / "b", **CORRECTNESS)
    assert scores(again) == scores(out)
    # Other shards (5 + 1 per part), batches of 2, and two parts of 6: the same answers per sample.
    parts, _ = probed(trained, tmp_path / "c", **CORRECTNESS, shard_size=5, batch_size=2, num_shards=2)
    assert scores(parts) == scores(out)


def test_one_sample_scores_the_greedy_answer(trained, tmp_path: Path) -> None:
    out, metrics = probed(trained, tmp_path)
    assert [r["correctness_score"] for r in out] == [float(r["probe_correct"]) for r in out]
    assert {r["probe_correct"] for r in out} == {True, False}
    assert all(r["correctness_samples"] == 1 for r in out)
    assert metrics["correctness_score_mean"] == metrics["accuracy"]


def test_curate_ranks_by_the_scores_and_all_keeps_the_pool(trained, tmp_path: Path) -> None:
    out, _ = probed(trained, tmp_path, **CORRECTNESS)
    store = tmp_path / "store"

    def curated(**curate) -> tuple[list[dict], dict]:
        artifacts = run_stage(store, "curate", CORRECTNESS, curate)
        manifest = read_manifest(artifacts, "small", "curate")
        return read_records(artifacts, "small/curate/curated.jsonl"), manifest.metrics

    def entropy(r: dict) -> tuple:
        return (r["answer_entropy"], r["id"])

    for order, sign in (("lowest_first", 1), ("highest_first", -1)):
        kept, metrics = curated(strategy="accuracy", accuracy_order=order, keep=4)
        ranked = sorted(out, key=lambda r: (sign * r["correctness_score"], *entropy(r)))
        assert sorted(r["id"] for r in kept) == sorted(r["id"] for r in ranked[:4])
        assert [entropy(r) for r in kept] == sorted(entropy(r) for r in kept)
        assert metrics["kept_correctness_score"] == pytest.approx(
            sum(r["correctness_score"] for r in kept) / 4
        )

    kept, metrics = curated(strategy="all")
    assert [r["id"] for r in kept] == [r["id"] for r in out]
    finite = [r["answer_entropy"] for r in out if math.isfinite(r["answer_entropy"])]
    expected = max(finite) if len(finite) == len(out) else None  # manifests write +inf as None
    assert metrics["kept_max_entropy"] == expected
    assert metrics["kept_correctness_score"] == metrics["pool_correctness_score"]


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vllm is not importable here: run it in .venv-vllm")
def test_vllm_probe_stage_scores_k_samples(trained, tmp_path: Path) -> None:
    vllm = {"engine": "vllm", "vllm": {"enforce_eager": True}}
    out, metrics = probed(trained, tmp_path, **CORRECTNESS, **vllm)
    assert all(r["correctness_samples"] == K for r in out)
    assert all(r["correctness_score"] in {k / K for k in range(K + 1)} for r in out)
    assert len({r["correctness_score"] for r in out}) >= 2  # not vacuous
    assert metrics["correctness_samples"] == K
    assert metrics["correctness_score_mean"] == pytest.approx(sum(r["correctness_score"] for r in out) / 12)
