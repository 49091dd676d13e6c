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

import math
import random
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from egt.algorithms.losses import sft_nll_loss
from egt.engines.distributed import World, all_reduce_sum, barrier, init_process_group
from egt.engines.hf import HFJudge, JudgeInput
from egt.spec import SFTSpec
from egt.storage.store import ArtifactStore


@dataclass
class SFTExample:
    item: JudgeInput
    target_ids: list[int]  # the assistant turn: trajectory, answer, end-of-turn token


def target_ids(judge: HFJudge, trajectory: str) -> list[int]:
    """Token ids of the assistant turn the model must learn to write, ending with <|im_end|>."""
    return judge.tokenizer(trajectory + "<|im_end|>", add_special_tokens=False)["input_ids"]


def _hidden_and_targets(judge: HFJudge, examples: Sequence[SFTExample]) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, mask = judge.completion_hidden([e.item for e in examples], [e.target_ids for e in examples])
    logits = judge.model.lm_head(hidden[mask.bool()])
    targets = torch.tensor([t for e in examples for t in e.target_ids], device=logits.device)
    return logits, targets


def sft_loss(judge: HFJudge, examples: Sequence[SFTExample]) -> torch.Tensor:
    """Mean NLL of the micro-batch's assistant tokens (eq. 2)."""
    return sft_nll_loss(*_hidden_and_targets(judge, examples))


def token_nll_sum(judge: HFJudge, examples: Sequence[SFTExample]) -> torch.Tensor:
    """Summed NLL of the micro-batch's assistant tokens (float32): the numerator of eq. 2."""
    logits, targets = _hidden_and_targets(judge, examples)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


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


def total_steps(num_examples: int, spec: SFTSpec) -> int:
    return math.ceil(round(spec.epochs * num_examples) / spec.global_batch_size)


def accumulation_steps(spec: SFTSpec, world_size: int) -> int:
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


def uses_bf16(spec: SFTSpec, device: str) -> bool:
    """bf16 mixed precision (fp32 master weights in the optimizer) on GPU; CPU runs stay float32."""
    return spec.bf16 and device.startswith("cuda")


def deepspeed_config(spec: SFTSpec, world_size: int, device: str) -> dict[str, Any]:
    return {
        "train_batch_size": spec.global_batch_size,
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps(spec, world_size),
        "gradient_clipping": spec.max_grad_norm,
        "zero_optimization": {"stage": spec.zero_stage},
        "bf16": {"enabled": uses_bf16(spec, device)},
        "steps_per_print": 2**31 - 1,  # the stage reports losses itself
        "wall_clock_breakdown": False,
    }


def import_deepspeed():
    """deepspeed, minus the shared-memory all-reduce op its CPU backend JIT-compiles on first use.

    On a CPU accelerator ``deepspeed.comm`` builds ``deepspeed_shm_comm`` (a C++ extension, ~70 s on
    first use) in every process that initializes it, even when torch.distributed is already set up.
    (Initializing torch.distributed first does not avoid it: DeepSpeed then wraps the existing
    group in the same backend object, which builds the op in its constructor.) Only DeepSpeed's
    ``inference_all_reduce`` uses the op, and falls back to torch.distributed without it; training
    reductions always go through torch.distributed (gloo here). ``build_shm_op`` builds it only if
    ``deepspeed.ops.__compatible_ops__`` (a dict probed once per process, ~0.1 s) says it is
    compatible, so marking it incompatible skips the build. CUDA accelerators have no such op:
    the mark changes nothing there.
    """
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


class TokenNLLSum(torch.nn.Module):
    """The module DeepSpeed wraps: a micro-batch in, its summed assistant-token NLL out.

    The judge's model is its only submodule, so DeepSpeed sees every parameter, and its forward
    hooks (backward bookkeeping; ZeRO-3 parameter gathering) run for each micro-batch.
    """

    def __init__(self, judge: HFJudge) -> None:
        super().__init__()
        self.model = judge.model
        self.judge = judge

    def forward(self, examples: Sequence[SFTExample]) -> torch.Tensor:
        return token_nll_sum(self.judge, examples)


def initialize(judge: HFJudge, spec: SFTSpec, world: World):
    """The DeepSpeed engine over the judge's model, with AdamW (lr is set every step)."""
    accumulation_steps(spec, world.world_size)  # fail on a bad batch geometry before any setup
    init_process_group(world, judge.device)
    deepspeed = import_deepspeed()
    if spec.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (the frozen-embedding case).
        judge.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(
        judge.model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay
    )
    engine, *_ = deepspeed.initialize(
        model=TokenNLLSum(judge),
        optimizer=optimizer,
        config=deepspeed_config(spec, world.world_size, judge.device),
    )
    return engine


# ---- the training loop -----------------------------------------------------------------------------


@dataclass
class TrainState:
    step: int
    losses: list[float]
    grad_norms: list[float] = field(default_factory=list)  # before clipping, over all ranks


def rank_share(batch: Sequence[SFTExample], world: World) -> list[SFTExample]:
    """This rank's sequences of a global batch: every ``world_size``-th, from position ``rank``."""
    return list(batch[world.rank :: world.world_size])


