"""Scalar reward models (egt.engines.scalar): scoring, freezing, saving, and learning the demo's task."""

from __future__ import annotations

import math

import pytest
import torch

from egt.algorithms.preference import pairwise_accuracy
from egt.engines.distributed import World
from egt.engines.scalar import (
    CONFIG_FILE,
    PreferencePair,
    Response,
    ScalarRewardModel,
    initialize,
    pair_loss_sum,
    train_pairs,
)
from egt.engines.sft import TrainState
from egt.models.loading import load_model
from egt.spec import ScalarTrainSpec
from tests.engines.conftest import BLUE, GREEN, RED

ONE = World()


def responses() -> list[Response]:
    return [
        Response([RED], "What colour is the picture?", "It is red."),
        Response([BLUE, GREEN], "Which colours?", "Blue, then green, I believe."),
        Response([], "No picture here.", "Nothing to see."),
    ]


def test_a_new_head_scores_every_response_zero_and_the_first_loss_is_log_2(tiny_dir):
    model = ScalarRewardModel.from_base(tiny_dir, "last_token", device="cpu")
    assert model.scores(responses()).tolist() == [0.0, 0.0, 0.0]
    pair = PreferencePair(responses()[0], responses()[1])
    assert float(pair_loss_sum(model, [pair]).detach()) == pytest.approx(math.log(2))


@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_a_score_does_not_depend_on_the_batch_it_is_in(tiny_dir, pooling):
    # Left padding, images or none: a response's score is its own, alone or batched.
    model = ScalarRewardModel.from_base(tiny_dir, pooling, device="cpu")
    torch.nn.init.normal_(model.head.weight, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        together = model.scores(responses())
        alone = torch.cat([model.scores([item]) for item in responses()])
    assert torch.allclose(together, alone, atol=1e-5)
    assert len(set(together.tolist())) == 3


def test_the_scored_text_ends_at_the_responses_end_of_turn(tiny_dir):
    model = ScalarRewardModel.from_base(tiny_dir, "last_token", device="cpu")
    batch = model.encode(responses()[:1])
    text = model.judge.tokenizer.decode(batch["input_ids"][0])
    assert text.endswith("<|im_start|>assistant\nIt is red.<|im_end|>")


def test_frozen_parts_keep_their_weights_and_the_rest_trains(tiny_dir, tmp_path):
    spec = ScalarTrainSpec(
        epochs=1, global_batch_size=2, micro_batch_size=2, learning_rate=1e-2, warmup_ratio=0,
        gradient_checkpointing=False, freeze=["vision", "projector"],
    )  # fmt: skip
    model = ScalarRewardModel.from_base(tiny_dir, "mean", frozen=spec.freeze, device="cpu")
    before = {name: p.detach().clone() for name, p in model.judge.model.named_parameters()}
    engine = initialize(model, spec, ONE)
    pairs = [
        PreferencePair(responses()[0], responses()[1]),
        PreferencePair(responses()[2], responses()[0]),
    ] * 2
    train_pairs(model, engine, pairs, spec, TrainState(0, []), lambda _: None, ONE)
    changed = {name for name, p in model.judge.model.named_parameters() if not torch.equal(p, before[name])}
    assert not {name for name in changed if ".visual." in name}
    assert any("language_model.layers" in name for name in changed)
    assert float(model.head.weight.detach().abs().sum()) > 0
    with pytest.raises(ValueError, match=r"cannot freeze \['decoder'\]"):
        model.freeze(["decoder"])


def test_a_scalar_model_learns_the_demos_task_and_saves_as_a_hugging_face_folder(colour_scalar):
    """The demo's synthetic colour pairs: the better response names the image's colour. Pairwise
    accuracy on 120 held-out clean pairs from 50% (a zero head ties every pair: the first test) to
    ≥ 85%; measured 97.5% after 75 steps (600 pairs, 2 epochs) in about 20 s on one core of the
    2-core machine (the fixture prints its time)."""
    assert colour_scalar.steps == 75 and colour_scalar.losses[0] == pytest.approx(math.log(2), abs=1e-3)
    model = ScalarRewardModel.from_dir(colour_scalar.model_dir, device="cpu")
    held_out = colour_scalar.held_out
    with torch.no_grad():
        chosen = torch.cat(
            [model.scores([p.chosen for p in held_out[i : i + 40]]) for i in range(0, 120, 40)]
        )
        rejected = torch.cat(
            [model.scores([p.rejected for p in held_out[i : i + 40]]) for i in range(0, 120, 40)]
        )
    learned = pairwise_accuracy(chosen, rejected)
    assert learned >= 0.85, learned
    assert (colour_scalar.model_dir / CONFIG_FILE).exists() and model.pooling == "last_token"
    assert load_model(colour_scalar.model_dir) is not None  # the backbone loads with transformers alone


def test_evaluate_scores_each_response_once_and_both_orders_agree(colour_scalar):
    """The evaluate stage's rows for a scalar model: order cannot matter to it, so the swapped order
    reuses the pair's two scores instead of scoring both responses again."""
    from egt.engines.hf import JudgeInput
    from egt.spec import EvaluateSpec
    from egt.stages.evaluate import evaluate_pairs

    model = ScalarRewardModel.from_dir(colour_scalar.model_dir, device="cpu")
    pairs = colour_scalar.held_out[:12]
    records = [
        {"id": str(k), "label": 1 + k % 2, "truth_kind": "clean" if k < 8 else "other"}
        for k in range(len(pairs))
    ]

    def as_input(record: dict) -> JudgeInput:  # label 2: the chosen response second
        pair = pairs[int(record["id"])]
        first, second = (pair.chosen, pair.rejected) if record["label"] == 1 else (pair.rejected, pair.chosen)
        return JudgeInput(first.images, first.question, first.response, second.response)

    scored = []
    real = model.scores
    model.scores = lambda responses: scored.append(len(responses)) or real(responses)
    rows, summary = evaluate_pairs(model, records, as_input, EvaluateSpec(batch_size=6))
    assert sum(scored) == 2 * len(pairs)  # each response once, for both orders
    assert summary["accuracy_original"] == summary["accuracy_swapped"] >= 10 / 12
    assert summary["order_consistency"] == 1.0 and summary["position_bias"] == pytest.approx(0.0, abs=0.1)
    by_kind = summary["accuracy_by_truth_kind"]  # per truth kind, where the records carry one
    assert set(by_kind) == {"clean", "other"}
    assert (8 * by_kind["clean"] + 4 * by_kind["other"]) / 12 == pytest.approx(summary["accuracy"])
    for row in rows:
        first, second = row["original"]["output"].split()[1:]
        assert row["swapped"]["output"] == f"scores {second} {first}"
