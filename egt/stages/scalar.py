"""The scalar stage: a scalar reward model trained on the SFT pool's preference pairs (the baselines).

A linear head on the base model, Bradley–Terry loss (egt.algorithms.preference, egt.engines.scalar),
on the same pairs the reasoning run annotates, labels as given (no teacher). Runs like sft: one
process locally, every process of a torchrun launch on a cluster, DeepSpeed ZeRO, checkpoints in the
store (``<run>/scalar/checkpoints/``) and resume; rank 0 writes the model, losses and history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
from egt.spec import ScalarTrainSpec
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, load_pool, model_dir
from egt.stages.progress import bar
from egt.stages.sft import history_rows, write_history

log = logging.getLogger(__name__)
FIRST_PHASE_HISTORY = "history-phase-1.json"  # kept for a resume inside the second phase


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
    extra = load_pool(ctx, "scalar_extra") if spec.second_phase and ctx.spec.data.scalar_extra else []
    require_images([len(r["images"]) for r in records + extra], current.world_size, "scalar")
    model = ScalarRewardModel.from_base(
        model_dir(ctx, "prepare"), spec.pooling, spec.freeze, ctx.spec.model.dtype, ctx.spec.model.device
    )
    torch.manual_seed(spec.seed)
    pairs, too_long = build_pairs(ctx, model, records)
    extra_pairs, extra_too_long = build_pairs(ctx, model, extra)
    if not pairs:
        raise ValueError(f"scalar: every pair is longer than scalar.max_length={spec.max_length}")
    engine = initialize(model, spec, current)
    phases = [Phase(1, spec, pairs, "checkpoints")]
    if spec.second_phase is not None:
        second_spec = spec.model_copy(update={**spec.second_phase.model_dump(), "second_phase": None})
        phases.append(Phase(2, second_spec, pairs + extra_pairs, "checkpoints-phase-2"))
    # A checkpoint of the second phase holds the first phase's training too: resume from it directly,
    # with the first phase's history as written when it ended.
    in_second = load_phase(ctx, engine, phases[1], current) if len(phases) > 1 else None
    history: list[dict] = []
    for phase in phases:
        if phase.number == 1 and in_second is not None:
            history += ctx.store.read_json(ctx.key(FIRST_PHASE_HISTORY))
            continue
        resumed = in_second if phase.number == 2 else load_phase(ctx, engine, phase, current)
        state = resumed or TrainState(0, [])
        run_phase(ctx, model, engine, phase, state, current)
        rows = [{**row, "phase": phase.number} for row in history_rows(state, phase.steps, phase.spec)]
        if phase.number == 1 and len(phases) > 1 and current.is_main:
            ctx.store.write_json(ctx.key(FIRST_PHASE_HISTORY), rows)
        history += rows
    final = ctx.workdir / "model"
    save_model(engine, model, final, current)
    if current.is_main:
        ctx.store.upload_dir(final, ctx.key("model"))
        write_history(ctx, history)
    losses = [row["loss"] for row in history]
    return StageResult(
        outputs={"model": "model", "losses": "losses.json", "history": "history.json"},
        counts={
            "pairs": len(pairs),
            "dropped_too_long": too_long + extra_too_long,
            "extra_pairs": len(extra_pairs),
            "steps": len(history),
            "processes": current.world_size,
        },
        metrics={"final_loss": losses[-1], "first_loss": losses[0]},
    )


@dataclass
class Phase:
    """One training phase: its settings (learning rate, epochs), pairs and checkpoint prefix."""

    number: int
    spec: ScalarTrainSpec
    pairs: list[PreferencePair]
    checkpoints: str

    @property
    def steps(self) -> int:
        return total_steps(len(self.pairs), self.spec)


def load_phase(ctx: StageContext, engine, phase: Phase, current: World) -> TrainState | None:
    state = load_checkpoint(
        engine, ctx.store, ctx.key(phase.checkpoints), ctx.workdir / phase.checkpoints, current
    )
    if state is not None:
        log.info("scalar: phase %d resumes after step %d", phase.number, state.step)
    return state


def run_phase(
    ctx: StageContext, model: ScalarRewardModel, engine, phase: Phase, state: TrainState, current: World
) -> None:
    """Train one phase from ``state`` to its end, with metrics and checkpoints."""
    checkpoints, local = ctx.key(phase.checkpoints), ctx.workdir / phase.checkpoints
    label = "scalar" if phase.number == 1 else f"scalar phase {phase.number}"
    with bar(phase.steps, label, ctx.progress and current.is_main, unit="step") as progress:
        progress.update(state.step)

        def on_step(state: TrainState) -> None:
            if current.is_main:
                progress.update(1)
                progress.set_postfix(loss=f"{state.losses[-1]:.4f}")
                help_loss = "Scalar reward model BT loss of the last step"
                ctx.metrics.set("scalar_loss", state.losses[-1], help_loss, phase=str(phase.number))
                ctx.metrics.set(
                    "scalar_step",
                    state.step,
                    "Scalar reward model optimizer steps done",
                    phase=str(phase.number),
                )
                ctx.metrics.push()
            if state.step % phase.spec.checkpoint_every_steps == 0 and state.step < phase.steps:
                save_checkpoint(engine, ctx.store, checkpoints, state, local, current)

        train_pairs(model, engine, phase.pairs, phase.spec, state, on_step, current)
