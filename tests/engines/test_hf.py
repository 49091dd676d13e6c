"""The transformers engine against transformers itself: generation, entropies, log-probs, pieces.

Reference values come from independent calls: prompts written out by hand and encoded by the
processor, ``model.generate`` itself, and entropies / log-probs from the generation-time raw logits
(``output_logits=True``), never from the engine's own teacher-forced pass.
"""

from __future__ import annotations

import math

import pytest
import torch

from egt.engines.hf import Generation, HFJudge, decode_pieces
from egt.engines.probe import entropy_columns, probe_batch, token_entropies
from egt.judge import answer_token_index, parse_answer
from tests.engines.conftest import IM_END, IMAGE_PAD, expected_prompt

MAX_NEW = 12
PAD = 151643
# Prefix lengths of the three greedy outputs that are scored teacher-forced: different lengths make
# the completions right-padded in one batch, on top of the prompts' left padding.
PREFIXES = (12, 7, 3)


def _generate(model, inputs: dict, **options):
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=MAX_NEW,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=IM_END,
            return_dict_in_generate=True,
            **options,
        )


@pytest.fixture(scope="module")
def reference(judge, items):
    """``model.generate`` on the engine's encoded prompts, with the raw logits of every step.

    The prompts themselves are checked against hand-written ones in ``test_prompts_are_qwen_layout``.
    """
    inputs = judge.encode(items)
    out = _generate(judge.model, inputs, output_logits=True)
    return {
        "attention_mask": inputs["attention_mask"],
        "tokens": out.sequences[:, inputs["input_ids"].shape[1] :],
        # Raw logits (no temperature / top-k applied), in float64: a float32 Categorical entropy over
        # 151,936 entries is itself off by up to 1e-4.
        "logits": torch.stack(out.logits, dim=1).double(),
    }


@pytest.fixture(scope="module")
def greedy(judge, items):
    return judge.generate(items, max_new_tokens=MAX_NEW)


def _processor_inputs(judge, items) -> dict:
    """What a transformers user feeds Qwen2.5-VL: the processor's whole output on hand-written prompts."""
    texts = [expected_prompt(item) for item in items]
    images = [image for item in items for image in item.images]
    return dict(judge.processor(text=texts, images=images or None, return_tensors="pt", padding=True))


def _cut(ids: list[int]) -> list[int]:
    return ids[: ids.index(IM_END) + 1] if IM_END in ids else ids


def test_prompts_are_qwen_layout(reference, judge, items):
    for item in items:
        assert judge.prompt_text(item) == expected_prompt(item)
    encoded, expected = judge.encode(items), _processor_inputs(judge, items)
    assert judge.processor.tokenizer.padding_side == "left"
    assert torch.equal(encoded["input_ids"], expected["input_ids"])
    assert torch.equal(encoded["attention_mask"], expected["attention_mask"])
    assert torch.equal(encoded["pixel_values"], expected["pixel_values"])
    assert (encoded["input_ids"] == IMAGE_PAD).sum(dim=1).tolist() == [4, 8, 0]
    # Three prompt lengths, left-padded: padding only at the start, the last column real everywhere.
    mask = encoded["attention_mask"]
    assert len(set(mask.sum(dim=1).tolist())) == 3
    assert mask[:, -1].all() and (mask[:, :-1] <= mask[:, 1:]).all()


def test_greedy_generate_matches_model_generate(reference, greedy, judge):
    expected = [_cut(row) for row in reference["tokens"].tolist()]
    assert [g.token_ids for g in greedy] == expected
    # The sharp model writes varied tokens, so a shifted or reordered comparison could not pass.
    assert all(len(set(row)) > 3 for row in expected)
    for generation in greedy:
        assert generation.text == judge.tokenizer.decode(generation.token_ids, skip_special_tokens=True)


def test_greedy_generate_matches_model_generate_on_processor_output(greedy, judge, items):
    out = _generate(judge.model, _processor_inputs(judge, items))
    width = out.sequences.shape[1] - MAX_NEW
    assert [g.token_ids for g in greedy] == [_cut(row) for row in out.sequences[:, width:].tolist()]


