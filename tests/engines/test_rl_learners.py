"""Data-parallel RL learners on Ray: two DeepSpeed ranks take the same step as one.

Three examples, all with an image (data-parallel DeepSpeed needs one in every example, see
egt.engines.deepspeed_engine.require_images): rank 0 scores positions 0 and 2, rank 1 position 1 and
a padding pass.
"""

from __future__ import annotations

import pytest
import torch

from egt.engines.rl import Learner, advantages, pad, score_rollouts
from egt.spec import RLSpec
from egt.stages.rl import connect_ray
from tests.engines.conftest import IM_END
from tests.engines.test_rl_engine import ITEMS as ALL_ITEMS
from tests.engines.test_rl_engine import LABELS, TEXTS

pytestmark = pytest.mark.slow

ITEMS = [item for item in ALL_ITEMS if item.images]


def start(ray, model_dir: str, spec: dict, ranks: int) -> list:
    actors = [
        ray.remote(Learner).options(num_cpus=1).remote(model_dir, spec, "float32", "cpu", 1)
        for _ in range(ranks)
    ]
    address = ray.get(actors[0].rendezvous.remote()) if ranks > 1 else None
    ray.get([actor.join.remote(rank, ranks, address) for rank, actor in enumerate(actors)])
    return actors


def on_all(ray, actors: list, method: str, *args) -> list:
    return ray.get([getattr(actor, method).remote(*args) for actor in actors])


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_learner_ranks_take_the_same_steps_as_one(sharp_dir, zero_stage):
    ray = connect_ray(actors=3)
    spec = {
        "micro_batch_size": 1,
        "learning_rate": 1e-3,
        "updates_per_batch": 2,  # the second mini-batch is off-policy: clipping statistics differ from 0
        "kl_coef": 0.1,  # keeps a reference model on every rank
        "zero_stage": zero_stage,
        "gradient_checkpointing": zero_stage == 3,
    }
    one = start(ray, str(sharp_dir), spec, 1)
    two = start(ray, str(sharp_dir), spec, 2)
    try:
        tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(sharp_dir)
        texts, labels = TEXTS[: len(ITEMS)], LABELS[: len(ITEMS)]
        completions = [[*tokenizer(t, add_special_tokens=False)["input_ids"], IM_END] for t in texts]

        # π_old and π_ref: each rank scores its share; together they are the one rank's.
        [single] = on_all(ray, one, "logprobs", ITEMS, completions)
        shares = on_all(ray, two, "logprobs", ITEMS, completions)
        assert sorted(shares[0]) == [0, 2] and sorted(shares[1]) == [1]
        joined = shares[0] | shares[1]
        for position in range(len(ITEMS)):
            for mine, theirs in zip(joined[position], single[position], strict=True):
                torch.testing.assert_close(torch.tensor(mine), torch.tensor(theirs), rtol=0, atol=1e-5)

        rl = RLSpec.model_validate(spec)
        rewards = [s.reward for s in score_rollouts(texts, labels, [1, 0, 0], rl)]
        old = [single[i][0] for i in range(len(ITEMS))]
        width = max(len(c) for c in completions)
        ref = pad([single[i][1] for i in range(len(ITEMS))], width)
        values, _, _ = advantages(rewards, [len(c) for c in completions], rl, pad(old, width), ref)
        [alone] = on_all(ray, one, "update", ITEMS, completions, values, old)
        together = on_all(ray, two, "update", ITEMS, completions, values, old)
        assert together[0] == together[1]  # statistics are reduced over the ranks
        assert alone["clip_fraction"] > 0
        for name, value in alone.items():
            assert together[0][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name

        [expected] = on_all(ray, one, "weights")
        weights, none = on_all(ray, two, "weights")
        assert none is None
        initial = Learner(str(sharp_dir), spec, "float32", "cpu", 1).judge.model.state_dict()
        update = max(float((expected[n] - initial[n]).abs().max()) for n in expected)
        apart = max(float((weights[n] - w).abs().max()) for n, w in expected.items())
        # Two AdamW steps at lr 1e-3 move weights by up to 2e-3. Adam divides each gradient by its
        # own running scale, so entries whose gradient is ~0 turn float-summation noise into steps
        # of up to lr: the ranks' weights agree to a few percent of the update, not to 1e-8 as SFT's
        # losses do. What the weights compute agrees much closer.
        assert update > 1e-4
        assert apart < 0.05 * update, (apart, update)
        [after_one] = on_all(ray, one, "logprobs", ITEMS, completions)
        after_two = on_all(ray, two, "logprobs", ITEMS, completions)
        after_two = after_two[0] | after_two[1]
        gap = max(
            abs(a - b)
            for i in range(len(ITEMS))
            for a, b in zip(after_one[i][0], after_two[i][0], strict=True)
        )
        moved = max(
            abs(a - b) for i in range(len(ITEMS)) for a, b in zip(after_one[i][0], old[i], strict=True)
        )
        assert moved > 1e-3 and gap < 1e-3 * moved, (gap, moved)
    finally:
        for actor in [*one, *two]:
            ray.kill(actor)
