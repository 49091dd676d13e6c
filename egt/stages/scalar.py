"""The scalar stage: a scalar reward model trained on the SFT pool's preference pairs (the baselines).

A linear head on the base model, Bradley–Terry loss (egt.algorithms.preference, egt.engines.scalar),
on the same pairs the reasoning run annotates, labels as given (no teacher). Runs like sft: one
process locally, every process of a torchrun launch on a cluster, DeepSpeed ZeRO, checkpoints in the
store (``<run>/scalar/checkpoints/``) and resume; rank 0 writes the model, losses and history.
"""

from __future__ import annotations

import logging

import torch

from egt.engines.deepspeed_engine import require_images
from egt.engines.distributed import World, process_group, world
from egt.engines.hf import resolve_device
from egt.engines.scalar import (
    PreferencePair,
    Response,
    ScalarRewardModel,
    initialize,
    save_model,
    train_pairs,
)
from egt.engines.sft import TrainState, load_checkpoint, save_checkpoint, total_steps
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, load_pool, model_dir
from egt.stages.progress import bar
from egt.stages.sft import write_history

log = logging.getLogger(__name__)


def preference_pair(record: dict, images: ImageLoader) -> PreferencePair:
    """The record's labelled response as chosen, the other as rejected."""
    opened = images(record["images"])
    chosen, rejected = record["label"], 3 - record["label"]
    return PreferencePair(
        Response(opened, record["query"], record[f"response_{chosen}"]),
        Response(opened, record["query"], record[f"response_{rejected}"]),
    )


def build_pairs(
    ctx: StageContext, model: ScalarRewardModel, records: list[dict]
) -> tuple[list[PreferencePair], int]:
    """Pairs from the pool; a pair with a scored sequence longer than scalar.max_length is dropped."""
    images = ImageLoader(ctx.spec.store.endpoint_url)
    pairs, too_long = [], 0
    for record in records:
        pair = preference_pair(record, images)
        longest = max(model.encode([r])["input_ids"].shape[1] for r in (pair.chosen, pair.rejected))
        if longest > ctx.spec.scalar.max_length:
            too_long += 1
            continue
        pairs.append(pair)
    return pairs, too_long


def run(ctx: StageContext) -> StageResult:
    current = world()
    with process_group(current, resolve_device(ctx.spec.model.device)):
        return train_stage(ctx, current)


def train_stage(ctx: StageContext, current: World) -> StageResult:
    spec = ctx.spec.scalar
    records = load_pool(ctx, "sft")
    require_images([len(r["images"]) for r in records], current.world_size, "scalar")
    model = ScalarRewardModel.from_base(
        model_dir(ctx, "prepare"), spec.pooling, spec.freeze, ctx.spec.model.dtype, ctx.spec.model.device
    )
    torch.manual_seed(spec.seed)
    pairs, too_long = build_pairs(ctx, model, records)
    if not pairs:
        raise ValueError(f"scalar: every pair is longer than scalar.max_length={spec.max_length}")
    engine = initialize(model, spec, current)
    checkpoints, local_checkpoints = ctx.key("checkpoints"), ctx.workdir / "checkpoints"
    state = load_checkpoint(engine, ctx.store, checkpoints, local_checkpoints, current)
    if state is None:
        state = TrainState(step=0, losses=[])
    else:
        log.info("scalar: resuming after step %d", state.step)
    steps = total_steps(len(pairs), spec)
    with bar(steps, "scalar", ctx.progress and current.is_main, unit="step") as progress:
        progress.update(state.step)

        def on_step(state: TrainState) -> None:
            if current.is_main:
                progress.update(1)
                progress.set_postfix(loss=f"{state.losses[-1]:.4f}")
                ctx.metrics.set(
                    "scalar_loss", state.losses[-1], "Scalar reward model BT loss of the last step"
                )
                ctx.metrics.set("scalar_step", state.step, "Scalar reward model optimizer steps done")
                ctx.metrics.push()
            if state.step % spec.checkpoint_every_steps == 0 and state.step < steps:
                save_checkpoint(engine, ctx.store, checkpoints, state, local_checkpoints, current)

        train_pairs(model, engine, pairs, spec, state, on_step, current)
    final = ctx.workdir / "model"
    save_model(engine, model, final, current)
    if current.is_main:
        ctx.store.upload_dir(final, ctx.key("model"))
        write_history(ctx, state, steps, spec)
    return StageResult(
        outputs={"model": "model", "losses": "losses.json", "history": "history.json"},
        counts={
            "pairs": len(pairs),
            "dropped_too_long": too_long,
            "steps": state.step,
            "processes": current.world_size,
        },
        metrics={"final_loss": state.losses[-1], "first_loss": state.losses[0]},
    )
