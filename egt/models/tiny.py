"""A tiny random-weight Qwen2.5-VL with the real Qwen vocabulary, built fully offline.

Tests and the demo run every stage on this model; clusters run the same code on
Qwen2.5-VL-7B-Instruct. The architecture is the real one (vision tower with window attention and
patch merger, M-RoPE text decoder), only narrow: sizes follow ../shared/notes/toolchain.md, where
head_dim ≥ 32 keeps vLLM's CPU attention usable and mrope_section sums to head_dim / 2.

Two settings differ from the 7B's because a model trained from scratch in minutes needs them
(measured in docs/demo.md): RoPE base 10,000 instead of 1,000,000, so that positions a few dozen
tokens apart are distinguishable (with head_dim 32 and a base of 10^6 most rotary frequencies are
nearly constant over a prompt), and weights drawn at the scale of the layer's width
(:func:`scale_init`) instead of Hugging Face's fixed std 0.02, which at width 64 leaves every
attention pattern uniform for hundreds of steps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from egt.models.loading import ImageTextProcessor
from egt.models.tokenizer import build_qwen_tokenizer

VOCAB_SIZE = 151936  # Qwen2.5-VL pads its 151,665 tokens to this


ROPE_THETA = 10000.0
EMBEDDING_STD = 0.1


def tiny_config(hidden_size: int = 64, num_layers: int = 4, vision_depth: int = 2) -> Qwen2_5_VLConfig:
    """The tiny model's config: 2 heads of 32 dims, one KV head, tied embeddings (halves the size)."""
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": VOCAB_SIZE,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": num_layers,
            "num_attention_heads": hidden_size // 32,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": [4, 6, 6]},
            "tie_word_embeddings": True,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "pad_token_id": 151643,
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [vision_depth - 1],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


@torch.no_grad()
def scale_init(model: torch.nn.Module, seed: int) -> None:
    """Every matrix drawn from N(0, 1/fan_in) (LeCun), embeddings from N(0, EMBEDDING_STD²).

    The output layer is tied to the embedding, so its logits start at std ≈ 0.8 rather than ≈ 0.16.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if parameter.ndim != 2:
            continue  # norms and biases keep their init; the patch embedding is a 5-D convolution
        std = EMBEDDING_STD if "embed" in name else parameter.shape[1] ** -0.5
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def build_tiny_model(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 4) -> Path:
    """Write a random-weight tiny Qwen2.5-VL, its tokenizer and image processor to ``out_dir``.

    The folder has the layout of a Hugging Face model repository, so ``egt.models.loading`` loads it
    exactly as it loads Qwen2.5-VL-7B-Instruct. Deterministic for a seed.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(hidden_size, num_layers))
    scale_init(model, seed)
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(out_dir)
    tokenizer = build_qwen_tokenizer()
    # Small images keep the demo fast: a 56×56 picture becomes 4 image tokens, 112×112 16.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = ImageTextProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
