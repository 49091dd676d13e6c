"""The vLLM rollout worker against the transformers engine, on the sharp tiny Qwen2.5-VL (conftest.py).

Acceptance: greedy rollouts are the transformers engine's tokens; after ``set_weights`` with a
perturbed state dict vLLM decodes the perturbed model (its tokens and their log-probabilities), and
a second sync brings the old outputs back; sampling is reproducible per seed. Runs only where vLLM
is importable (the .venv-vllm of scripts/vllm-env.sh; on GPU machines, wherever vLLM is):

    .venv-vllm/bin/pytest -q -m vllm tests/engines/test_vllm_rollout.py

The engine is built once for the module (in-process, eager): about a minute on two CPU cores.
"""

from __future__ import annotations

import pytest
import torch

from egt.engines.hf import Generation, HFJudge, JudgeInput
from egt.engines.vllm_engine import vllm_available
from egt.engines.vllm_rollout import VLLMRolloutWorker
from egt.spec import VLLMEngineSpec
from tests.engines.conftest import BLUE, GREEN

NO_VLLM = "vllm is not importable here: build .venv-vllm with scripts/vllm-env.sh and run this module there"

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason=NO_VLLM)]

MAX_NEW_TOKENS = 24


def tokens(generations: list[Generation]) -> list[list[int]]:
    return [g.token_ids for g in generations]


@pytest.fixture(scope="module")
def pairs(items) -> list[JudgeInput]:
    """Five pairs with 0, 1 and 2 images."""
    return [
        *items,
        JudgeInput([GREEN], "Name the colour of the picture.", "Green.", "Purple, with stripes."),
        JudgeInput([GREEN, BLUE], "Are both pictures the same colour?", "No: green and blue.", "Yes."),
    ]


@pytest.fixture(scope="module")
def worker(sharp_dir):
    options = VLLMEngineSpec(enforce_eager=True, max_model_len=1024, max_images=2, max_num_seqs=8)
    # One thread, as the package's fixture sets: vLLM's CPU worker ignores set_num_threads later on.
    rollout = VLLMRolloutWorker(str(sharp_dir), "float32", "cpu", options.model_dump(mode="json"), threads=1)
    yield rollout
    rollout.engine.close()


@pytest.fixture(scope="module")
def before(worker, pairs) -> list[Generation]:
    """Greedy rollouts with the weights the engine started with (before any sync)."""
    return worker.generate(pairs, MAX_NEW_TOKENS, 0.0, 0)


@pytest.fixture(scope="module")
def perturbed(sharp_dir) -> HFJudge:
    """The sharp model with fixed-seed noise on every parameter: vision tower, decoder, norms and the
    tied embedding (10% of each tensor's mean magnitude)."""
    judge = HFJudge.from_dir(sharp_dir, device="cpu")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in judge.model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * 0.1 * parameter.abs().mean())
    return judge


def test_greedy_rollouts_are_the_hf_engines(worker, judge, pairs, before) -> None:
    assert worker.ready()
    hf = judge.generate(pairs, MAX_NEW_TOKENS, temperature=0.0)
    for a, b in zip(hf, before, strict=True):
        assert b.token_ids == a.token_ids
        assert (b.text, b.pieces) == (a.text, a.pieces)
    assert {len(g.token_ids) for g in hf} != {1}  # real completions, not an immediate end of turn


def test_set_weights_reaches_the_engine(worker, judge, perturbed, pairs, before) -> None:
    """Synced weights are decoded at once (no stale prefix KV or image embeddings), and syncing the
    original weights back restores the original rollouts."""
    expected = perturbed.generate(pairs, MAX_NEW_TOKENS, temperature=0.0)
    assert tokens(expected) != tokens(before)  # the perturbation changes what greedy writes

    worker.set_weights(perturbed.model.state_dict())
    after = worker.generate(pairs, MAX_NEW_TOKENS, 0.0, 0)
    assert tokens(after) == tokens(expected)
    assert [g.text for g in after] == [g.text for g in expected]
    # Same weights, not merely the same argmax: vLLM's log-probabilities of its tokens are the
    # perturbed transformers model's.
    engine = worker.engine
    outputs = engine.llm.generate(
        engine.requests(pairs), engine.sampling_params(MAX_NEW_TOKENS, logprobs=0), use_tqdm=False
    )
    logprobs, mask = perturbed.completion_logprobs(pairs, tokens(after))
    for row, output in enumerate(outputs):
        completion = output.outputs[0]
        length = int(mask[row].sum())
        vllm = [step[t].logprob for step, t in zip(completion.logprobs, completion.token_ids, strict=True)]
        torch.testing.assert_close(torch.tensor(vllm[:length]), logprobs[row, :length], atol=1e-4, rtol=0)

    worker.set_weights(judge.model.state_dict())
    assert tokens(worker.generate(pairs, MAX_NEW_TOKENS, 0.0, 0)) == tokens(before)


def test_sampling_is_seeded_per_request(worker, pairs) -> None:
    first = worker.generate(pairs, MAX_NEW_TOKENS, 1.0, 11)
    assert tokens(worker.generate(pairs, MAX_NEW_TOKENS, 1.0, 11)) == tokens(first)
    other = worker.generate(pairs, MAX_NEW_TOKENS, 1.0, 12)
    assert all(a != b for a, b in zip(tokens(first), tokens(other), strict=True))
    # Copies of one prompt (rl.rollouts_per_prompt > 1) draw different samples under one seed.
    copies = worker.generate([pairs[0]] * 4, MAX_NEW_TOKENS, 1.0, 11)
    assert len({tuple(ids) for ids in tokens(copies)}) == 4
