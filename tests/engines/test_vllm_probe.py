"""The vLLM probe against the transformers engine, on the sharp tiny Qwen2.5-VL (conftest.py).

Acceptance: greedy, vLLM writes the same tokens as transformers and the probe gives the same
entropies (within 1e-4), both ways it computes them (inside the engine and teacher forced). Runs only
where vLLM is importable (the .venv-vllm of scripts/vllm-env.sh; on GPU machines, wherever vLLM is):

    .venv-vllm/bin/pytest -q -m vllm tests/engines/test_vllm_probe.py

The engine is built once for the module (in-process, eager): about a minute on two CPU cores.
"""

from __future__ import annotations

import math

import pytest
import torch

from egt.engines.hf import JudgeInput
from egt.engines.probe import entropy_columns, probe_records, token_entropies
from egt.engines.vllm_engine import has_video_processor, vllm_available
from egt.engines.vllm_probe import VLLMProbe, probe_records_vllm
from egt.judge import answer_token_index
from tests.engines.conftest import BLUE, GREEN, RED

NO_VLLM = "vllm is not importable here: build .venv-vllm with scripts/vllm-env.sh and run this module there"


def needs_vllm(test):
    """Marks a test that runs the engine: ``vllm`` and ``slow``, skipped without vLLM."""
    return pytest.mark.vllm(pytest.mark.slow(pytest.mark.skipif(not vllm_available(), reason=NO_VLLM)(test)))


MAX_NEW_TOKENS = 24
CHUNK = 7  # several chunks per completion: exercises the chunking on the vLLM path too


@pytest.fixture(scope="module")
def pairs(items) -> list[JudgeInput]:
    """Six pairs: 0, 1 and 2 images, prompts of different lengths (left padding on the HF side)."""
    return [
        *items,
        JudgeInput([GREEN], "Name the colour of the picture.", "Green.", "Purple, with stripes."),
        JudgeInput([GREEN, BLUE], "Are both pictures the same colour?", "No: green and blue.", "Yes."),
        JudgeInput([BLUE], "Colour?", "A deep blue everywhere in the picture.", "Blue."),
    ]


@pytest.fixture(scope="module")
def probe(opinionated_dir):
    """On the sharp model with an opinionated generation_config.json (conftest.py): every comparison
    with transformers below also checks that vLLM generates from the raw logits."""
    with VLLMProbe(
        opinionated_dir, device="cpu", enforce_eager=True, max_model_len=1024, max_images=2, max_num_seqs=8
    ) as engine:
        yield engine


@pytest.fixture(scope="module")
def both(probe, judge, pairs):
    """Greedy generations of both engines and the entropies the HF engine and the vLLM probe
    (both ways: teacher forced, inside the engine) compute for them."""
    hf = judge.generate(pairs, MAX_NEW_TOKENS, temperature=0.0)
    vl = {
        mode: probe.generate_with_entropies(pairs, MAX_NEW_TOKENS, 4, CHUNK, entropy=mode)
        for mode in ("teacher_forced", "engine")
    }
    return hf, token_entropies(judge, pairs, hf, CHUNK), vl


@needs_vllm
def test_tiny_model_folder_needs_the_video_view(sharp_dir):
    assert not has_video_processor(sharp_dir)  # the engine runs on a view that adds one


@needs_vllm
def test_prompts_tokenize_identically(probe, judge, pairs):
    """Same chat-template text and image-token expansion: vLLM's prompt ids are the HF engine's."""
    outputs = probe.llm.generate(probe.requests(pairs), probe.sampling_params(1), use_tqdm=False)
    batch = judge.encode(pairs)
    for row, output in enumerate(outputs):
        expected = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert list(output.prompt_token_ids) == expected


@needs_vllm
@pytest.mark.parametrize("mode", ["teacher_forced", "engine"])
def test_greedy_tokens_identical(both, mode):
    hf, _, vl = both
    for a, b in zip(hf, vl[mode][0], strict=True):
        assert b.token_ids == a.token_ids
        assert (b.text, b.pieces) == (a.text, a.pieces)
    assert {len(g.token_ids) for g in hf} != {1}  # real completions, not an immediate end of turn


@needs_vllm
@pytest.mark.parametrize("mode", ["teacher_forced", "engine"])
def test_entropies_identical(both, mode):
    _, hf_entropies, vl = both
    for a, b in zip(hf_entropies, vl[mode][1], strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
        assert bool(torch.isfinite(b).all()) and float(b.min()) > 0.1  # sharp model: real, varied values
        assert float(b.max()) < math.log(151936)


@needs_vllm
def test_engine_decoded_from_the_scored_distribution(probe, judge, pairs, both):
    """vLLM's own log-probability of each token it chose equals the scorer's teacher-forced one: the
    distribution whose entropy is reported is the one vLLM decoded from."""
    vl = both[2]["teacher_forced"][0]
    outputs = probe.llm.generate(
        probe.requests(pairs), probe.sampling_params(MAX_NEW_TOKENS, logprobs=0), use_tqdm=False
    )
    logprobs, mask = judge.completion_logprobs(pairs, [g.token_ids for g in vl])
    for row, output in enumerate(outputs):
        completion = output.outputs[0]
        engine = [
            step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids, strict=True)
        ]
        length = int(mask[row].sum())
        assert len(engine) >= length
        torch.testing.assert_close(
            torch.tensor(engine[:length]), logprobs[row, :length].detach(), atol=1e-4, rtol=0
        )


@needs_vllm
def test_answer_entropy_is_the_answer_tokens(probe, judge):
    """A well-formed completion (teacher forced: the random model never writes one) gets a finite
    answer entropy, the entropy at the token after <answer>, on both engines alike."""
    item = JudgeInput([RED], "What colour?", "Red.", "Blue.")
    tokenizer = judge.tokenizer
    ids = [*tokenizer.encode("<think>It is red.</think><answer>1</answer>"), 151645]
    generation = probe.text.to_generation(ids)
    [vl] = probe.token_entropies([item], [generation], CHUNK)
    [hf] = token_entropies(judge, [item], [generation], CHUNK)
    columns = entropy_columns(vl, generation)
    assert columns["probe_prediction"] == 1 and columns["probe_well_formed"]
    assert math.isfinite(columns["answer_entropy"])
    index = answer_token_index(generation.pieces)
    assert generation.text[len("".join(generation.pieces[:index])) :].startswith("1")
    assert columns["answer_entropy"] == pytest.approx(float(hf[index]), abs=1e-4)


@needs_vllm
@pytest.mark.parametrize("mode", ["teacher_forced", "engine"])
def test_probe_records_match_the_hf_engine(probe, judge, pairs, mode, monkeypatch):
    records = [{"id": str(i), "label": 1 + i % 2} for i in range(len(pairs))]
    by_id = dict(zip((r["id"] for r in records), pairs, strict=True))
    ticks: list[int] = []
    args = (records, lambda r: by_id[r["id"]], 4, MAX_NEW_TOKENS, CHUNK)
    monkeypatch.setattr(probe, "entropy", mode)
    vl = probe_records_vllm(probe, *args, progress=ticks.append)
    hf = probe_records(judge, *args)
    assert ticks == [len(records)]
    assert [r["id"] for r in vl] == [r["id"] for r in hf]
    for a, b in zip(hf, vl, strict=True):
        assert set(a) == set(b)
        for key, value in a.items():
            if isinstance(value, float) and math.isfinite(value):
                assert b[key] == pytest.approx(value, abs=1e-4), key
            else:
                assert b[key] == value, key
