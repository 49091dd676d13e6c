"""Stage 4, curate: keep the lowest-entropy samples, sorted ascending, or an ablation (method.md stage 4).

Beside the chosen strategy it always scores a seeded random selection of the same size, so the
report can show what entropy curation removed against what chance would have removed (for strategy
"all" that is the whole pool too).
"""

from __future__ import annotations

from egt.algorithms.curation import METRIC_COLUMNS, correctness_score, curate, removal_report
from egt.stages.base import StageContext, StageResult
from egt.storage.records import read_records, write_records


def mean_correctness(records: list[dict]) -> float:
    """Mean of the probe's correctness scores (:func:`egt.algorithms.curation.correctness_score`)."""
    return sum(correctness_score(r) for r in records) / len(records)


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.curate
    pool = read_records(ctx.store, ctx.upstream_output("probe", "probed"))
    kept = curate(
        pool,
        spec.strategy,
        spec.metric,
        spec.keep,
        spec.percentile,
        spec.bucket,
        spec.seed,
        spec.accuracy_order,
    )
    if not kept:
        raise ValueError(
            f"curate: strategy {spec.strategy!r} kept no sample of {len(pool)}; raise keep/percentile"
        )
    baseline = curate(pool, "random", spec.metric, keep=len(kept), seed=spec.seed)
    write_records(ctx.store, ctx.key("curated.jsonl"), kept)
    column = METRIC_COLUMNS[spec.metric]
    # Not kept[-1]: strategy "all" keeps the pool's order, not ascending entropy.
    highest = max(r[column] for r in kept)
    ctx.metrics.set("curate_pool_total", len(pool), "Samples in the probed pool")
    ctx.metrics.set("curate_kept_total", len(kept), "Samples kept for RL")
    ctx.metrics.set("curate_pruned_total", len(pool) - len(kept), "Samples pruned")
    ctx.metrics.set("curate_threshold_nats", highest, "Highest kept entropy")
    metrics = {
        "kept_max_entropy": highest,
        "kept_accuracy": sum(r.get("probe_correct", False) for r in kept) / len(kept),
        "pool_accuracy": sum(r.get("probe_correct", False) for r in pool) / len(pool),
    }
    if all("correctness_score" in r or "probe_correct" in r for r in pool):
        metrics["kept_correctness_score"] = mean_correctness(kept)
        metrics["pool_correctness_score"] = mean_correctness(pool)
    if any("truth_kind" in r for r in pool):
        metrics["removed_by_truth_kind"] = removal_report(pool, kept)
        metrics["random_removed_by_truth_kind"] = removal_report(pool, baseline)
    return StageResult(
        outputs={"curated": "curated.jsonl"},
        counts={"pool": len(pool), "kept": len(kept)},
        metrics=metrics,
    )
