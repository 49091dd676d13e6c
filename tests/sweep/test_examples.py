"""The sweep files in examples/: they validate, and the paper-scale one renders its tables from per-arm
results a test writes into a store (the layout checked without a GPU or a cluster)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from egt.scoring.benchmarks import score_benchmark
from egt.storage.manifest import Manifest, write_manifest
from egt.storage.store import open_store
from egt.sweep.report import arm_model
from egt.sweep.runner import collect_results
from egt.sweep.spec import load_sweep

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def vl_rows(right: int, pairs: int = 20) -> list[dict]:
    """``pairs`` VL-RewardBench pairs (reasoning, hallucination, general in turn), the first ``right``
    judged right in both orders, the rest wrong."""
    categories = ("reasoning", "hallucination", "general")
    rows = []
    for n in range(pairs):
        judged = {"prediction": 1, "correct": n < right, "output": "", "well_formed": True}
        rows.append(
            {"id": f"p{n}", "label": 1, "category": categories[n % 3], "original": judged, "swapped": judged}
        )
    return rows


def test_the_tiny_sweep_validates():
    _, runs = load_sweep(EXAMPLES / "ablations-tiny.yaml")
    assert len(runs) == 15 and runs["sft"].spec.rl.enabled is False
    assert runs["scalar"].spec.stages == ("prepare", "scalar", "evaluate")
    assert all(run.spec.probe.correctness_samples == 4 for run in runs.values())
    assert runs["scale-15"].spec.curate.percentile == 15 and runs["scale-15"].spec.curate.keep is None
    assert runs["entropy"].metadata.model_extra["labels"] == {
        "egt.dev/sweep": "abl-tiny",
        "egt.dev/arm": "entropy",
    }


def test_the_paper_sweep_renders_tables_2_to_5_and_the_curve_from_stored_results(tmp_path):
    from egt.sweep.report import render_sweep_report

    sweep, runs = load_sweep(EXAMPLES / "ablations.yaml")
    store_uri = str(tmp_path / "store")
    runs = {
        arm: run.model_copy(
            update={
                "spec": run.spec.model_copy(
                    update={"store": run.spec.store.model_copy(update={"uri": store_uri})}
                )
            }
        )
        for arm, run in runs.items()
    }
    store = open_store(store_uri)
    now = datetime.now(UTC).isoformat()
    for index, (arm, run) in enumerate(runs.items()):
        if arm == "scale-50":
            continue  # an arm still running
        summary = {
            "pairs": 20,
            "accuracy": 0.0,
            "benchmark": score_benchmark("vl-rewardbench", vl_rows(right=index + 2)),
        }
        store.write_json(f"{run.name}/evaluate/results.json", {arm_model(run): {"vl-rewardbench": summary}})
        write_manifest(
            store,
            run.name,
            "evaluate",
            Manifest(
                stage="evaluate",
                config_hash="c",
                outputs={"results": "results.json"},
                started_at=now,
                finished_at=now,
            ),
        )

    results = collect_results(runs)
    assert set(results) == set(runs) - {"scale-50"}
    report = render_sweep_report(sweep, runs, results, tmp_path / "report").read_text()
    for title in (
        "Training strategies (EGT Table 2)",
        "Data selection strategies (EGT Table 3)",
        "Entropy criteria (EGT Table 4)",
        "Entropy levels (EGT Table 5)",
        "Data scale (EGT Figure 4)",
    ):
        assert title in report
    assert "| + Selection & Sort (published) | 88.33 | 76.50 | 60.20 | 77.15 |" in report
    assert "| Mid-Entropy (published) | 65.30 | 73.43 | 50.28 | 68.00 |" in report
    # entropy is the 4th arm: 5 of 20 pairs right: reasoning p0 p3 of 7, hallucination p1 p4 of 7,
    # general p2 of 6; SE sqrt(0.25 · 0.75 / 20) = 9.68 points.
    assert "| + Selection & Sort | 28.57 | 28.57 | 16.67 | 25.00 | 9.68 | 20 |" in report
    assert "not finished" in report  # scale-50
    assert (tmp_path / "report" / "scale.png").stat().st_size > 0
