"""Scalar reward models on transformers and DeepSpeed: a Qwen2.5-VL backbone with a linear reward head.

The scalar baselines of the EGT paper (Skywork-VL Reward, IXC-2.5-Reward; method.md): the model reads
the images, the question and ONE response as a chat (user turn, then the response as the assistant
turn), a linear head maps one pooled hidden vector to the reward ``r(x, y)``
(egt.algorithms.preference), and training minimises the Bradley–Terry loss over preference pairs.
Each response is scored alone, so response order cannot matter.

Training reuses the SFT trainer's DeepSpeed loop (egt.engines.sft.train): the same batching over
ranks, learning-rate schedule, checkpoints and resume; a step's loss is the mean BT loss over its
global batch of pairs.

A trained model is a Hugging Face folder: the backbone as transformers saves it (loadable with
``Qwen2_5_VLForConditionalGeneration.from_pretrained``; its language-model head is kept and unused),
plus ``reward_head.safetensors`` (the head's ``[1, d]`` weight) and ``reward_model.json``
(pooling, what was frozen). :meth:`ScalarRewardModel.from_dir` loads both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from egt.algorithms.preference import Pooling, bradley_terry_loss, pool
from egt.engines.deepspeed_engine import full_parameters
from egt.engines.distributed import World, barrier
from egt.engines.hf import HFJudge
from egt.engines.sft import TrainState, train, trainer_engine
from egt.spec import ScalarTrainSpec

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_model.json"
FREEZABLE = ("vision", "projector")
# The head's weight under the name vLLM's classify conversion of Qwen2.5-VL gives its score layer, so
# vLLM loads it from the folder as it is (transformers reads only model.safetensors and ignores it).
VLLM_HEAD_NAME = "language_model.score.weight"


@dataclass
class Response:
    """One response as a scalar reward model reads it: images, question, the response."""

    images: list[Image.Image]
    question: str
    response: str


@dataclass
class PreferencePair:
    """A training example: the preferred and the other response to the same images and question."""

    chosen: Response
    rejected: Response


def score_messages(question: str, response: str, num_images: int) -> list[dict]:
    """The chat a response is scored in: the images and question from the user, the response as the
    assistant's reply (what a policy would have written)."""
    user: list[dict] = [{"type": "image"} for _ in range(num_images)]
    user.append({"type": "text", "text": question})
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "text", "text": response}]},
    ]


def score_text(tokenizer, item: Response) -> str:
    """The scored chat as text (Qwen's template), ending at the response's end-of-turn token, so
    ``last_token`` pooling reads the state after the response."""
    chat = score_messages(item.question, item.response, len(item.images))
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
    return text[: text.rindex("<|im_end|>") + len("<|im_end|>")]


