"""The filter stage: the run's reward model flags the doubtful pairs of one of its pools.

``egt filter`` as a stage (egt.engines.filtering): ``filter.pool`` (sft or rl, as prepared) is split
into ``<run>/filter/kept.jsonl`` and ``flagged.jsonl``, every record with its margin. On data with
``truth_kind`` columns the manifest (and so the report) sets what was flagged per kind beside a
random flagger of the same size.
"""

from __future__ import annotations

from egt.engines.filtering import filter_records
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, load_pool
from egt.stages.score import applied_model
from egt.storage.records import write_records


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.filter
    records = load_pool(ctx, spec.pool)
    model_name, model, scalar = applied_model(ctx, spec)
    kept, flagged, summary = filter_records(
        model,
        scalar,
        records,
        ImageLoader(ctx.spec.store.endpoint_url),
        spec.fraction,
        spec.batch_size,
        spec.max_new_tokens,
    )
    write_records(ctx.store, ctx.key("kept.jsonl"), kept)
    write_records(ctx.store, ctx.key("flagged.jsonl"), flagged)
    ctx.metrics.set("filter_flagged_pairs", len(flagged), "Pairs the reward model flagged", pool=spec.pool)
    return StageResult(
        outputs={"kept": "kept.jsonl", "flagged": "flagged.jsonl"},
        counts={"kept": len(kept), "flagged": len(flagged)},
        metrics={"filter": {"pool": spec.pool, "model_name": model_name, **summary}},
    )
