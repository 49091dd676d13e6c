"""The run report: rendered from fake but schema-faithful artifacts, as measured, whatever has run."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from egt.report import write_report
from egt.spec import EGTRun, parse_run
from egt.storage.manifest import Manifest, manifest_digest, write_manifest
from egt.storage.records import write_records
from egt.storage.store import FileStore

RUN_NAME = "t"
UPSTREAM = {
    "prepare": (),
    "annotate": ("prepare",),
    "sft": ("prepare", "annotate"),
    "probe": ("prepare", "sft"),
    "curate": ("probe",),
    "rl": ("sft", "curate"),
    "evaluate": ("prepare", "sft", "rl"),
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = (
    "sft_loss.png",
    "entropy_histogram.png",
    "accuracy_by_entropy_bin.png",
    "curation_vs_random.png",
    "rl_curves.png",
)

ENTROPY_REMOVED = {
    "ambiguous": {"in_pool": 5, "kept": 1, "removed_share": 0.8},
    "clean": {"in_pool": 20, "kept": 14, "removed_share": 0.3},
    "flipped": {"in_pool": 5, "kept": 0, "removed_share": 1.0},
}
RANDOM_REMOVED = {
    "ambiguous": {"in_pool": 5, "kept": 3, "removed_share": 0.4},
    "clean": {"in_pool": 20, "kept": 10, "removed_share": 0.5},
    "flipped": {"in_pool": 5, "kept": 2, "removed_share": 0.6},
}
FALLING_BINS = [
    {"low": 0.01, "high": 0.1, "count": 10, "accuracy": 0.9},
    {"low": 0.1, "high": 0.5, "count": 10, "accuracy": 0.7},
    {"low": 0.5, "high": 1.2, "count": 8, "accuracy": 0.5},
    {"low": None, "high": None, "count": 2, "accuracy": 0.0},
]
RESULTS = {
    "sft": {
        "eval": {
            "pairs": 200,
            "accuracy": 0.6,
            "accuracy_original": 0.65,
            "accuracy_swapped": 0.55,
            "well_formed_original": 0.9,
            "well_formed_swapped": 0.85,
            "answered_ratio": 0.95,
            "position_bias": 0.125,
            "order_consistency": 0.5,
        }
    },
    "rl": {
        "eval": {
            "pairs": 200,
            "accuracy": 0.7,
            "accuracy_original": 0.7,
            "accuracy_swapped": 0.7,
            "well_formed_original": 1.0,
            "well_formed_swapped": 1.0,
            "answered_ratio": 1.0,
            "position_bias": None,
            "order_consistency": 0.8,
        }
    },
}


def make_run() -> EGTRun:
    return parse_run(
        {
            "apiVersion": "egt.dev/v1alpha1",
            "kind": "EGTRun",
            "metadata": {"name": RUN_NAME},
            "spec": {"model": {"tiny": {}}, "data": {"synthetic": {}}},
        }
    )


def finish(
    store: FileStore,
    stage: str,
    outputs: dict[str, str] | None = None,
    counts: dict[str, int] | None = None,
    metrics: dict[str, Any] | None = None,
    minutes: int = 2,
) -> None:
    """Write a manifest the way egt.stages.base does: last, naming its upstream manifests by digest."""
    write_manifest(
        store,
        RUN_NAME,
        stage,
        Manifest(
            stage=stage,
            config_hash="sha256:test",
            inputs={up: manifest_digest(store, RUN_NAME, up) for up in UPSTREAM[stage]},
            outputs=outputs or {},
            counts=counts or {},
            metrics=metrics or {},
            started_at="2026-01-01T10:00:00+00:00",
            finished_at=f"2026-01-01T10:{minutes:02d}:30+00:00",
        ),
    )


def probed_records(kinds: bool = True, unanswered: int = 2, answered: int = 28) -> list[dict]:
    """Answered samples with rising entropy, then some with no parseable answer (+inf)."""
    records = []
    for i in range(answered + unanswered):
        entropy = 0.05 * (i + 1) if i < answered else math.inf
        record = {
            "id": f"rl-{i:03d}",
            "label": 1 + i % 2,
            "answer_entropy": entropy,
            "sentence_entropy": 0.5 + 0.01 * i if i < answered else math.inf,
            "mix_entropy": entropy * 0.5,
            "probe_correct": i < answered and i % 3 != 0,
            "probe_prediction": 1 + i % 2 if i < answered else None,
            "probe_well_formed": i < answered,
            "probe_tokens": 40,
        }
        if kinds:
            record["truth_kind"] = "clean" if i % 6 < 4 else ("ambiguous" if i % 6 == 4 else "flipped")
        records.append(record)
    return records


def run_prepare_and_annotate(store: FileStore, synthetic: bool = True) -> None:
    truth = {
        "sft_truth_kinds": {"clean": 30, "ambiguous": 6, "flipped": 4},
        "rl_truth_kinds": {"clean": 20, "ambiguous": 5, "flipped": 5},
        "eval_truth_kinds": {"clean": 20},
    }
    finish(
        store,
        "prepare",
        {"sft": "data/sft.jsonl"},
        {"sft_pairs": 40, "rl_pairs": 30, "eval_pairs": 20},
        truth if synthetic else {},
        minutes=0,
    )
    kept_share = {"clean": 0.9, "ambiguous": 0.5, "flipped": 0.25} if synthetic else {"unknown": 0.8}
    finish(
        store,
        "annotate",
        {"annotated": "annotated.jsonl"},
        {"pairs": 40, "kept": 32, "discarded": 8, "teacher_errors": 1},
        {"attempts_needed": {"1": 24, "2": 6, "3": 2}, "kept_share_by_truth_kind": kept_share},
    )


def run_all(
    store: FileStore,
    *,
    losses: list[float] | None = None,
    bins: list[dict] | None = None,
    removed: dict | None = None,
    results: dict | None = None,
    synthetic: bool = True,
    records: list[dict] | None = None,
) -> None:
    """Every stage finished, with the planted numbers; defaults are a run that went the expected way."""
    run_prepare_and_annotate(store, synthetic)
    losses = losses if losses is not None else [2.0, 1.5, 1.2, 0.9]
    store.write_json(f"{RUN_NAME}/sft/losses.json", losses)
    finish(
        store,
        "sft",
        {"model": "model", "losses": "losses.json"},
        {"examples": 32, "steps": len(losses)},
        {"first_loss": losses[0], "final_loss": losses[-1]},
    )
    records = records if records is not None else probed_records(kinds=synthetic)
    write_records(store, f"{RUN_NAME}/probe/probed.jsonl", records)
    finish(
        store,
        "probe",
        {"probed": "probed.jsonl"},
        {"samples": len(records), "unanswered": 2},
        {
            "accuracy": 0.6,
            "well_formed": 0.9333,
            "answer_entropy_median": 0.725,
            "accuracy_by_entropy_bin": bins if bins is not None else FALLING_BINS,
        },
    )
    answered = [r for r in records if math.isfinite(r["answer_entropy"])]
    kept = sorted(answered, key=lambda r: r["answer_entropy"])[:15]
    write_records(store, f"{RUN_NAME}/curate/curated.jsonl", kept)
    curate_metrics: dict[str, Any] = {"kept_max_entropy": 0.75, "kept_accuracy": 0.7, "pool_accuracy": 0.6}
    if synthetic:
        curate_metrics |= {
            "removed_by_truth_kind": removed or ENTROPY_REMOVED,
            "random_removed_by_truth_kind": RANDOM_REMOVED,
        }
    finish(store, "curate", {"curated": "curated.jsonl"}, {"pool": len(records), "kept": 15}, curate_metrics)
    history = [
        {
            "step": s,
            "reward_mean": 0.5 + 0.1 * s,
            "accuracy": 0.5 + 0.05 * s,
            "logic_mean": 0.2,
            "format_ratio": 0.9,
            "response_tokens_mean": 80.0,
            "advantage_filtered_ratio": 0.01,
            "kl": 0.0,
            "loss": -0.01,
            "clip_fraction": 0.02 * s,
            "preclip_fraction": 0.0,
            "ratio_mean": 1.0,
            "grad_norm": 0.3,
        }
        for s in (1, 2, 3)
    ]
    store.write_json(f"{RUN_NAME}/rl/history.json", history)
    finish(
        store,
        "rl",
        {"model": "model", "history": "history.json"},
        {"steps": 3, "curated": 15},
        {"final_reward_mean": 0.8, "final_accuracy": 0.65, "first_reward_mean": 0.6},
    )
    store.write_json(f"{RUN_NAME}/evaluate/results.json", results or RESULTS)
    finish(store, "evaluate", {"results": "results.json"}, {"eval": 200}, {"results": results or RESULTS})


def section(text: str, number: int) -> str:
    """The body of '## <number>. ...' up to the next section."""
    start = text.index(f"## {number}.")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def report_text(store: FileStore, out_dir: Path) -> str:
    path = write_report(store, make_run(), out_dir)
    assert path == out_dir / "report.md"
    return path.read_text()


def test_full_run_renders_valid_pngs_and_uploads_them(store: FileStore, tmp_path: Path) -> None:
    run_all(store)
    text = report_text(store, tmp_path / "report")
    for name in ALL_PLOTS:
        path = tmp_path / "report" / name
        assert path.read_bytes().startswith(PNG_MAGIC)
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
        assert f"]({name})" in text
        assert store.exists(f"{RUN_NAME}/report/{name}")
    assert store.read_text(f"{RUN_NAME}/report/report.md") == text


def test_full_run_reports_the_measured_numbers(store: FileStore, tmp_path: Path) -> None:
    run_all(store)
    text = report_text(store, tmp_path / "report")
    summary = section(text, 1)
    assert "has not run" not in text
    assert summary.count("| finished |") == 7
    assert "2 min 30 s" in summary and "sft_pairs 40" in summary
    assert "agreed with the label on 32 (80.0%)" in section(text, 2)
    assert "| flipped | 4 | 25.0% |" in section(text, 2)
    assert "2.0000 → last step 0.9000" in section(text, 3)
    probe = section(text, 4)
    assert "2 samples had no parseable answer" in probe
    assert "| 4 | no answer | 2 | 0.0% |" in probe
    assert "as in the EGT paper's Figure 2" in probe
    curation = section(text, 5)
    assert "kept 15 of 30 probed samples (50.0%)" in curation
    assert "Kept threshold (highest kept): 0.750 nats" in curation
    assert "| flipped | 5 | 0 | 100.0% | 2 | 60.0% | +40.0 points |" in curation
    assert "| clean | 20 | 14 | 30.0% | 10 | 50.0% | -20.0 points |" in curation
    assert "less of this noise" not in curation and "more clean pairs than chance" not in curation
    assert "| reward_mean | 0.6000 | 0.8000 |" in section(text, 6)
    evaluation = section(text, 7)
    assert "| rl | eval | 200 | 70.0% | 70.0% | 70.0% | n/a | 80.0% |" in evaluation
    assert "| sft | eval | 200 | 60.0% | 65.0% | 55.0% | +12.5 points |" in evaluation
    assert "RL is above SFT by 10.0 points (70.0% vs 60.0%)" in evaluation


def test_wrong_way_comparisons_are_stated_plainly(store: FileStore, tmp_path: Path) -> None:
    removed = {
        **ENTROPY_REMOVED,
        "flipped": {"in_pool": 5, "kept": 3, "removed_share": 0.4},
        "clean": {"in_pool": 20, "kept": 8, "removed_share": 0.6},
    }
    rising = [{**row, "accuracy": 1 - row["accuracy"]} if row["low"] else row for row in FALLING_BINS]
    worse = {"sft": RESULTS["rl"], "rl": {"eval": {**RESULTS["sft"]["eval"], "accuracy": 0.655}}}
    run_all(store, losses=[1.0, 1.4], bins=rising, removed=removed, results=worse)
    text = report_text(store, tmp_path / "report")
    assert "the loss did not decrease" in section(text, 3)
    assert "Figure 2 pattern (accuracy falling as entropy rises) does not appear" in section(text, 4)
    curation = section(text, 5)
    assert (
        "`flipped`: entropy curation removed a smaller share than random selection (40.0% vs 60.0%)"
        ": it removed less of this noise than chance would." in curation
    )
    assert (
        "`clean`: entropy curation removed a larger share than random selection (60.0% vs 50.0%): it "
        "discarded more clean pairs than chance would." in curation
    )
    assert "RL is below SFT by 4.5 points (65.5% vs 70.0%)" in section(text, 7)


def test_the_scalar_baseline_is_set_beside_the_reasoning_model(store: FileStore, tmp_path: Path) -> None:
    scalar = {"eval": {**RESULTS["rl"]["eval"], "accuracy": 0.983, "position_bias": 0.0}}
    run_all(store, results={**RESULTS, "scalar": scalar})
    evaluation = section(report_text(store, tmp_path / "report"), 7)
    assert "| scalar | eval |" in evaluation
    assert (
        "- `eval`: the scalar model is above the reasoning model (rl) by 28.3 points (98.3% vs 70.0%); "
        "one binomial standard error at 200 pairs is about" in evaluation
    )


def test_a_scalar_run_reports_only_its_own_stages(tmp_path: Path) -> None:
    from egt.report import write_report
    from egt.runner import run_local
    from tests.stages.conftest import SMALL_RUN, make_run

    doc = copy.deepcopy(SMALL_RUN)
    doc["spec"]["kind"] = "scalar"
    del doc["spec"]["evaluate"]["models"]
    run = make_run(doc, str(tmp_path / "store"))
    store, _ = run_local(run, tmp_path / "work", progress=False, echo=lambda *_: None)
    text = write_report(store, run, tmp_path / "report").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## 1. Run summary: `small`",
        "## Scalar reward model (Bradley–Terry)",
        "## 7. Evaluation",
    ]
    assert "trained on 16 labelled pairs of the SFT pool, 2 optimizer steps" in text
    assert "| scalar | eval |" in text and "has not run" not in text


def test_partial_run_says_which_stages_have_not_run(store: FileStore, tmp_path: Path) -> None:
    run_prepare_and_annotate(store)
    store.write_json(f"{RUN_NAME}/sft/attempt.json", {"config_hash": "x", "inputs": {}})
    out_dir = tmp_path / "report"
    text = report_text(store, out_dir)
    assert "Stage `sft` has started but not finished" in section(text, 3)
    for number, stage in ((4, "probe"), (5, "curate"), (6, "rl"), (7, "evaluate")):
        assert f"Stage `{stage}` has not run." in section(text, number)
    assert "agreed with the label on 32" in section(text, 2)
    assert not any(path.suffix == ".png" for path in out_dir.iterdir())


def test_plots_of_stages_that_no_longer_have_a_manifest_are_removed(store: FileStore, tmp_path: Path) -> None:
    run_all(store)
    out_dir = tmp_path / "report"
    write_report(store, make_run(), out_dir)
    store.delete(f"{RUN_NAME}/rl/manifest.json")
    text = report_text(store, out_dir)
    assert "Stage `rl` has not run." in section(text, 6)
    assert not (out_dir / "rl_curves.png").exists()
    assert not store.exists(f"{RUN_NAME}/report/rl_curves.png")
    assert "finished, but stale: `rl` changed since it ran" in section(text, 1)


def test_real_data_without_truth_columns(store: FileStore, tmp_path: Path) -> None:
    run_all(store, synthetic=False)
    out_dir = tmp_path / "report"
    text = report_text(store, out_dir)
    assert "cannot be checked against injected noise" in section(text, 5)
    assert "Truth kinds" not in section(text, 1) and "Kept share by truth kind" not in section(text, 2)
    assert (out_dir / "entropy_histogram.png").exists()
    assert not (out_dir / "curation_vs_random.png").exists()


def test_a_pool_with_no_parseable_answer_renders(store: FileStore, tmp_path: Path) -> None:
    records = probed_records(unanswered=5, answered=0)
    run_all(store, records=records, bins=[{"low": None, "high": None, "count": 5, "accuracy": 0.0}])
    out_dir = tmp_path / "report"
    text = report_text(store, out_dir)
    probe = section(text, 4)
    assert "5 samples had no parseable answer" in probe
    assert "Fewer than two answered bins" in probe
    assert not (out_dir / "entropy_histogram.png").exists()
    assert (out_dir / "accuracy_by_entropy_bin.png").exists()


def test_non_finite_values_are_reported_not_plotted_as_numbers(store: FileStore, tmp_path: Path) -> None:
    run_all(store, losses=[2.0, math.inf, math.nan, 1.0])
    text = report_text(store, tmp_path / "report")
    assert "2 of 4 step losses are not finite" in section(text, 3)
    assert (tmp_path / "report" / "sft_loss.png").read_bytes().startswith(PNG_MAGIC)


def test_a_manifest_that_does_not_validate_is_named_not_fatal(store: FileStore, tmp_path: Path) -> None:
    """A manifest from another version (here: a field it does not know) is named, not fatal."""
    run_all(store)
    manifest = json.loads(store.read_text("t/curate/manifest.json"))
    store.write_text("t/curate/manifest.json", json.dumps({**manifest, "unknown_field": 1}))
    text = report_text(store, tmp_path / "report")
    assert "Stage `curate` has a manifest that does not validate (invalid manifest" in section(text, 5)
    assert "finished, but stale: `curate` changed since it ran" in section(text, 1)
    assert "RL is above SFT" in section(text, 7)


def effect_records() -> list[dict]:
    """Ten pairs whose diagnostics can be worked out by hand (see the test)."""
    rows = [
        # kind, answer entropy, sentence entropy, prediction, label
        ("clean", 0.01, 0.3, 1, 1),
        ("clean", 0.02, 0.3, 2, 2),
        ("clean", 0.03, 0.3, 1, 1),
        ("clean", 0.04, 0.9, 2, 1),  # a confident mistake: flagged, not a flip
        ("clean", 0.50, 0.3, 1, 1),
        ("clean", 0.60, 0.3, 2, 2),
        ("ambiguous", 0.69, 0.9, 1, 2),
        ("ambiguous", 0.05, 0.9, 2, 2),
        ("flipped", 0.01, 0.3, 1, 2),  # answered against its wrong label, confidently: flagged
        ("flipped", 0.70, 0.3, 2, 2),
    ]
    return [
        {
            "id": f"rl-{i}",
            "truth_kind": kind,
            "answer_entropy": answer,
            "sentence_entropy": sentence,
            "mix_entropy": answer * sentence,
            "probe_prediction": prediction,
            "label": label,
            "probe_correct": prediction == label,
            "probe_well_formed": True,
            "probe_tokens": 20,
        }
        for i, (kind, answer, sentence, prediction, label) in enumerate(rows)
    ]


def test_what_the_run_shows_is_measured_from_the_probe_and_curate_outputs(store: FileStore, tmp_path: Path):
    run_all(store, records=effect_records())
    text = report_text(store, tmp_path / "report")
    body = text[text.index("## What this run shows") : text.index("## 2.")]
    numbers = json.loads((tmp_path / "report" / "effect.json").read_text())
    # clean: 5 of 6 right. Answer AUROC: 0.69 beats all 6 clean, 0.05 beats 4 -> 10/12.
    # Sentence AUROC: 0.9 vs [0.3 ×5, 0.9]: each ambiguous beats 5, ties 1 -> 11/12.
    # Fifths: the probe manifest's own bins (FALLING_BINS), not recomputed from the records.
    assert numbers["probe_clean_accuracy"] == pytest.approx(5 / 6)
    assert numbers["auroc_answer_entropy"] == pytest.approx(10 / 12)
    assert numbers["auroc_sentence_entropy"] == pytest.approx(11 / 12)
    assert (numbers["accuracy_lowest_fifth"], numbers["accuracy_highest_fifth"]) == (0.9, 0.5)
    assert (numbers["flagged_likely_flips"], numbers["flagged_true_flips"], numbers["flipped_in_pool"]) == (
        2,
        1,
        2,
    )
    assert numbers["ambiguous_removed"] == 0.8 and numbers["ambiguous_removed_random"] == 0.4
    assert numbers["eval_rl_eval_accuracy"] == 0.7
    assert "| probe accuracy on clean pairs | 83.3% |" in body
    assert "0.833" in body and "80.0% / 40.0%" in body and "90.0% / 50.0%" in body
    assert "Answer-token entropy is higher on ambiguous pairs" in body
    assert "flagged as likely flips: 2 (50.0% of them truly flipped), catching 1 of the 2 flips" in body
    # history rewards 0.6, 0.7, 0.8: first quarter (one step) 0.6, last 0.8
    rose = "RL's mean reward rose: 0.600 over the first quarter of steps, 0.800 over the last."
    assert rose in body and rose in section(text, 6)  # one reading of the reward, said the same way twice
    assert store.exists(f"{RUN_NAME}/report/effect.json")


def test_an_answer_entropy_that_does_not_separate_is_said_so(store: FileStore, tmp_path: Path):
    records = effect_records()
    for r in records:
        if r["truth_kind"] == "ambiguous":
            r["answer_entropy"] = 0.001  # settled before the answer; the reasoning carries the doubt
    run_all(store, records=records)
    text = report_text(store, tmp_path / "report")
    assert "The answer-token entropy does not separate ambiguous pairs here (AUROC 0.000)" in text
    assert "while the mean token entropy does (0.917)" in text


def test_real_data_has_no_effect_numbers(store: FileStore, tmp_path: Path):
    run_all(store, synthetic=False)
    text = report_text(store, tmp_path / "report")
    assert "the EGT effect cannot be checked against known noise here" in text
    assert not (tmp_path / "report" / "effect.json").exists()


def test_a_run_with_no_parseable_answer_claims_nothing_about_entropy(
    store: FileStore, tmp_path: Path
) -> None:
    """Every answer unparseable: every entropy is +∞, so 'entropy' curation chose by id. The report
    must not say it removed more noise than random selection, nor give a 0.0-point standard error
    for two models that both scored 0%."""
    records = probed_records(unanswered=30, answered=0)
    zero = {"eval": {"pairs": 24, "accuracy": 0.0, "accuracy_original": 0.0, "accuracy_swapped": 0.0}}
    run_all(
        store,
        records=records,
        bins=[{"low": None, "high": None, "count": 30, "accuracy": 0.0}],
        results={"sft": zero, "rl": zero},
    )
    text = report_text(store, tmp_path / "report")
    curation = section(text, 5)
    assert "had nothing to rank and chose by id" in curation
    assert "share than random selection" not in text
    assert "about 0.0 points" not in text
    assert "at 24 pairs a rate seen as 0.0% could be 12.5 points off" in text
    assert "n/a: no entropy varies" in section_named(text, "What this run shows")


def section_named(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_evaluation_sets_with_truth_kinds_get_a_per_kind_table(store: FileStore, tmp_path: Path) -> None:
    results = copy.deepcopy(RESULTS)
    results["rl"]["eval"]["accuracy_by_truth_kind"] = {"clean": 0.9, "flipped": 0.2}
    run_all(store, results=results)
    text = report_text(store, tmp_path / "report")
    assert "Accuracy by truth kind" in text
    assert "| rl | eval | flipped | 20.0% |" in text


def test_a_one_sample_run_renders_and_claims_no_trend(store: FileStore, tmp_path: Path) -> None:
    """One probed sample, one evaluation pair: the report renders, reads no trend into one bin, and
    gives the comparison's uncertainty at one pair rather than a bare difference."""
    records = probed_records(unanswered=0, answered=1)
    one = {"eval": {"pairs": 1, "accuracy": 1.0, "accuracy_original": 1.0, "accuracy_swapped": 1.0}}
    zero = {"eval": {"pairs": 1, "accuracy": 0.0, "accuracy_original": 0.0, "accuracy_swapped": 0.0}}
    run_all(
        store,
        records=records,
        bins=[{"low": 0.05, "high": 0.05, "count": 1, "accuracy": 1.0}],
        results={"sft": one, "rl": zero},
    )
    text = report_text(store, tmp_path / "report")
    assert "Fewer than two answered bins: no trend to read" in section(text, 4)
    assert "RL is below SFT by 100.0 points (0.0% vs 100.0%); one binomial standard error at 1 pairs" in text


def test_a_probe_that_always_answers_the_same_is_said_to(store: FileStore, tmp_path: Path) -> None:
    """The demo once answered '2' to all 240 samples: its accuracy then only counts labels."""
    records = probed_records()
    for record in records:
        if record["probe_prediction"] is not None:
            record["probe_prediction"] = 2
            record["probe_correct"] = record["label"] == 2
    run_all(store, records=records)
    probe = section(report_text(store, tmp_path / "report"), 4)
    assert "Every answered sample got the same answer (2)" in probe
    run_all(store)  # answers that differ: no such sentence
    assert "got the same answer" not in section(report_text(store, tmp_path / "again"), 4)
