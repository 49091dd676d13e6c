"""prepare → evaluate on files in the published formats, with the tiny model.

The pairs are designed (known categories, groups, labels); the tiny model's answers are whatever it
writes. The test checks that prepare converts what was published (and records its digest), that the
evaluate stage scores each benchmark by its official rules (category sizes, Acc+ groups, strict and
official-script figures), and that the stored results are the scoring of the stored predictions.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from egt.report.build import benchmark_lines
from egt.scoring.benchmarks import score_benchmark
from egt.spec import parse_run
from egt.stages.base import execute_stage
from egt.stages.pipeline import STAGES
from egt.storage.manifest import Manifest, read_manifest, write_manifest
from egt.storage.records import read_records
from egt.storage.store import open_store
from tests.formats.published import (
    mm_rlhf_row,
    multimodal_rewardbench_item,
    r1_reward_row,
    vl_rewardbench_row,
    write_image,
    write_mm_rlhf,
    write_multimodal_rewardbench,
    write_r1_reward,
    write_vl_rewardbench,
)

VL_IDS = (
    [f"RLAIF-V_{i}" for i in range(5)]
    + [f"mathverse_{i}" for i in range(4)]
    + [f"wildvision_{i}" for i in range(3)]
)
MMRB = [
    ("nocaps_1", "open_generation/correctness_task"),
    ("vlfeedback_2", "open_generation/preference_task"),
    ("mmmu-pro_3", "knowledge"),
    ("math_4", "reasoning"),
    ("code_5", "reasoning"),
    ("pairs_6", "safety"),
    ("vqa_7", "vqa"),
]


def write_datasets(root: Path) -> dict:
    write_vl_rewardbench(
        root / "vl/data/test-00000-of-00001.parquet",
        [vl_rewardbench_row(i, 1 + n % 2) for n, i in enumerate(VL_IDS)],
    )
    write_multimodal_rewardbench(root / "mmrb", [multimodal_rewardbench_item(i, c) for i, c in MMRB])
    rows = [mm_rlhf_row("a", "mcq/a.png")] * 3 + [mm_rlhf_row("b", "long/b.png")] * 2
    rows += [mm_rlhf_row("c", "video/c", video=True)] * 2
    write_mm_rlhf(root / "mmrlhf", rows, frames={"video/c": 5})
    write_image(root / "pool/img/p.png")
    (root / "pool/pairs.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"Q{n}", "chosen": "c", "rejected": "r", "images": ["img/p.png"]}) + "\n"
            for n in range(4)
        )
    )
    write_r1_reward(root / "r1/train.parquet", [r1_reward_row("Q", "a", "b", 2, "/srv/p.png")])
    return {
        "sft": {"uri": str(root / "pool/pairs.jsonl"), "format": "preference-pairs"},
        "rl": {
            "uri": str(root / "r1/train.parquet"),
            "format": "r1-reward-rl",
            "root": str(root / "pool/img"),
            "strip_prefix": "/srv/",
        },
        "eval": {
            "vl-rewardbench": {
                "uri": str(root / "vl/data/test-00000-of-00001.parquet"),
                "format": "vl-rewardbench",
            },
            "multimodal-rewardbench": {
                "uri": str(root / "mmrb/all_data.json"),
                "format": "multimodal-rewardbench",
            },
            "mm-rlhf-rewardbench": {
                "uri": str(root / "mmrlhf/mm_reward_bench.jsonl"),
                "format": "mm-rlhf-rewardbench",
                "video_frames": 3,
            },
        },
    }


def stand_in(store, run: str, stage: str) -> None:
    """An upstream stage whose model is the base model: evaluate needs sft and rl manifests."""
    model = "model"
    prepared = open_store(store.uri_for(f"{run}/prepare/model"))
    for key in prepared.list(""):
        store.write_bytes(f"{run}/{stage}/{model}/{key}", prepared.read_bytes(key))
    now = datetime.now(UTC).isoformat()
    write_manifest(
        store,
        run,
        stage,
        Manifest(
            stage=stage, config_hash="stand-in", outputs={"model": model}, started_at=now, finished_at=now
        ),
    )


def test_prepare_converts_published_files_and_evaluate_scores_them_officially(
    tmp_path, pushgateway, pushgateway_metrics
):
    run = parse_run(
        {
            "apiVersion": "egt.dev/v1alpha1",
            "kind": "EGTRun",
            "metadata": {"name": "bench"},
            "spec": {
                "store": {"uri": str(tmp_path / "store")},
                "model": {"tiny": {"seed": 0}, "dtype": "float32", "device": "cpu"},
                "data": write_datasets(tmp_path / "published"),
                "annotate": {
                    "teacher": {"kind": "openai", "base_url": "http://teacher.invalid/v1", "model": "m"}
                },
                "evaluate": {"models": ["sft"], "max_new_tokens": 6, "batch_size": 8},
                "metrics": {"pushgateway": pushgateway},
            },
        },
        "test",
    )
    store = open_store(run.spec.store.uri)
    execute_stage(STAGES["prepare"], run, store, tmp_path / "work", progress=False)

    prepared = read_manifest(store, "bench", "prepare")
    assert prepared.counts == {
        "sft_pairs": 4,
        "rl_pairs": 1,
        "vl-rewardbench_pairs": 12,
        "multimodal-rewardbench_pairs": 7,
        "mm-rlhf-rewardbench_pairs": 7,
    }
    datasets = prepared.metrics["datasets"]
    assert datasets["vl-rewardbench"]["categories"] == {"hallucination": 5, "reasoning": 4, "general": 3}
    assert datasets["vl-rewardbench"]["digest"].startswith("sha256:")
    assert datasets["rl"]["format"] == "r1-reward-rl" and datasets["rl"]["labels"] == {"2": 1}
    video = read_records(store, "bench/prepare/data/mm-rlhf-rewardbench.jsonl")[5]
    assert [Path(uri).name for uri in video["images"]] == ["frame_000.jpg", "frame_002.jpg", "frame_004.jpg"]

    for stage in ("sft", "rl"):
        stand_in(store, "bench", stage)
    execute_stage(STAGES["evaluate"], run, store, tmp_path / "work", progress=False)

    results = store.read_json("bench/evaluate/results.json")["sft"]
    formats = {name: spec.format for name, spec in run.spec.data.eval.items()}
    for name, fmt in formats.items():
        rows = read_records(store, f"bench/evaluate/predictions/sft-{name}.jsonl")
        scored = results[name]["benchmark"]
        assert scored == score_benchmark(fmt, rows)  # the stored figures are the stored predictions' scoring
        assert scored["judgements"] == 2 * len(rows)  # both orders
    vl = results["vl-rewardbench"]["benchmark"]
    assert {c: s["pairs"] for c, s in vl["categories"].items() if s["pairs"]} == {
        "reasoning": 4,
        "hallucination": 5,
        "general": 3,
    }
    # The same figures counted here from the stored predictions, by the benchmark's rules.
    rows = read_records(store, "bench/evaluate/predictions/sft-vl-rewardbench.jsonl")
    for category, ids in {
        "hallucination": VL_IDS[:5],
        "reasoning": VL_IDS[5:9],
        "general": VL_IDS[9:],
    }.items():
        judged = [r[order] for r in rows if r["id"] in ids for order in ("original", "swapped")]
        right = sum(j["prediction"] is not None and j["correct"] for j in judged)
        answered = sum(j["prediction"] is not None for j in judged)
        assert vl["categories"][category]["accuracy"] == right / len(judged)
        assert vl["official"]["categories"][category]["accuracy"] == (right / answered if answered else None)
    mmrb = results["multimodal-rewardbench"]["benchmark"]
    assert [c for c, s in mmrb["categories"].items() if s["pairs"]] == [
        "general/correctness",
        "general/preference",
        "knowledge",
        "reasoning/math",
        "reasoning/coding",
        "safety",
        "vqa",
    ]
    mmrlhf = results["mm-rlhf-rewardbench"]["benchmark"]
    assert {c: s["pairs"] for c, s in mmrlhf["categories"].items() if s["pairs"]} == {
        "mcq": 3,
        "long": 2,
        "video": 2,
    }
    # Prometheus gets the same figures, labelled by benchmark and category.
    scraped = pushgateway_metrics()
    headline = re.search(
        r'^egt_eval_benchmark_headline\{[^}]*benchmark="vl-rewardbench"[^}]*\} (\S+)$', scraped, re.M
    )
    assert headline and float(headline[1]) == pytest.approx(vl["headline"])
    acc_plus = re.search(r'^egt_eval_benchmark_acc_plus\{[^}]*category="mcq"[^}]*\} (\S+)$', scraped, re.M)
    assert acc_plus and float(acc_plus[1]) == pytest.approx(mmrlhf["categories"]["mcq"]["acc_plus"])
    evaluated = read_manifest(store, "bench", "evaluate")
    assert evaluated.counts == {"vl-rewardbench": 12, "multimodal-rewardbench": 7, "mm-rlhf-rewardbench": 7}

    report = "\n".join(benchmark_lines(store.read_json("bench/evaluate/results.json")))
    table1 = report[report.index("| Model | VL-Reward | Multimodal | MM-RLHF | Avg. |") :]
    headlines = [results[name]["benchmark"]["headline"] for name in formats]
    run_row = "| this run: sft | " + " | ".join(f"{100 * h:.2f}" for h in headlines)
    assert table1.splitlines()[2].startswith(run_row)
    assert "| EGT (Ours) (published) | 77.15 | 84.30 | 85.88 | 82.44 |" in table1
    assert "#### sft on `mm-rlhf-rewardbench`" in report and "Acc+" in report
