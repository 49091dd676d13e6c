"""Shared fixtures of the engine tests: one tiny Qwen2.5-VL per session, and a "sharp" copy of it.

``build_tiny_model`` draws small random weights (egt.models.tiny.scale_init), which on a 64-wide
model gives next-token distributions close to uniform: every entropy is near ln|V| and every NLL
near 12 (the demo's first SFT step: 12.4). Tests built on that model could not tell an entropy
taken one position off, or a label mask with a few extra tokens, from the right one. The sharp
copy re-draws the text decoder's weights at a larger, fixed-seed scale, so entropies and per-token
losses vary from position to position (roughly 3 to 6 nats) and greedy decoding writes a
different token at every step. ``colour_scalar`` is a scalar reward model trained on the demo's
colour pairs (it learns them in about 20 s).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from egt.engines.hf import HFJudge, JudgeInput
from egt.models.loading import load_model
from egt.models.tiny import build_tiny_model

IM_END = 151645
IMAGE_PAD = 151655
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


def solid(colour: tuple[int, int, int]) -> Image.Image:
    """A 56×56 solid-colour picture: 4 image tokens after Qwen2.5-VL's 2×2 patch merge."""
    return Image.new("RGB", (56, 56), colour)


RED, BLUE, GREEN = solid((220, 30, 30)), solid((30, 30, 220)), solid((30, 200, 30))


def expected_prompt(item: JudgeInput) -> str:
    """Qwen2.5-VL-7B-Instruct's chat layout of a judge prompt, written out by hand (not templated)."""
    from egt.judge import judge_prompt

    user = VISION * len(item.images) + judge_prompt(item.question, item.response_1, item.response_2)
    return f"{SYSTEM_TURN}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """One intra-op thread: a 64-wide model gains nothing from more, and on a busy 2-core machine every
    tiny matmul then waits on a descheduled OpenMP worker (measured: training steps 20× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny model exactly as ``build_tiny_model`` writes it (built once per session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def sharp_dir(tiny_dir, tmp_path_factory) -> Path:
    """A copy of the tiny model whose text decoder has larger random weights (module docstring)."""
    out = tmp_path_factory.mktemp("sharp") / "model"
    shutil.copytree(tiny_dir, out)
    model = load_model(tiny_dir)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, parameter in model.model.language_model.named_parameters():
            if parameter.ndim == 2 and "embed" not in name:
                parameter.copy_(
                    torch.randn(parameter.shape, generator=generator) * 1.5 / parameter.shape[1] ** 0.5
                )
        embedding = model.model.language_model.embed_tokens.weight  # tied: also the lm_head
        embedding.copy_(torch.randn(embedding.shape, generator=generator) * 0.5)
    model.save_pretrained(out)
    return out


# What Qwen2.5-VL-7B-Instruct's generation_config.json does, and more: every option would change
# greedy or sampled tokens if an engine let the checkpoint reshape the raw distribution.
OPINIONATED_GENERATION = {
    "repetition_penalty": 3.0,
    "no_repeat_ngram_size": 1,
    "top_k": 1,
    "top_p": 0.1,
    "temperature": 0.1,
}


@pytest.fixture(scope="session")
def opinionated_dir(sharp_dir, judge, items, tmp_path_factory) -> Path:
    """The sharp model with a generation_config.json that sets penalties and top-k/p, and suppresses
    the tokens greedy decoding starts ``items`` with (the sharp model's margins are wide enough that
    the penalties alone may not change its argmax): engines must generate exactly as from the sharp
    model, because they sample from raw logits."""
    out = tmp_path_factory.mktemp("opinionated") / "model"
    shutil.copytree(sharp_dir, out)
    first_tokens = sorted({g.token_ids[0] for g in judge.generate(items, max_new_tokens=1)})
    config_file = out / "generation_config.json"
    config = json.loads(config_file.read_text()) | OPINIONATED_GENERATION | {"suppress_tokens": first_tokens}
    config_file.write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def judge(sharp_dir) -> HFJudge:
    """A read-only judge on the sharp model; tests that train load their own copy."""
    return HFJudge.from_dir(sharp_dir, device="cpu")


@pytest.fixture(scope="session")
def items() -> list[JudgeInput]:
    """Three pairs whose prompts differ in length (1, 2 and 0 images; different texts): left padding."""
    return [
        JudgeInput([RED], "What colour?", "Red.", "Blue."),
        JudgeInput(
            [BLUE, RED],
            "Which colour is shown in the first of these two pictures, please?",
            "It is blue, clearly.",
            "Red.",
        ),
        JudgeInput([], "Is the sky green? Answer in one word.", "No.", "Yes, it is definitely green today."),
    ]


@dataclass
class TrainedScalar:
    model_dir: Path
    steps: int
    losses: list[float]
    held_out: list  # PreferencePair: 120 clean pairs never trained on
    data: Path  # the synthetic images


def colour_pairs(records: list[dict], root: Path) -> list:
    """The demo's synthetic records as (chosen, rejected) pairs for a scalar reward model."""
    from egt.engines.scalar import PreferencePair, Response

    pairs = []
    for record in records:
        images = [Image.open(root / path).convert("RGB") for path in record["images"]]
        chosen, rejected = record["label"], 3 - record["label"]
        pairs.append(
            PreferencePair(
                Response(images, record["query"], record[f"response_{chosen}"]),
                Response(images, record["query"], record[f"response_{rejected}"]),
            )
        )
    return pairs


@pytest.fixture(scope="package")
def colour_scalar(tiny_dir, tmp_path_factory) -> TrainedScalar:
    """A scalar reward model (last-token pooling, nothing frozen) trained on 600 clean synthetic colour
    pairs for 2 epochs at lr 1e-3: what tests of scoring with a model that knows the task use."""
    from egt.data.synthetic import generate_split
    from egt.engines.distributed import World
    from egt.engines.scalar import ScalarRewardModel, initialize, save_model, train_pairs
    from egt.engines.sft import TrainState
    from egt.spec import ScalarTrainSpec

    data = tmp_path_factory.mktemp("colours")
    train = colour_pairs(generate_split(data, "train", 600, 0), data)
    held_out = colour_pairs(generate_split(data, "eval", 120, 0), data)
    spec = ScalarTrainSpec(
        epochs=2, global_batch_size=16, micro_batch_size=16, learning_rate=1e-3, warmup_ratio=0.05,
        gradient_checkpointing=False, freeze=[],
    )  # fmt: skip
    model = ScalarRewardModel.from_base(tiny_dir, "last_token", device="cpu")
    engine = initialize(model, spec, World())
    started = time.perf_counter()
    state = train_pairs(model, engine, train, spec, TrainState(0, []), lambda _: None, World())
    print(f"colour_scalar: {state.step} steps in {time.perf_counter() - started:.1f} s")
    out = tmp_path_factory.mktemp("colour-scalar") / "model"
    save_model(engine, model, out, World())
    return TrainedScalar(out, state.step, state.losses, held_out, data)
