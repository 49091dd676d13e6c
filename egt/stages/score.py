"""The score stage: best of N on a candidates file with the run's trained reward model.

``egt score`` as a stage (egt.engines.best_of_n), so a cluster runs it as a Job like any other stage:
``score.candidates`` names the file (a path or s3:// URI, images relative to it and inside its folder,
as a dataset's), ``score.model``
which of the run's models ranks the candidates. Writes ``<run>/score/scores.jsonl``, one row per
prompt: the candidates' scores, the best one and the model calls it took.
"""

from __future__ import annotations

import time
from typing import Any

from egt.engines.best_of_n import load_reward_model, parse_prompts, score_prompts, summarize
from egt.formats.common import MediaRoot
from egt.spec import RewardModelUseSpec
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, model_dir
from egt.stages.progress import bar
from egt.storage.records import read_records, write_records
from egt.storage.store import split_uri


def applied_model(ctx: StageContext, use: RewardModelUseSpec) -> tuple[str, Any, bool]:
    """(name, model, is_scalar): the run's model that score or filter applies, on its engine."""
    name = ctx.spec.model_applied(use)
    model, scalar = load_reward_model(
        model_dir(ctx, name), use.engine, ctx.spec.model.dtype, ctx.spec.model.device
    )
    return name, model, scalar


def run(ctx: StageContext) -> StageResult:
    spec, endpoint = ctx.spec.score, ctx.spec.store.endpoint_url
    source, key = split_uri(spec.candidates, endpoint)
    folder = source.uri_for("")
    prompts = parse_prompts(read_records(source, key), spec.candidates, folder, MediaRoot(folder, endpoint))
    started = time.perf_counter()
    model_name, model, scalar = applied_model(ctx, spec)
    with bar(len(prompts), f"score ({model_name})", ctx.progress, unit="prompt") as progress:
        rows = []
        for row in score_prompts(
            model,
            scalar,
            prompts,
            ImageLoader(endpoint),
            spec.tournament,
            spec.max_new_tokens,
            spec.batch_size,
        ):
            rows.append(row)
            progress.update(1)
    summary = {"model": model_name, **summarize(rows, time.perf_counter() - started)}
    write_records(ctx.store, ctx.key("scores.jsonl"), rows)
    ctx.metrics.set("score_model_calls", summary["model_calls"], "Model calls of the best-of-N scoring")
    ctx.metrics.set("score_prompts", summary["prompts"], "Prompts scored best of N")
    return StageResult(
        outputs={"scores": "scores.jsonl"},
        counts={"prompts": summary["prompts"], "candidates": summary["candidates"]},
        metrics=summary,
    )
