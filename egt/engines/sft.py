"""Supervised fine-tuning on teacher trajectories (EGT paper eq. 2), data-parallel on DeepSpeed.

``L(θ) = −E log p_θ(r_i, l_i | d_i)`` over the assistant tokens only: the prompt and image tokens
are context, never targets (``HFJudge.completion_hidden`` scores completion positions alone).

One code path for a laptop and a cluster: ``deepspeed.initialize`` over a process group of
``WORLD_SIZE`` processes (torchrun's, or a world of 1), ZeRO stage ``sft.zero_stage``, bf16 on GPU.
An optimizer step takes ``global_batch_size`` sequences = micro-batch × accumulation × world size:

- every rank holds the whole example list and derives the same order from (seed, epoch), so a
  step's global batch is known everywhere; rank ``r`` takes every ``world_size``-th sequence of
  it, in micro-batches of ``micro_batch_size``;
- the step's loss is the token-weighted mean over the WHOLE global batch, whatever the split: each
  micro-batch backpropagates its summed token NLL divided by the global batch's token count
  (computed on every rank from the batch itself). DeepSpeed averages gradients over ranks, so the
  loss handed to ``engine.backward`` is multiplied by the world size, and gradient-accumulation
  scaling is switched off (``scale_wrt_gas=False``). 1 and N processes then compute the same
  gradient up to the order of float additions;
- every rank always runs exactly ``accumulation`` micro-batches, because ZeRO's reductions and
  ZeRO-3's parameter gathers are collective: a rank whose share of a short last batch runs out
  runs a padding micro-batch with weight 0.

The data order is a pure function of (seed, epoch), so a resumed run needs only the step number
to continue with exactly the batches it would have seen. Checkpoints are DeepSpeed's own (module
weights, and the optimizer state sharded per rank) kept in the artifact store.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from egt.algorithms.losses import chunked_linear_nll_sum, sft_nll_loss
from egt.engines import checkpoint, deepspeed_engine
from egt.engines.deepspeed_engine import full_parameters
from egt.engines.distributed import World, all_reduce_sum, barrier, rank_micro_batches
from egt.engines.finite import require_finite
from egt.engines.hf import HFJudge, JudgeInput
from egt.spec import ScalarTrainSpec, SFTSpec
from egt.storage.store import ArtifactStore


@dataclass
class SFTExample:
    item: JudgeInput
    target_ids: list[int]  # the assistant turn: trajectory, answer, end-of-turn token


def target_ids(judge: HFJudge, trajectory: str) -> list[int]:
    """Token ids of the assistant turn the model must learn to write, ending with <|im_end|>."""
    return judge.tokenizer(trajectory + "<|im_end|>", add_special_tokens=False)["input_ids"]


def _hidden_and_targets(judge: HFJudge, examples: Sequence[SFTExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at the assistant positions only ``[N, d]`` and their target ids ``[N]``."""
    hidden, mask = judge.completion_hidden([e.item for e in examples], [e.target_ids for e in examples])
    targets = torch.tensor([t for e in examples for t in e.target_ids], device=hidden.device)
    return hidden[mask.bool()], targets


def sft_loss(judge: HFJudge, examples: Sequence[SFTExample]) -> torch.Tensor:
    """Mean NLL of the micro-batch's assistant tokens (eq. 2), through the model's own ``lm_head``."""
    hidden, targets = _hidden_and_targets(judge, examples)
    return sft_nll_loss(judge.model.lm_head(hidden), targets)


def token_nll_sum(
    judge: HFJudge, examples: Sequence[SFTExample], chunk_size: int = SFTSpec().logits_chunk_size
) -> torch.Tensor:
    """Summed NLL of the micro-batch's assistant tokens (float32): the numerator of eq. 2.

    Logits exist only at the labelled positions, ``chunk_size`` rows at a time, with their gradient
    formed in the same pass (:func:`egt.algorithms.losses.chunked_linear_nll_sum`): the output layer
    is most of a small judge's cost, and of a long trajectory's memory.
    """
    hidden, targets = _hidden_and_targets(judge, examples)
    return chunked_linear_nll_sum(hidden, judge.lm_head_weight, targets, chunk_size)


def example_order(num_examples: int, epochs: float, seed: int) -> list[int]:
    """Example indices for the whole run: a fresh seeded permutation per epoch, cut at ``epochs``."""
    order: list[int] = []
    for epoch in range(math.ceil(epochs)):
        permutation = list(range(num_examples))
        random.Random(seed * 1_000_003 + epoch).shuffle(permutation)
        order.extend(permutation)
    return order[: round(epochs * num_examples)]


