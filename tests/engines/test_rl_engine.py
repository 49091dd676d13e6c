"""The RL engine in-process (no Ray): rewards, advantages, the learner's update and the weight sync."""

from __future__ import annotations

import math

import pytest
import torch

from egt.engines.hf import JudgeInput
from egt.engines.rl import Learner, RolloutWorker, advantages, completion_mask, pad, score_rollouts
from egt.spec import RLSpec
from tests.engines.conftest import BLUE, GREEN, IM_END, RED

RIGHT = "<think>The image is red; Response 1 says red. Response 1 is better.</think><answer>1</answer>"
WRONG = "<think>The image is red, yet Response 2 is better.</think><answer>2</answer>"
MALFORMED_RIGHT = "The image is red.<answer>1</answer>"  # no <think> block
NO_ANSWER = "<think>I cannot tell.</think>"


def test_score_rollouts_hand_values():
    spec = RLSpec(alpha=0.5, beta=0.5)
    texts = [RIGHT, RIGHT, RIGHT, WRONG, WRONG, MALFORMED_RIGHT, NO_ANSWER]
    labels = [1, 1, 1, 1, 1, 1, 1]
    logic = [1, 0, -1, 1, -1, 0, 0]
    scored = score_rollouts(texts, labels, logic, spec)
    # R = R_acc (1 + 0.5 R_logic) + 0.5 R_format
    assert [s.reward for s in scored] == [2.0, 1.5, 1.0, 0.5, 0.5, 1.0, 0.0]
    assert [s.accuracy for s in scored] == [1, 1, 1, 0, 0, 1, 0]
    assert [s.well_formed for s in scored] == [1, 1, 1, 1, 1, 0, 0]
    assert [s.prediction for s in scored] == [1, 1, 1, 2, 2, 1, None]
    assert [s.logic for s in scored] == logic
    # α and β come from the spec.
    [other] = score_rollouts([RIGHT], [1], [1], RLSpec(alpha=1.0, beta=0.0))
    assert other.reward == 2.0
    with pytest.raises(ValueError):
        score_rollouts([RIGHT, WRONG], [1], [0, 0], spec)


def test_pad_and_completion_mask():
    assert pad([[1.0, 2.0], [3.0]], 3).tolist() == [[1, 2, 0], [3, 0, 0]]
    assert completion_mask([2, 3, 1]).tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]


def test_advantages_whitened_over_valid_tokens():
    rewards, lengths = [1.0, 0.0, 2.0], [3, 5, 2]
    values, mask, stats = advantages(rewards, lengths, RLSpec())
    assert values.shape == (3, 5) and mask.shape == (3, 5)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # γ = 1 and no KL: every token's return is its sequence's reward. Whitened over the 10 valid tokens.
    tokens = [1.0] * 3 + [0.0] * 5 + [2.0] * 2
    mean = sum(tokens) / 10
    std = math.sqrt(sum((t - mean) ** 2 for t in tokens) / 10)
    expected = [
        [(r - mean) / (std + 1e-8) if j < n else 0.0 for j in range(5)]
        for r, n in zip(rewards, lengths, strict=True)
    ]
    torch.testing.assert_close(values, torch.tensor(expected), atol=1e-6, rtol=0)
    assert stats == {"advantage_filtered_ratio": 0.0, "kl": 0.0}


def test_advantage_filter_drops_an_outlier():
    # One reward 10 among 20 zeros (one token each): its standardized advantage is sqrt(20) ≈ 4.47 > 3.
    values, _, stats = advantages([10.0] + [0.0] * 20, [1] * 21, RLSpec())
    assert values[0, 0] == 0.0
    assert values[1, 0] == pytest.approx(-1 / math.sqrt(20), abs=1e-6)
    assert stats["advantage_filtered_ratio"] == pytest.approx(1 / 21)
    wide, _, wide_stats = advantages([10.0] + [0.0] * 20, [1] * 21, RLSpec(advantage_sigma=5.0))
    assert (
        wide[0, 0] == pytest.approx(math.sqrt(20), abs=1e-5) and wide_stats["advantage_filtered_ratio"] == 0.0
    )


