"""Stage 3, probe: the SFT model answers the RL pool; per-sample entropies (method.md stage 3)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from egt.engines.hf import HFJudge
from egt.engines.probe import finite, probe_records
from egt.metrics import ENTROPY_BUCKETS
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, load_pool, model_dir
from egt.stages.progress import sharded
from egt.stages.sft import judge_input
from egt.storage.manifest import Manifest
from egt.storage.records import read_records, write_records
from egt.storage.shards import partition, require_same_ids

ACCURACY_BINS = 5


def accuracy_by_entropy_bin(records: list[dict], bins: int = ACCURACY_BINS) -> list[dict]:
    """Accuracy per answer-entropy quantile bin (the EGT paper's Figure 2).

    Samples without a parseable answer (infinite entropy) form a last bin with low/high None.
    """
    answered = sorted(
        (r for r in records if math.isfinite(r["answer_entropy"])), key=lambda r: r["answer_entropy"]
    )
    rows = []
    for chunk in np.array_split(np.arange(len(answered)), min(bins, len(answered))) if answered else []:
        group = [answered[i] for i in chunk]
        rows.append(
            {
                "low": group[0]["answer_entropy"],
                "high": group[-1]["answer_entropy"],
                "count": len(group),
                "accuracy": sum(r["probe_correct"] for r in group) / len(group),
            }
        )
    unanswered = [r for r in records if not math.isfinite(r["answer_entropy"])]
    if unanswered:
        rows.append({"low": None, "high": None, "count": len(unanswered), "accuracy": 0.0})
    return rows


def run(ctx: StageContext) -> StageResult:
    """Probe the RL pool, or this part's contiguous slice of it when the stage fans out."""
    spec = ctx.spec.probe
    records = load_pool(ctx, "rl")
    if ctx.part is not None:
        records = partition(records, *ctx.part)
    images = ImageLoader(ctx.spec.store.endpoint_url)

    def to_input(record: dict):
        return judge_input(record, images)

    started, probed = time.perf_counter(), 0

    def probe_shard(shard: list[dict]) -> list[dict]:
        nonlocal probed
        out = probe(shard, to_input)
        probed += len(shard)
        # Pushed per shard: a running probe shows progress (and the stall alert sees it alive).
        ctx.metrics.set("probe_samples_done", probed, "Samples probed by this attempt so far")
        ctx.metrics.push()
        return out

    with probe_engine(ctx) as probe:
        out = sharded(ctx, records, spec.shard_size, probe_shard, "sample")
    ctx.metrics.set(
        "probe_samples_per_second",
        len(out) / (time.perf_counter() - started),
        "Probe throughput of the last run",
    )
    return summarize(ctx, out)


@contextmanager
def probe_engine(ctx: StageContext) -> Iterator[Callable]:
    """``probe(records, to_input) -> records with entropy columns`` on the configured engine."""
    spec, model = ctx.spec.probe, ctx.spec.model
    correctness = {
        "correctness_samples": spec.correctness_samples,
        "correctness_temperature": spec.correctness_temperature,
    }
    if spec.engine == "hf":
        judge = HFJudge.from_dir(model_dir(ctx, "sft"), model.dtype, model.device)
        yield lambda records, to_input: probe_records(
            judge,
            records,
            to_input,
            spec.batch_size,
            spec.max_new_tokens,
            spec.entropy_chunk_size,
            **correctness,
        )
        return
    from egt.engines.vllm_probe import VLLMProbe, probe_records_vllm

    options = spec.vllm.model_dump()
    engine = VLLMProbe(model_dir(ctx, "sft"), model.dtype, model.device, **options)
    try:
        yield lambda records, to_input: probe_records_vllm(
            engine,
            records,
            to_input,
            spec.batch_size,
            spec.max_new_tokens,
            spec.entropy_chunk_size,
            **correctness,
        )
    finally:
        engine.close()


def merge(ctx: StageContext, parts: list[Manifest]) -> StageResult:
    """Join the parts' outputs, in part order (the pool's order), and summarize the whole pool; the
    joined records must be the pool's, each once, whatever the part count or interruptions."""
    out = [
        record
        for manifest in parts
        for record in read_records(ctx.store, manifest.output_key(ctx.run_name, "probed"))
    ]
    require_same_ids(load_pool(ctx, "rl"), out, f"probe: merging {len(parts)} parts")
    return summarize(ctx, out)


def summarize(ctx: StageContext, out: list[dict]) -> StageResult:
    """Write probed.jsonl and the probe's summary: metrics, accuracy per entropy bin."""
    write_records(ctx.store, ctx.key("probed.jsonl"), out)
    answer = [r["answer_entropy"] for r in out]
    bins = accuracy_by_entropy_bin(out)
    ctx.metrics.observe("probe_answer_entropy_nats", answer, ENTROPY_BUCKETS, "Answer-token entropy (eq. 3)")
    ctx.metrics.observe(
        "probe_sentence_entropy_nats",
        [r["sentence_entropy"] for r in out],
        ENTROPY_BUCKETS,
        "Reasoning-sentence entropy (eq. 4)",
    )
    for index, row in enumerate(bins):
        ctx.metrics.set(
            "probe_bin_accuracy_ratio", row["accuracy"], "Accuracy per answer-entropy bin", bin=str(index)
        )
    accuracy = sum(r["probe_correct"] for r in out) / len(out) if out else 0.0
    ctx.metrics.set("probe_accuracy_ratio", accuracy, "Share of probed samples answered right")
    score = sum(r["correctness_score"] for r in out) / len(out) if out else 0.0
    ctx.metrics.set(
        "probe_correctness_score_ratio", score, "Mean correctness score (share of sampled answers right)"
    )
    answered = finite(answer)
    return StageResult(
        outputs={"probed": "probed.jsonl"},
        counts={"samples": len(out), "unanswered": len(out) - len(answered)},
        metrics={
            "accuracy": accuracy,
            "correctness_score_mean": score,
            "correctness_samples": ctx.spec.probe.correctness_samples,
            "well_formed": sum(r["probe_well_formed"] for r in out) / len(out) if out else 0.0,
            "answer_entropy_median": float(np.median(answered)) if answered else None,
            "accuracy_by_entropy_bin": bins,
        },
    )