def test_teacher_forced_pass_uses_mrope_positions(judge, items):
    item = items[1]  # two images
    inputs = _processor_inputs(judge, [item])
    completion = [judge.tokenizer.convert_tokens_to_ids("<think>")]
    with torch.no_grad():
        expected = torch.log_softmax(judge.model(**inputs).logits[0, -1].double(), dim=-1)[completion[0]]
        logprobs, _ = judge.completion_logprobs([item], [completion])
    assert float(logprobs[0, 0]) == pytest.approx(float(expected), abs=1e-4)


def test_sampling_is_seeded(judge, items):
    first = judge.generate(items[:1], max_new_tokens=4, temperature=1.0, seed=7)
    again = judge.generate(items[:1], max_new_tokens=4, temperature=1.0, seed=7)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]


def test_checkpoint_generation_config_does_not_reshape_sampling(judge, items, greedy, opinionated_dir):
    """Entropies and π_old come from raw logits; a checkpoint's penalties must not steer generation."""
    opinionated = HFJudge.from_dir(opinionated_dir)
    assert opinionated.model.generation_config.repetition_penalty == 3.0
    # The checkpoint's settings would change these outputs: applied as transformers does by default, they do.
    penalized = _generate(opinionated.model, opinionated.encode(items))
    width = penalized.sequences.shape[1] - MAX_NEW
    assert [_cut(row) for row in penalized.sequences[:, width:].tolist()] != [g.token_ids for g in greedy]
    assert [g.token_ids for g in opinionated.generate(items, max_new_tokens=MAX_NEW)] == [
        g.token_ids for g in greedy
    ]
    plain, steered = (j.generate(items, 6, temperature=1.0, seed=3) for j in (judge, opinionated))
    assert [g.token_ids for g in plain] == [g.token_ids for g in steered]
    assert opinionated.model.generation_config.repetition_penalty == 3.0  # restored after generating


def _prefix_generations(judge, reference) -> list[Generation]:
    rows = reference["tokens"].tolist()
    assert all(IM_END not in row[:n] for row, n in zip(rows, PREFIXES, strict=True))
    return [judge.to_generation(row[:n]) for row, n in zip(rows, PREFIXES, strict=True)]


def test_teacher_forced_entropies_equal_generation_time_entropies(judge, items, reference):
    generations = _prefix_generations(judge, reference)
    entropies = token_entropies(judge, items, generations, chunk_size=5)  # rows of 12 and 7 span chunks
    expected = torch.distributions.Categorical(logits=reference["logits"]).entropy()  # [B, steps]
    assert [e.shape[0] for e in entropies] == list(PREFIXES)
    for row, (got, length) in enumerate(zip(entropies, PREFIXES, strict=True)):
        torch.testing.assert_close(got.double(), expected[row, :length], atol=1e-4, rtol=0)
    # The entropies vary along a row by far more than the tolerance, so an off-by-one would fail.
    assert (expected[0, 1:] - expected[0, :-1]).abs().max() > 1e-2
    assert expected.max() < math.log(judge.model.config.text_config.vocab_size) - 1


def test_completion_logprobs_equal_generation_logits(judge, items, reference):
    generations = _prefix_generations(judge, reference)
    with torch.no_grad():
        logprobs, mask = judge.completion_logprobs(items, [g.token_ids for g in generations])
    assert mask.sum(dim=1).tolist() == list(PREFIXES)
    expected = torch.log_softmax(reference["logits"], dim=-1).gather(-1, reference["tokens"].unsqueeze(-1))
    expected = expected.squeeze(-1)
    for row, length in enumerate(PREFIXES):
        torch.testing.assert_close(logprobs[row, :length].double(), expected[row, :length], atol=1e-4, rtol=0)
        assert (logprobs[row, length:] == 0).all()


def test_probe_batch_against_generation_time_entropies(judge, items, reference):
    records = [{"id": str(i), "label": 1} for i in range(3)]
    out = probe_batch(judge, records, items, max_new_tokens=MAX_NEW, chunk_size=4)
    expected = torch.distributions.Categorical(logits=reference["logits"]).entropy().double()
    for row, record in enumerate(out):
        assert record["id"] == str(row)
        length = record["probe_tokens"]
        assert length == len(_cut(reference["tokens"][row].tolist()))
        assert record["sentence_entropy"] == pytest.approx(float(expected[row, :length].mean()), abs=1e-4)
        # Random weights write no answer: infinite answer and mix entropies, not a prediction.
        assert record["probe_prediction"] is None and record["probe_correct"] is False
        assert record["answer_entropy"] == math.inf and record["mix_entropy"] == math.inf