# ---- learner and rollout worker ------------------------------------------------------------------

ITEMS = [
    JudgeInput([RED], "What colour?", "Red.", "Blue."),
    JudgeInput([BLUE], "What colour is this picture?", "Green.", "Blue."),
    JudgeInput([GREEN], "Colour?", "Green.", "Red."),
    JudgeInput([], "Is two more than one?", "Yes.", "No."),
]
TEXTS = [RIGHT, WRONG, MALFORMED_RIGHT, NO_ANSWER]
LABELS = [1, 2, 1, 1]


def _learner(sharp_dir, **spec) -> Learner:
    spec = {"micro_batch_size": 2, "learning_rate": 1e-2, "gradient_checkpointing": False, **spec}
    learner = Learner(str(sharp_dir), spec, "float32", "cpu", threads=1)
    learner.join()  # a world of 1
    return learner


def _batch(learner: Learner):
    tokenizer = learner.judge.tokenizer
    completions = [[*tokenizer(text, add_special_tokens=False)["input_ids"], IM_END] for text in TEXTS]
    scored = score_rollouts(TEXTS, LABELS, [1, 0, 0, 0], learner.spec)
    assert [s.reward for s in scored] == [2.0, 1.5, 1.0, 0.0]
    values, _, _ = advantages([s.reward for s in scored], [len(c) for c in completions], learner.spec)
    by_position = learner.logprobs(ITEMS, completions)
    assert sorted(by_position) == [0, 1, 2, 3]  # a world of 1 scores the whole batch
    old = [by_position[i][0] for i in range(4)]
    assert all(by_position[i][1] is None for i in range(4))  # no KL penalty, no reference model
    assert [len(row) for row in old] == [len(c) for c in completions]
    return completions, values, old


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def test_on_policy_update_has_ratio_one(sharp_dir):
    learner = _learner(sharp_dir, updates_per_batch=1)
    completions, values, old = _batch(learner)
    before = _snapshot(learner.judge.model)
    stats = learner.update(ITEMS, completions, values, old)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert stats["clip_fraction"] == 0.0 and stats["preclip_fraction"] == 0.0
    assert stats["grad_norm"] > 0 and math.isfinite(stats["loss"])
    after = learner.judge.model.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert not learner.judge.model.training


def test_off_policy_update_reports_clipping_and_syncs_to_a_worker(sharp_dir):
    learner = _learner(sharp_dir, updates_per_batch=2)
    worker = RolloutWorker(str(sharp_dir), "float32", "cpu", threads=1)
    completions, values, old = _batch(learner)
    before = _snapshot(learner.judge.model)
    stats = learner.update(ITEMS, completions, values, old)
    assert set(stats) >= {"loss", "clip_fraction", "preclip_fraction", "ratio_mean", "grad_norm"}
    # The second mini-batch is scored after the first optimizer step: off-policy, and with lr 1e-2 the
    # ratio leaves [1 - ε, 1 + ε] on some tokens.
    assert stats["ratio_mean"] != pytest.approx(1.0, abs=1e-4)
    assert 0.0 < stats["clip_fraction"] <= 1.0
    changed = [
        name
        for name, tensor in learner.judge.model.state_dict().items()
        if not torch.equal(tensor, before[name])
    ]
    assert changed

    # Before the sync the worker still holds the initial weights; after it, exactly the learner's.
    def differs() -> list[str]:
        theirs = worker.judge.model.state_dict()
        return [name for name, tensor in learner.weights().items() if not torch.equal(tensor, theirs[name])]

    assert set(differs()) == set(changed)
    worker.set_weights(learner.weights())
    assert differs() == []
    # And it generates what the learner's model generates.
    greedy = worker.generate(ITEMS[:1], max_new_tokens=4, temperature=0.0, seed=0)
    assert [g.token_ids for g in greedy] == [g.token_ids for g in learner.judge.generate(ITEMS[:1], 4)]
