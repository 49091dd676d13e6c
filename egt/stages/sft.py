"""Stage 2, sft: fine-tune the base judge on the kept teacher trajectories (EGT eq. 2).

The same code runs in one process (``egt run --local``, a one-pod Job) and in every process of a
torchrun launch (``egt.engines.distributed``): each process trains its share of every global batch
on DeepSpeed, checkpoints go to ``<run>/sft/checkpoints/`` (one optimizer shard per process), and a
restarted launch resumes from the newest one. Only rank 0 writes the model, the losses and the
history; every rank returns the same result.
"""

from __future__ import annotations

import json
import logging

import torch

from egt.engines.deepspeed_engine import require_images
from egt.engines.distributed import World, process_group, world
from egt.engines.hf import HFJudge, JudgeInput, resolve_device
from egt.engines.sft import (
    SFTExample,
    TrainState,
    initialize,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    save_model,
    target_ids,
    total_steps,
    train,
)
from egt.spec import ScalarTrainSpec, SFTSpec
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, model_dir
from egt.stages.progress import bar
from egt.storage.records import read_records

log = logging.getLogger(__name__)


def judge_input(record: dict, images: ImageLoader) -> JudgeInput:
    return JudgeInput(images(record["images"]), record["query"], record["response_1"], record["response_2"])


def build_examples(ctx: StageContext, judge: HFJudge, records: list[dict]) -> tuple[list[SFTExample], int]:
    """Examples from kept trajectories; sequences longer than sft.max_length are dropped and counted."""
    images = ImageLoader(ctx.spec.store.endpoint_url)
    examples, too_long = [], 0
    for record in records:
        item = judge_input(record, images)
        example = SFTExample(item, target_ids(judge, record["teacher_output"]))
        prompt_length = judge.encode([item])["input_ids"].shape[1]
        if prompt_length + len(example.target_ids) > ctx.spec.sft.max_length:
            too_long += 1
            continue
        examples.append(example)
    return examples, too_long


def history_rows(state: TrainState, steps: int, spec: SFTSpec | ScalarTrainSpec) -> list[dict]:
    """Loss, grad norm and learning rate per optimizer step."""
    return [
        {
            "step": step + 1,
            "loss": loss,
            "grad_norm": norm,
            "lr": lr_at(step, steps, spec.learning_rate, spec.warmup_ratio),
        }
        for step, (loss, norm) in enumerate(zip(state.losses, state.grad_norms, strict=True))
    ]


def write_history(ctx: StageContext, history: list[dict]) -> None:
    """The stage's ``losses.json`` (the loss per step) and ``history.json`` (:func:`history_rows`)."""
    ctx.store.write_text(ctx.key("losses.json"), json.dumps([row["loss"] for row in history]))
    ctx.store.write_json(ctx.key("history.json"), history)


def run(ctx: StageContext) -> StageResult:
    current = world()
    # Joined before the model is loaded: on CUDA this selects the process's GPU.
    with process_group(current, resolve_device(ctx.spec.model.device)):
        return train_stage(ctx, current)


def train_stage(ctx: StageContext, current: World) -> StageResult:
    spec = ctx.spec.sft
    records = [
        r for r in read_records(ctx.store, ctx.upstream_output("annotate", "annotated")) if r["annotated"]
    ]
    if not records:
        raise ValueError("sft: the annotate stage kept no trajectory; nothing to train on")
    require_images([len(r["images"]) for r in records], current.world_size, "sft")
    judge = HFJudge.from_dir(model_dir(ctx, "prepare"), ctx.spec.model.dtype, ctx.spec.model.device)
    torch.manual_seed(spec.seed)
    # Every rank builds every example: each needs the whole list to cut the same global batches.
    examples, too_long = build_examples(ctx, judge, records)
    if not examples:
        raise ValueError(f"sft: every trajectory is longer than sft.max_length={spec.max_length}")
    engine = initialize(judge, spec, current)
    checkpoints, local_checkpoints = ctx.key("checkpoints"), ctx.workdir / "checkpoints"
    state = load_checkpoint(engine, ctx.store, checkpoints, local_checkpoints, current)
    if state is None:
        state = TrainState(step=0, losses=[])
    else:
        log.info("sft: resuming after step %d", state.step)
    steps = total_steps(len(examples), spec)
    with bar(steps, "sft", ctx.progress and current.is_main, unit="step") as progress:
        progress.update(state.step)

        def on_step(state: TrainState) -> None:
            if current.is_main:
                progress.update(1)
                progress.set_postfix(loss=f"{state.losses[-1]:.4f}")
                ctx.metrics.set(
                    "sft_loss", state.losses[-1], "SFT loss (mean NLL of assistant tokens) of the last step"
                )
                ctx.metrics.set("sft_step", state.step, "SFT optimizer steps done")
                ctx.metrics.push()  # every step: the loss curve and stall alerts follow a running stage
            if state.step % spec.checkpoint_every_steps == 0 and state.step < steps:
                save_checkpoint(engine, ctx.store, checkpoints, state, local_checkpoints, current)

        train(judge, engine, examples, spec, state, on_step, current)
    final = ctx.workdir / "model"
    save_model(engine, judge, final, current)
    if current.is_main:
        ctx.store.upload_dir(final, ctx.key("model"))
        write_history(ctx, history_rows(state, steps, spec))
    return StageResult(
        outputs={"model": "model", "losses": "losses.json", "history": "history.json"},
        counts={
            "examples": len(examples),
            "dropped_too_long": too_long,
            "steps": state.step,
            "processes": current.world_size,
        },
        metrics={"final_loss": state.losses[-1], "first_loss": state.losses[0]},
    )
