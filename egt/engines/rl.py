"""StableReinforce on Ray (method.md stage 5; R1-Reward §3): rollout workers, a learner, weight sync.

The actors are plain classes, made remote by the driver, so they can also be tested in-process.
One update step:

1. rollout workers (transformers here, vLLM in egt.engines.vllm_rollout) sample outputs for the
   batch (the curated set in ascending entropy order);
2. the driver scores them: ``R = R_acc(1 + α R_logic) + β R_format`` with a referee for R_logic;
3. the learners compute π_old (and π_ref when the KL coefficient is not 0), each on its share;
4. the driver turns rewards into advantages: Reinforce++ returns, global whitening, 3-sigma filter;
5. the learners (data-parallel DeepSpeed ranks) take ``updates_per_batch`` optimizer steps over
   mini-batches with the pre-clipped, ε-clipped loss;
6. the new weights go from learner rank 0 to every rollout worker.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from egt.algorithms.advantages import filter_advantages, kl_penalty, reinforce_pp_returns, whiten
from egt.algorithms.losses import stable_reinforce_loss
from egt.algorithms.reward import accuracy_reward, combined_reward, format_reward
from egt.engines import deepspeed_engine
from egt.engines.checkpoint import load_checkpoint, save_checkpoint
from egt.engines.deepspeed_engine import full_parameters
from egt.engines.distributed import World, all_reduce_sum, barrier, rank_micro_batches
from egt.engines.finite import require_finite
from egt.engines.hf import Generation, HFJudge, JudgeInput
from egt.judge import is_well_formed, parse_answer
from egt.spec import RLSpec
from egt.storage.store import local_folder, open_store


def pad(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.as_tensor(row, dtype=torch.float32)
    return out


def completion_mask(lengths: Sequence[int]) -> torch.Tensor:
    width = max(lengths)
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()


class RolloutWorker:
    """Holds a copy of the policy and samples outputs with it.

    ``model`` is a folder, local or a file:// / s3:// URI: the actor fetches it itself, because on a
    cluster it runs on another node than the driver that names it.
    """

    def __init__(
        self,
        model: str,
        dtype: str,
        device: str,
        threads: int | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.judge = HFJudge.from_dir(local_folder(model, endpoint_url), dtype, device)

    def ready(self) -> bool:
        return True

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.judge.model.load_state_dict(state)

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().cpu().clone() for name, tensor in self.judge.model.state_dict().items()}

    def generate(
        self, items: list[JudgeInput], max_new_tokens: int, temperature: float, seed: int
    ) -> list[Generation]:
        return self.judge.generate(items, max_new_tokens, temperature=temperature, seed=seed)


@dataclass
class ScoredRollout:
    reward: float
    accuracy: float
    logic: int
    well_formed: float
    prediction: int | None


def score_rollouts(
    texts: Sequence[str], labels: Sequence[int], logic: Sequence[int], spec: RLSpec
) -> list[ScoredRollout]:
    """Reward parts and total for each output (R1-Reward's reward, α and β from the spec)."""
    scored = []
    for text, label, referee_verdict in zip(texts, labels, logic, strict=True):
        prediction = parse_answer(text)
        acc = accuracy_reward(prediction, label)
        fmt = format_reward(is_well_formed(text))
        reward = combined_reward(acc, referee_verdict, fmt, spec.alpha, spec.beta)
        scored.append(ScoredRollout(reward, acc, referee_verdict, fmt, prediction))
    return scored


def advantages(
    rewards: Sequence[float],
    lengths: Sequence[int],
    spec: RLSpec,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Reinforce++ returns → whitening over the batch's valid tokens → 3-sigma filter.

    Returns the advantages ``[B, T]``, the valid-token mask and statistics (share filtered, mean KL).
    """
    mask = completion_mask(lengths)
    kl = None
    if spec.kl_coef > 0 and ref_logprobs is not None and old_logprobs is not None:
        kl = kl_penalty(old_logprobs, ref_logprobs) * mask
    returns = reinforce_pp_returns(torch.tensor(rewards, dtype=torch.float32), mask, kl, spec.kl_coef)
    whitened = whiten(returns, mask)
    filtered, kept = filter_advantages(whitened, mask, spec.advantage_sigma)
    valid = mask.sum().item()
    stats = {
        "advantage_filtered_ratio": 1.0 - kept.sum().item() / valid,
        "kl": (kl.sum().item() / valid) if kl is not None else 0.0,
    }
    return filtered, mask, stats


class Learner:
    """One data-parallel rank of the trained policy, on DeepSpeed, plus a frozen reference with a KL penalty.

    Ray makes one actor per rank; a world of 1 runs in any process. Setting up is two calls, because
    the ranks must agree on where rank 0 listens before any of them joins the process group:
    ``Learner(...)`` loads the model on each actor, rank 0's :meth:`rendezvous` names an address,
    and :meth:`join` on every rank (concurrently) builds the process group and the DeepSpeed engine.
    Every later call (``logprobs``, ``update``, ``weights``, checkpoints, ``save_model``) goes to
    all ranks with the same arguments: each takes its share of the batch
    (:func:`egt.engines.distributed.rank_micro_batches`), and ZeRO's collectives line up.

    The reference model is a plain transformers copy on each rank, outside DeepSpeed: it is only
    ever run forward, and it is not kept at all when ``kl_coef`` is 0 (R1-Reward's setting).
    """

    def __init__(
        self,
        model: str,
        spec: dict,
        dtype: str,
        device: str,
        threads: int | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        """``model``: as for :class:`RolloutWorker`, a local folder or a URI the actor fetches."""
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.spec = RLSpec.model_validate(spec)
        folder = local_folder(model, endpoint_url)
        self.judge = HFJudge.from_dir(folder, dtype, device)
        self.reference = HFJudge.from_dir(folder, dtype, device) if self.spec.kl_coef > 0 else None
        if self.reference is not None:
            self.reference.model.eval().requires_grad_(False)
        self.engine = None
        self.world = World()
        self.local_dir = Path(tempfile.mkdtemp(prefix="egt-learner-"))

    def ready(self) -> bool:
        return True

    def rendezvous(self) -> tuple[str, int]:
        """Where rank 0 will listen: this host's address and a free port (called on rank 0 only)."""
        import ray.util

        with socket.socket() as probe:
            probe.bind(("", 0))
            return ray.util.get_node_ip_address(), probe.getsockname()[1]

    def join(self, rank: int = 0, world_size: int = 1, address: tuple[str, int] | None = None) -> bool:
        """Join the learners' process group (rank 0 listening at ``address``) and build the engine."""
        if world_size > 1:
            if address is None:
                raise ValueError("a learner world of more than 1 rank needs rank 0's address")
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address[0], str(address[1])
        # Each actor sees only its own accelerator (Ray sets CUDA_VISIBLE_DEVICES): local rank 0.
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        self.world = World(rank, world_size, 0)
        self.engine = deepspeed_engine.initialize(
            self.judge,
            HFJudge.completion_logprobs,
            self.spec,
            self.world,
            micro_batch_size=self.spec.micro_batch_size,
            learning_rate=self.spec.learning_rate,
        )
        return True

    @torch.no_grad()
    def logprobs(
        self, items: list[JudgeInput], completions: list[list[int]]
    ) -> dict[int, tuple[list[float], list[float] | None]]:
        """log π_old (and log π_ref when a reference is kept) of this rank's share of the completions,
        by position in the batch; the driver joins the ranks' shares."""
        self.engine.eval()
        out: dict[int, tuple[list[float], list[float] | None]] = {}
        for rows in rank_micro_batches(len(items), self.world, self.spec.micro_batch_size):
            batch = rows or [0]  # a padding pass keeps ZeRO-3's parameter gathers in step
            chosen = [items[r] for r in batch], [completions[r] for r in batch]
            old, mask = self.engine(*chosen)
            ref = self.reference.completion_logprobs(*chosen)[0] if self.reference is not None else None
            for index, row in enumerate(rows):
                length = int(mask[index].sum())
                out[row] = (
                    old[index, :length].cpu().tolist(),
                    ref[index, :length].cpu().tolist() if ref is not None else None,
                )
        return out

    def update(
        self,
        items: list[JudgeInput],
        completions: list[list[int]],
        advantages: torch.Tensor,
        old_logprobs: list[list[float]],
    ) -> dict[str, float]:
        """``updates_per_batch`` optimizer steps over equal mini-batches; statistics averaged over them.

        The loss of a mini-batch is the mean over its sequences of each sequence's token-mean loss
        (:func:`egt.algorithms.losses.stable_reinforce_loss`); a micro-batch's loss is weighted by its
        share of the mini-batch's sequences, so any split over micro-batches and ranks gives the same
        gradient up to the order of float additions.
        """
        spec, world, engine = self.spec, self.world, self.engine
        engine.train()
        count = len(items)
        mini_batches = [list(range(i, count, spec.updates_per_batch)) for i in range(spec.updates_per_batch)]
        totals: dict[str, float] = {}
        steps = 0
        low, high = spec.log_ratio_bounds
        for mini in (m for m in mini_batches if m):
            local: dict[str, float] = {}
            for positions in rank_micro_batches(len(mini), world, spec.micro_batch_size):
                rows = [mini[p] for p in positions] or mini[:1]
                logprobs, mask = engine([items[r] for r in rows], [completions[r] for r in rows])
                width = mask.shape[1]
                loss, stats = stable_reinforce_loss(
                    logprobs,
                    pad([old_logprobs[r] for r in rows], width).to(logprobs.device),
                    advantages[rows, :width].to(logprobs.device),
                    mask,
                    spec.clip_epsilon,
                    low,
                    high,
                )
                share = len(positions) / len(mini)  # 0 for a padding pass
                # DeepSpeed averages gradients over ranks: × world size restores the sum of shares.
                engine.backward(loss * share * world.world_size, scale_wrt_gas=False)
                for name, value in stats.items():
                    local[name] = local.get(name, 0.0) + value * share
            engine.step()
            reduced = {name: all_reduce_sum(value) for name, value in local.items()}
            norm = float(engine.get_global_grad_norm())
            require_finite(f"RL update {steps + 1} of the batch", loss=reduced.get("loss"), grad_norm=norm)
            for name, value in reduced.items():
                totals[name] = totals.get(name, 0.0) + value
            totals["grad_norm"] = totals.get("grad_norm", 0.0) + norm
            steps += 1
        engine.eval()
        return {name: value / steps for name, value in totals.items()}

    def weights(self) -> dict[str, torch.Tensor] | None:
        """The full policy weights on rank 0 (None on the others); every rank must call this."""
        with full_parameters(self.engine, self.judge.model):
            if not self.world.is_main:
                return None
            return {name: t.detach().cpu().clone() for name, t in self.judge.model.state_dict().items()}

    def save_checkpoint(
        self, store_uri: str, endpoint_url: str | None, prefix: str, step: int, extra: dict
    ) -> str:
        """Written by the learners themselves: model and optimizer never travel through the driver."""
        store = open_store(store_uri, endpoint_url)
        return save_checkpoint(self.engine, store, prefix, step, extra, self.local_dir, self.world)

    def resume(self, store_uri: str, endpoint_url: str | None, prefix: str) -> dict | None:
        """Load the newest checkpoint under ``prefix``; returns its step and extra, or None."""
        return load_checkpoint(
            self.engine, open_store(store_uri, endpoint_url), prefix, self.local_dir, self.world
        )

    def save_model(self, store_uri: str, endpoint_url: str | None, key: str) -> str:
        """Rank 0 uploads the trained model (a Hugging Face folder) to ``key``; every rank calls this.

        Uploaded by the learner, not the driver: on a cluster they run on different nodes.
        """
        with full_parameters(self.engine, self.judge.model):
            if self.world.is_main:
                out = self.local_dir / "model"
                self.judge.save(out)
                open_store(store_uri, endpoint_url).upload_dir(out, key)
                shutil.rmtree(out, ignore_errors=True)
        barrier()
        return key
