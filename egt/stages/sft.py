"""Stage 2, sft: fine-tune the base judge on the kept teacher trajectories (EGT eq. 2)."""

from __future__ import annotations

import json
import logging

import torch

from egt.engines.checkpoint import load_latest, resume, save_checkpoint
from egt.engines.hf import HFJudge, JudgeInput
from egt.engines.sft import SFTExample, TrainState, target_ids, total_steps, train
from egt.spec import EGTRunSpec
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, model_dir
from egt.stages.progress import bar
from egt.storage.records import read_records

log = logging.getLogger(__name__)


def fingerprint(spec: EGTRunSpec) -> dict:
    return {"sft": spec.sft.model_dump(mode="json"), "dtype": spec.model.dtype}


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


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.sft
    records = [
        r for r in read_records(ctx.store, ctx.upstream_output("annotate", "annotated")) if r["annotated"]
    ]
    if not records:
        raise ValueError("sft: the annotate stage kept no trajectory; nothing to train on")
    judge = HFJudge.from_dir(model_dir(ctx, "prepare"), ctx.spec.model.dtype, ctx.spec.model.device)
    torch.manual_seed(spec.seed)
    examples, too_long = build_examples(ctx, judge, records)
    if not examples:
        raise ValueError(f"sft: every trajectory is longer than sft.max_length={spec.max_length}")
    optimizer = torch.optim.AdamW(
        judge.model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay
    )
    state = TrainState(step=0, losses=[])
    checkpoints = ctx.key("checkpoints")
    payload = load_latest(ctx.store, checkpoints)
    if payload is not None:
        resume(payload, judge.model, optimizer)
        state = TrainState(step=payload["step"], losses=payload["extra"]["losses"])
        log.info("sft: resuming after step %d", state.step)
    steps = total_steps(len(examples), spec)
    with bar(steps, "sft", ctx.progress, unit="step") as progress:
        progress.update(state.step)

        def on_step(state: TrainState) -> None:
            progress.update(1)
            progress.set_postfix(loss=f"{state.losses[-1]:.4f}")
            ctx.metrics.set(
                "sft_loss", state.losses[-1], "SFT loss (mean NLL of assistant tokens) of the last step"
            )
            ctx.metrics.set("sft_step", state.step, "SFT optimizer steps done")
            if state.step % spec.checkpoint_every_steps == 0 and state.step < steps:
                save_checkpoint(
                    ctx.store, checkpoints, state.step, judge.model, optimizer, {"losses": state.losses}
                )

        train(judge, examples, spec, state, optimizer, on_step)
    final = ctx.workdir / "model"
    judge.model.save_pretrained(final)
    judge.processor.save_pretrained(final)
    judge.tokenizer.save_pretrained(final)
    ctx.store.upload_dir(final, ctx.key("model"))
    ctx.store.write_text(ctx.key("losses.json"), json.dumps(state.losses))
    return StageResult(
        outputs={"model": "model", "losses": "losses.json"},
        counts={"examples": len(examples), "dropped_too_long": too_long, "steps": state.step},
        metrics={"final_loss": state.losses[-1], "first_loss": state.losses[0]},
    )
