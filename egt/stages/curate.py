"""Stage 4, curate: keep the lowest-entropy samples, sorted ascending (method.md stage 4).

Beside the chosen strategy it always scores a seeded random selection of the same size, so the
report can show what entropy curation removed against what chance would have removed.
"""

from __future__ import annotations

from egt.algorithms.curation import METRIC_COLUMNS, curate, removal_report
from egt.stages.base import StageContext, StageResult
from egt.storage.records import read_records, write_records


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.curate
    pool = read_records(ctx.store, ctx.upstream_output("probe", "probed"))
    kept = curate(pool, spec.strategy, spec.metric, spec.keep, spec.percentile, spec.bucket, spec.seed)
    if not kept:
        raise ValueError(
            f"curate: strategy {spec.strategy!r} kept no sample of {len(pool)}; raise keep/percentile"
        )
    baseline = curate(pool, "random", spec.metric, keep=len(kept), seed=spec.seed)
    write_records(ctx.store, ctx.key("curated.jsonl"), kept)
    column = METRIC_COLUMNS[spec.metric]
    ctx.metrics.set("curate_pool_total", len(pool), "Samples in the probed pool")
    ctx.metrics.set("curate_kept_total", len(kept), "Samples kept for RL")
    ctx.metrics.set("curate_pruned_total", len(pool) - len(kept), "Samples pruned")
    ctx.metrics.set("curate_threshold_nats", kept[-1][column], "Highest kept entropy")
    metrics = {
        "kept_max_entropy": kept[-1][column],
        "kept_accuracy": sum(r.get("probe_correct", False) for r in kept) / len(kept),
        "pool_accuracy": sum(r.get("probe_correct", False) for r in pool) / len(pool),
    }
    if any("truth_kind" in r for r in pool):
        metrics["removed_by_truth_kind"] = removal_report(pool, kept)
        metrics["random_removed_by_truth_kind"] = removal_report(pool, baseline)
    return StageResult(
        outputs={"curated": "curated.jsonl"},
        counts={"pool": len(pool), "kept": len(kept)},
        metrics=metrics,
    )