class ScalarRewardModel:
    """A Qwen2.5-VL backbone (an :class:`HFJudge`'s model and processor) with a linear reward head."""

    def __init__(
        self, judge: HFJudge, head: torch.nn.Linear, pooling: Pooling, frozen: Sequence[str] = ()
    ) -> None:
        self.judge = judge
        self.head = head.to(judge.device)
        self.pooling = pooling
        self.frozen: tuple[str, ...] = ()
        self.freeze(frozen)

    @property
    def device(self) -> str:
        return self.judge.device

    @classmethod
    def from_base(
        cls,
        model_dir: str | Path,
        pooling: Pooling,
        frozen: Sequence[str] = (),
        dtype: str = "float32",
        device: str = "auto",
    ) -> ScalarRewardModel:
        """A new head on a base (or SFT) model. The head starts at zero, so every response scores 0
        and the first BT loss is exactly log 2: no response is preferred before training. It has no
        bias: the BT loss depends only on score differences, so a bias would never be trained."""
        judge = HFJudge.from_dir(model_dir, dtype, device)
        head = torch.nn.Linear(_hidden_size(judge), 1, bias=False, dtype=judge.model.dtype)
        torch.nn.init.zeros_(head.weight)
        return cls(judge, head, pooling, frozen)

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, dtype: str = "float32", device: str = "auto"
    ) -> ScalarRewardModel:
        """A trained scalar reward model, as :meth:`save` wrote it."""
        folder = Path(model_dir)
        if not (folder / CONFIG_FILE).exists():
            raise ValueError(f"{folder} is not a scalar reward model: it has no {CONFIG_FILE}")
        config = json.loads((folder / CONFIG_FILE).read_text())
        judge = HFJudge.from_dir(folder, dtype, device)
        head = torch.nn.Linear(_hidden_size(judge), 1, bias=False, dtype=judge.model.dtype)
        head.load_state_dict({"weight": load_file(folder / HEAD_FILE)[VLLM_HEAD_NAME]})
        return cls(judge, head, config["pooling"], config.get("frozen", ()))

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        self.judge.model.config.num_labels = 1  # one score: what vLLM's classify conversion sizes its head by
        self.judge.save(out)
        save_file({VLLM_HEAD_NAME: self.head.weight.detach().cpu().contiguous()}, out / HEAD_FILE)
        config = {"architecture": "egt-scalar-reward", "pooling": self.pooling, "frozen": list(self.frozen)}
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def freeze(self, parts: Iterable[str]) -> None:
        """Stop training the vision encoder and/or the projector (Qwen2.5-VL's patch merger); the
        language model and the head always train (IXC-2.5 freezes both; Skywork the encoder only)."""
        parts = tuple(parts)
        unknown = sorted(set(parts) - set(FREEZABLE))
        if unknown:
            raise ValueError(f"cannot freeze {unknown}: the parts are {list(FREEZABLE)}")
        visual = self.judge.model.model.visual
        for name, module in visual.named_children():
            part = "projector" if name == "merger" else "vision"
            if part in parts:
                module.requires_grad_(False)
        self.frozen = parts

    def encode(self, items: Sequence[Response]) -> dict[str, torch.Tensor]:
        """Left-padded batch of the scoring chats, on the model's device. The text ends at the
        response's end-of-turn token, so ``last_token`` pooling reads the state after the response."""
        texts = [score_text(self.judge.tokenizer, item) for item in items]
        images = [item.images for item in items]
        kwargs = {"images": images} if any(images) else {}
        batch = self.judge.processor(
            text=texts, return_tensors="pt", padding=True, return_mm_token_type_ids=True, **kwargs
        )
        if "pixel_values" not in batch:
            batch.pop("mm_token_type_ids", None)
        return {name: value.to(self.device) for name, value in batch.items()}

    def scores(self, items: Sequence[Response]) -> torch.Tensor:
        """``r(x, y)`` of each item, ``[B]`` float32; gradients flow under grad mode."""
        batch = self.encode(items)
        hidden = self.judge.model.model(**batch).last_hidden_state
        pooled = pool(hidden, batch["attention_mask"], self.pooling)
        return self.head(pooled).squeeze(-1).float()


def pair_loss_sum(model: ScalarRewardModel, pairs: Sequence[PreferencePair]) -> torch.Tensor:
    """Summed BT loss of a micro-batch of pairs: chosen and rejected responses scored in one pass."""
    scores = model.scores([p.chosen for p in pairs] + [p.rejected for p in pairs])
    return bradley_terry_loss(scores[: len(pairs)], scores[len(pairs) :], reduction="sum")


def one_pair(_: PreferencePair) -> int:
    return 1


def initialize(model: ScalarRewardModel, spec: ScalarTrainSpec, world: World):
    """The DeepSpeed engine (egt.engines.deepspeed_engine) over backbone and head, computing a
    micro-batch's summed BT loss; frozen parts are left out of the optimizer."""
    compute = lambda _judge, pairs: pair_loss_sum(model, pairs)  # noqa: E731
    return trainer_engine(model.judge, compute, spec, world, head=model.head)


def train_pairs(
    model: ScalarRewardModel,
    engine,
    pairs: Sequence[PreferencePair],
    spec: ScalarTrainSpec,
    state: TrainState,
    on_step,
    world: World,
) -> TrainState:
    """The SFT trainer's loop (egt.engines.sft.train) over pairs: a step's loss is its mean BT loss."""
    return train(model.judge, engine, pairs, spec, state, on_step, world, size=one_pair)


def save_model(engine, model: ScalarRewardModel, out_dir: Path, world: World) -> None:
    """Rank 0 writes backbone and head (:meth:`ScalarRewardModel.save`); every rank must call this
    (under ZeRO-3 gathering the parameters is a collective)."""
    with full_parameters(engine, engine.module):
        if world.is_main:
            model.save(out_dir)
    barrier()


def _hidden_size(judge: HFJudge) -> int:
    config = judge.model.config
    return getattr(config, "text_config", config).hidden_size