def train(
    judge: HFJudge,
    engine,
    examples: Sequence[SFTExample],
    spec: SFTSpec,
    state: TrainState,
    on_step: Callable[[TrainState], None],
    world: World,
) -> TrainState:
    """Optimizer steps from ``state.step`` to the end; ``on_step`` runs after each, on every rank.

    With fewer examples than a global batch left at the end of the run, the last step takes what
    remains (module docstring). The loss and grad norm in ``state`` are the same on every rank.
    """
    accumulation = accumulation_steps(spec, world.world_size)
    per_step = spec.global_batch_size
    order = example_order(len(examples), spec.epochs, spec.seed)
    steps = math.ceil(len(order) / per_step)
    engine.train()
    for step in range(state.step, steps):
        batch = [examples[i] for i in order[step * per_step : (step + 1) * per_step]]
        tokens = sum(len(e.target_ids) for e in batch)
        share = rank_share(batch, world)
        micro_batches = [
            share[start : start + spec.micro_batch_size]
            for start in range(0, len(share), spec.micro_batch_size)
        ]
        lr = lr_at(step, steps, spec.learning_rate, spec.warmup_ratio)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        local_nll = 0.0
        for slot in range(accumulation):
            real = slot < len(micro_batches)
            nll = engine(micro_batches[slot] if real else batch[:1])
            # DeepSpeed divides the summed gradients by the world size: × world size restores the sum.
            weight = world.world_size / tokens if real else 0.0
            engine.backward(nll * weight, scale_wrt_gas=False)
            engine.step()
            if real:
                local_nll += nll.item()
        norm = engine.get_global_grad_norm()
        state.step = step + 1
        state.losses.append(all_reduce_sum(local_nll) / tokens)
        state.grad_norms.append(float(norm))
        on_step(state)
    engine.eval()
    return state


# ---- checkpoints in the artifact store --------------------------------------------------------------

LATEST = "latest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _tag(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(
    engine, store: ArtifactStore, prefix: str, state: TrainState, local_dir: Path, world: World
) -> str:
    """DeepSpeed's checkpoint of ``state.step`` under ``<prefix>/step-N/``; returns that key prefix.

    Every rank writes its own files (rank 0 the module weights; each rank its optimizer shard) into
    a directory of its own and uploads them; after a barrier rank 0 points ``latest.json`` at the
    step, so a reader never sees a checkpoint with a shard missing, then drops older steps.
    """
    tag = _tag(state.step)
    own = Path(local_dir) / f"rank-{world.rank}"
    client = {"step": state.step, "losses": state.losses, "grad_norms": state.grad_norms}
    engine.save_checkpoint(str(own), tag=tag, client_state=client, save_latest=False)
    store.upload_dir(own / tag, f"{prefix}/{tag}")
    shutil.rmtree(own / tag, ignore_errors=True)
    barrier()
    if world.is_main:
        store.write_json(
            f"{prefix}/{LATEST}", {"tag": tag, "step": state.step, "world_size": world.world_size}
        )
        # Only older steps: nothing newer can exist yet (every rank is past this step's barrier).
        old = {key.split("/")[0] for key in (k[len(prefix) + 1 :] for k in store.list(prefix))}
        for name in sorted(old):
            match = _STEP_DIR.match(name)
            if match and int(match.group(1)) < state.step:
                store.delete_prefix(f"{prefix}/{name}/")
    return f"{prefix}/{tag}"


def load_checkpoint(
    engine, store: ArtifactStore, prefix: str, local_dir: Path, world: World
) -> TrainState | None:
    """Restore the newest checkpoint into ``engine``; None when there is none yet.

    The first process of each node downloads the step into a directory named after it, which the
    node's processes then load from (DeepSpeed reads its own rank's optimizer shard only).
    """
    if not store.exists(f"{prefix}/{LATEST}"):
        return None
    latest = store.read_json(f"{prefix}/{LATEST}")
    if latest["world_size"] != world.world_size:
        raise ValueError(
            f"sft checkpoint {store.uri_for(prefix)}/{latest['tag']} was written by "
            f"{latest['world_size']} processes; this run has {world.world_size}. ZeRO shards its "
            "optimizer state per process: resume with the same number of processes, or delete "
            "the checkpoints to start over"
        )
    tag = latest["tag"]
    node_dir = Path(local_dir) / f"resume-{world.rank - world.local_rank}"  # the node's first rank
    if world.local_rank == 0:
        shutil.rmtree(node_dir, ignore_errors=True)
        store.download_dir(f"{prefix}/{tag}", node_dir / tag)
    barrier()
    path, client = engine.load_checkpoint(
        str(node_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the sft checkpoint {store.uri_for(prefix)}/{tag}")
    barrier()
    if world.local_rank == 0:
        shutil.rmtree(node_dir, ignore_errors=True)
    return TrainState(client["step"], list(client["losses"]), list(client["grad_norms"]))


def save_model(engine, judge: HFJudge, out_dir: Path, world: World) -> None:
    """Rank 0 writes the trained model as a Hugging Face folder; every rank must call this.

    ZeRO-3 holds each parameter in shards: they are gathered (a collective) for the write.
    """
    import contextlib

    gathered = contextlib.nullcontext()
    if zero_stage_of(engine) == 3:
        gathered = import_deepspeed().zero.GatheredParameters(list(judge.model.parameters()))
    with gathered:
        if world.is_main:
            judge.model.save_pretrained(out_dir)
            judge.processor.save_pretrained(out_dir)
            judge.tokenizer.save_pretrained(out_dir)
    barrier()


def zero_stage_of(engine) -> int:
    return int(engine.zero_optimization_stage())
