"""The DeepSpeed engine both trainers share: the SFT ranks (engines.sft) and the RL learners (engines.rl).

One code path for a laptop and a cluster: ``deepspeed.initialize`` over a process group of
``world_size`` processes (torchrun's or Ray actors'; a world of 1 locally), ZeRO stage
``zero_stage``, bf16 mixed precision on GPU, optional gradient checkpointing (egt.spec.DeepSpeedSpec).

Both trainers compute their loss as a weighted sum over micro-batches themselves and hand it to
``engine.backward(..., scale_wrt_gas=False)``; DeepSpeed averages gradients over ranks, so a
trainer multiplies its loss by the world size to get the sum back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from egt.engines.distributed import World, init_process_group
from egt.engines.hf import HFJudge
from egt.spec import DeepSpeedSpec


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


def uses_bf16(spec: DeepSpeedSpec, device: str) -> bool:
    """bf16 mixed precision (fp32 master weights in the optimizer) on GPU; CPU runs stay float32."""
    return spec.bf16 and device.startswith("cuda")


def deepspeed_config(
    spec: DeepSpeedSpec, micro_batch_size: int, world_size: int, device: str, accumulation: int | None
) -> dict[str, Any]:
    """The engine's config. ``accumulation=None``: the caller owns the accumulation boundary.

    SFT has a fixed geometry (micro-batch × accumulation × world = global batch), which DeepSpeed
    manages. An RL update's mini-batch is whatever the rollout batch holds (the last batch of an
    epoch is short), so the learner runs as many micro-batches as it needs and every
    ``engine.step()`` is a boundary (``managed_gradient_accumulation: false``).
    """
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_clipping": spec.max_grad_norm,
        "zero_optimization": {"stage": spec.zero_stage},
        "bf16": {"enabled": uses_bf16(spec, device)},
        "steps_per_print": 2**31 - 1,  # the stages report losses themselves
        "wall_clock_breakdown": False,
    }
    if accumulation is None:
        config |= {"managed_gradient_accumulation": False, "gradient_accumulation_steps": 1}
        config["train_batch_size"] = micro_batch_size * world_size
    else:
        config["gradient_accumulation_steps"] = accumulation
        config["train_batch_size"] = micro_batch_size * accumulation * world_size
    return config


class JudgeModule(torch.nn.Module):
    """The module DeepSpeed wraps: ``forward(*args) = compute(judge, *args)``.

    The judge's model (and a scalar reward model's head) are its submodules, so DeepSpeed sees every
    parameter, and its forward hooks (backward bookkeeping; ZeRO-3 parameter gathering) run for
    each micro-batch.
    """

    def __init__(
        self, judge: HFJudge, compute: Callable[..., Any], head: torch.nn.Module | None = None
    ) -> None:
        super().__init__()
        self.model = judge.model
        if head is not None:
            self.head = head
        self.judge = judge
        self.compute = compute

    def forward(self, *args: Any) -> Any:
        return self.compute(self.judge, *args)


def initialize(
    judge: HFJudge,
    compute: Callable[..., Any],
    spec: DeepSpeedSpec,
    world: World,
    *,
    micro_batch_size: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    accumulation: int | None = None,
    head: torch.nn.Module | None = None,
    external_parameters: Sequence[torch.Tensor] = (),
):
    """The DeepSpeed engine over the judge's model (and ``head``), with AdamW over the parameters
    that require grad (frozen parts stay out of the optimizer); joins the process group first.

    ``external_parameters``: parameters ``compute`` uses outside their module's forward (the SFT
    loss multiplies by the output embedding chunk by chunk); ZeRO-3 gathers a parameter only for
    the modules registered as its users.
    """
    init_process_group(world, judge.device)
    deepspeed = import_deepspeed()
    if spec.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (the frozen-embedding case).
        judge.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module = JudgeModule(judge, compute, head)
    trained = [parameter for parameter in module.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=learning_rate, weight_decay=weight_decay)
    engine, *_ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        config=deepspeed_config(spec, micro_batch_size, world.world_size, judge.device, accumulation),
    )
    if spec.zero_stage == 3:
        for parameter in external_parameters:
            deepspeed.zero.register_external_parameter(engine.module, parameter)
    return engine


def require_images(image_counts: Sequence[int], world_size: int, what: str) -> None:
    """Data-parallel training needs an image in every example; one rank trains text-only ones too.

    DeepSpeed reduces gradients in buckets filled in the order backward produces them. A rank whose
    micro-batch has no image never runs the vision tower, so the ranks disagree on what a bucket
    holds and the reduction breaks: gloo aborts ("Received data size doesn't match expected
    size"), NCCL hangs. Checked before any training, so nothing is lost.
    """
    text_only = sum(1 for count in image_counts if count == 0)
    if world_size > 1 and text_only:
        raise ValueError(
            f"{what}: {text_only} of {len(image_counts)} examples have no image; with {world_size} "
            "data-parallel ranks every example needs one (DeepSpeed's gradient buckets must match "
            "on every rank). Drop the text-only examples or train on one rank"
        )


def zero_stage_of(engine) -> int:
    return int(engine.zero_optimization_stage())


@contextlib.contextmanager
def full_parameters(engine, model: torch.nn.Module) -> Iterator[None]:
    """Every parameter whole inside the block. Under ZeRO-3 a collective: every rank must enter."""
    if zero_stage_of(engine) == 3:
        with import_deepspeed().zero.GatheredParameters(list(model.parameters())):
            yield
    else:
        yield
