"""StableReinforce on Ray (method.md stage 5; R1-Reward §3): rollout workers, a learner, weight sync.

The actors are plain classes, made remote by the driver, so they can also be tested in-process.
One update step:

1. rollout workers sample outputs for the batch (the curated set in ascending entropy order);
2. the driver scores them: ``R = R_acc(1 + α R_logic) + β R_format`` with a referee for R_logic;
3. the learner computes π_old (and π_ref when the KL coefficient is not 0);
4. the driver turns rewards into advantages: Reinforce++ returns, global whitening, 3-sigma filter;
5. the learner takes ``updates_per_batch`` optimizer steps over mini-batches with the pre-clipped,
   ε-clipped loss;
6. the new weights go to every rollout worker.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from egt.algorithms.advantages import filter_advantages, kl_penalty, reinforce_pp_returns, whiten
from egt.algorithms.losses import stable_reinforce_loss
from egt.algorithms.reward import accuracy_reward, combined_reward, format_reward
from egt.engines.checkpoint import load_latest, resume, save_checkpoint
from egt.engines.hf import Generation, HFJudge, JudgeInput
from egt.judge import is_well_formed, parse_answer
from egt.spec import RLSpec
from egt.storage.store import open_store


def pad(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.as_tensor(row, dtype=torch.float32)
    return out


def completion_mask(lengths: Sequence[int]) -> torch.Tensor:
    width = max(lengths)
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()


class RolloutWorker:
    """Holds a copy of the policy and samples outputs with it."""

    def __init__(self, model_dir: str, dtype: str, device: str, threads: int | None = None) -> None:
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.judge = HFJudge.from_dir(model_dir, dtype, device)

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
    """Holds the trained policy, its optimizer and, with a KL penalty, a frozen reference."""

    def __init__(
        self, model_dir: str, spec: dict, dtype: str, device: str, threads: int | None = None
    ) -> None:
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.spec = RLSpec.model_validate(spec)
        self.judge = HFJudge.from_dir(model_dir, dtype, device)
        self.optimizer = torch.optim.AdamW(
            self.judge.model.parameters(), lr=self.spec.learning_rate, weight_decay=0.0
        )
        self.reference = copy.deepcopy(self.judge.model).eval() if self.spec.kl_coef > 0 else None

    def ready(self) -> bool:
        return True

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().cpu() for name, tensor in self.judge.model.state_dict().items()}

    @torch.no_grad()
    def logprobs(
        self, items: list[JudgeInput], completions: list[list[int]]
    ) -> tuple[list[list[float]], list[list[float]] | None]:
        """log π_old of each completion token, and log π_ref when a reference is kept."""
        old = self._logprobs(self.judge, items, completions)
        ref = None
        if self.reference is not None:
            policy = self.judge.model
            self.judge.model = self.reference
            try:
                ref = self._logprobs(self.judge, items, completions)
            finally:
                self.judge.model = policy
        return old, ref

    def _logprobs(
        self, judge: HFJudge, items: list[JudgeInput], completions: list[list[int]]
    ) -> list[list[float]]:
        out = []
        size = self.spec.micro_batch_size
        for start in range(0, len(items), size):
            logprobs, mask = judge.completion_logprobs(
                items[start : start + size], completions[start : start + size]
            )
            out.extend(
                row[: int(m.sum())].tolist() for row, m in zip(logprobs.cpu(), mask.cpu(), strict=True)
            )
        return out

    def update(
        self,
        items: list[JudgeInput],
        completions: list[list[int]],
        advantages: torch.Tensor,
        old_logprobs: list[list[float]],
    ) -> dict[str, float]:
        """``updates_per_batch`` optimizer steps over equal mini-batches; statistics averaged over them."""
        self.judge.model.train()
        spec = self.spec
        count = len(items)
        mini_batches = [list(range(i, count, spec.updates_per_batch)) for i in range(spec.updates_per_batch)]
        totals: dict[str, float] = {}
        steps = 0
        for mini in (m for m in mini_batches if m):
            self.optimizer.zero_grad(set_to_none=True)
            for start in range(0, len(mini), spec.micro_batch_size):
                rows = mini[start : start + spec.micro_batch_size]
                logprobs, mask = self.judge.completion_logprobs(
                    [items[r] for r in rows], [completions[r] for r in rows]
                )
                width = mask.shape[1]
                low, high = spec.log_ratio_bounds
                loss, stats = stable_reinforce_loss(
                    logprobs,
                    pad([old_logprobs[r] for r in rows], width).to(logprobs.device),
                    advantages[rows, :width].to(logprobs.device),
                    mask,
                    spec.clip_epsilon,
                    low,
                    high,
                )
                (loss * len(rows) / len(mini)).backward()
                for name, value in stats.items():
                    totals[name] = totals.get(name, 0.0) + value * len(rows) / len(mini)
            totals["grad_norm"] = totals.get("grad_norm", 0.0) + float(
                torch.nn.utils.clip_grad_norm_(self.judge.model.parameters(), 1.0)
            )
            self.optimizer.step()
            steps += 1
        self.judge.model.eval()
        return {name: value / steps for name, value in totals.items()}

    def save_checkpoint(
        self, store_uri: str, endpoint_url: str | None, prefix: str, step: int, extra: dict
    ) -> str:
        """Written by the learner itself: model and optimizer never travel through the driver."""
        store = open_store(store_uri, endpoint_url)
        return save_checkpoint(store, prefix, step, self.judge.model, self.optimizer, extra)

    def resume(self, store_uri: str, endpoint_url: str | None, prefix: str) -> dict | None:
        """Load the newest checkpoint under ``prefix``; returns its step and extra, or None."""
        payload = load_latest(open_store(store_uri, endpoint_url), prefix)
        if payload is None:
            return None
        resume(payload, self.judge.model, self.optimizer)
        return {"step": payload["step"], **payload["extra"]}

    def save_model(self, out_dir: str) -> str:
        self.judge.model.save_pretrained(out_dir)
        self.judge.processor.save_pretrained(out_dir)
        self.judge.tokenizer.save_pretrained(out_dir)
        return out_dir
