"""Supervised fine-tuning on teacher trajectories (EGT paper eq. 2): the transformers training loop.

``L(θ) = −E log p_θ(r_i, l_i | d_i)`` over the assistant tokens only: the prompt and image tokens
are context, never targets (``HFJudge.completion_hidden`` scores completion positions alone).

The data order is a pure function of (seed, epoch), so a resumed run needs only the step number
to continue with exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from egt.algorithms.losses import sft_nll_loss
from egt.engines.hf import HFJudge, JudgeInput
from egt.spec import SFTSpec


@dataclass
class SFTExample:
    item: JudgeInput
    target_ids: list[int]  # the assistant turn: trajectory, answer, end-of-turn token


def target_ids(judge: HFJudge, trajectory: str) -> list[int]:
    """Token ids of the assistant turn the model must learn to write, ending with <|im_end|>."""
    return judge.tokenizer(trajectory + "<|im_end|>", add_special_tokens=False)["input_ids"]


def sft_loss(judge: HFJudge, examples: Sequence[SFTExample]) -> torch.Tensor:
    """Mean NLL of the micro-batch's assistant tokens (eq. 2)."""
    hidden, mask = judge.completion_hidden([e.item for e in examples], [e.target_ids for e in examples])
    logits = judge.model.lm_head(hidden[mask.bool()])
    targets = torch.tensor([t for e in examples for t in e.target_ids], device=logits.device)
    return sft_nll_loss(logits, targets)


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


@dataclass
class TrainState:
    step: int
    losses: list[float]


def train(
    judge: HFJudge,
    examples: Sequence[SFTExample],
    spec: SFTSpec,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    on_step: Callable[[TrainState], None],
    world_size: int = 1,
) -> TrainState:
    """Optimizer steps from ``state.step`` to the end; ``on_step`` runs after each (logging, checkpoints).

    Global batch = micro-batch × accumulation × world size; with fewer examples than a global batch
    left at the end of the run, the last step takes what remains.
    """
    per_step = spec.global_batch_size
    if per_step % (spec.micro_batch_size * world_size):
        raise ValueError(
            f"sft.global_batch_size {per_step} is not a multiple of micro_batch_size "
            f"{spec.micro_batch_size} × world size {world_size}"
        )
    order = example_order(len(examples), spec.epochs, spec.seed)
    total_steps = math.ceil(len(order) / per_step)
    judge.model.train()
    if spec.gradient_checkpointing and judge.device != "cpu":
        judge.model.gradient_checkpointing_enable()
    for step in range(state.step, total_steps):
        batch = [examples[i] for i in order[step * per_step : (step + 1) * per_step]]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, spec.learning_rate, spec.warmup_ratio)
        optimizer.zero_grad(set_to_none=True)
        tokens = sum(len(e.target_ids) for e in batch)
        step_loss = 0.0
        for start in range(0, len(batch), spec.micro_batch_size):
            micro = batch[start : start + spec.micro_batch_size]
            loss = sft_loss(judge, micro)
            # Weight each micro-batch by its tokens so the step's loss is a mean over all its tokens.
            weight = sum(len(e.target_ids) for e in micro) / tokens
            (loss * weight).backward()
            step_loss += loss.item() * weight
        torch.nn.utils.clip_grad_norm_(judge.model.parameters(), spec.max_grad_norm)
        optimizer.step()
        state.step = step + 1
        state.losses.append(step_loss)
        on_step(state)
    judge.model.eval()
    return state


def total_steps(num_examples: int, spec: SFTSpec) -> int:
    return math.ceil(round(spec.epochs * num_examples) / spec.global_batch_size)