def lr_at(step: int, total_steps: int, peak: float, warmup_ratio: float) -> float:
    """Linear warmup to ``peak``, then cosine decay to 0."""
    warmup = max(1, round(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def total_steps(num_examples: int, spec: SFTSpec | ScalarTrainSpec) -> int:
    return math.ceil(round(spec.epochs * num_examples) / spec.global_batch_size)


def accumulation_steps(spec: SFTSpec | ScalarTrainSpec, world_size: int) -> int:
    """Micro-batches per rank per optimizer step: global batch / (micro-batch × world size)."""
    per_pass = spec.micro_batch_size * world_size
    if spec.global_batch_size % per_pass:
        raise ValueError(
            f"sft.global_batch_size {spec.global_batch_size} is not a multiple of micro_batch_size "
            f"{spec.micro_batch_size} × world size {world_size} (= {per_pass} sequences per forward pass "
            f"over all ranks)"
        )
    return spec.global_batch_size // per_pass


# ---- the DeepSpeed engine --------------------------------------------------------------------------


def initialize(judge: HFJudge, spec: SFTSpec, world: World):
    """The DeepSpeed engine (egt.engines.deepspeed_engine) computing a micro-batch's summed NLL."""
    compute = functools.partial(token_nll_sum, chunk_size=spec.logits_chunk_size)
    return trainer_engine(judge, compute, spec, world, external_parameters=(judge.lm_head_weight,))


def trainer_engine(
    judge: HFJudge, compute: Callable[..., Any], spec: SFTSpec | ScalarTrainSpec, world: World, **options: Any
):
    """The DeepSpeed engine of a :func:`train` loop: its batch geometry and optimizer from ``spec``
    (``options``: deepspeed_engine.initialize's ``head``, ``external_parameters``)."""
    accumulation = accumulation_steps(spec, world.world_size)  # fails on a bad geometry before any setup
    return deepspeed_engine.initialize(
        judge,
        compute,
        spec,
        world,
        micro_batch_size=spec.micro_batch_size,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        accumulation=accumulation,
        **options,
    )


# ---- the training loop -----------------------------------------------------------------------------


@dataclass
class TrainState:
    step: int
    losses: list[float]
    grad_norms: list[float] = field(default_factory=list)  # before clipping, over all ranks


def target_tokens(example: SFTExample) -> int:
    return len(example.target_ids)


def train(
    judge: HFJudge,
    engine,
    examples: Sequence[Any],
    spec: SFTSpec | ScalarTrainSpec,
    state: TrainState,
    on_step: Callable[[TrainState], None],
    world: World,
    size: Callable[[Any], int] = target_tokens,
) -> TrainState:
    """Optimizer steps from ``state.step`` to the end; ``on_step`` runs after each, on every rank.

    ``engine(examples)`` returns a micro-batch's summed loss; a step's loss is that sum over the
    global batch divided by the batch's ``size`` (its target tokens for SFT; its pair count for a
    scalar reward model's BT loss). With fewer examples than a global batch left at the end of the
    run, the last step takes what remains (module docstring). The loss and grad norm in ``state``
    are the same on every rank.
    """
    accumulation = accumulation_steps(spec, world.world_size)
    per_step = spec.global_batch_size
    order = example_order(len(examples), spec.epochs, spec.seed)
    steps = math.ceil(len(order) / per_step)
    engine.train()
    for step in range(state.step, steps):
        batch = [examples[i] for i in order[step * per_step : (step + 1) * per_step]]
        tokens = sum(size(e) for e in batch)
        lr = lr_at(step, steps, spec.learning_rate, spec.warmup_ratio)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        local_nll = 0.0
        for rows in rank_micro_batches(len(batch), world, spec.micro_batch_size, slots=accumulation):
            nll = engine([batch[r] for r in rows] if rows else batch[:1])
            # DeepSpeed divides the summed gradients by the world size: × world size restores the sum.
            weight = world.world_size / tokens if rows else 0.0
            engine.backward(nll * weight, scale_wrt_gas=False)
            engine.step()
            if rows:
                local_nll += nll.item()
        loss, norm = all_reduce_sum(local_nll) / tokens, float(engine.get_global_grad_norm())
        require_finite(f"step {step + 1} of {steps}", loss=loss, grad_norm=norm)  # same on every rank
        state.step = step + 1
        state.losses.append(loss)
        state.grad_norms.append(norm)
        on_step(state)
    engine.eval()
    return state


# ---- checkpoints and the final model ----------------------------------------------------------------


def save_checkpoint(
    engine, store: ArtifactStore, prefix: str, state: TrainState, local_dir: Path, world: World
) -> str:
    """The step's DeepSpeed checkpoint in the store (egt.engines.checkpoint); every rank calls this."""
    client = {"losses": state.losses, "grad_norms": state.grad_norms}
    return checkpoint.save_checkpoint(engine, store, prefix, state.step, client, local_dir, world)


def load_checkpoint(
    engine, store: ArtifactStore, prefix: str, local_dir: Path, world: World
) -> TrainState | None:
    """The newest checkpoint restored into ``engine``; None when there is none yet."""
    client = checkpoint.load_checkpoint(engine, store, prefix, local_dir, world)
    if client is None:
        return None
    return TrainState(client["step"], list(client["losses"]), list(client["grad_norms"]))


def save_model(engine, judge: HFJudge, out_dir: Path, world: World) -> None:
    """Rank 0 writes the trained model as a Hugging Face folder; every rank must call this
    (ZeRO-3 gathers each parameter's shards for the write, a collective)."""
    with full_parameters(engine, judge.model):
        if world.is_main:
            judge.save(out_dir)
    barrier()