def test_to_generation_cuts_after_the_first_end_of_turn(judge):
    tokenizer = judge.tokenizer
    body = tokenizer("<think>ok</think><answer>1</answer>", add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id
    generation = judge.to_generation([*body, IM_END, pad, pad, *body])
    assert generation.token_ids == [*body, IM_END]
    assert generation.text == "<think>ok</think><answer>1</answer>"
    assert generation.pieces[-1] == ""
    assert judge.to_generation(body).token_ids == body  # no end-of-turn: kept whole


def test_decode_pieces_concatenate_to_the_decoded_text(judge):
    tokenizer = judge.tokenizer
    text = "<think>Response 1 names the colour 🙂 correctly.\n\nSo: 12</think><answer>2</answer>"
    ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], IM_END]
    pieces = decode_pieces(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert pieces[-1] == ""
    assert pieces == [tokenizer.decode([i], skip_special_tokens=True) for i in ids]  # all whole characters
    # Special tokens in the middle give "" too.
    ids = tokenizer("a<|im_start|>b<|vision_start|>c", add_special_tokens=False)["input_ids"]
    assert decode_pieces(tokenizer, ids) == ["a", "", "b", "", "c"]


def test_decode_pieces_with_characters_split_over_tokens(judge):
    tokenizer = judge.tokenizer
    text = "<think>龘 and 🦜 win</think><answer>2</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some token holds part of a character
    pieces = decode_pieces(tokenizer, ids)
    assert "".join(pieces) == text
    assert judge.to_generation([*ids, IM_END]).text == text


def test_answer_token_index_on_real_tokens(judge):
    tokenizer = judge.tokenizer
    for text in (
        "<think>x</think><answer>2</answer>",
        "<think>Response 1 is better.</think><answer> 2 </answer>",
    ):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        index = answer_token_index(decode_pieces(tokenizer, ids))
        assert index is not None
        assert ids[index] == tokenizer.convert_tokens_to_ids("2")
        # Independently: the answer token's id is the first "2" after the ids of the "answer>" tag.
        tag_end = max(i for i in range(len(ids)) if tokenizer.decode(ids[: i + 1]).endswith("<answer>"))
        assert index == next(i for i in range(tag_end + 1, len(ids)) if tokenizer.decode([ids[i]]).strip())


def test_answer_token_is_the_digit_the_prediction_is_parsed_from(judge):
    """A reasoning that mentions the tag must not move the entropy off the parsed answer."""
    tokenizer = judge.tokenizer
    text = "<think>use <answer> tags</think><answer>2</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = decode_pieces(tokenizer, ids)
    index = answer_token_index(pieces)
    assert parse_answer(text) == 2
    assert pieces[index] == "2"
    assert "".join(pieces[:index]).endswith("</think><answer>")
    assert (
        answer_token_index(
            decode_pieces(tokenizer, tokenizer("<think>use <answer> tags</think>")["input_ids"])
        )
        is None
    )


def test_entropy_columns(judge):
    tokenizer = judge.tokenizer

    def generation(text: str) -> Generation:
        return judge.to_generation([*tokenizer(text, add_special_tokens=False)["input_ids"], IM_END])

    answered = generation("<think>x</think><answer>2</answer>")
    entropies = torch.linspace(0.5, 3.0, len(answered.token_ids))
    index = answered.token_ids.index(tokenizer.convert_tokens_to_ids("2"))
    columns = entropy_columns(entropies, answered)
    assert columns["probe_prediction"] == 2
    assert columns["probe_well_formed"] is True
    assert columns["probe_tokens"] == len(answered.token_ids)
    assert columns["answer_entropy"] == pytest.approx(float(entropies[index]))
    assert columns["sentence_entropy"] == pytest.approx(float(entropies.double().mean()))
    assert columns["mix_entropy"] == pytest.approx(float(entropies[index]) * float(entropies.double().mean()))

    for text in ("<think>x</think><answer>maybe</answer>", "<think>x</think>", "2"):
        unanswered = generation(text)
        columns = entropy_columns(torch.ones(len(unanswered.token_ids)), unanswered)
        assert columns["probe_prediction"] is None
        assert columns["answer_entropy"] == math.inf
        assert columns["mix_entropy"] == math.inf
        assert columns["sentence_entropy"] == pytest.approx(1.0)
